"""Latent diffusion through the one loop and the CLI: train on cached latents, resume exactly,
sample pixels of the right size; config errors exit 2. A tiny random AutoencoderKL on digits."""

from __future__ import annotations

import json

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file
from typer.testing import CliRunner

from difftrain.cli.main import app
from difftrain.pipeline.run import load_run
from tests.test_latent_cache import tiny_ae

runner = CliRunner()


def invoke(*args):
    res = runner.invoke(app, [str(a) for a in args])
    assert res.exit_code == 0, res.output + repr(res.exception)
    return res


def losses(run_dir):
    rows = [json.loads(r) for r in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["train/loss"] for r in rows if "train/loss" in r}


def latent_args(tiny_args, run, ae, **extra):
    sets = {"latent.autoencoder": ae, "train.max_steps": 12, "train.checkpoint_every": 6}
    sets["data.max_images"] = 300  # a small cache: seconds to encode
    sets.update(extra)
    return tiny_args(run, **sets)


def test_latent_run_trains_samples_and_resumes_exactly(tiny_args, tmp_path):
    ae = tiny_ae(tmp_path / "ae")
    straight, split = tmp_path / "straight", tmp_path / "split"
    res = invoke("train", *latent_args(tiny_args, straight, ae, **{"train.sample_every": 12}))
    assert "trained 12 steps" in res.output
    # The run keeps its own autoencoder copy and a cache keyed by autoencoder + preprocessing.
    assert (straight / "autoencoder" / "diffusion_pytorch_model.safetensors").is_file()
    (cache,) = (straight / "latents").iterdir()
    assert (cache / "manifest.json").is_file()
    grid = Image.open(straight / "samples/step-0000012.png")
    assert grid.mode == "L" and grid.size[0] >= 256  # decoded to 1-channel pixels
    assert any("val/loss" in json.loads(r) for r in (straight / "metrics.jsonl").open())

    # The denoiser works in latents (4 × 4 × 4), the run decodes to 8 × 8 × 1 pixels.
    run = load_run(straight)
    assert run.sample_shape == (4, 4, 4) and run.autoencoder is not None
    assert run.latents.scale == 0.7  # from the autoencoder's config
    assert run.to_images(torch.zeros(2, 4, 4, 4)).shape == (2, 1, 8, 8)

    # Resume on latents: a 6-step run continued to 12 equals the straight 12-step run.
    invoke("train", *latent_args(tiny_args, split, ae, **{"train.max_steps": 6}))
    res = invoke("train", *latent_args(tiny_args, split, ae), "--resume")
    assert "resumed from" in res.output
    assert losses(straight) == losses(split)
    a = load_file(straight / "checkpoints/step-0000012/model.safetensors")
    b = load_file(split / "checkpoints/step-0000012/model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)

    # `difftrain sample` decodes: PNGs and arrays at the pixel size.
    out = tmp_path / "out"
    invoke("sample", straight, "--num", 5, "--steps", 3, "--out", out, "--npz", tmp_path / "s.npz")
    assert Image.open(out / "000000.png").size == (8, 8)
    with np.load(tmp_path / "s.npz") as z:
        assert z["images"].shape == (5, 8, 8, 1)
    # img2img encodes the init image into latents; inpainting (exact pixels) is refused.
    Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8) * 4).save(tmp_path / "init.png")
    init = ["--init-image", tmp_path / "init.png", "--num", 2, "--steps", 3]
    invoke("sample", straight, *init, "--strength", 0.5, "--out", tmp_path / "i2i")
    assert Image.open(tmp_path / "i2i" / "000001.png").size == (8, 8)
    res = runner.invoke(
        app,
        [str(a) for a in ("sample", straight, *init, "--mask", tmp_path / "init.png")]
        + ["--out", str(tmp_path / "inpaint")],
    )
    assert res.exit_code == 2 and "latent model" in res.output

    # `difftrain evaluate` compares decoded pixels with real images in a pixel feature space.
    feats = ["--set", "features.width=8", "--set", "features.feature_dim=16"]
    invoke("features", "train", straight / "config.yaml", *feats, "--set", "features.epochs=1")
    invoke("evaluate", straight, "--metrics", "fid,acc", "--num", 20, "--steps", 2)
    entry = json.loads((straight / "eval.json").read_text())["latest"]
    assert {"fid_domain", "acc"} <= set(entry["metrics"])
    res = runner.invoke(app, ["evaluate", str(straight), "--metrics", "nll", "--num", "20"])
    assert res.exit_code == 2 and "latent" in res.output
    # The report's denoising trajectory decodes each latent frame.
    invoke("report", straight, "--trajectory", 2)
    assert (straight / "report.html").stat().st_size > 0


