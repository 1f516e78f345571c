"""Run and report an Optuna study whose trials are ordinary training runs (one loop, no copy).

Each trial is a run directory `SWEEP_DIR/trial-NNNN` trained by `train.train`; the loop calls
back after each validation, the trial reports the metric there and Optuna's pruner may stop it.
The study lives in a database (SQLite under the sweep directory by default, or any URL Optuna
accepts, so several machines can work on one study) and resumes from it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from difftrain.config import ConfigError, load_config
from difftrain.sweep.space import Param, override

PRUNERS = ("median", "hyperband", "none")


def _optuna():
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def default_storage(sweep_dir: Path) -> str:
    """sqlite:/// URL of SWEEP_DIR/study.db."""
    return f"sqlite:///{(Path(sweep_dir) / 'study.db').resolve()}"


def make_pruner(name: str, first_step: int, max_steps: int):
    """Median (prune below the median of earlier trials at the same step) or Hyperband."""
    optuna = _optuna()
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=0)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=first_step, max_resource=max_steps)
    if name == "none":
        return optuna.pruners.NopPruner()
    raise ConfigError(f"--pruner {name!r}: choose one of {', '.join(PRUNERS)}")


def open_study(sweep_dir: Path, storage: str | None, name: str, direction: str, pruner=None):
    """Create the study, or load it from its storage (a resumed sweep)."""
    optuna = _optuna()
    if direction not in ("minimize", "maximize"):
        raise ConfigError(f"--direction {direction!r}: minimize or maximize")
    Path(sweep_dir).mkdir(parents=True, exist_ok=True)
    url = storage or default_storage(sweep_dir)
    try:
        return optuna.create_study(
            study_name=name, storage=url, load_if_exists=True, direction=direction, pruner=pruner
        )
    except ValueError as err:  # e.g. an existing study with the other direction
        raise ConfigError(f"study {name!r} in {url}: {err}") from None


def finished(study) -> int:
    """Trials that ran to the end or were pruned (failed ones are retried)."""
    from optuna.trial import TrialState

    return sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in study.trials)


@dataclass
class SweepResult:
    study_name: str
    storage: str
    finished: int
    ran: int
    best: dict | None = field(default=None)


def run_sweep(
    config: Path,
    params: list[Param],
    trials: int,
    sweep_dir: Path,
    *,
    overrides: list[str] | None = None,
    storage: str | None = None,
    study_name: str = "difftrain",
    metric: str = "val/loss",
    direction: str = "minimize",
    pruner: str = "median",
) -> SweepResult:
    """Run trials until the study holds `trials` finished ones; each trial a run directory."""
    from difftrain.train.loop import train

    optuna = _optuna()
    overrides = list(overrides or [])
    base = load_config(config, overrides)
    tc = base.train
    sweep_dir = Path(sweep_dir)
    study = open_study(
        sweep_dir, storage, study_name, direction,
        make_pruner(pruner, min(tc.checkpoint_every, tc.max_steps), tc.max_steps),
    )  # fmt: skip

    def objective(trial) -> float:
        values = {p.key: p.suggest(trial) for p in params}
        run_dir = sweep_dir / f"trial-{trial.number:04d}"
        sets = [*overrides, *(override(k, v) for k, v in values.items())]
        cfg = load_config(config, [*sets, override("train.run_dir", str(run_dir))])
        trial.set_user_attr("run_dir", str(run_dir))
        reported: list[float] = []
        pruned = [False]

        def on_validation(step: int, metrics: dict) -> bool:
            v = metrics.get(metric)
            if v is None:
                return False
            reported.append(float(v))
            trial.report(float(v), step)
            pruned[0] = trial.should_prune()
            return pruned[0]

        train(cfg, on_validation=on_validation)
        if not reported:
            raise ConfigError(
                f"--metric {metric!r} was never reported by trial {trial.number} ({run_dir}); "
                "pick a metric the run validates (val/loss needs data.val_fraction > 0)"
            )
        if pruned[0]:
            raise optuna.TrialPruned()
        return reported[-1]

    before = finished(study)
    todo = max(0, trials - before)
    if todo:
        study.optimize(objective, n_trials=todo)
    return SweepResult(study_name, storage or default_storage(sweep_dir), finished(study), todo,
                       best_trials(study, 1)[0] if best_trials(study, 1) else None)  # fmt: skip


def best_trials(study, top: int = 5) -> list[dict]:
    """The `top` completed trials, best first: number, value, params, run directory."""
    from optuna.trial import TrialState

    done = [t for t in study.trials if t.state == TrialState.COMPLETE]
    maximize = study.direction.name == "MAXIMIZE"
    done.sort(key=lambda t: t.value, reverse=maximize)
    return [
        {
            "trial": t.number,
            "value": t.value,
            "params": t.params,
            "run_dir": t.user_attrs.get("run_dir"),
        }  # fmt: skip
        for t in done[:top]
    ]


def report_study(study, out_dir: Path, top: int = 5) -> dict:
    """Best trials, states, and history / parameter-importance plots (PNG) in out_dir."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import warnings

    import matplotlib.pyplot as plt

    optuna = _optuna()
    from optuna.visualization import matplotlib as oplt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    states: dict[str, int] = {}
    for t in study.trials:
        states[t.state.name] = states.get(t.state.name, 0) + 1
    report = {"study": study.study_name, "direction": study.direction.name.lower(),
              "trials": states, "best": best_trials(study, top), "plots": {}, "notes": []}  # fmt: skip
    plots = {"history": oplt.plot_optimization_history, "importance": oplt.plot_param_importances}
    for name, fn in plots.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                ax = fn(study)
            path = out_dir / f"{name}.png"
            ax.figure.savefig(path, dpi=100, bbox_inches="tight")
            plt.close(ax.figure)
            report["plots"][name] = str(path)
        except (ValueError, RuntimeError, ZeroDivisionError) as err:  # too few trials for it
            report["notes"].append(f"{name} plot not drawn: {err}")
    (out_dir / "report.json").write_text(json.dumps(report, indent=1))
    return report
