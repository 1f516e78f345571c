"""Run-directory safety (issue 13, items 1-9 and 21): no command deletes what it did not create,
names read from a run directory are untrusted, corrupt checkpoints never cost a run, and faults
while writing stop cleanly. Real runs of the tiny digits model, real files, real ENOSPC
(writes to /dev/full)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import traceback
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from difftrain.cli.main import app
from difftrain.config import ConfigError
from difftrain.pipeline.checkpoint import (
    CheckpointError,
    latest_good_checkpoint,
    list_checkpoints,
    prune_checkpoints,
    read_checkpoint,
    sha256,
    verify_checkpoint,
    write_checkpoint,
)
from difftrain.train.faults import parse_faults
from difftrain.train.posthoc_ema import list_snapshots, truncate_snapshots

from .conftest import TINY

runner = CliRunner()
needs_dev_full = pytest.mark.skipif(
    not os.path.exists("/dev/full"), reason="needs /dev/full (Linux) for a real ENOSPC"
)


def fast(run: Path, **extra) -> list[str]:
    """CLI args for a seconds-long run: small batches, few images, no sample grids."""
    sets = {
        "train.run_dir": str(run),
        "train.max_steps": 10,
        "train.batch_size": 16,
        "data.max_images": 300,
        "train.checkpoint_every": 5,
        "train.sample_every": 1000,
        "train.log_every": 1,
        "train.keep_checkpoints": 5,
        "train.posthoc_snapshot_every": 5,
        "logging.tensorboard": "false",
        "logging.progress": "false",
        "sample.num": 4,
        "sample.steps": 2,
    }
    sets.update(extra)
    out = [str(TINY)]
    for k, v in sets.items():
        out += ["--set", f"{k}={v}"]
    return out


def train(args: list[str], monkeypatch, inject: str = "", *more: str):
    monkeypatch.setenv("DIFFTRAIN_INJECT", inject)
    return runner.invoke(app, ["train", *args, *more])


def rows(run: Path) -> list[dict]:
    return [json.loads(r) for r in (run / "metrics.jsonl").read_text().splitlines()]


def losses(run: Path) -> dict[int, float]:
    return {r["step"]: r["train/loss"] for r in rows(run) if "train/loss" in r}


def weights(run: Path, step: int) -> dict[str, torch.Tensor]:
    return read_checkpoint(run / f"checkpoints/step-{step:07d}", ["model"])[0]["model"]


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    """One finished 10-step run (checkpoints at 0, 5, 10; EMA snapshots at 5, 10); copy it."""
    run = tmp_path_factory.mktemp("base") / "run"
    os.environ["DIFFTRAIN_INJECT"] = ""
    res = runner.invoke(app, ["train", *fast(run)])
    assert res.exit_code == 0, res.output + repr(res.exception)
    return run


def copy_run(base: Path, dest: Path) -> Path:
    shutil.copytree(base, dest)
    # The stored config names the original directory: a copy must not write there (item 8).
    return dest


def tree(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in path.rglob("*") if p.is_file()}


# ---- 1. `difftrain ema --out` never deletes a directory it did not write ----


def test_ema_out_refuses_a_directory_it_did_not_write(base_run, tmp_path):
    run = copy_run(base_run, tmp_path / "run")
    before = tree(run)
    res = runner.invoke(app, ["ema", str(run), "--sigma-rel", "0.07", "--out", str(run)])
    assert res.exit_code == 2, res.output + repr(res.exception)
    assert "--out" in res.output and "not empty" in res.output
    assert tree(run) == before  # the run directory is untouched

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    res = runner.invoke(app, ["ema", str(run), "--sigma-rel", "0.07", "--out", str(mine)])
    assert res.exit_code == 2 and (mine / "notes.txt").read_text() == "mine"

    # A fresh (or empty) directory is written; a previous output of the command is replaced.
    out = tmp_path / "e07"
    for _ in range(2):
        res = runner.invoke(app, ["ema", str(run), "--sigma-rel", "0.07", "--out", str(out)])
        assert res.exit_code == 0, res.output + repr(res.exception)
    verify_checkpoint(out)
    # ... but not once the user has put something of theirs into it.
    (out / "notes.txt").write_text("mine")
    res = runner.invoke(app, ["ema", str(run), "--sigma-rel", "0.05", "--out", str(out)])
    assert res.exit_code == 2 and (out / "notes.txt").read_text() == "mine"
    assert "notes.txt" in res.output

    # The sweep writes ema_best/ inside --out: a user directory of that name is refused too.
    (tmp_path / "sw" / "ema_best").mkdir(parents=True)
    (tmp_path / "sw" / "ema_best" / "keep.txt").write_text("mine")
    res = runner.invoke(
        app, ["ema", str(run), "--sweep", "--sigma-rels", "0.05", "--out", str(tmp_path / "sw")]
    )
    assert res.exit_code == 2 and (tmp_path / "sw" / "ema_best" / "keep.txt").is_file()


# ---- 2. ema_snapshots/index.json names are untrusted ----


@pytest.mark.parametrize(
    "entry",
    [
        {"file": "../../victim.txt", "step": 1e9},
        {"file": "VICTIM", "step": 10**9},  # an absolute path
        {"file": "sub/../../../victim.txt", "step": 10**9},
        {"file": "step-0000099-sigma_rel-0.0500.safetensors", "step": 1e9},  # a float step
    ],
)
def test_snapshot_index_entries_cannot_reach_outside(base_run, tmp_path, monkeypatch, entry):
    run = copy_run(base_run, tmp_path / "run")
    victim = tmp_path / "victim.txt"
    victim.write_text("not yours")
    entry = {**entry, "gamma": 6.94, "sigma_rel": 0.05}
    if entry["file"] == "VICTIM":
        entry["file"] = str(victim)
    index = run / "ema_snapshots/index.json"
    data = json.loads(index.read_text())
    data["snapshots"].append(entry)
    index.write_text(json.dumps(data))
    res = train([*fast(run), "--set", f"train.run_dir={run}"], monkeypatch, "", "--resume")
    assert res.exit_code == 2, res.output + repr(res.exception)
    assert "index.json" in res.output
    assert victim.read_text() == "not yours"
    with pytest.raises(ConfigError):
        truncate_snapshots(run, 5)
    assert victim.read_text() == "not yours"
    res = runner.invoke(app, ["ema", str(run), "--sigma-rel", "0.07", "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "index.json" in res.output


def test_snapshot_index_that_is_not_json_is_a_clear_error(base_run, tmp_path):
    run = copy_run(base_run, tmp_path / "run")
    (run / "ema_snapshots/index.json").write_bytes(b"\xff\xfe[")
    with pytest.raises(ConfigError, match="index.json"):
        list_snapshots(run)


# ---- 3. pruning keeps the last k GOOD checkpoints; --resume never restarts silently ----


def small_ckpt(root: Path, step: int) -> Path:
    return write_checkpoint(
        root, step, {"model": {"w": torch.full((4,), float(step))}}, {"step": step}
    )


def corrupt(path: Path) -> None:
    f = path / "model.safetensors"
    blob = bytearray(f.read_bytes())
    blob[-1] ^= 0x01
    f.write_bytes(bytes(blob))


def test_pruning_keeps_the_newest_good_checkpoint(tmp_path):
    root = tmp_path / "checkpoints"
    small_ckpt(root, 1000)
    corrupt(small_ckpt(root, 3000))
    small_ckpt(root, 2000)  # resumed from step-1000 because step-3000 is corrupt
    prune_checkpoints(root, keep=1)
    names = [p.name for p in list_checkpoints(root)]
    assert "step-0002000" in names and "step-0001000" not in names
    assert latest_good_checkpoint(root).name == "step-0002000"
    # keep=2 counts good ones only: 1000 and 2000 both stay next to a corrupt 3000.
    root2 = tmp_path / "c2"
    for s in (1000, 2000):
        small_ckpt(root2, s)
    corrupt(small_ckpt(root2, 3000))
    prune_checkpoints(root2, keep=2)
    assert {"step-0001000", "step-0002000"} <= {p.name for p in list_checkpoints(root2)}


def test_resume_with_only_corrupt_checkpoints_stops_and_keeps_metrics(
    base_run, tmp_path, monkeypatch
):
    run = copy_run(base_run, tmp_path / "run")
    for p in list_checkpoints(run / "checkpoints"):
        corrupt(p)
    metrics = (run / "metrics.jsonl").read_bytes()
    res = train([*fast(run), "--set", f"train.run_dir={run}"], monkeypatch, "", "--resume")
    assert res.exit_code == 2, res.output + repr(res.exception)
    for name in ("step-0000000", "step-0000005", "step-0000010"):
        assert name in res.output
    assert "SHA-256 mismatch" in res.output
    assert (run / "metrics.jsonl").read_bytes() == metrics
    # No checkpoints at all, but a history in metrics.jsonl: refused the same way.
    shutil.rmtree(run / "checkpoints")
    res = train([*fast(run), "--set", f"train.run_dir={run}"], monkeypatch, "", "--resume")
    assert res.exit_code == 2 and "metrics.jsonl" in res.output, res.output
    assert (run / "metrics.jsonl").read_bytes() == metrics


# ---- 4. a malformed manifest marks the checkpoint corrupt; every loaded file must be listed ----


@pytest.mark.parametrize(
    "manifest",
    [
        b"\xff\xfe\x00",
        b"[]",
        b"{}",
        b'{"files": null}',
        b'{"files": {}}',
        b'{"files": {"state.json": 5}}',
        b'{"files": {"../state.json": "00"}}',
    ],
)
def test_malformed_manifest_marks_the_checkpoint_corrupt(tmp_path, manifest):
    root = tmp_path / "checkpoints"
    path = small_ckpt(root, 1)
    (path / "manifest.json").write_bytes(manifest)
    with pytest.raises(CheckpointError):
        verify_checkpoint(path)
    with pytest.warns(UserWarning, match="skipping bad checkpoint"):
        assert latest_good_checkpoint(root) is None


def test_every_loaded_file_must_be_listed_in_the_manifest(tmp_path):
    path = small_ckpt(tmp_path / "checkpoints", 1)
    # A manifest that lists only state.json (correctly hashed) next to an unlisted model file.
    (path / "manifest.json").write_text(
        json.dumps({"step": 1, "files": {"state.json": sha256(path / "state.json")}})
    )
    with pytest.raises(CheckpointError, match="model.safetensors"):
        read_checkpoint(path, ["model"])


# ---- 5. fp16: a skipped step leaves the GradScaler consistent (CPU path of the scaler) ----


def test_skipped_step_leaves_the_grad_scaler_consistent():
    from difftrain.train.guards import skip_update

    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    x = torch.randn(8, 4)
    # Step 1: a non-finite loss; the loop unscales (for clipping), sees it, and skips.
    scaler.scale(model(x).mean() * float("nan")).backward()
    scaler.unscale_(opt)
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    skip_update(scaler)
    opt.zero_grad(set_to_none=True)
    assert scaler.get_scale() == 2.0**15  # backed off, as scaler.step()+update() would have
    # Step 2: an ordinary step must work (before the fix: "unscale_() has already been called").
    w0 = model.weight.detach().clone()
    scaler.scale(model(x).mean()).backward()
    scaler.unscale_(opt)
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    scaler.step(opt)
    scaler.update()
    assert not torch.equal(model.weight, w0)


def test_fp16_run_with_a_cpu_grad_scaler_survives_a_skipped_step(tmp_path, monkeypatch):
    """The real loop with accelerate's fp16 path given torch's CPU GradScaler (accelerate only
    creates one on GPUs): a NaN step is skipped and training continues."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    import difftrain.train.loop as loop

    def with_cpu_scaler(**kw):
        AcceleratorState._reset_state(True)  # a process-wide singleton: other tests use "no"
        acc = Accelerator(**kw)
        acc.scaler, acc.native_amp = torch.amp.GradScaler("cpu"), True
        return acc

    monkeypatch.setattr(loop, "Accelerator", with_cpu_scaler)
    run = tmp_path / "run"
    # One bad step is a streak: only the injected NaN may roll back, not the scaler's overflows.
    extra = {"train.max_steps": 6, "train.mixed_precision": "fp16", "train.max_bad_steps": 1}
    try:
        res = train(fast(run, **extra), monkeypatch, "nanonce@2")
    finally:
        AcceleratorState._reset_state(True)
    assert res.exit_code == 0, res.output + repr(res.exception)
    assert "rollbacks 1" in res.output and max(losses(run)) == 6
    reasons = {r["guard/reason"] for r in rows(run) if "guard/reason" in r}
    # The initial scale (2^16) overflows the tiny U-Net's fp16 gradients at least once.
    assert reasons == {"fp16_overflow", "nonfinite_loss"}


