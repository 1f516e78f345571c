"""The `difftrain` command line: one verb per user intention, each a thin call into the library."""

from __future__ import annotations

import os
from pathlib import Path

import typer
import yaml

from difftrain.cli.common import console, handle_errors
from difftrain.config import dump_config, load_config

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)

SET_HELP = "Override a config key, e.g. --set optim.lr=2e-4 (repeatable)."


@app.command()
@handle_errors
def train(
    config: Path = typer.Argument(..., help="YAML config file (or a run directory)."),
    set_: list[str] = typer.Option([], "--set", help=SET_HELP),
    resume: bool = typer.Option(
        False, "--resume", help="Continue from the latest good checkpoint."
    ),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Print the resolved config and sizes, then exit."
    ),
    plan: bool = typer.Option(
        False,
        "--plan",
        help="Time a few real steps in a scratch dir; print step time, peak "
        "memory, estimated run time and the largest batch that fits; write nothing.",
    ),
    plan_steps: int = typer.Option(4, "--plan-steps", help="Steps per measured batch size."),
    plan_memory: float | None = typer.Option(
        None, "--plan-memory", help="Memory limit in GB (default: 90% of GPU memory or RAM)."
    ),
    plan_max_batch: int | None = typer.Option(
        None, "--plan-max-batch", help="Largest batch to try (default: 16x train.batch_size)."
    ),
) -> None:
    """Train a diffusion model as configured."""
    cfg = load_config(config, set_)  # first: a bad file or key is reported before torch loads
    from difftrain.pipeline.build import check_config
    from difftrain.pipeline.pretrained import resolve_pretrained
    from difftrain.train import train as run_train

    named_run_dir = config.is_dir() and (config / "config.yaml").is_file()
    if named_run_dir and not any(o.split("=", 1)[0].strip() == "train.run_dir" for o in set_):
        # The directory the user named is the run (a copied or moved run directory writes into
        # itself, not into the train.run_dir stored in its config); --set train.run_dir wins.
        cfg.train.run_dir = config
    cfg = resolve_pretrained(cfg)  # model.pretrained: values read from the pipeline folder
    check_config(cfg)  # before any data or model is loaded
    if plan:
        from difftrain.cli.plan_cmd import print_plan

        print_plan(cfg, plan_steps, plan_memory, plan_max_batch)
        return
    if dry_run:
        console.print(dump_config(cfg), highlight=False)
    result = run_train(cfg, resume=resume, dry_run=dry_run)
    if os.environ.get("RANK", "0") != "0":
        return  # torchrun/accelerate: the main process reports for all
    if dry_run:
        console.print(yaml.safe_dump(result, sort_keys=False), highlight=False)
        return
    console.print(
        f"trained {result.step} steps ({result.images_seen} images) in {result.seconds:.0f}s; "
        f"final loss {result.final_loss:.4f}; skipped steps {result.skipped_steps}; "
        f"rollbacks {result.rollbacks}" + ("; stopped early" if result.stopped_early else "") + "\n"
        f"run directory: {result.run_dir}  (checkpoints/, samples/, metrics.jsonl, tensorboard/)"
    )


from difftrain.cli.sample_cmd import sample  # noqa: E402

app.command(name="sample")(sample)
from difftrain.cli.serve_cmd import serve  # noqa: E402

app.command(name="serve")(serve)
from difftrain.cli.eval_cmd import evaluate, report  # noqa: E402
from difftrain.cli.features_cmd import features_app  # noqa: E402

app.command(name="evaluate")(evaluate)
app.command(name="report")(report)
app.add_typer(features_app, name="features")
from difftrain.cli.ema_cmd import ema  # noqa: E402

app.command(name="ema")(ema)
from difftrain.cli.data_cmd import data_app  # noqa: E402

app.add_typer(data_app, name="data")
from difftrain.cli.export_cmd import export  # noqa: E402

app.command(name="export")(export)
from difftrain.cli.explain_cmd import explain  # noqa: E402

app.command(name="explain")(explain)
from difftrain.cli.sweep_cmd import sweep  # noqa: E402

app.command(name="sweep")(sweep)
from difftrain.cli.reward_cmd import finetune_reward  # noqa: E402

app.command(name="finetune-reward")(finetune_reward)
from difftrain.cli.convert_cmd import convert_single_file  # noqa: E402

app.command(name="convert-single-file")(convert_single_file)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
