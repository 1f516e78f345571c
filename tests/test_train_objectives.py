"""`difftrain train` runs every objective on the tiny digits config, and `difftrain sample`
runs the new samplers, schedules, img2img and inpainting on the result."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from difftrain.cli.main import app
from tests.conftest import TINY

runner = CliRunner()

OBJECTIVES = {
    "edm": ["diffusion.weighting=learned"],
    "vp": [
        "diffusion.prediction=v",
        "diffusion.zero_terminal_snr=true",
        "diffusion.weighting=min-snr",
    ],
    "iddpm": ["diffusion.beta_schedule=cosine"],
    "flow": ["diffusion.offset_noise=0.1", "sample.sampler=dpmpp-2m", "sample.schedule=uniform"],
}


def train_args(run_dir, objective: str) -> list[str]:
    sets = [
        f"train.run_dir={run_dir}",
        "train.max_steps=2",
        "train.batch_size=16",
        "train.checkpoint_every=2",
        "train.sample_every=2",
        "data.val_fraction=0",
        "logging.tensorboard=false",
        "logging.progress=false",
        "sample.num=2",
        "sample.steps=2",
        f"diffusion.objective={objective}",
        *OBJECTIVES[objective],
    ]
    return ["train", str(TINY), *[a for s in sets for a in ("--set", s)]]


@pytest.mark.parametrize("objective", list(OBJECTIVES))
def test_train_runs_each_objective(objective, tmp_path):
    run = tmp_path / objective
    res = runner.invoke(app, train_args(run, objective))
    assert res.exit_code == 0, res.output + repr(res.exception)
    rows = [json.loads(r) for r in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [r["train/loss"] for r in rows if "train/loss" in r]
    assert losses and all(np.isfinite(losses))
    assert (run / "checkpoints" / "step-0000002" / "ema.safetensors").is_file()
    if objective != "vp":
        return
    # Sampling from the run: a multistep sampler on the training timesteps' uniform schedule,
    # then img2img + inpainting with RePaint resampling.
    out = tmp_path / "samples"
    res = runner.invoke(
        app,
        [
            "sample",
            str(run),
            "--num",
            "2",
            "--steps",
            "4",
            "--sampler",
            "dpmpp-2m",
            "--schedule",
            "uniform",
            "--out",
            str(out),
        ],
    )
    assert res.exit_code == 0, res.output + repr(res.exception)
    assert (out / "grid.png").is_file()
    init = np.zeros((8, 8), np.uint8)
    init[:, :4] = 255
    Image.fromarray(init).save(tmp_path / "init.png")
    mask = np.zeros((8, 8), np.uint8)
    mask[2:6, 2:6] = 255  # white = generate
    Image.fromarray(mask).save(tmp_path / "mask.png")
    out2 = tmp_path / "inpaint"
    res = runner.invoke(
        app,
        [
            "sample",
            str(run),
            "--num",
            "2",
            "--steps",
            "3",
            "--sampler",
            "ddpm",
            "--init-image",
            str(tmp_path / "init.png"),
            "--mask",
            str(tmp_path / "mask.png"),
            "--resample",
            "2",
            "--out",
            str(out2),
        ],
    )
    assert res.exit_code == 0, res.output + repr(res.exception)
    img = np.asarray(Image.open(out2 / "000000.png"))
    keep = mask == 0
    assert (img[keep] == init[keep]).all()  # known pixels survive PNG round trips exactly
    res = runner.invoke(
        app,
        [
            "sample",
            str(run),
            "--num",
            "1",
            "--sampler",
            "heun",
            "--eta",
            "0.5",
            "--out",
            str(tmp_path / "bad"),
        ],
    )
    assert res.exit_code == 2 and "eta" in res.output
