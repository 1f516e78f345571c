"""Through the CLI: train → checkpoint → resume → sample, on real data (8×8 digits)."""

from __future__ import annotations

import json

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file
from typer.testing import CliRunner

from difftrain.cli.main import app

runner = CliRunner()


def invoke(*args):
    res = runner.invoke(app, [str(a) for a in args])
    assert res.exit_code == 0, res.output + repr(res.exception)
    return res


def losses(run_dir):
    rows = [json.loads(r) for r in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["train/loss"] for r in rows if "train/loss" in r}


def test_train_writes_a_complete_run_directory(tiny_args, tmp_path):
    run = tmp_path / "run"
    invoke("train", *tiny_args(run, **{"logging.tensorboard": "true", "train.sample_every": 30}))
    assert (run / "config.yaml").is_file() and (run / "environment.json").is_file()
    ckpts = sorted(p.name for p in (run / "checkpoints").iterdir())
    # step 0 is written first: a rollback target before the first scheduled checkpoint.
    assert ckpts == ["best.json", "step-0000000", "step-0000010", "step-0000020", "step-0000030"]
    best = json.loads((run / "checkpoints/best.json").read_text())["best"]
    assert len(best) == 1 and best[0]["checkpoint"] in ckpts
    for name in ["model", "ema", "optimizer"]:
        assert (run / "checkpoints/step-0000030" / f"{name}.safetensors").is_file()
    manifest = json.loads((run / "checkpoints/step-0000030/manifest.json").read_text())
    assert set(manifest["files"]) == {
        "model.safetensors",
        "ema.safetensors",
        "optimizer.safetensors",
        "posthoc_ema.safetensors",
        "state.json",
    }
    assert any((run / "tensorboard").iterdir())
    assert Image.open(run / "samples/step-0000030.png").size[0] >= 256
    rows = [json.loads(r) for r in (run / "metrics.jsonl").read_text().splitlines()]
    assert {"train/loss", "train/grad_norm", "train/lr", "train/img_per_s"} <= set(rows[0])
    assert any("val/loss" in r for r in rows)
    # Training reduces the loss (first 5 steps vs last 5, same data distribution).
    ls = losses(run)
    assert np.mean([ls[s] for s in range(26, 31)]) < np.mean([ls[s] for s in range(1, 6)])


def test_resume_continues_exactly(tiny_args, tmp_path):
    straight, split = tmp_path / "straight", tmp_path / "split"
    invoke("train", *tiny_args(straight))
    invoke("train", *tiny_args(split, **{"train.max_steps": 20}))
    res = invoke("train", *tiny_args(split), "--resume")
    assert "resumed from" in res.output and "step-0000020" in res.output
    assert losses(straight) == losses(split)  # bitwise-equal per-step losses
    a = load_file(straight / "checkpoints/step-0000030/model.safetensors")
    b = load_file(split / "checkpoints/step-0000030/model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ea = load_file(straight / "checkpoints/step-0000030/ema.safetensors")
    eb = load_file(split / "checkpoints/step-0000030/ema.safetensors")
    assert all(torch.equal(ea[k], eb[k]) for k in ea)


def test_existing_run_without_resume_is_refused(tiny_args, tmp_path):
    run = tmp_path / "run"
    invoke("train", *tiny_args(run, **{"train.max_steps": 10}))
    res = runner.invoke(app, ["train", *tiny_args(run)])
    assert res.exit_code == 2 and "--resume" in res.output


def test_sample_writes_pngs_grid_and_npz(tiny_args, tmp_path):
    run = tmp_path / "run"
    invoke("train", *tiny_args(run, **{"train.max_steps": 10}))
    out = tmp_path / "out"
    res = invoke(
        "sample",
        run,
        "--num",
        20,
        "--steps",
        3,
        "--seed",
        1,
        "--out",
        out,
        "--npz",
        tmp_path / "s.npz",
        "--guidance",
        2.0,
    )
    assert "grid.png" in res.output
    assert len(list(out.glob("0*.png"))) == 20 and (out / "grid.png").is_file()
    with np.load(tmp_path / "s.npz") as z:
        assert z["images"].shape == (20, 8, 8, 1) and z["images"].dtype == np.uint8
        assert z["labels"].tolist() == [i // 2 for i in range(20)]
    res = invoke(
        "sample",
        run,
        "--num",
        4,
        "--steps",
        2,
        "--class-label",
        3,
        "--out",
        tmp_path / "o3",
        "--npz",
        tmp_path / "c3.npz",
    )
    with np.load(tmp_path / "c3.npz") as z:
        assert z["labels"].tolist() == [3, 3, 3, 3]


def test_sample_bad_input_exits_2(tiny_args, tmp_path):
    run = tmp_path / "run"
    invoke("train", *tiny_args(run, **{"train.max_steps": 10}))
    res = runner.invoke(
        app, ["sample", str(run), "--class-label", "12", "--out", str(tmp_path / "o")]
    )
    assert res.exit_code == 2 and "allowed 0..9" in res.output
    res = runner.invoke(app, ["sample", str(tmp_path / "nothing"), "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "not a run directory" in res.output
