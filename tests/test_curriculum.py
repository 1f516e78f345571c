"""Curriculum stages (train.curriculum): config errors, stage functions, the batches the loop
gets, the difficulty cache, and an exact resume across a stage switch after SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from difftrain.cli.main import app
from difftrain.config import ConfigError, load_config
from difftrain.diffusion import EDMLoss, FlowLoss
from difftrain.pipeline.build import build_denoiser
from difftrain.train.batches import open_batches
from difftrain.train.curriculum import Curriculum, noise_params, pool_size, resize_batch
from difftrain.train.difficulty import cache_path, difficulty, difficulty_key, write_cache

from .conftest import TINY

runner = CliRunner()
DIFFTRAIN = [sys.executable, "-m", "difftrain.cli.main"]
RES = "train.curriculum.resolution"
NOISE = "train.curriculum.noise"
ORDER = "train.curriculum.order"
ALL_STAGES = {
    RES: "[{until_step: 15, resolution: 4}]",
    NOISE: "[{step: 0, p_mean: 0.0, p_std: 1.0}, {step: 20, p_mean: -1.2}]",
    ORDER: "{until_step: 20, probe_steps: 10, start_fraction: 0.3}",
}


def cfg_with(tmp_path: Path, **sets):
    overrides = [f"train.run_dir={tmp_path / 'run'}", *(f"{k}={v}" for k, v in sets.items())]
    return load_config(TINY, overrides)


# ---- Bad configs: exit 2 with the key and the fix ----


@pytest.mark.parametrize(
    ("sets", "expect"),
    [
        (
            {RES: "[{until_step: 10, resolution: 4}, {until_step: 5, resolution: 6}]"},
            "strictly increase",
        ),
        (
            {RES: "[{until_step: 10, resolution: 6}, {until_step: 20, resolution: 4}]"},
            "strictly increase",
        ),
        ({RES: "[{until_step: 10, resolution: 8}]"}, "below data.resolution"),
        ({RES: "[{until_step: 10, resolution: 3}]"}, "divisible by 2"),
        ({RES: "[{until_step: 0, resolution: 4}]"}, "until_step"),
        ({RES: "[{resolution: 4}]"}, "until_step"),
        ({NOISE: "[{step: 5, p_mean: 0}, {step: 5, p_mean: 1}]"}, "strictly increase"),
        ({NOISE: "[{step: 0, p_mean: 0}]", "diffusion.objective": "vp"}, "edm or flow"),
        ({NOISE: "[{step: 0, logit_mean: 0.5}]"}, "logit_mean is not used"),
        ({NOISE: "[{step: 0, p_mean: 0.5}]", "diffusion.objective": "flow"}, "p_mean is not used"),
        ({NOISE: "[{step: 0}]"}, "sets none of"),
        ({NOISE: "[{step: 0, p_std: 0}]"}, "p_std"),
        ({ORDER: "{probe_steps: 10}"}, "until_step"),
        ({ORDER: "{until_step: 10, start_fraction: 0}"}, "start_fraction"),
        ({ORDER: "{until_step: 10}", "data.loader": "stream"}, "data.loader = stream"),
        ({"train.curriculum.speed": "2"}, "speed"),
    ],
)
def test_bad_curriculum_exits_2(tmp_path, sets, expect):
    args = ["train", str(TINY), "--dry-run", "--set", f"train.run_dir={tmp_path / 'run'}"]
    for k, v in sets.items():
        args += ["--set", f"{k}={v}"]
    res = runner.invoke(app, args)
    assert res.exit_code == 2, res.output
    assert expect in res.output, res.output
    assert not (tmp_path / "run").exists()  # refused before anything was written


# ---- Stage functions ----


def test_noise_points_interpolate_and_hold(tmp_path):
    cfg = cfg_with(
        tmp_path, **{NOISE: "[{step: 10, p_mean: 0.0, p_std: 2.0}, {step: 30, p_mean: -1.0}]"}
    )
    assert noise_params(cfg, 0) == {"p_mean": 0.0, "p_std": 2.0}  # held before the first point
    mid = noise_params(cfg, 20)  # p_std of the second point is diffusion.p_std (1.2)
    assert mid["p_mean"] == pytest.approx(-0.5) and mid["p_std"] == pytest.approx(1.6)
    assert noise_params(cfg, 99) == {"p_mean": -1.0, "p_std": pytest.approx(1.2)}
    assert noise_params(cfg_with(tmp_path), 5) == {}


def test_begin_step_moves_the_objectives_sigma_distribution(tmp_path):
    cfg = cfg_with(tmp_path, **{NOISE: "[{step: 0, p_mean: 1.0}, {step: 10, p_mean: -1.0}]"})
    edm, cur = EDMLoss(), Curriculum(cfg)
    cur.begin_step(edm, 0)
    g = torch.Generator().manual_seed(0)
    early = edm.sample_sigma(4000, g, "cpu").log().mean()
    cur.begin_step(edm, 10)
    late = edm.sample_sigma(4000, g, "cpu").log().mean()
    assert early == pytest.approx(1.0, abs=0.1) and late == pytest.approx(-1.0, abs=0.1)
    flow = FlowLoss()
    fcfg = cfg_with(
        tmp_path,
        **{"diffusion.objective": "flow", NOISE: "[{step: 0, logit_mean: 1.5, logit_std: 0.5}]"},
    )
    Curriculum(fcfg).begin_step(flow, 3)
    assert (flow.logit_mean, flow.logit_std) == (1.5, 0.5)


def test_pool_grows_linearly_then_the_whole_set(tmp_path):
    cfg = cfg_with(tmp_path, **{ORDER: "{until_step: 100, start_fraction: 0.25}"})
    assert pool_size(cfg, 0, 1000) == 250
    assert pool_size(cfg, 50, 1000) == 625
    assert pool_size(cfg, 100, 1000) is None  # ordinary epochs from until_step on
    assert pool_size(cfg, 0, 100) == 64  # never below one batch


def test_resize_is_an_area_average():
    x = torch.randn(3, 1, 8, 8)
    assert torch.allclose(resize_batch(x, 4), F.avg_pool2d(x, 2), atol=1e-6)
    assert resize_batch(x, 8) is x


# ---- The batches the loop trains on ----


@pytest.mark.parametrize("loader", ["memory", "stream"])
def test_batches_have_the_stage_resolution(tmp_path, loader):
    cfg = cfg_with(
        tmp_path,
        **{RES: "[{until_step: 3, resolution: 4}]", "data.loader": loader, "data.workers": 0},
    )
    data, _val = open_batches(cfg, 0, 1, {"epoch": 0, "cursor": 0}, None)
    cur = Curriculum(cfg)
    sides = [cur.next_batch(data, step).x.shape[-2:] for step in range(5)]
    assert sides == [(4, 4)] * 3 + [(8, 8)] * 2
    data.close()


def test_the_loop_trains_on_stage_batches(tiny_args, tmp_path, monkeypatch):
    """A real run: the loop's batches switch from 4 px to 8 px at the stage boundary."""
    seen: list[tuple[int, int]] = []
    real = Curriculum.next_batch

    def spy(self, data, step):
        batch = real(self, data, step)
        seen.append((step, batch.x.shape[-1]))
        return batch

    monkeypatch.setattr(Curriculum, "next_batch", spy)
    args = tiny_args(**{"train.max_steps": 6, RES: "[{until_step: 4, resolution: 4}]"})
    res = runner.invoke(app, ["train", *args])
    assert res.exit_code == 0, res.output
    assert seen == [(0, 4), (1, 4), (2, 4), (3, 4), (4, 8), (5, 8)]
    rows = [json.loads(r) for r in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    logged = {r["step"]: r["curriculum/resolution"] for r in rows if "curriculum/resolution" in r}
    assert logged[4] == 4 and logged[5] == 8


@pytest.mark.parametrize("preset", ["unet-tiny", "dit-tiny"])
def test_backbones_take_the_stage_resolution(tmp_path, preset):
    """U-Nets and diffusers' DiT (sin-cos positions recomputed per size) run at 4 and 8 px."""
    cfg = cfg_with(tmp_path, **{"model.preset": preset})
    den = build_denoiser(cfg, 10)
    for side in (4, 8):
        out = den(torch.randn(2, 1, side, side), torch.ones(2), torch.tensor([1, 2]))
        assert out.shape == (2, 1, side, side)


def test_paced_batches_come_from_the_easiest_images(tmp_path):
    cfg = cfg_with(tmp_path, **{ORDER: "{until_step: 10, start_fraction: 0.1}"})
    data, _ = open_batches(cfg, 0, 1, {"epoch": 0, "cursor": 0}, None)
    n = len(data)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(1))  # a stand-in ranking
    cur = Curriculum(cfg, order, "k")
    easiest = set(order[: pool_size(cfg, 0, n)].tolist())
    batch = cur.next_batch(data, 0)
    assert set(batch.keys) <= {data.data.files[i] for i in easiest}  # 'digits[<index>]'
    again = Curriculum(cfg, order, "k").next_batch(data, 0)  # a function of the step only
    assert torch.equal(batch.x, again.x)
    assert data.state() == {"epoch": 0, "cursor": 0}  # paced steps leave the epoch stream alone


