"""A full disk while writing the run's other files (issue 13, item 9 and the paths next to it):
config.yaml/environment.json at the start, metrics.jsonl rows, post-hoc EMA snapshots.

A real failure, for any user: a file-size limit (RLIMIT_FSIZE, with SIGXFSZ ignored) makes the
kernel fail the write part way with EFBIG, as a full disk does with ENOSPC. The run must stop
with exit 1 naming the file and "disk full", keep every checkpoint and every byte it had, leave no
half-written or temporary file that a later --resume trusts, and finish with --resume once there
is room again. The cases run in-process (the limit is set only around the command); one runs the
real CLI in a child process to show the exit status and that no traceback is printed.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from typer.testing import CliRunner

from difftrain.cli.main import app
from difftrain.pipeline.checkpoint import list_checkpoints, verify_checkpoint
from difftrain.train.posthoc_ema import list_snapshots

from .conftest import REPO
from .test_hardening_rundir import fast

runner = CliRunner()


def can_limit(limit: int) -> None:
    """Skip, saying why, where the hard file-size limit is already below `limit`."""
    hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1]
    if hard != resource.RLIM_INFINITY and hard < limit:
        pytest.skip(f"the hard file-size limit here ({hard} bytes) is below the test's {limit}")


@contextmanager
def file_size_limit(limit: int) -> Iterator[None]:
    """Inside the block, no file of this process may grow past `limit` bytes (EFBIG)."""
    can_limit(limit)
    old = resource.getrlimit(resource.RLIMIT_FSIZE)
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # fail the write, not the process
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, old[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, old)
        signal.signal(signal.SIGXFSZ, old_handler)


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    """One finished 10-step run: checkpoints at 0, 5, 10; EMA snapshots at 5, 10."""
    run = tmp_path_factory.mktemp("base") / "run"
    os.environ["DIFFTRAIN_INJECT"] = ""
    res = runner.invoke(app, ["train", *fast(run)])
    assert res.exit_code == 0, res.output + repr(res.exception)
    return run


def files(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in run.rglob("*") if p.is_file()}


def steps_logged(run: Path) -> list[int]:
    rows = [json.loads(r) for r in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["step"] for r in rows if "train/loss" in r]


def small_files_limit(run: Path) -> int:
    """Room for the start-of-run files, but not for one more metrics row (~360 bytes)."""
    sizes = [(run / n).stat().st_size for n in ("config.yaml", "environment.json", "metrics.jsonl")]
    return max(sizes) + 64


RESTARTED = {"config.yaml", "environment.json"}  # rewritten by a resume (max_steps, git state)
# (the file-size limit, what the message names, the files a resume may change before failing)
CASES = {
    "config.yaml": (lambda run: 1024, "config.yaml in {run}", set()),
    "metrics.jsonl": (small_files_limit, "{run}/metrics.jsonl", RESTARTED),
    # Snapshot files are ~2.8 MB each; steps 11-14 log rows before the step-15 snapshot.
    "ema_snapshots": (lambda run: 1 << 20, "post-hoc EMA snapshots in {run}",
                      RESTARTED | {"metrics.jsonl"}),
}  # fmt: skip


def resume_args(run: Path) -> list[str]:
    return ["train", str(run), "--set", "train.max_steps=20", "--resume"]


def assert_run_kept(run: Path, before: dict[str, bytes], may_change: set[str]) -> None:
    """Every file and checkpoint is whole; nothing half-written or temporary is left."""
    after = files(run)
    for name, data in before.items():
        if name not in may_change:
            assert after.get(name) == data, f"{name} changed or vanished"
    # metrics.jsonl may only have grown by whole rows, each step once.
    assert (run / "metrics.jsonl").read_bytes().startswith(before["metrics.jsonl"])
    assert steps_logged(run) == sorted(set(steps_logged(run)))
    assert [n for n in after if ".tmp-" in n] == []
    assert set(after) <= set(before)
    assert [p.name for p in list_checkpoints(run / "checkpoints")][-1] == "step-0000010"
    for ckpt in list_checkpoints(run / "checkpoints"):
        verify_checkpoint(ckpt)


def assert_resumes_to_the_end(run: Path, monkeypatch) -> None:
    """With room again, --resume continues from step 10 and finishes as one clean run."""
    monkeypatch.setenv("DIFFTRAIN_INJECT", "")
    res = runner.invoke(app, resume_args(run))
    assert res.exit_code == 0, res.output + repr(res.exception)
    assert "resumed from" in res.output and "step-0000010" in res.output
    assert steps_logged(run) == list(range(1, 21))
    snaps = list_snapshots(run)
    assert sorted({s.step for s in snaps}) == [5, 10, 15, 20]
    for s in snaps:
        assert s.load()  # every listed snapshot is whole


@pytest.mark.parametrize("case", list(CASES))
def test_disk_full_stops_cleanly_keeps_the_run_and_resumes(case, base_run, tmp_path, monkeypatch):
    limit_of, named, may_change = CASES[case]
    run = tmp_path / "run"
    shutil.copytree(base_run, run)
    before = files(run)
    monkeypatch.setenv("DIFFTRAIN_INJECT", "")
    with file_size_limit(limit_of(run)):
        res = runner.invoke(app, resume_args(run))
    assert res.exit_code == 1, res.output + repr(res.exception)
    assert isinstance(res.exception, SystemExit), repr(res.exception)  # a message, no traceback
    assert "disk full while writing " + named.format(run=run) in res.output, res.output
    assert "step-0000010 is intact" in res.output and "--resume" in res.output, res.output
    assert_run_kept(run, before, may_change)
    assert_resumes_to_the_end(run, monkeypatch)


# Runs `python -m difftrain.cli.main ARGS` with no file allowed past LIMIT bytes.
LIMITED = """\
import resource, runpy, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[1]), resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
sys.argv = ["difftrain", *sys.argv[2:]]
runpy.run_module("difftrain.cli.main", run_name="__main__")
"""


def test_disk_full_in_a_real_process_exits_1_with_the_message_only(base_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(base_run, run)
    before = files(run)
    can_limit(1024)
    res = subprocess.run(
        [sys.executable, "-c", LIMITED, "1024", *resume_args(run)],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, "DIFFTRAIN_INJECT": "", "PYTHONDONTWRITEBYTECODE": "1"},
        timeout=300,
    )
    out = res.stdout + res.stderr
    assert res.returncode == 1, out
    assert f"disk full while writing config.yaml in {run}" in out, out
    assert "File too large" in out and "step-0000010 is intact" in out, out
    assert "Traceback" not in out, out
    assert_run_kept(run, before, set())
