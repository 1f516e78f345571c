"""`difftrain evaluate RUN_DIR` (writes eval.json) and `difftrain report RUN_DIR` (report.html)."""

from __future__ import annotations

from pathlib import Path

import typer

from difftrain.cli.common import console, handle_errors
from difftrain.config.schema import MAX_EVAL_IMAGES, MAX_SAMPLER_STEPS, MAX_SEED


@handle_errors
def evaluate(
    run_dir: Path = typer.Argument(..., help="A run directory written by `difftrain train`."),
    metrics: str = typer.Option(
        "fid,kid,pr,acc", "--metrics", help="Comma list of fid,kid,pr,nll,acc."
    ),
    num: int = typer.Option(
        1000, "--num", min=4, max=MAX_EVAL_IMAGES, help="Generated (and real) images to compare."
    ),
    sampler: str = typer.Option("heun", "--sampler", help="Sampler name."),
    steps: int = typer.Option(18, "--steps", min=1, max=MAX_SAMPLER_STEPS, help="Sampler steps."),
    features: str = typer.Option(
        "domain", "--features", help="'domain' (trained CNN) or 'inception'."
    ),
    seed: int = typer.Option(
        0, "--seed", min=0, max=MAX_SEED, help="Sample i depends only on (seed, i)."
    ),
    guidance: float = typer.Option(
        1.0, "--guidance", min=0.0, help="Classifier-free guidance weight."
    ),
    guidance_interval: str | None = typer.Option(
        None,
        "--guidance-interval",
        help="LO,HI: guidance only for sigma in (LO, HI] (default: the run's sample.guidance_interval).",
    ),
    weights: str = typer.Option("ema", "--weights", help="'ema' or 'model'."),
    checkpoint: Path | None = typer.Option(
        None, "--checkpoint", help="A checkpoint dir; default: latest."
    ),
    feature_net: Path | None = typer.Option(
        None, "--feature-net", help="Domain net dir (default <run>/features)."
    ),
    inception_weights: Path | None = typer.Option(
        None,
        "--inception-weights",
        help="FID Inception weight file (or $DIFFTRAIN_INCEPTION_WEIGHTS).",
    ),
    nll_num: int | None = typer.Option(
        None, "--nll-num", min=1, max=MAX_EVAL_IMAGES, help="Held-out images for nll."
    ),
    nll_steps: int | None = typer.Option(
        None, "--nll-steps", min=2, max=MAX_SAMPLER_STEPS, help="ODE steps for nll."
    ),
    out: Path | None = typer.Option(
        None, "--out", help="Directory for eval.json (default: the run dir)."
    ),
) -> None:
    """Sample-quality metrics and likelihood of a trained run; results go to eval.json."""
    import torch
    from tqdm.auto import tqdm

    from difftrain.cli.sample_cmd import parse_interval
    from difftrain.config import ConfigError
    from difftrain.eval.evaluate import parse_metrics
    from difftrain.eval.run_eval import evaluate_run

    if weights not in ("ema", "model"):
        raise ConfigError(f"--weights {weights!r}: allowed 'ema' or 'model'")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with tqdm(total=num, desc="generate", unit="img") as bar:

        def progress(stage: str, done: int, total: int) -> None:
            bar.update(done - bar.n)
            if done >= total:
                bar.close()  # the metrics (and the likelihood) follow without a bar

        entry = evaluate_run(
            run_dir, metrics=parse_metrics(metrics), num=num, sampler=sampler, steps=steps,
            seed=seed, features=features, guidance=guidance, weights=weights,
            guidance_interval=parse_interval(guidance_interval), checkpoint=checkpoint, feature_net=feature_net, inception_weights=inception_weights,
            nll_num=nll_num, nll_steps=nll_steps, out=out, device=device, progress=progress,
        )  # fmt: skip
    lines = [f"  {k:<22} {v:.5g}" for k, v in entry["metrics"].items()]
    console.print(
        f"step {entry['step']} ({entry['weights']} weights), {num} samples, "
        f"{sampler} {steps} steps:\n"
        + "\n".join(lines)
        + f"\nwrote {entry['path']} ({entry['seconds']['total_s']:.0f}s)",
        highlight=False,
    )


@handle_errors
def report(
    run_dir: Path = typer.Argument(..., help="A run directory written by `difftrain train`."),
    out: Path | None = typer.Option(
        None, "--out", help="Output file (default RUN_DIR/report.html)."
    ),
    trajectory: int = typer.Option(
        6, "--trajectory", min=0, help="Samples in the denoising trajectory."
    ),
) -> None:
    """Write a self-contained HTML report (curves, metrics, samples, trajectory, config)."""
    from difftrain.eval.report import write_report

    path = write_report(run_dir, out=out, trajectory_samples=trajectory)
    size = path.stat().st_size / 1e6
    console.print(f"wrote {path} ({size:.1f} MB, self-contained: open it in any browser)")
