"""Explanations: trajectory strip, conditional difference, DAAM maps, loss by σ, the CLI."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from difftrain.cli.main import app
from difftrain.config import ConfigError
from difftrain.eval.explain import explain, prompt_positions, sigma_learning
from difftrain.pipeline.run import load_run
from tests.run_fixtures import make_run

runner = CliRunner()
TEXT = {
    "model.preset": "unet-cond-tiny",
    "text.encoder": "scratch",
    "text.tokenizer": "byte",
    "text.width": 32,
    "text.heads": 2,
    "text.layers": 1,
    "text.max_length": 12,
}
SIGMAS = (0.2, 1.0, 5.0)


def test_shapes_and_the_conditional_difference(tmp_path):
    uncond = load_run(make_run(tmp_path / "u", num_classes=None))
    e = explain(uncond, sigmas=SIGMAS, steps=2)
    c, h, w = uncond.sample_shape
    assert e.x0.shape == (1, c, h, w)
    for t in (e.noisy, e.predicted, e.residual):
        assert t.shape == (3, c, h, w)
    assert e.cond_diff.shape == (3, h, w) and e.daam is None
    assert torch.equal(e.cond_diff, torch.zeros_like(e.cond_diff))  # exactly zero
    torch.testing.assert_close(e.residual, e.noisy - e.predicted)
    cond = load_run(make_run(tmp_path / "c", num_classes=10))
    e2 = explain(cond, class_label=3, sigmas=SIGMAS, steps=2)
    assert e2.cond_diff.shape == (3, h, w) and (e2.cond_diff > 0).any()
    with pytest.raises(ConfigError, match="classes 0..9"):
        explain(cond, class_label=10, sigmas=SIGMAS, steps=2)
    with pytest.raises(ConfigError, match="unconditional"):
        explain(uncond, class_label=1, sigmas=SIGMAS, steps=2)


def test_daam_one_map_per_token_summing_to_one(tmp_path):
    run = load_run(make_run(tmp_path / "t", num_classes=None, **TEXT))
    e = explain(run, prompt="a cat", sigmas=SIGMAS, steps=2)
    _, h, w = run.sample_shape
    assert e.daam.shape == (12, h, w) and len(e.tokens) == 12
    # Softmax over tokens, averaged and bilinearly upsampled: every pixel's maps sum to 1.
    torch.testing.assert_close(e.daam.sum(0), torch.ones(h, w))
    assert (e.daam >= 0).all()
    assert [e.tokens[i] for i in prompt_positions(e.tokens)] == list("a cat")
    assert (e.cond_diff > 0).any()  # the prompt vs the empty prompt


def test_sigma_learning_from_metrics_rows():
    rows = [{"step": 10, "val/loss_sigma_0.1": 2.0, "val/loss_sigma_5": 1.0},
            {"step": 20, "val/loss_sigma_0.1": 1.0, "val/loss_sigma_5": 1.0}]  # fmt: skip
    got = sigma_learning(rows)
    assert [g["sigma"] for g in got] == [0.1, 5.0]
    assert got[0]["relative_change"] == -0.5 and got[1]["relative_change"] == 0.0


def test_cli_writes_its_pngs(tmp_path):
    run = make_run(tmp_path / "t", num_classes=None, **TEXT)
    (run / "metrics.jsonl").write_text(
        json.dumps({"step": 1, "val/loss_sigma_0.1": 1.5, "val/loss_sigma_2": 0.5})
        + "\n"
        + "not json\n"
    )
    out = tmp_path / "explain"
    res = runner.invoke(app, ["explain", str(run), "--out", str(out), "--prompt", "red",
                              "--sigma", "0.5", "--sigma", "2", "--steps", "2"])  # fmt: skip
    assert res.exit_code == 0, res.output + repr(res.exception)
    for name in ("trajectory.png", "daam.png", "loss_by_sigma.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    doc = json.loads((out / "explain.json").read_text())
    assert doc["sigmas"] == [0.5, 2.0] and len(doc["cond_diff_mean"]) == 2
    res = runner.invoke(app, ["explain", str(run), "--out", str(out), "--sigma", "-1"])
    assert res.exit_code == 2 and "--sigma" in res.output
    res = runner.invoke(app, ["explain", str(tmp_path / "nope"), "--out", str(out)])
    assert res.exit_code == 2


def test_report_has_an_explanations_section(tmp_path):
    from difftrain.eval.report import write_report

    run = make_run(tmp_path / "t", num_classes=None, **TEXT, **{"sample.prompts": "['$x<b>']"})
    (run / "metrics.jsonl").write_text(
        json.dumps({"step": 1, "val/loss_sigma_0.1": 2.0})
        + "\n"
        + json.dumps({"step": 2, "val/loss_sigma_0.1": 1.0})
        + "\n"
    )
    page = write_report(run, trajectory_samples=1).read_text()
    assert 'id="explain"' in page and 'alt="DAAM"' in page and "-50.0%" in page
    assert "<b>" not in page.split('id="explain"')[1]  # the prompt is escaped


def test_daam_on_a_text_dit(tmp_path):
    """PixArt's cross-attention layers are recorded the same way (patch grid upsampled)."""
    sets = {**TEXT, "model.preset": "dit-tiny", "data.resolution": 8}
    run = load_run(make_run(tmp_path / "d", num_classes=None, **sets))
    e = explain(run, prompt="a cat", sigmas=(1.0,), steps=2)
    assert e.daam.shape == (12, 8, 8)
    torch.testing.assert_close(e.daam.sum(0), torch.ones(8, 8))
