"""The loop over the streaming loader (decode on demand): trains, and resumes exactly mid-epoch."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits
from typer.testing import CliRunner

from difftrain.cli.main import app

runner = CliRunner()


def write_digit_folder(root, n=150):
    """Real PNG files in class sub-folders (scikit-learn digits scaled to 0..255)."""
    d = load_digits()
    for i in range(n):
        folder = root / f"class_{d.target[i]}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray((d.images[i] / 16 * 255).astype(np.uint8)).save(folder / f"{i:04d}.png")
    (root / "class_0" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")  # one bad file


def losses(run):
    rows = [json.loads(r) for r in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["train/loss"] for r in rows if "train/loss" in r}


def test_stream_loader_trains_and_resumes_exactly(tiny_args, tmp_path):
    data = tmp_path / "digits"
    write_digit_folder(data)
    extra = {
        "data.source": "folder",
        "data.path": str(data),
        "data.loader": "stream",
        "data.workers": 0,
        "train.batch_size": 32,
        "train.checkpoint_every": 4,
        "data.hflip": "true",
    }
    straight, split = tmp_path / "a", tmp_path / "b"
    res = runner.invoke(app, ["train", *tiny_args(straight, **{**extra, "train.max_steps": 10})])
    assert res.exit_code == 0, res.output
    bad = json.loads((straight / "bad_files.json").read_text())
    assert "broken.png" in json.dumps(bad)
    res = runner.invoke(app, ["train", *tiny_args(split, **{**extra, "train.max_steps": 6})])
    assert res.exit_code == 0, res.output
    res = runner.invoke(
        app, ["train", *tiny_args(split, **{**extra, "train.max_steps": 10}), "--resume"]
    )
    assert res.exit_code == 0 and "resumed from" in res.output, res.output
    # 135 training images / 32 per step: the resume at step 4 is mid-epoch.
    assert losses(straight) == losses(split)
