"""Stability the hard way, on real runs: NaN/spike injection, rollback, forensics, SIGKILL,
corrupt checkpoints and a real full disk."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from difftrain.cli.main import app

from .conftest import TINY

runner = CliRunner()
DIFFTRAIN = [sys.executable, "-m", "difftrain.cli.main"]


def rows(run_dir: Path) -> list[dict]:
    return [json.loads(r) for r in (run_dir / "metrics.jsonl").read_text().splitlines()]


def losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["train/loss"] for r in rows(run_dir) if "train/loss" in r}


def tensors(run_dir: Path, step: int, group: str) -> dict[str, torch.Tensor]:
    return load_file(run_dir / f"checkpoints/step-{step:07d}/{group}.safetensors")


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def train_in_process(args, monkeypatch, inject=""):
    monkeypatch.setenv("DIFFTRAIN_INJECT", inject)
    return runner.invoke(app, ["train", *args])


def test_nan_step_is_skipped_and_changes_nothing(tiny_args, tmp_path, monkeypatch):
    run = tmp_path / "run"
    args = tiny_args(
        run, **{"train.max_steps": 7, "train.checkpoint_every": 1, "train.keep_checkpoints": 20}
    )
    res = train_in_process(args, monkeypatch, "nan@4")  # the 5th step (0-based index 4)
    assert res.exit_code == 0, res.output
    assert "nonfinite_loss" in res.output and "skipped steps 1" in res.output
    for group in ("model", "ema", "optimizer"):
        assert same(tensors(run, 4, group), tensors(run, 5, group)), group  # step 5 changed nothing
        assert not same(tensors(run, 5, group), tensors(run, 6, group)), group  # step 6 trained
    guard = [r for r in rows(run) if r.get("guard/skipped")]
    assert [(r["step"], r["guard/reason"]) for r in guard] == [(5, "nonfinite_loss")]


def test_loss_spike_is_skipped(tiny_args, tmp_path, monkeypatch):
    run = tmp_path / "run"
    res = train_in_process(tiny_args(run, **{"train.max_steps": 30}), monkeypatch, "spike@25:1e9")
    assert res.exit_code == 0, res.output
    guard = [r for r in rows(run) if r.get("guard/skipped")]
    assert [(r["step"], r["guard/reason"]) for r in guard] == [(26, "loss_spike")]
    assert guard[0]["guard/loss"] > 1e8


def test_bad_streak_rolls_back_lowers_lr_and_recovers(tiny_args, tmp_path, monkeypatch):
    run = tmp_path / "run"
    args = tiny_args(
        run, **{"train.max_steps": 24, "train.max_bad_steps": 3, "optim.warmup_steps": 0}
    )
    res = train_in_process(args, monkeypatch, "nanonce@12-14")
    assert res.exit_code == 0, res.output
    assert "rolled back to step-0000010" in res.output and "rollbacks 1" in res.output
    rb = [r for r in rows(run) if "guard/rollback" in r]
    assert rb == [{**rb[0], "step": 10, "guard/rollback": 1, "guard/lr_scale": 0.5}]
    lrs = {r["step"]: r["train/lr"] for r in rows(run) if "train/lr" in r}
    assert lrs[24] == pytest.approx(1e-3 * 0.5)  # the lowered LR stays in force
    state = json.loads((run / "checkpoints/step-0000024/state.json").read_text())
    assert state["run"]["lr_scale"] == 0.5


def test_persistent_divergence_stops_with_a_forensic_report(tiny_args, tmp_path, monkeypatch):
    run = tmp_path / "run"
    layer = "backbone.unet.mid_block.resnets.0"
    args = tiny_args(
        run, **{"train.max_steps": 40, "train.max_bad_steps": 2, "train.max_rollbacks": 2}
    )
    res = train_in_process(args, monkeypatch, f"nanact@15-:{layer}")
    assert res.exit_code == 1, res.output
    assert "training diverged" in res.output and layer in res.output
    report = json.loads((run / "forensics.json").read_text())
    assert report["first_nonfinite_activation"] == layer
    assert report["first_nonfinite_grad"] is not None
    # Steps 16-17 fail, two rollbacks replay them, the third streak stops the run at step 17.
    assert len(report["samples"]) == 64 and report["step"] == 17
    assert [r["guard/lr_scale"] for r in rows(run) if "guard/rollback" in r] == [0.5, 0.25]


# ---- Kill -9 and corrupt checkpoints: the resumed run must equal the uninterrupted one ----


def cli_args(tiny_args, run: Path, steps: int = 30) -> list[str]:
    return ["train", *tiny_args(run, **{"train.max_steps": steps, "train.checkpoint_every": 5})]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One uninterrupted run that the interrupted ones are compared with."""
    run = tmp_path_factory.mktemp("ref") / "run"
    args = [str(TINY)]
    for k, v in {
        "train.run_dir": run,
        "train.max_steps": 30,
        "train.checkpoint_every": 5,
        "train.sample_every": 1000,
        "train.log_every": 1,
        "train.keep_checkpoints": 5,
        "logging.tensorboard": "false",
        "logging.progress": "false",
        "sample.num": 10,
        "sample.steps": 4,
    }.items():
        args += ["--set", f"{k}={v}"]
    res = runner.invoke(app, ["train", *args])
    assert res.exit_code == 0, res.output
    return run, args