def test_latent_run_reuses_its_cache_and_refuses_another_autoencoder(tiny_args, tmp_path):
    ae, other = tiny_ae(tmp_path / "ae"), tiny_ae(tmp_path / "other", seed=1)
    shared = tmp_path / "cache"
    for name in ("a", "b"):
        invoke(
            "train",
            *latent_args(
                tiny_args, tmp_path / name, ae, **{"latent.cache_dir": shared, "train.max_steps": 2}
            ),
        )
    assert len(list(shared.iterdir())) == 1  # run b reused run a's cache
    res = runner.invoke(
        app,
        ["train", *latent_args(tiny_args, tmp_path / "a", other, **{"latent.cache_dir": shared})]
        + ["--resume"],
    )
    assert res.exit_code == 2 and "differs from the one this run was trained with" in res.output


def test_encoding_every_step_trains_through_the_same_loop(tiny_args, tmp_path):
    ae = tiny_ae(tmp_path / "ae")
    run = tmp_path / "run"
    sets = {"latent.cache": "false", "data.augment.rotate": 0.5, "train.max_steps": 3}
    invoke("train", *latent_args(tiny_args, run, ae, **sets))
    assert not (run / "latents").exists() and len(losses(run)) == 3


def test_latent_config_errors_exit_2(tiny_args, tmp_path):
    ae = tiny_ae(tmp_path / "ae")
    cases = {
        # 12 px is divisible by unet-small's 4 but not by 2 (autoencoder) × 4
        "data.resolution=12": "divisible by 8 = 2 (the autoencoder's downsampling) × 4",
        "data.augment.rotate=0.5": "latent.cache = false",
        "data.channels=3": "takes 1-channel images",
        "eval.metrics=[fid,nll]": "remove nll from eval.metrics",
        f"latent.cache_dir={ae / 'config.json'}": "is a file",
        "latent.autoencoder=" + str(tmp_path / "nowhere"): "latent.autoencoder = ",
    }
    for setting, message in cases.items():
        key, value = setting.split("=", 1)
        extra = {key: value}
        if key == "eval.metrics":
            extra.update({"eval.every": 6, "train.best_metric": "val/loss"})
        if key == "data.resolution":
            extra["model.preset"] = "unet-small"
        res = runner.invoke(
            app, ["train", *[str(a) for a in latent_args(tiny_args, tmp_path / "r", ae, **extra)]]
        )
        assert res.exit_code == 2, (setting, res.output)
        assert message in res.output.replace("\n", " "), (setting, res.output)


def test_damaged_cache_exits_2_and_dry_run_builds_the_cache(tiny_args, tmp_path):
    ae, run = tiny_ae(tmp_path / "ae"), tmp_path / "run"
    res = invoke("train", *latent_args(tiny_args, run, ae), "--dry-run")
    assert "train_images: 270" in res.output and not (run / "checkpoints").exists()
    (cache,) = (run / "latents").iterdir()
    (cache / "manifest.json").write_text("{}")
    res = runner.invoke(app, ["train", *[str(a) for a in latent_args(tiny_args, run, ae)]])
    out = res.output.replace("\n", "").replace("│", "").replace(" ", "")
    assert res.exit_code == 2 and "isdamaged" in out and cache.name in out
    assert (cache / "shard-00000.mean.npy").is_file()  # nothing deleted


def test_in_training_evaluation_decodes_latent_samples(tiny_args, tmp_path):
    ae, run = tiny_ae(tmp_path / "ae"), tmp_path / "run"
    feats = ["--set", "features.width=8", "--set", "features.feature_dim=16"]
    invoke("features", "train", *tiny_args(run), *feats, "--set", "features.epochs=1")
    sets = {"eval.every": 6, "eval.num": 20, "eval.steps": 2, "eval.metrics": "[fid,acc]"}
    invoke("train", *latent_args(tiny_args, run, ae, **{"train.max_steps": 6, **sets}))
    rows = [json.loads(r) for r in (run / "metrics.jsonl").read_text().splitlines()]
    (row,) = [r for r in rows if "eval/fid_domain" in r]
    assert row["step"] == 6 and 0 <= row["eval/acc"] <= 1