# ---- Difficulty: probe, cache, untrusted files ----


def test_difficulty_cache_is_reused_keyed_and_validated(tmp_path):
    cfg = cfg_with(tmp_path, **{ORDER: "{until_step: 10, probe_steps: 3, probe_batch_size: 16}"})
    imgs = torch.randint(0, 256, (40, 1, 8, 8), dtype=torch.uint8)
    labels = torch.randint(0, 10, (40,))
    run, logs = tmp_path / "run", []
    first, key = difficulty(cfg, run, imgs, labels, 10, log=logs.append)
    assert first.shape == (40,) and torch.isfinite(first).all() and "probe run" in logs[-1]
    again, _ = difficulty(cfg, run, imgs, labels, 10, log=logs.append)
    assert torch.equal(first, again) and "difficulty from" in logs[-1]
    # Other data → another key and file: the old cache is never read for it.
    other = imgs.clone()
    other[0] ^= 1
    assert difficulty_key(cfg, other, labels) != key
    # A file under the right name with the wrong key, a wrong shape, NaNs or garbage: rebuilt.
    path = cache_path(run, key)
    for bad in ("key", "shape", "nan", "garbage"):
        if bad == "key":
            write_cache(path, "0" * 64, first)
        elif bad == "shape":
            write_cache(path, key, first[:5])
        elif bad == "nan":
            write_cache(path, key, torch.full((40,), float("nan")))
        else:
            path.write_bytes(b"\x00" * 100)
        got, _ = difficulty(cfg, run, imgs, labels, 10, log=logs.append)
        assert "probe run" in logs[-1], bad
        assert torch.equal(got, first), bad
    assert load_file(str(path))["loss"].shape == (40,)


