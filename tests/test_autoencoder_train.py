"""Autoencoder runs through the CLI: the one loop trains it, logs val/psnr, exports, resumes exactly."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file
from typer.testing import CliRunner

from difftrain.cli.main import app
from difftrain.models.autoencoder import load_autoencoder

runner = CliRunner()


def blobs(n: int = 40, side: int = 16, seed: int = 0) -> np.ndarray:
    """Coloured discs on white: simple structure an autoencoder learns in a few steps."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:side, :side]
    out = np.full((n, side, side, 3), 255, np.uint8)
    for i in range(n):
        cy, cx, r = rng.uniform(4, side - 4, 2).tolist() + [rng.uniform(2, 5)]
        out[i][(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = rng.integers(0, 255, 3)
    return out


@pytest.fixture
def ae_config(tmp_path):
    np.savez(tmp_path / "blobs.npz", images=blobs())

    def make(run, **over) -> str:
        cfg = {
            "data": {
                "source": "npz",
                "path": str(tmp_path / "blobs.npz"),
                "resolution": 16,
                "val_fraction": 0.2,
            },
            # vae-tiny narrowed to two levels (×2): the same code path, a quarter of the cost.
            "model": {"kind": "autoencoder", "preset": "vae-tiny", "block_out_channels": [32, 32]},
            "autoencoder": {"disc_weight": 0.5, "disc_start": 2, "disc_layers": 2},
            "optim": {"lr": 1e-3},
            "train": {
                "run_dir": str(run),
                "batch_size": 8,
                "max_steps": 8,
                "checkpoint_every": 4,
                "sample_every": 8,
                "log_every": 1,
                "keep_checkpoints": 5,
                "posthoc_ema_sigma_rels": [],
            },
            "logging": {"tensorboard": False, "progress": False},
        }
        for key, value in over.items():
            section, name = key.split(".")
            cfg[section][name] = value
        path = run.parent / f"{run.name}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        return str(path)

    return make


def invoke(*args):
    res = runner.invoke(app, [str(a) for a in args])
    assert res.exit_code == 0, res.output + repr(res.exception)
    return res


def rows(run):
    return [json.loads(r) for r in (run / "metrics.jsonl").read_text().splitlines()]


def test_autoencoder_run_logs_psnr_writes_grid_export_and_gan_state(ae_config, tmp_path):
    run = tmp_path / "ae"
    invoke("train", ae_config(run))
    metrics = rows(run)
    psnr = [r["val/psnr"] for r in metrics if "val/psnr" in r]
    assert len(psnr) == 2 and psnr[-1] > psnr[0]  # steps 4 and 8: reconstructions improve
    assert any("val/loss" in r for r in metrics)
    train_rows = [r for r in metrics if "train/loss" in r]
    # The GAN term and the discriminator's updates start at disc_start (step index 2 = row 3).
    assert not any("ae/adaptive_weight" in r or "disc/loss" in r for r in train_rows[:2])
    assert all(r["ae/adaptive_weight"] > 0 and "disc/loss" in r for r in train_rows[2:])
    # diffusers export from the EMA weights, with 1/std of training latents as scaling_factor.
    vae = load_autoencoder(run)
    s = vae.config.scaling_factor
    assert s != 1.0 and np.isfinite(s)
    assert json.loads((run / "autoencoder/config.json").read_text())["scaling_factor"] == s
    ema = load_file(run / "checkpoints/step-0000008/ema.safetensors")
    exported = vae.state_dict()
    assert all(torch.equal(ema[f"vae.{k}"], v) for k, v in exported.items())
    # Discriminator and its optimizer live in the same checkpoint (safetensors).
    files = json.loads((run / "checkpoints/step-0000008/manifest.json").read_text())["files"]
    assert {"disc.safetensors", "disc_optimizer.safetensors"} <= set(files)
    # It is not a denoiser: `difftrain sample` says what to do with it instead.
    res = runner.invoke(app, ["sample", str(run), "--out", str(tmp_path / "gen")])
    assert res.exit_code == 2 and "latent.autoencoder" in res.output
    grid = Image.open(run / "samples/step-0000008.png")
    assert grid.size[1] >= 256 and grid.size[0] > 3 * grid.size[1]  # originals, reconstructions


def test_autoencoder_resume_is_exact(ae_config, tmp_path):
    straight, split = tmp_path / "straight", tmp_path / "split"
    invoke("train", ae_config(straight))
    invoke("train", ae_config(split, **{"train.max_steps": 4}))
    res = invoke("train", ae_config(split), "--resume")
    assert "resumed from" in res.output

    def losses(run):
        return {
            r["step"]: (r["train/loss"], r.get("disc/loss")) for r in rows(run) if "train/loss" in r
        }

    assert losses(straight) == losses(split)  # bitwise, the discriminator's loss too
    for group in ("model", "ema", "disc", "disc_optimizer"):
        a = load_file(straight / f"checkpoints/step-0000008/{group}.safetensors")
        b = load_file(split / f"checkpoints/step-0000008/{group}.safetensors")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), group


def test_bad_autoencoder_config_exits_2(ae_config, tmp_path):
    path = ae_config(tmp_path / "bad", **{"autoencoder.disc_layers": 3})
    res = runner.invoke(app, ["train", path])
    assert res.exit_code == 2 and "disc_layers <= 2" in res.output
    res = runner.invoke(app, ["train", path, "--set", "autoencoder.lpips_weight=1"])
    assert res.exit_code == 2 and "lpips_weights" in res.output
