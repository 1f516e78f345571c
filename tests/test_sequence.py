"""Sequence diffusion: CSV/npz windows with missing values, the masked loss, the CLI, metrics."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from difftrain.cli.main import app
from difftrain.data.errors import DataError
from difftrain.data.sequence import apply_missing_rule, read_series, windows
from difftrain.diffusion.edm import EDMLoss
from difftrain.diffusion.masked import MaskedObjective
from difftrain.eval.sequence_metrics import (
    autocorrelation_error,
    discriminative_score,
    marginal_wasserstein,
)

runner = CliRunner()


def write_csv(path, n=200, holes=True):
    t = np.arange(n)
    rows = [["a", "b"]] + [[f"{np.sin(i / 5):.4f}", f"{10 + 3 * np.cos(i / 7):.4f}"] for i in t]
    if holes:
        rows[4][0], rows[30][1], rows[31][1], rows[35][0] = "", "NaN", "", "nan"
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows(rows)
    return path


def config(tmp_path, csv_path, **extra):
    cfg = tmp_path / "c.yaml"
    sections = {
        "data": {"source": "sequence", "path": str(csv_path), "val_fraction": 0.2},
        "sequence": {"length": 16, "stride": 4, **extra.pop("sequence", {})},
        "model": {"preset": "seq-tiny"},
        "train": {"run_dir": str(tmp_path / "run"), "max_steps": 12, "batch_size": 8,
                  "checkpoint_every": 6, "sample_every": 12, "log_every": 1},
        "sample": {"steps": 4},
        "logging": {"progress": False, "tensorboard": False},
    }  # fmt: skip
    cfg.write_text(json.dumps(sections))  # JSON is YAML
    return cfg


def test_train_and_sample_through_the_cli_with_missing_values(tmp_path):
    csv_path = write_csv(tmp_path / "s.csv")
    res = runner.invoke(app, ["train", str(config(tmp_path, csv_path))])
    assert res.exit_code == 0, res.output + repr(res.exception)
    run = tmp_path / "run"
    rows = [json.loads(r) for r in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [r["train/loss"] for r in rows if "train/loss" in r]
    # A NaN reaching the loss makes it NaN, the guard skips the step and counts it.
    assert len(losses) == 12 and all(np.isfinite(losses))
    assert all(r.get("train/skipped_steps", 0) == 0 for r in rows)
    assert np.isfinite([r["val/loss"] for r in rows if "val/loss" in r]).all()
    info = json.loads((run / "sequence.json").read_text())
    vals = np.genfromtxt(csv_path, delimiter=",", skip_header=1)
    assert info["columns"] == ["a", "b"]
    np.testing.assert_allclose(info["mean"], np.nanmean(vals, 0), rtol=1e-6)
    assert (run / "samples/step-0000012.png").is_file()
    out = tmp_path / "out"
    res = runner.invoke(app, ["sample", str(run), "--out", str(out), "--num", "3", "--steps", "3",
                              "--npz", str(tmp_path / "s.npz")])  # fmt: skip
    assert res.exit_code == 0, res.output + repr(res.exception)
    got = list(csv.reader(open(out / "samples.csv")))
    assert got[0] == ["sample", "t", "a", "b"] and len(got) == 1 + 3 * 16
    arr = np.load(tmp_path / "s.npz")["samples"]
    assert arr.shape == (3, 16, 2) and np.isfinite(arr).all()
    # De-normalised: channel b lives around 10, not around 0.
    assert abs(arr[..., 1].mean() - 10) < abs(arr[..., 1].mean())
    from difftrain.eval.report import write_report
    from difftrain.eval.sequence_eval import evaluate_sequence_run

    m = evaluate_sequence_run(run, num=8, steps=3, plot=tmp_path / "plot.png")
    assert m["real_windows"] == 47 and 0 <= m["discriminative_acc"] <= 1
    assert np.isfinite([m["wasserstein_mean"], m["acf_error"]]).all()
    assert (tmp_path / "plot.png").read_bytes()[:4] == b"\x89PNG"
    page = write_report(run, trajectory_samples=1).read_text()
    assert 'id="explain"' in page and "val/loss" in page


def test_bad_cells_and_missing_error_rule_exit_2(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("a\n1\nabc\n")
    res = runner.invoke(app, ["train", str(config(tmp_path, bad))])
    assert res.exit_code == 2 and "row 3" in res.output and "'abc'" in res.output
    holes = write_csv(tmp_path / "h.csv")
    res = runner.invoke(app, ["train", str(config(tmp_path, holes, sequence={"missing": "error"}))])
    assert res.exit_code == 2 and "missing values" in res.output
    res = runner.invoke(app, ["train", str(config(tmp_path, tmp_path / "nope.csv"))])
    assert res.exit_code == 2 and "no such file" in res.output


def test_missing_rules_and_windows(tmp_path):
    s = read_series(write_csv(tmp_path / "s.csv", n=40))
    assert np.isnan(s.values).sum() == 4
    filled = apply_missing_rule(s, "interpolate", tmp_path)
    assert not np.isnan(filled.values).any()
    v = s.values[:, 1]  # data rows 29 and 30 are missing: linear between 28 and 31
    assert filled.values[30, 1] == pytest.approx(v[28] + (v[31] - v[28]) * 2 / 3)
    x, dropped = windows(s.values, 8, 4, 0.5)
    assert x.shape == (9, 2, 1, 8) and dropped == 0 and torch.isnan(x).any()
    np.savez(tmp_path / "s.npz", x=np.arange(10.0))
    assert read_series(tmp_path / "s.npz").values.shape == (10, 1)
    gappy = np.arange(20.0)[:, None].repeat(2, 1)
    gappy[:6, 0] = np.nan  # the first window (8 steps × 2 channels) is 6/16 missing
    x, dropped = windows(gappy, 8, 4, 0.7)
    assert dropped == 1 and x.shape[0] == 3
    edge = apply_missing_rule(type(s)(gappy, ["a", "b"]), "interpolate", tmp_path)
    assert (edge.values[:6, 0] == 6.0).all()  # leading gap: the nearest observed value
    with pytest.raises(DataError, match="fewer than"):
        windows(s.values, 100, 1, 0.5)


def test_masked_objective_is_the_mean_over_observed_entries():
    gen_seed, x0 = 3, torch.randn(4, 2, 1, 10)
    x0[0, 0, 0, :5] = float("nan")
    x0[2, 1, 0, 3] = float("nan")
    obs = torch.isfinite(x0)

    def denoiser(x, sigma, cond=None):
        return 0.5 * x

    loss = MaskedObjective(EDMLoss())(denoiser, x0, None, torch.Generator().manual_seed(gen_seed))
    assert torch.isfinite(loss).all()
    # Independently: the same σ and noise draws, error averaged over observed entries only.
    g = torch.Generator().manual_seed(gen_seed)
    sigma = (torch.randn(4, generator=g) * 1.2 - 1.2).exp()
    noise = torch.randn(x0.shape, generator=g)
    filled = torch.nan_to_num(x0, nan=0.0)
    err = (0.5 * (filled + sigma.view(-1, 1, 1, 1) * noise) - filled) ** 2
    w = (sigma**2 + 0.25) / (sigma * 0.5) ** 2
    expect = torch.stack([w[i] * err[i][obs[i]].mean() for i in range(4)])
    torch.testing.assert_close(loss, expect)
    # The missing entries get no gradient through the network output.
    net = torch.nn.Conv2d(2, 2, 1)
    MaskedObjective(EDMLoss())(lambda x, s, c=None: net(x), x0, None,
                               torch.Generator().manual_seed(0)).sum().backward()  # fmt: skip
    assert all(torch.isfinite(p.grad).all() for p in net.parameters())


def test_sequence_metrics_on_known_cases():
    rng = np.random.default_rng(0)
    real = np.cumsum(rng.standard_normal((200, 24, 2)), axis=1)
    assert marginal_wasserstein(real, real) == [0.0, 0.0]
    assert autocorrelation_error(real, real) == 0.0
    assert marginal_wasserstein(real, real + 2.0) == pytest.approx([2.0, 2.0])
    white = rng.standard_normal((200, 24, 2))
    assert autocorrelation_error(real, white) > 0.3  # random walk vs white noise
    assert discriminative_score(real, white) > 0.9
    other = np.cumsum(rng.standard_normal((200, 24, 2)), axis=1)  # same process, new draws
    assert abs(discriminative_score(real, other) - 0.5) < 0.15
    with pytest.raises(ValueError, match="N×L×C"):
        marginal_wasserstein(real, real[:, :10])


def test_config_checks_and_a_damaged_sequence_json(tmp_path):
    from difftrain.config import ConfigError, load_config
    from difftrain.pipeline.build import check_config
    from difftrain.pipeline.sequence import SequenceInfo

    cfg_path = config(tmp_path, write_csv(tmp_path / "s.csv"))
    for sets, match in [
        (["model.preset=unet-tiny"], "image network"),
        (["diffusion.objective=iddpm"], "masked"),
        (["eval.every=10"], "eval.every"),
    ]:
        with pytest.raises(ConfigError, match=match):
            check_config(load_config(cfg_path, sets))
    with pytest.raises(ConfigError, match="1-D sequence network"):
        check_config(load_config(cfg_path, ["data.source=digits", "model.preset=seq-tiny"]))
    (tmp_path / "sequence.json").write_text(
        '{"columns": ["a"], "mean": [0], "std": [0], "length": 8}'
    )
    with pytest.raises(ConfigError, match="inconsistent"):
        SequenceInfo.load(tmp_path)
    (tmp_path / "sequence.json").write_text("[1, 2")
    with pytest.raises(ConfigError, match="malformed"):
        SequenceInfo.load(tmp_path)