def test_fp16_resume_restores_the_grad_scaler(tmp_path, monkeypatch):
    """A resumed fp16 run continues with the saved loss scale, so it equals an uninterrupted one
    (before: the scale restarted at 2^16 and the resumed run skipped steps the original did not)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    import difftrain.train.loop as loop

    def with_cpu_scaler(**kw):
        AcceleratorState._reset_state(True)
        acc = Accelerator(**kw)
        acc.scaler, acc.native_amp = torch.amp.GradScaler("cpu"), True
        return acc

    monkeypatch.setattr(loop, "Accelerator", with_cpu_scaler)
    ref, run = tmp_path / "ref", tmp_path / "run"
    extra = {"train.max_steps": 6, "train.checkpoint_every": 3, "train.mixed_precision": "fp16",
             "train.posthoc_ema_sigma_rels": "[]"}  # fmt: skip
    try:
        res = train(fast(ref, **extra), monkeypatch)
        assert res.exit_code == 0, res.output + repr(res.exception)
        shutil.copytree(ref, run)
        shutil.rmtree(run / "checkpoints/step-0000006")  # as if killed after step 3
        res = train(fast(run, **extra), monkeypatch, "", "--resume")
        assert res.exit_code == 0, res.output + repr(res.exception)
    finally:
        AcceleratorState._reset_state(True)
    state = json.loads((ref / "checkpoints/step-0000003/state.json").read_text())["run"]
    assert state["scaler"]["scale"] < 2.0**16  # it backed off before step 3
    assert losses(run) == losses(ref)
    assert all(torch.equal(v, weights(ref, 6)[k]) for k, v in weights(run, 6).items())


# ---- 6. bad_streak and the rollback count survive a restart ----


def test_a_kill_during_a_bad_streak_resumes_identically(tmp_path, monkeypatch):
    ref, run = tmp_path / "ref", tmp_path / "run"
    # NaN at steps 9-11 (0-based): one bad step before the step-10 checkpoint, two after.
    extra = {"train.max_steps": 16, "train.checkpoint_every": 10, "train.max_bad_steps": 3,
             "train.posthoc_ema_sigma_rels": "[]", "optim.warmup_steps": 0}  # fmt: skip
    res = train(fast(ref, **extra), monkeypatch, "nan@9-11")
    assert res.exit_code == 0 and "rollbacks 1" in res.output, res.output
    shutil.copytree(ref, run)
    shutil.rmtree(run / "checkpoints/step-0000016")  # as if killed right after step 10
    res = train(fast(run, **extra), monkeypatch, "nan@9-11", "--resume")
    assert res.exit_code == 0, res.output + repr(res.exception)
    assert "resumed from" in res.output and "rollbacks 1" in res.output
    assert losses(run) == losses(ref)
    assert all(torch.equal(v, weights(ref, 16)[k]) for k, v in weights(run, 16).items())


def test_rollback_count_survives_a_restart(tmp_path, monkeypatch):
    run = tmp_path / "run"
    extra = {"train.max_steps": 30, "train.checkpoint_every": 10, "train.max_bad_steps": 3,
             "train.max_rollbacks": 1, "train.posthoc_ema_sigma_rels": "[]"}  # fmt: skip
    # One rollback (a transient fault at 12-14), then a persistent fault at 23-: stop.
    res = train(fast(run, **extra), monkeypatch, "nanonce@12-14,nan@23-")
    assert res.exit_code == 1 and "after 1 rollbacks" in res.output, res.output
    for p in list_checkpoints(run / "checkpoints"):
        if p.name > "step-0000020":
            shutil.rmtree(p)
    # Resumed at step 20 (the rollback is behind it): the next streak must stop, not roll back.
    res = train(fast(run, **extra), monkeypatch, "nan@23-", "--resume")
    assert "resumed from" in res.output and "step-0000020" in res.output
    assert res.exit_code == 1, res.output + repr(res.exception)
    assert "rolled back" not in res.output and "after 1 rollbacks" in res.output


# ---- 7. leftover temporary checkpoint directories of ours are removed on start ----


def test_leftover_temporary_checkpoints_are_cleaned(tmp_path, monkeypatch):
    run = tmp_path / "run"
    ckpts = run / "checkpoints"
    dead = subprocess.Popen(["true"])
    dead.wait()
    live = subprocess.Popen(["sleep", "120"])
    try:
        stale = ckpts / f".tmp-step-0000010-{dead.pid}"
        busy = ckpts / f".tmp-step-0000010-{live.pid}"
        other = ckpts / ".tmp-step-mine"
        for d in (stale, busy, other):
            d.mkdir(parents=True)
            (d / "model.safetensors").write_bytes(b"partial")
        res = train(fast(run, **{"train.max_steps": 2}), monkeypatch)
        assert res.exit_code == 0, res.output + repr(res.exception)
        assert not stale.exists()  # ours, from a dead process
        assert busy.is_dir() and other.is_dir()  # a live process's, and not our pattern
    finally:
        live.kill()
        live.wait()


# ---- 8. `train RUN_DIR --resume` continues the directory named, not the stored run_dir ----


def test_resume_of_a_copied_run_writes_into_the_copy(base_run, tmp_path, monkeypatch):
    copy = copy_run(base_run, tmp_path / "copy")
    before = tree(base_run)
    res = train([str(copy), "--set", "train.max_steps=12"], monkeypatch, "", "--resume")
    assert res.exit_code == 0, res.output + repr(res.exception)
    assert (copy / "checkpoints/step-0000012").is_dir()
    assert tree(base_run) == before  # the original is untouched
    assert str(copy) in res.output
    # An explicit --set train.run_dir still wins (start a new run from an old run's config).
    new = tmp_path / "new"
    res = train([str(copy), "--set", f"train.run_dir={new}", "--set", "train.max_steps=2"],
                monkeypatch)  # fmt: skip
    assert res.exit_code == 0 and (new / "checkpoints/step-0000002").is_dir(), res.output


# ---- 9. a full disk while writing metrics, sample grids or best.json stops cleanly ----


def assert_stopped_cleanly(res, run: Path, what: str) -> None:
    assert res.exit_code == 1, res.output + repr(res.exception)
    assert "disk full while writing" in res.output and what in res.output, res.output + "".join(
        traceback.format_exception(res.exception)
    )
    assert "is intact" in res.output and "--resume" in res.output
    assert isinstance(res.exception, SystemExit)  # a clean exit, not a raw OSError
    last = list_checkpoints(run / "checkpoints")[-1]
    verify_checkpoint(last)


@needs_dev_full
def test_disk_full_writing_metrics_stops_cleanly(tmp_path, monkeypatch):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").symlink_to("/dev/full")  # every write fails with ENOSPC
    res = train(fast(run, **{"train.max_steps": 3}), monkeypatch)
    assert_stopped_cleanly(res, run, "metrics.jsonl")


@needs_dev_full
def test_disk_full_writing_a_sample_grid_stops_cleanly(tmp_path, monkeypatch):
    run = tmp_path / "run"
    (run / "samples").mkdir(parents=True)
    (run / "samples/step-0000002.png").symlink_to("/dev/full")
    res = train(fast(run, **{"train.max_steps": 3, "train.sample_every": 2}), monkeypatch)
    assert_stopped_cleanly(res, run, "step-0000002.png")


@needs_dev_full
def test_disk_full_writing_best_json_stops_cleanly_and_keeps_it(tmp_path, monkeypatch):
    run = tmp_path / "run"
    res = train(fast(run, **{"train.max_steps": 2, "train.checkpoint_every": 1}), monkeypatch)
    assert res.exit_code == 0, res.output
    best = (run / "checkpoints/best.json").read_bytes()
    # best.json is replaced atomically through a temporary file: make that one hit ENOSPC.
    (run / f"checkpoints/.best.json.tmp-{os.getpid()}").symlink_to("/dev/full")
    res = train(fast(run, **{"train.max_steps": 4, "train.checkpoint_every": 1}), monkeypatch,
                "", "--resume")  # fmt: skip
    assert_stopped_cleanly(res, run, "best.json")
    assert (run / "checkpoints/best.json").read_bytes() == best  # the old one, whole


def test_a_torn_last_metrics_line_does_not_block_resume(base_run, tmp_path, monkeypatch):
    run = copy_run(base_run, tmp_path / "run")
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 11, "train/lo')  # a write cut short by a full disk or a kill
    args = [str(run), "--set", f"train.run_dir={run}", "--set", "train.max_steps=11"]
    res = train(args, monkeypatch, "", "--resume")
    assert res.exit_code == 0, res.output + repr(res.exception)
    assert max(losses(run)) == 11


# ---- 21. DIFFTRAIN_INJECT is loud and strict ----


@pytest.mark.parametrize("text", ["bogus@3", "nan@x", "nan@3-1x", "spike@2:abc"])
def test_fault_injection_rejects_unknown_kinds(text):
    with pytest.raises(ConfigError, match="DIFFTRAIN_INJECT"):
        parse_faults(text)


def test_fault_injection_warns_loudly_and_bad_kinds_exit_2(tmp_path, monkeypatch):
    res = train(fast(tmp_path / "r", **{"train.max_steps": 2}), monkeypatch, "nanonce@0")
    assert res.exit_code == 0, res.output
    assert "WARNING" in res.output and "DIFFTRAIN_INJECT" in res.output
    res = train(fast(tmp_path / "r2", **{"train.max_steps": 2}), monkeypatch, "nna@1")
    assert res.exit_code == 2 and "DIFFTRAIN_INJECT" in res.output and "nna" in res.output
    assert not (tmp_path / "r2").exists()  # refused before anything was written
