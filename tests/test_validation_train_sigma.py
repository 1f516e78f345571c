"""val/loss_train_sigma: the training objective on validation images with a fixed σ/noise draw,
comparable with train/loss; the report plots both on one labelled figure (issue 14)."""

from __future__ import annotations

import json

import torch

from difftrain.config import load_config
from difftrain.eval import plots
from difftrain.eval.validation import training_sigma_loss
from difftrain.pipeline.build import build_denoiser, build_objective
from difftrain.train.loop import train


class Recording(torch.nn.Module):
    """The real denoiser, remembering every σ it was called at."""

    def __init__(self, den):
        super().__init__()
        self.den, self.sigmas = den, []

    def forward(self, x, sigma, cond=None, **kw):
        self.sigmas.append(sigma.detach().clone())
        return self.den(x, sigma, cond, **kw)


def setup(objective="edm"):
    cfg = load_config(None, ["data.resolution=8", "data.channels=1", "model.preset=unet-tiny",
                             f"diffusion.objective={objective}"])  # fmt: skip
    torch.manual_seed(0)
    den = Recording(build_denoiser(cfg, 10))
    x = torch.rand(20, 1, 8, 8) * 2 - 1
    y = torch.arange(20) % 10
    return cfg, den, build_objective(cfg), x, y


def test_sigmas_come_from_the_training_distribution_with_a_fixed_seed():
    cfg, den, obj, x, y = setup("edm")
    a = training_sigma_loss(den, obj, x, y, seed=3)
    used = torch.cat(den.sigmas)
    # EDM's own log-normal draw, first thing the objective takes from a generator seeded 3.
    want = obj.sample_sigma(20, torch.Generator().manual_seed(3), "cpu")
    assert torch.equal(used, want)
    assert training_sigma_loss(den, obj, x, y, seed=3) == a  # same weights ⇒ same number
    assert training_sigma_loss(den, obj, x, y, seed=4) != a
    # It is the objective's own mean on that draw (weighting included).
    ref = obj(den, x, y, torch.Generator().manual_seed(3)).mean().item()
    assert abs(a - ref) < 1e-5 * max(1.0, abs(ref))


def test_vp_objective_uses_training_timesteps():
    cfg, den, obj, x, y = setup("vp")
    training_sigma_loss(den, obj, x, y, seed=0)
    used = torch.cat(den.sigmas)
    table = obj.sigmas
    assert all(bool((table - s).abs().min() < 1e-6 * max(1.0, float(s))) for s in used)


def test_loop_logs_it_and_report_plots_both_validation_curves(tiny_args, tmp_path, monkeypatch):
    run = tmp_path / "run"
    args = tiny_args(run, **{"train.max_steps": 10, "train.batch_size": 16})
    sets = [a for i, a in enumerate(args) if i and args[i - 1] == "--set"]
    train(load_config(args[0], sets))
    rows = [json.loads(r) for r in (run / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in rows if "val/loss_train_sigma" in r]
    assert val and all("val/loss" in r for r in val)
    assert val[-1]["val/loss_train_sigma"] != val[-1]["val/loss"]
    legends = []
    real = plots._fig_b64

    def capture(fig):
        for ax in fig.axes:
            if ax.get_legend() is not None:
                legends.append([t.get_text() for t in ax.get_legend().get_texts()])
        return real(fig)

    monkeypatch.setattr(plots, "_fig_b64", capture)
    plots.training_plots(rows)
    loss_legend = legends[0]
    assert any(t.startswith("train, σ ~ training distribution") for t in loss_legend)
    assert "validation, σ ~ training distribution (fixed draw)" in loss_legend
    assert "validation, mean over 8 fixed σ (0.01–20)" in loss_legend


def test_validation_scores_the_first_train_val_images(tiny_args, tmp_path, monkeypatch):
    """train.val_images bounds what each checkpoint's validation costs (the demo sets 128)."""
    import pytest

    from difftrain.config import ConfigError
    from difftrain.train import task as task_mod

    seen = []
    real = task_mod.validation_loss

    def spy(model, x, *a, **kw):
        seen.append(len(x))
        return real(model, x, *a, **kw)

    monkeypatch.setattr(task_mod, "validation_loss", spy)
    args = tiny_args(tmp_path / "run", **{"train.max_steps": 10, "train.val_images": 7})
    sets = [a for i, a in enumerate(args) if i and args[i - 1] == "--set"]
    train(load_config(args[0], sets))
    assert seen == [7]  # one checkpoint (step 10), its validation on 7 images
    with pytest.raises(ConfigError, match="val_images"):
        load_config(args[0], [*sets, "train.val_images=0"])
