"""Post-hoc EMA (EDM2): the σ_rel ↔ γ map, the tracker, reconstruction, snapshots and the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from difftrain.cli.main import app
from difftrain.config import ConfigError, dump_config, load_config
from difftrain.data import to_model_range
from difftrain.eval.validation import sigma_grid, validation_loss
from difftrain.pipeline.build import build_denoiser, build_objective
from difftrain.pipeline.checkpoint import read_checkpoint, write_checkpoint
from difftrain.pipeline.run import load_run
from difftrain.train.ema import EMA, EMABank, ema_beta, halflife_group
from difftrain.train.optim import build_optimizer
from difftrain.train.posthoc_ema import (
    PowerEMA,
    Snapshot,
    gamma_to_sigma_rel,
    list_snapshots,
    posthoc_coefficients,
    reconstruct,
    save_snapshots,
    sigma_rel_to_gamma,
    truncate_snapshots,
)
from difftrain.train.setup import prepare_data
from tests.conftest import TINY

runner = CliRunner()


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These tests are many tiny ops: one thread is fastest on a shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class Vector(nn.Module):
    """A 'model' that is one parameter vector: its trajectory is whatever the test writes."""

    def __init__(self, n: int):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(n))


def track(trajectory, stored, direct, every):
    """Run PowerEMAs over θ(1..T); snapshot `stored` every `every` steps; track `direct` exactly."""
    m = Vector(trajectory(1).numel())
    tracker, reference = PowerEMA(m, stored), PowerEMA(m, direct)
    snaps = []
    for t in range(1, T_STEPS + 1):
        with torch.no_grad():
            m.w.copy_(trajectory(t))
        tracker.update(m, t)
        reference.update(m, t)
        if t % every == 0:
            snaps += [Snapshot(t, g, tensors=sd) for _, g, sd in tracker.snapshot()]
    return tracker, reference, snaps


T_STEPS = 1000


def random_walk(n=2048, seed=0):
    gen = torch.Generator().manual_seed(seed)
    steps = torch.randn(T_STEPS, n, generator=gen) * 0.01 + 0.002  # noise plus a drift
    path = steps.cumsum(0)
    return lambda t: path[t - 1]


# ---- σ_rel ↔ γ ----


def test_sigma_rel_gamma_round_trip_and_paper_values():
    for gamma in [0.0, 0.5, 1.0, 6.94, 16.97, 50.0, 400.0]:
        s = gamma_to_sigma_rel(gamma)
        if gamma > 0:
            assert sigma_rel_to_gamma(s) == pytest.approx(gamma, rel=1e-10)
    for s in [0.001, 0.01, 0.05, 0.1, 0.2, 0.28]:
        assert gamma_to_sigma_rel(sigma_rel_to_gamma(s)) == pytest.approx(s, rel=1e-10)
    # EDM2 Sec. 3.1: σ_rel 0.05 and 0.10 are γ ≈ 16.97 and 6.94.
    assert sigma_rel_to_gamma(0.05) == pytest.approx(16.97, abs=0.01)
    assert sigma_rel_to_gamma(0.10) == pytest.approx(6.94, abs=0.01)
    for bad in [0.0, -0.1, 0.29, 1.0]:
        with pytest.raises(ValueError, match="sigma_rel"):
            sigma_rel_to_gamma(bad)


# ---- The tracker ----


def test_power_ema_weights_are_the_integrated_power_profile():
    """With θ(t) = e_t the average *is* its weight profile: (τ^(γ+1) − (τ−1)^(γ+1)) / t^(γ+1)."""
    n = 300
    m = Vector(n)
    pema = PowerEMA(m, [0.05, 0.2])
    for t in range(1, n + 1):
        with torch.no_grad():
            m.w.zero_()
            m.w[t - 1] = 1.0
        pema.update(m, t)
    tau = torch.arange(1, n + 1, dtype=torch.float64)
    for g, avg in zip(pema.gammas, pema.averages, strict=True):
        expected = (tau ** (g + 1) - (tau - 1) ** (g + 1)) / n ** (g + 1)
        assert torch.allclose(avg["w"].double(), expected, atol=1e-6)
        assert avg["w"].sum().item() == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(ValueError, match="not after"):
        pema.update(m, n)


# ---- Reconstruction ----


def test_reconstruction_matches_a_directly_tracked_power_ema():
    """Snapshots of σ_rel 0.05/0.10 every 50 of 1000 steps → other lengths, vs tracked directly.

    Error is measured relative to how far that EMA is from the current weights; the nearest
    stored profile used as-is is off by 25–55 % on the same scale.
    """
    path = random_walk()
    targets = {0.03: 2e-2, 0.07: 2e-3, 0.15: 3e-3, 0.20: 5e-3}
    tracker, direct, snaps = track(path, [0.05, 0.10], list(targets), every=50)
    theta = path(T_STEPS).double()
    for i, (s, tol) in enumerate(targets.items()):
        want = direct.averages[i]["w"].double()
        got = reconstruct(snaps, s)["w"].double()
        scale = (want - theta).norm()
        assert (got - want).norm() / scale < tol, s
        nearest = tracker.averages[0 if s < 0.075 else 1]["w"].double()
        assert (nearest - want).norm() / scale > 0.2  # the reconstruction is doing real work


def test_fit_error_is_the_error_of_the_reconstructed_weight_profile():
    """The closed-form profile residual equals the actual error of the per-step weights."""
    one_hot = torch.eye(T_STEPS)  # θ(t) = e_t: each average is its own weight profile
    tracker, direct, snaps = track(lambda t: one_hot[t - 1], [0.05, 0.10], [0.03, 0.15], 50)
    for i, s in enumerate([0.03, 0.15]):
        _, x, fit = posthoc_coefficients(snaps, s)
        want = direct.averages[i]["w"].double()
        got = reconstruct(snaps, s)["w"].double()
        assert (got - want).norm() / want.norm() == pytest.approx(fit, rel=0.05)
        assert fit < 0.03
        assert got.sum().item() == pytest.approx(1.0, abs=1e-3)  # weights still sum to one


def test_reconstructing_a_stored_profile_returns_it():
    tracker, _, snaps = track(random_walk(256, seed=1), [0.05, 0.10], [0.10], every=100)
    for i, s in enumerate([0.05, 0.10]):
        used, x, fit = posthoc_coefficients(snaps, s)
        assert fit < 1e-6
        k = int(np.argmax(np.abs(x)))
        assert used[k].step == T_STEPS and used[k].sigma_rel == pytest.approx(s)
        got = reconstruct(snaps, s)["w"]
        assert torch.allclose(got, tracker.averages[i]["w"], rtol=1e-5, atol=1e-6)
    # An earlier snapshot step reconstructs that step's stored average too.
    mid = reconstruct(snaps, 0.05, step=500)["w"]
    assert torch.allclose(mid, next(s for s in snaps if s.step == 500).tensors["w"], atol=1e-5)
    with pytest.raises(ValueError, match="no snapshot"):
        reconstruct(snaps, 0.05, step=450)


# ---- Snapshots on disk and checkpointing the tracker ----


def test_snapshot_files_resume_and_truncate(tmp_path):
    path = random_walk(64, seed=2)
    m = Vector(64)
    straight, first = PowerEMA(m, [0.05, 0.1]), PowerEMA(m, [0.05, 0.1])
    for t in range(1, 41):
        with torch.no_grad():
            m.w.copy_(path(t))
        straight.update(m, t)
        if t <= 20:
            first.update(m, t)
        if t % 10 == 0:
            save_snapshots(tmp_path, straight)
    # The tracker's state goes through a safetensors checkpoint and continues exactly.
    ckpt = write_checkpoint(tmp_path / "ckpt", 20, {"posthoc_ema": first.state_dict()}, {})
    resumed = PowerEMA(Vector(64), [0.05, 0.1])
    resumed.load_state_dict(read_checkpoint(ckpt, ["posthoc_ema"])[0]["posthoc_ema"])
    for t in range(21, 41):
        with torch.no_grad():
            m.w.copy_(path(t))
        resumed.update(m, t)
    assert all(
        torch.equal(a["w"], b["w"])
        for a, b in zip(resumed.averages, straight.averages, strict=True)
    )
    with pytest.raises(ConfigError, match="train.posthoc_ema_sigma_rels"):
        PowerEMA(m, [0.05]).load_state_dict(straight.state_dict())

    snaps = list_snapshots(tmp_path)
    assert [(s.step, round(s.sigma_rel, 4)) for s in snaps][:2] == [(10, 0.05), (10, 0.1)]
    assert len(snaps) == 8 and all(s.path.is_file() for s in snaps)
    index = json.loads((tmp_path / "ema_snapshots/index.json").read_text())["snapshots"]
    assert {"file", "step", "gamma", "sigma_rel"} <= set(index[0])
    assert torch.equal(reconstruct(snaps, 0.1)["w"], straight.averages[1]["w"])
    truncate_snapshots(tmp_path, 25)  # a rollback/resume to step 25 abandons steps 30, 40
    assert sorted({s.step for s in list_snapshots(tmp_path)}) == [10, 20]
    assert len(list((tmp_path / "ema_snapshots").glob("*.safetensors"))) == 4


def test_ema_bank_tracks_several_half_lives():
    m = Vector(8)
    bank, single = EMABank(m, [0.5, 2.0]), EMA(m)
    for t in range(1, 6):
        with torch.no_grad():
            m.w.add_(1.0)
        bank.update(m, 64, 64 * t, None)
        single.update(m, ema_beta(64, 2.0, 64 * t, None))
    groups = bank.state_dicts()
    assert list(groups) == [halflife_group(0.5), halflife_group(2.0)] == ["ema_hl0.5", "ema_hl2"]
    assert torch.equal(groups["ema_hl2"]["w"], single.state_dict()["w"])
    assert groups["ema_hl0.5"]["w"][0] > groups["ema_hl2"]["w"][0]  # shorter follows closer
    fresh = EMABank(Vector(8), [0.5, 2.0, 10.0])
    assert fresh.load_state_dicts(groups) == ["ema_hl10"]


def test_config_keys_are_validated():
    cfg = load_config(TINY)
    assert cfg.train.posthoc_ema_sigma_rels == [0.05, 0.10] and cfg.train.ema_halflives_kimg == []
    with pytest.raises(ConfigError, match=r"train\.posthoc_ema_sigma_rels"):
        load_config(TINY, ["train.posthoc_ema_sigma_rels=[0.05, 0.3]"])
    with pytest.raises(ConfigError, match=r"train\.posthoc_ema_sigma_rels.*distinct"):
        load_config(TINY, ["train.posthoc_ema_sigma_rels=[0.05, 0.05]"])
    with pytest.raises(ConfigError, match=r"train\.ema_halflives_kimg"):
        load_config(TINY, ["train.ema_halflives_kimg=[0]"])
    with pytest.raises(ConfigError, match=r"train\.posthoc_snapshot_every"):
        load_config(TINY, ["train.posthoc_snapshot_every=0"])


# ---- The CLI on a tiny real run ----


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """Real optimizer steps of the tiny digits model, with power-EMA snapshots every 3 steps.

    Written the way a run directory is: config.yaml, ema_snapshots/, and a checkpoint holding
    the classic EMA and one extra half-life.
    """
    torch.manual_seed(0)
    run = tmp_path_factory.mktemp("ema") / "run"
    sets = [f"train.run_dir={run}", "train.batch_size=32", "data.max_images=600"]
    cfg = load_config(TINY, sets)  # 540 train / 60 validation images
    run.mkdir()
    (run / "config.yaml").write_text(dump_config(cfg))
    data, _ = prepare_data(cfg, None)
    denoiser = build_denoiser(cfg, data.num_classes)
    objective, optimizer = build_objective(cfg), build_optimizer(denoiser.parameters(), cfg.optim)
    ema, bank = EMA(denoiser), EMABank(denoiser, [0.2])
    pema = PowerEMA(denoiser, cfg.train.posthoc_ema_sigma_rels)
    gen = torch.Generator().manual_seed(0)
    steps = 12
    for step in range(1, steps + 1):
        idx = torch.randint(len(data), (32,), generator=gen)
        x, cond = to_model_range(data.images[idx]), data.labels[idx]
        objective(denoiser, x, cond, gen).mean().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        images = 32 * step
        ema.update(
            denoiser, ema_beta(32, cfg.train.ema_halflife_kimg, images, cfg.train.ema_rampup)
        )
        bank.update(denoiser, 32, images, cfg.train.ema_rampup)
        pema.update(denoiser, step)
        if step % 3 == 0:
            save_snapshots(run, pema)
    state = {
        "step": steps,
        "data": {"num_classes": data.num_classes, "class_names": data.class_names},
    }
    groups = {"model": denoiser.state_dict(), "ema": ema.state_dict(), **bank.state_dicts()}
    write_checkpoint(run / "checkpoints", steps, groups, state)
    return run, cfg


def test_ema_sweep_cli_on_a_tiny_real_run(tiny_run):
    run, cfg = tiny_run
    res = runner.invoke(app, ["ema", str(run), "--sweep", "--sigma-rels", "0.03,0.05,0.15"])
    assert res.exit_code == 0, res.output + repr(res.exception)
    assert "post-hoc EMA at step 12" in res.output and "ema_hl0.2" in res.output
    summary = json.loads((run / "ema_sweep.json").read_text())
    assert [r["sigma_rel"] for r in summary["results"]] == [0.03, 0.05, 0.15]
    assert summary["step"] == 12 and summary["snapshots"] == 8
    assert {r["weights"] for r in summary["references"]} == {"ema", "ema_hl0.2"}
    stored = next(r for r in summary["results"] if r["sigma_rel"] == 0.05)
    assert stored["fit_error"] < 1e-6
    best = summary["best"]
    assert best["val/loss"] == min(r["val/loss"] for r in summary["results"])

    # ema_best/ is a checkpoint load_run reads; its score reproduces exactly (deterministic).
    loaded = load_run(run, checkpoint=run / "ema_best")
    assert loaded.state["posthoc_ema"]["sigma_rel"] == best["sigma_rel"]
    _, val = prepare_data(cfg, None)
    x, y = to_model_range(val.images[:512]), val.labels[:512]
    again = validation_loss(loaded.denoiser, x, y, sigma_grid(n=8), 0.5, seed=cfg.train.seed)
    assert again["val/loss"] == pytest.approx(best["val/loss"], rel=1e-6)


def test_ema_single_export_and_bad_input(tiny_run, tmp_path):
    run, _ = tiny_run
    out = tmp_path / "e07"
    res = runner.invoke(app, ["ema", str(run), "--sigma-rel", "0.07", "--out", str(out)])
    assert res.exit_code == 0, res.output + repr(res.exception)
    loaded = load_run(run, checkpoint=out)
    assert loaded.state["posthoc_ema"]["sigma_rel"] == 0.07 and loaded.state["step"] == 12
    want = reconstruct(list_snapshots(run), 0.07)
    assert all(torch.equal(v, want[k]) for k, v in loaded.denoiser.state_dict().items())

    for args, needle in [
        (["--sigma-rel", "0.5"], "--sigma-rel"),
        (["--sweep", "--sigma-rels", "0.05,x"], "--sigma-rels"),
        (["--sigma-rel", "0.05", "--step", "4"], "--step 4"),
        ([], "exactly one of --sweep or --sigma-rel"),
    ]:
        res = runner.invoke(app, ["ema", str(run), *args])
        assert res.exit_code == 2 and needle in res.output, (args, res.output)
    (tmp_path / "bare").mkdir()
    (tmp_path / "bare" / "config.yaml").write_text((run / "config.yaml").read_text())
    res = runner.invoke(app, ["ema", str(tmp_path / "bare"), "--sweep"])
    assert res.exit_code == 2 and "train.posthoc_ema_sigma_rels" in res.output