def popen(args, env_extra=None):
    env = {**os.environ, "DIFFTRAIN_INJECT": "", **(env_extra or {})}
    return subprocess.Popen(
        [*DIFFTRAIN, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )


def wait_for(cond, proc, timeout=240):
    t0 = time.time()
    while not cond():
        assert proc.poll() is None, proc.stdout.read().decode()
        assert time.time() - t0 < timeout, "timed out waiting"
        time.sleep(0.05)


def assert_matches_reference(run: Path, ref: Path):
    assert losses(run) == losses(ref)
    for group in ("model", "ema", "optimizer", "posthoc_ema"):
        assert same(tensors(run, 30, group), tensors(ref, 30, group)), group


def resume_to_end(args):
    """Resume in this process: the kill needs a real process, the resume does not (and saves a
    second interpreter start-up per test)."""
    with warnings.catch_warnings(record=True) as caught:  # what a real process prints on stderr
        warnings.simplefilter("always")
        res = runner.invoke(app, ["train", *args, "--resume"], env={"DIFFTRAIN_INJECT": ""})
    assert res.exit_code == 0, res.output
    return res.output + "".join(f"{w.message}\n" for w in caught)


def test_sigkill_at_a_random_step_then_resume_is_bitwise_identical(reference, tmp_path):
    ref, args = reference
    run = tmp_path / "run"
    args = [a.replace(str(ref), str(run)) for a in args]
    # DIFFTRAIN_KILL_AT=N reproduces a failing draw (the step is printed on every run).
    kill_at = int(os.environ.get("DIFFTRAIN_KILL_AT", 0)) or random.Random(os.getpid()).randint(
        7, 24
    )
    proc = popen(["train", *args])
    wait_for(
        lambda: (run / "metrics.jsonl").is_file() and max(losses(run), default=0) >= kill_at, proc
    )
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed = max(losses(run))
    where = (
        f"SIGKILL after logged step {killed} (target {kill_at}; rerun: DIFFTRAIN_KILL_AT={kill_at})"
    )
    print(where)
    assert killed < 30, f"the run finished before it was killed; {where}"
    out = resume_to_end(args)
    assert "resumed from" in out, where
    try:
        assert_matches_reference(run, ref)
    except AssertionError as err:
        raise AssertionError(f"{where}: {err}") from err


def test_sigkill_while_writing_a_checkpoint(reference, tmp_path):
    ref, args = reference
    run = tmp_path / "run"
    args = [a.replace(str(ref), str(run)) for a in args]
    proc = popen(["train", *args], {"DIFFTRAIN_INJECT": "slowckpt:1.5"})
    ckpts = run / "checkpoints"
    # Wait until the step-10 checkpoint is half written (a temporary dir with some files).
    wait_for(
        lambda: any(
            p.name.startswith(".tmp-step-0000010") and any(p.iterdir())
            for p in (ckpts.iterdir() if ckpts.is_dir() else [])
        ),
        proc,
    )
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (ckpts / "step-0000010").exists()  # the partial write never became a checkpoint
    out = resume_to_end(args)
    assert "resumed from" in out and "step-0000005" in out
    assert_matches_reference(run, ref)


@pytest.mark.parametrize("damage", ["bitflip", "truncate"])
def test_corrupt_latest_checkpoint_falls_back_to_previous(reference, tmp_path, damage):
    ref, args = reference
    run = tmp_path / "run"
    args = [a.replace(str(ref), str(run)) for a in args]
    shutil.copytree(ref, run)
    for p in (run / "checkpoints").iterdir():  # keep up to step 20, as if stopped there
        if p.name in ("step-0000025", "step-0000030"):
            shutil.rmtree(p)
    bad = run / "checkpoints/step-0000020/model.safetensors"
    blob = bytearray(bad.read_bytes())
    if damage == "bitflip":
        blob[len(blob) // 2] ^= 0x10
    else:
        blob = blob[: len(blob) // 3]
    bad.write_bytes(bytes(blob))
    out = resume_to_end(args)
    assert "skipping bad checkpoint" in out and str(bad) in out and "SHA-256 mismatch" in out
    assert "resumed from" in out and "step-0000015" in out
    assert_matches_reference(run, ref)


def tmpfs_unshare(mnt: Path) -> list[str]:
    """The unshare(1) prefix that can mount a tmpfs on `mnt` here, or skip saying why not.

    As root a private mount namespace suffices; otherwise we map ourselves to root in a user
    namespace, which works where unprivileged user namespaces are enabled.
    """
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare(1) from util-linux to mount a small tmpfs")
    prefix = ["unshare", "-m"] if os.geteuid() == 0 else ["unshare", "-r", "-m"]
    probe = subprocess.run(
        [*prefix, "mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)],
        capture_output=True,
        text=True,
    )
    if probe.returncode != 0:
        why = probe.stderr.strip() or f"exit {probe.returncode}"
        pytest.skip(
            f"cannot mount a tmpfs here ({' '.join(prefix)} mount: {why}); the disk-full test "
            "needs root or unprivileged user namespaces"
        )
    return prefix


def test_disk_full_keeps_previous_checkpoint_and_stops_clearly(tiny_args, tmp_path):
    mnt = tmp_path / "small"
    mnt.mkdir()
    prefix = tmpfs_unshare(mnt)
    run = mnt / "run"
    # One tiny-model checkpoint is ~11 MiB; 26 MiB holds two but not a third.
    args = tiny_args(
        run,
        **{
            "train.max_steps": 40,
            "train.checkpoint_every": 10,
            "train.keep_checkpoints": 2,
            "train.keep_best": 0,
            "train.posthoc_ema_sigma_rels": "[]",
        },
    )
    verify = (
        f"from difftrain.pipeline.checkpoint import verify_checkpoint, list_checkpoints; from pathlib import Path; "
        f"c = list_checkpoints(Path('{run}/checkpoints')); [verify_checkpoint(p) for p in c]; "
        f"print('intact', [p.name for p in c])"
    )
    script = (
        f"mount -t tmpfs -o size=26m tmpfs {mnt} && "
        f'{" ".join(DIFFTRAIN)} train {" ".join(args)}; echo rc=$?; {sys.executable} -c "{verify}"'
    )
    res = subprocess.run(
        [*prefix, "sh", "-c", script],
        capture_output=True,
        text=True,
        env={**os.environ, "DIFFTRAIN_INJECT": ""},
    )
    out = res.stdout + res.stderr
    assert "rc=1" in out, out
    assert (
        "disk full while writing checkpoint step 20" in out and "step-0000010 is intact" in out
    ), out
    assert "--resume" in out
    assert "intact ['step-0000000', 'step-0000010']" in out, out


def test_early_stopping_keeps_and_marks_the_best(tiny_args, tmp_path, monkeypatch):
    run = tmp_path / "run"
    # An improvement must beat the best by 10.0 (never happens): validations at 10, 20, 30 → stop at 30.
    args = tiny_args(
        run,
        **{
            "train.max_steps": 60,
            "train.early_stopping_patience": 2,
            "train.early_stopping_min_delta": 10.0,
            "train.keep_checkpoints": 1,
        },
    )
    res = train_in_process(args, monkeypatch)
    assert res.exit_code == 0, res.output
    assert "early stopping at step 30" in res.output and "stopped early" in res.output
    best = json.loads((run / "checkpoints/best.json").read_text())["best"]
    vals = {r["step"]: r["val/loss"] for r in rows(run) if "val/loss" in r}
    assert sorted(vals) == [10, 20, 30]
    assert best[0]["value"] == min(vals.values()) and best[0]["step"] == min(vals, key=vals.get)
    kept = sorted(p.name for p in (run / "checkpoints").iterdir() if p.name.startswith("step-"))
    assert kept == sorted(
        {f"step-{best[0]['step']:07d}", "step-0000030"}
    )  # latest + best survive pruning


def test_in_training_evaluation_selects_the_best_checkpoint(tiny_args, tmp_path, monkeypatch):
    run = tmp_path / "run"
    feats = runner.invoke(
        app,
        [
            "features",
            "train",
            str(TINY),
            "--set",
            f"train.run_dir={run}",
            "--set",
            "features.width=8",
            "--set",
            "features.feature_dim=16",
            "--set",
            "features.epochs=1",
            "--set",
            "logging.progress=false",
        ],
    )
    assert feats.exit_code == 0, feats.output
    args = tiny_args(
        run,
        **{
            "eval.every": 10,
            "eval.num": 20,
            "eval.steps": 2,
            "eval.metrics": "[fid,acc]",
            "train.best_metric": "eval/fid_domain",
            "train.keep_best": 1,
        },
    )
    res = train_in_process(args, monkeypatch)
    assert res.exit_code == 0, res.output
    evals = {r["step"]: r["eval/fid_domain"] for r in rows(run) if "eval/fid_domain" in r}
    assert sorted(evals) == [10, 20, 30]
    best = json.loads((run / "checkpoints/best.json").read_text())
    assert best["metric"] == "eval/fid_domain"
    assert best["best"][0]["value"] == min(evals.values())


def test_best_metric_needs_a_matching_eval_schedule(tiny_args, tmp_path):
    res = runner.invoke(
        app, ["train", *tiny_args(tmp_path / "r", **{"train.best_metric": "eval/fid_domain"})]
    )
    assert res.exit_code == 2 and "eval.every" in res.output
