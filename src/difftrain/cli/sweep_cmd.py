"""`difftrain sweep CONFIG --space SPACE.yaml --trials N [--storage URL] [--report]`."""

from __future__ import annotations

from pathlib import Path

import typer

from difftrain.cli.common import console, handle_errors
from difftrain.config import ConfigError, load_config


@handle_errors
def sweep(
    config: Path = typer.Argument(..., help="YAML config file every trial starts from."),
    space: Path = typer.Option(..., "--space", help="Search space YAML (config key → range)."),
    trials: int = typer.Option(0, "--trials", help="Finished trials the study should hold."),
    storage: str | None = typer.Option(
        None, "--storage", help="Optuna storage URL (default: sqlite under the sweep dir)."
    ),
    out: Path | None = typer.Option(
        None, "--out", help="Sweep directory (default: train.run_dir + '-sweep')."
    ),
    study: str = typer.Option("difftrain", "--study", help="Study name in the storage."),
    metric: str = typer.Option("val/loss", "--metric", help="Objective: a validation metric."),
    direction: str = typer.Option("minimize", "--direction", help="minimize or maximize."),
    pruner: str = typer.Option("median", "--pruner", help="median, hyperband or none."),
    report: bool = typer.Option(False, "--report", help="Print best trials; write plots."),
    set_: list[str] = typer.Option([], "--set", help="Override a config key for every trial."),
) -> None:
    """Search hyperparameters with Optuna; every trial is an ordinary run directory."""
    from difftrain.sweep import load_space, report_study, run_sweep
    from difftrain.sweep.study import open_study

    if not 0 <= trials <= 10_000:
        raise ConfigError(f"--trials {trials}: give 0 to 10000")
    cfg = load_config(config, set_)
    params = load_space(space, config, set_)
    run_dir = Path(cfg.train.run_dir)
    sweep_dir = out or run_dir.with_name(run_dir.name + "-sweep")
    if trials:
        res = run_sweep(
            config, params, trials, sweep_dir, overrides=set_, storage=storage,
            study_name=study, metric=metric, direction=direction, pruner=pruner,
        )  # fmt: skip
        console.print(
            f"study {res.study_name!r}: ran {res.ran} trials, {res.finished} finished in all "
            f"({res.storage}); trial run directories in {sweep_dir}",
            highlight=False,
        )
    if report:
        st = open_study(sweep_dir, storage, study, direction)
        rep = report_study(st, sweep_dir / "report")
        console.print(f"study {rep['study']!r} ({rep['direction']} {metric}): {rep['trials']}")
        for i, b in enumerate(rep["best"], 1):
            console.print(f"  {i}. trial {b['trial']}: {b['value']:.5g}  {b['params']}  "
                          f"{b['run_dir']}", highlight=False)  # fmt: skip
        for name, path in rep["plots"].items():
            console.print(f"{name} plot: {path}", highlight=False)
        for note in rep["notes"]:
            console.print(f"note: {note}", highlight=False)
    if not trials and not report:
        raise ConfigError("nothing to do: pass --trials N and/or --report")
