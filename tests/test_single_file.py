"""`difftrain convert-single-file`: an original-layout SD .safetensors → a diffusers folder through
diffusers' single-file loader, with the configs of a local pipeline folder (nothing downloaded)."""

from __future__ import annotations

import pickle

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from difftrain.cli.main import app
from tests.ldm_fixtures import write_ldm_single_file
from tests.sd_fixtures import make_tiny_sd

runner = CliRunner()
PARTS = {"unet": "diffusion_pytorch_model", "vae": "diffusion_pytorch_model",
         "text_encoder": "model"}  # fmt: skip


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """(original pipeline folder, its single file, a config folder with other random weights)."""
    root = tmp_path_factory.mktemp("single")
    pipe = make_tiny_sd(root / "pipe", seed=0)
    other = make_tiny_sd(root / "configs")
    for part, stem in PARTS.items():  # same configs, other weights: the file's must win
        w = other / part / f"{stem}.safetensors"
        save_file({k: v + 1 for k, v in load_file(w).items()}, w)
    return pipe, write_ldm_single_file(pipe, root / "sd-tiny.safetensors"), other


def convert(*args):
    return runner.invoke(app, ["convert-single-file", *[str(a) for a in args]])


def test_single_file_converts_to_the_same_weights(single, tmp_path):
    pipe, file, configs = single
    out = tmp_path / "converted"
    res = convert(file, "--config", configs, "--out", out)
    assert res.exit_code == 0, res.output + repr(res.exception)
    assert "model.pretrained" in res.output
    for part, stem in PARTS.items():
        want = load_file(pipe / part / f"{stem}.safetensors")
        got = load_file(out / part / f"{stem}.safetensors")
        assert want.keys() == got.keys(), part
        assert all(torch.equal(want[k], got[k]) for k in want), part
        other = load_file(configs / part / f"{stem}.safetensors")  # --config's: not used
        assert not any(torch.equal(other[k], got[k]) for k in got), part
    for sub in ("tokenizer", "scheduler"):
        assert (out / sub).is_dir()
    assert not list(out.rglob("*.bin")) and not list(tmp_path.glob(".converted.tmp-*"))


def test_converted_folder_fine_tunes(single, tmp_path):
    from tests.sd_fixtures import write_images
    from tests.test_finetune_sd import write_config

    pipe, file, configs = single
    out = tmp_path / "converted"
    assert convert(file, "--config", configs, "--out", out).exit_code == 0
    run = tmp_path / "run"
    cfg = write_config(tmp_path / "c.yaml", out, write_images(tmp_path / "imgs", 5), run,
                       train={"max_steps": 2, "sample_every": 1000})  # fmt: skip
    res = runner.invoke(app, ["train", str(cfg)])
    assert res.exit_code == 0, res.output + repr(res.exception)
    assert (run / "checkpoints" / "step-0000002").is_dir()


def test_bad_inputs_exit_2_and_write_nothing(single, tmp_path):
    pipe, file, configs = single
    out = tmp_path / "out"
    res = convert(tmp_path / "missing.safetensors", "--config", configs, "--out", out)
    assert res.exit_code == 2 and "no such file" in res.output
    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(pickle.dumps({"state_dict": {}}))
    res = convert(ckpt, "--config", configs, "--out", out)
    assert res.exit_code == 2 and "pickled" in res.output
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00not json")
    res = convert(junk, "--config", configs, "--out", out)
    assert res.exit_code == 2 and "not a readable .safetensors" in res.output
    other = tmp_path / "lora.safetensors"
    save_file({"lora_unet.down.weight": torch.zeros(2)}, other)
    res = convert(other, "--config", configs, "--out", out)
    assert res.exit_code == 2 and "model.diffusion_model." in res.output
    res = convert(file, "--config", tmp_path, "--out", out)  # not a pipeline folder
    assert res.exit_code == 2 and "model_index.json" in res.output
    assert not out.exists()
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    res = convert(file, "--config", configs, "--out", out)
    assert res.exit_code == 2 and "already exists" in res.output
    assert (out / "mine.txt").read_text() == "keep"  # never replaced
