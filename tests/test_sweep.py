"""`difftrain sweep`: Optuna trials as ordinary runs, pruning, resume from storage, report."""

from __future__ import annotations

import json
import subprocess

import optuna
import pytest
from typer.testing import CliRunner

from difftrain.cli.main import app
from difftrain.config import ConfigError
from difftrain.sweep import load_space
from tests.conftest import TINY

pytestmark = pytest.mark.slow  # real training runs (subprocesses)

SETS = {
    "train.max_steps": 6,
    "train.checkpoint_every": 2,
    "train.sample_every": 1000,
    "train.batch_size": 16,
    "sample.num": 1,
    "sample.steps": 1,
    "logging.tensorboard": "false",
    "logging.progress": "false",
}
SPACE = """
optim.lr: {type: float, low: 1.0e-4, high: 3.0e-2, log: true}
model.preset: {type: categorical, choices: [unet-tiny]}
train.grad_accum: {type: int, low: 1, high: 2}
"""


def sweep(tmp_path, *more: str) -> subprocess.CompletedProcess:
    """`difftrain sweep` in this interpreter (the CLI command, without a second start-up)."""
    cmd = ["sweep", str(TINY), "--space", str(tmp_path / "space.yaml")]
    for k, v in {**SETS, "train.run_dir": tmp_path / "base"}.items():
        cmd += ["--set", f"{k}={v}"]
    res = CliRunner().invoke(app, [*cmd, "--out", str(tmp_path / "sweep"), *more])
    return subprocess.CompletedProcess(cmd, res.exit_code, res.output, res.output)


def test_sweep_prunes_resumes_from_storage_and_reports(tmp_path):
    (tmp_path / "space.yaml").write_text(SPACE)
    res = sweep(tmp_path, "--trials", "3")
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    db = tmp_path / "sweep" / "study.db"
    study = optuna.load_study(study_name="difftrain", storage=f"sqlite:///{db}")
    assert len(study.trials) == 3
    for t in study.trials:  # each trial is an ordinary run directory with its params applied
        run = tmp_path / "sweep" / f"trial-{t.number:04d}"
        assert t.user_attrs["run_dir"] == str(run)
        assert f"lr: {t.params['optim.lr']}" in (run / "config.yaml").read_text()
        assert (run / "checkpoints" / "best.json").is_file()
        # intermediate values are the validation losses the loop reported at its checkpoints
        rows = [json.loads(r) for r in (run / "metrics.jsonl").read_text().splitlines()]
        val = {r["step"]: r["val/loss"] for r in rows if "val/loss" in r}
        assert t.intermediate_values == {s: pytest.approx(v) for s, v in val.items()}
    states = {t.state.name for t in study.trials}
    assert states <= {"COMPLETE", "PRUNED"}
    # Resume: asking for 4 finished trials runs exactly one more in the same study.
    res = sweep(tmp_path, "--trials", "4", "--report")
    assert res.returncode == 0, res.stderr[-3000:]
    study = optuna.load_study(study_name="difftrain", storage=f"sqlite:///{db}")
    assert len(study.trials) == 4 and [t.number for t in study.trials] == [0, 1, 2, 3]
    assert "ran 1 trials, 4 finished" in res.stdout
    report = json.loads((tmp_path / "sweep" / "report" / "report.json").read_text())
    assert report["best"][0]["value"] == min(t.value for t in study.trials if t.value is not None)
    assert (tmp_path / "sweep" / "report" / "history.png").stat().st_size > 1000
    assert "1. trial" in res.stdout


def test_median_pruner_stops_a_bad_trial_through_the_loop_hook(tmp_path):
    from difftrain.sweep import run_sweep

    space = tmp_path / "space.yaml"
    # A huge learning rate after a sane one: the median pruner stops the second at its first report.
    space.write_text("optim.lr: {type: float, low: 1.0e-3, high: 1.001e-3}\n")
    sets = [f"{k}={v}" for k, v in SETS.items()]
    run_sweep(TINY, load_space(space, TINY, sets), 1, tmp_path / "sw", overrides=sets)
    space.write_text("optim.lr: {type: float, low: 1.0e+3, high: 1.001e+3}\n")
    res = run_sweep(TINY, load_space(space, TINY, sets), 2, tmp_path / "sw", overrides=sets)
    study = optuna.load_study(study_name="difftrain", storage=res.storage)
    second = study.trials[1]
    assert second.state.name == "PRUNED"
    assert max(second.intermediate_values) < SETS["train.max_steps"]  # stopped early
    rows = (tmp_path / "sw" / "trial-0001" / "metrics.jsonl").read_text()
    assert '"step": 6' not in rows and (tmp_path / "sw" / "trial-0001" / "checkpoints").is_dir()


@pytest.mark.parametrize(
    "text, message",
    [
        ("optim.lr: {type: float, low: 0.1, high: 0.01}", "must be below"),
        ("optim.lr: {type: float, low: 0, high: 0.1, log: true}", "log scale needs low > 0"),
        ("optim.lr: {type: gaussian}", "type: float | int | categorical"),
        ("optim.no_such_key: {type: int, low: 1, high: 3}", "no_such_key"),
        ("train.batch_size: {type: int, low: -4, high: 3}", "train.batch_size"),
        ("model.preset: {type: categorical, choices: []}", "non-empty list"),
        ("[1, 2", "not valid YAML"),
        ("- just a list", "expected a mapping"),
    ],
)
def test_bad_space_file_is_a_config_error(tmp_path, text, message):
    space = tmp_path / "space.yaml"
    space.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_space(space, TINY)


def test_bad_space_file_exits_2_before_any_trial(tmp_path):
    (tmp_path / "space.yaml").write_text("optim.lr: {type: float, low: 1, high: 0}\n")
    res = sweep(tmp_path, "--trials", "2")
    assert res.returncode == 2, res.stderr[-2000:]
    assert "optim.lr" in res.stdout + res.stderr
    assert not (tmp_path / "sweep").exists()