def test_difficulty_cache_link_out_of_the_run_dir_is_refused(tmp_path):
    cfg = cfg_with(tmp_path, **{ORDER: "{until_step: 10}"})
    imgs = torch.randint(0, 256, (20, 1, 8, 8), dtype=torch.uint8)
    key = difficulty_key(cfg, imgs, None)
    outside = tmp_path / "outside.safetensors"
    save_file({"loss": torch.zeros(20)}, str(outside), metadata={"key": key})
    run = tmp_path / "run"
    (run / "curriculum").mkdir(parents=True)
    (run / "curriculum" / f"difficulty-{key[:32]}.safetensors").symlink_to(outside)
    with pytest.raises(ConfigError, match="outside the run directory"):
        difficulty(cfg, run, imgs, None, None)
    assert load_file(str(outside))["loss"].sum() == 0  # untouched


def test_resume_with_another_difficulty_key_is_refused(tmp_path):
    cfg = cfg_with(tmp_path, **{ORDER: "{until_step: 10}"})
    cur = Curriculum(cfg, torch.arange(10), "a" * 64)
    cur.check_resume({"difficulty_key": "a" * 64}, tmp_path)  # same: fine
    cur.check_resume({}, tmp_path)  # a checkpoint from before the order stage: fine
    with pytest.raises(ConfigError, match="another easy-to-hard order"):
        cur.check_resume({"difficulty_key": "b" * 64}, tmp_path / "step-0000010")


# ---- Exact resume across a stage switch after SIGKILL ----


def run_args(run: Path) -> list[str]:
    sets = {
        "train.run_dir": run,
        "train.max_steps": 30,
        "train.checkpoint_every": 5,
        "train.sample_every": 1000,
        "train.log_every": 1,
        "train.keep_checkpoints": 10,
        "logging.tensorboard": "false",
        "logging.progress": "false",
        "sample.num": 10,
        "sample.steps": 4,
        **ALL_STAGES,
    }
    out = [str(TINY)]
    for k, v in sets.items():
        out += ["--set", f"{k}={v}"]
    return out


def losses(run: Path) -> dict[int, float]:
    rows = [json.loads(r) for r in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["train/loss"] for r in rows if "train/loss" in r}


def test_sigkill_then_resume_across_stage_switches_is_exact(tmp_path):
    ref = tmp_path / "ref"
    res = runner.invoke(app, ["train", *run_args(ref)])
    assert res.exit_code == 0, res.output
    run = tmp_path / "run"
    env = {**os.environ, "DIFFTRAIN_INJECT": ""}
    proc = subprocess.Popen(
        [*DIFFTRAIN, "train", *run_args(run)], env=env, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    t0 = time.time()
    while not ((run / "metrics.jsonl").is_file() and max(losses(run), default=0) >= 8):
        assert proc.poll() is None, proc.stdout.read().decode()
        assert time.time() - t0 < 240, "timed out waiting for step 8"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed = max(losses(run))
    # Resumed from step ≤ 15: the resolution switch (15) and the end of pacing and of the noise
    # ramp (20) all happen after the restart.
    assert killed < 20, f"killed too late (step {killed}) to cross the stage switches"
    # The resume runs in this process: only the kill needs a real one.
    out = runner.invoke(app, ["train", *run_args(run), "--resume"], env={"DIFFTRAIN_INJECT": ""})
    assert out.exit_code == 0, out.output
    assert "resumed from" in out.output
    assert "difficulty from" in out.output  # the cached probe, not a new one
    assert losses(run) == losses(ref), f"killed after step {killed}"
    for group in ("model", "ema", "optimizer"):
        a = load_file(run / f"checkpoints/step-0000030/{group}.safetensors")
        b = load_file(ref / f"checkpoints/step-0000030/{group}.safetensors")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), group
    state = json.loads((run / "checkpoints/step-0000030/state.json").read_text())
    assert state["run"]["curriculum"]["difficulty_key"]
