"""`difftrain finetune-reward RUN --reward R`: DDPO or DRaFT-K fine-tuning on a reward."""

from __future__ import annotations

from pathlib import Path

import typer

from difftrain.cli.common import console, handle_errors


@handle_errors
def finetune_reward(
    run: Path = typer.Argument(..., help="Trained run directory whose EMA weights start it."),
    reward: str = typer.Option(
        ...,
        "--reward",
        help="class-prob | jpeg-compressibility | jpeg-incompressibility | "
        "mlp:SCORER.safetensors | python:module.path:function (runs that code: trusted only)",
    ),
    out: Path | None = typer.Option(None, "--out", help="New run directory (default RUN-reward)."),
    method: str = typer.Option("ddpo", "--method", help="ddpo or draft (DRaFT-K)."),
    checkpoint: str | None = typer.Option(
        None, "--checkpoint", help="Checkpoint name in RUN/checkpoints (default: latest good)."
    ),
    max_steps: int = typer.Option(100, "--max-steps", help="Optimizer steps of fine-tuning."),
    lr: float | None = typer.Option(
        None, "--lr", help="Learning rate (constant, no warm-up); default 2e-5 draft, 1e-4 ddpo."
    ),
    set_: list[str] = typer.Option(
        [], "--set", help="Override a key, e.g. --set reward.penalty=1e-3 (repeatable)."
    ),
    resume: bool = typer.Option(False, "--resume", help="Continue OUT from its latest checkpoint."),
) -> None:
    """Fine-tune a trained model to maximise a reward on its own samples (guidance 1)."""
    from difftrain.config import ConfigError
    from difftrain.pipeline.build import check_config
    from difftrain.train import train as run_train
    from difftrain.train.reward_run import reward_config
    from difftrain.train.reward_task import check_reward_config

    if method not in ("ddpo", "draft"):
        raise ConfigError(f"--method {method!r}: use ddpo or draft")
    cfg = reward_config(
        run, reward, out, method=method, checkpoint=checkpoint, max_steps=max_steps, lr=lr,
        overrides=set_,
    )  # fmt: skip
    check_config(cfg)
    check_reward_config(cfg)
    result = run_train(cfg, resume=resume)
    console.print(
        f"reward fine-tuning ({cfg.reward.method}, reward {cfg.reward.name}): {result.step} steps "
        f"in {result.seconds:.0f}s; skipped steps {result.skipped_steps}\n"
        f"run directory: {result.run_dir}  (metrics.jsonl: reward/mean, eval/reward; "
        f"`difftrain evaluate {result.run_dir}` for FID and class accuracy)"
    )
