"""Data-parallel training with real processes: `torchrun --nproc_per_node 2` on the CPU (gloo).

Four runs share one module fixture: a 1-process run with the global batch 16 (reference),
a 2-process run with 8 rows per process, and each run stopped after its step-3 checkpoint and
resumed on the other process count. The 1-process runs train in this interpreter (the same
`difftrain train` command, without a second start-up); the 2-process ones through torchrun. Observed differences (float32, reduction order of the
all-reduce): losses ≤ 2e-7 relative, weights ≤ 1.3e-6 absolute; asserted at 1e-5.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from difftrain.cli.main import app
from tests.conftest import TINY

pytestmark = pytest.mark.slow  # real training runs (subprocesses)

STEPS = 6
TOL = 1e-5


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _args(run_dir: Path, **extra) -> list[str]:
    sets = {
        "train.run_dir": str(run_dir),
        "train.batch_size": 16,
        "train.max_steps": STEPS,
        "train.checkpoint_every": 3,
        "train.sample_every": 1000,
        "train.log_every": 1,
        "data.hflip": "true",  # augmentation must be process-count invariant too
        "logging.tensorboard": "false",
        "logging.progress": "false",
        "sample.num": 4,
        "sample.steps": 2,
        **extra,
    }
    out = [str(TINY)]
    for k, v in sets.items():
        out += ["--set", f"{k}={v}"]
    return out


def launch(procs: int, run_dir: Path, *more: str, **extra) -> subprocess.CompletedProcess:
    """`python -m difftrain train` (1 process) or `torchrun --nproc_per_node N -m difftrain`."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if procs == 1:
        cmd = [sys.executable, "-m", "difftrain"]
    else:
        torchrun = str(Path(sys.executable).with_name("torchrun"))
        cmd = [torchrun, "--nproc_per_node", str(procs), "--master_port", str(_free_port())]
        cmd += ["-m", "difftrain"]
    cmd += ["train", *_args(run_dir, **extra), *more]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)


def train_here(run_dir: Path, *more: str, **extra) -> None:
    """The 1-process `difftrain train` in this interpreter (OMP_NUM_THREADS=1, as launched)."""
    res = CliRunner().invoke(app, ["train", *_args(run_dir, **extra), *more])
    assert res.exit_code == 0, res.output


def losses(run_dir: Path) -> list[float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["train/loss"] for r in rows if "train/loss" in r]


def weights(run_dir: Path, step: int = STEPS) -> dict[str, dict[str, torch.Tensor]]:
    ck = run_dir / "checkpoints" / f"step-{step:07d}"
    return {g: load_file(ck / f"{g}.safetensors") for g in ("model", "ema")}


def assert_close_runs(a: Path, b: Path) -> None:
    la, lb = losses(a), losses(b)
    assert len(la) == len(lb) == STEPS
    assert torch.allclose(torch.tensor(la), torch.tensor(lb), rtol=TOL, atol=0)
    wa, wb = weights(a), weights(b)
    for group in wa:
        for k, t in wa[group].items():
            assert torch.allclose(t, wb[group][k], rtol=0, atol=TOL), (group, k)


def stopped_at_3(src: Path, dst: Path) -> Path:
    """A copy of a finished run as if it had been killed right after its step-3 checkpoint."""
    shutil.copytree(src, dst)
    shutil.rmtree(dst / "checkpoints" / f"step-{STEPS:07d}")
    return dst


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    out = {"one": root / "one", "two": root / "two"}
    train_here(out["one"])
    res = launch(2, out["two"])
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    out["two_then_one"] = stopped_at_3(out["two"], root / "two_then_one")
    train_here(out["two_then_one"], "--resume")
    out["one_then_two"] = stopped_at_3(out["one"], root / "one_then_two")
    res = launch(2, out["one_then_two"], "--resume")
    assert res.returncode == 0, res.stderr[-3000:]
    return out


def test_two_processes_match_one_process_with_the_global_batch(runs):
    env = json.loads((runs["two"] / "environment.json").read_text())
    assert env["processes"] == 2
    assert_close_runs(runs["one"], runs["two"])


def test_one_writer_for_the_run_directory(runs):
    rows = (runs["two"] / "metrics.jsonl").read_text().splitlines()
    steps = [json.loads(r)["step"] for r in rows if "train/loss" in r]
    assert steps == list(range(1, STEPS + 1))  # one row per step, not one per process
    names = sorted(p.name for p in (runs["two"] / "checkpoints").iterdir())
    assert {"best.json", "step-0000003", "step-0000006"} <= set(names)
    assert all(n == "best.json" or n.startswith("step-") for n in names)  # no stray temporaries


def test_two_process_run_resumed_on_one_process_continues_exactly(runs):
    assert_close_runs(runs["one"], runs["two_then_one"])


def test_one_process_run_resumed_on_two_processes_continues_exactly(runs):
    assert_close_runs(runs["one"], runs["one_then_two"])


def test_batch_not_divisible_by_processes_is_exit_2(tmp_path):
    res = launch(2, tmp_path / "odd", **{"train.batch_size": 15})
    assert res.returncode != 0
    assert "train.batch_size" in res.stderr + res.stdout
    assert "divisible" in res.stderr + res.stdout


def test_tar_shard_run_resumes_only_on_its_process_count(tmp_path):
    from tests.data_fixtures import make_shards

    make_shards(tmp_path / "shards", n_shards=2, per_shard=12)
    data = {
        "data.source": "webdataset",
        "data.path": str(tmp_path / "shards"),
        "data.loader": "stream",
        "data.channels": 3,
        "data.workers": 0,
        "train.max_steps": 3,
    }
    run = tmp_path / "shard-run"
    train_here(run, **data)
    res = launch(2, run, "--resume", **{**data, "train.max_steps": 6})
    assert res.returncode != 0
    out = res.stdout + res.stderr
    assert "written by 1 processes" in out and "resume with 1 processes" in out
