"""difftrain export: safetensors round trip, out-directory safety and refusals (exit 2)."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from difftrain.cli.main import app
from difftrain.config import ConfigError
from difftrain.export.outdir import MARKER
from difftrain.export.run_export import export_run
from difftrain.export.weights import load_exported
from difftrain.pipeline.generate import generate
from difftrain.pipeline.run import load_run
from tests.export_helpers import make_run

runner = CliRunner()


def cli(*args):
    return runner.invoke(app, ["export", *[str(a) for a in args]])


@pytest.mark.parametrize("k,objective", [(3, "edm"), (None, "vp")])
def test_safetensors_round_trip_gives_the_same_samples(tmp_path, k, objective):
    run_dir = make_run(tmp_path / "run", k, **{"diffusion.objective": objective})
    res = cli(run_dir, "--format", "safetensors", "--out", tmp_path / "st")
    assert res.exit_code == 0, res.output
    ref, got = load_run(run_dir), load_exported(tmp_path / "st")
    assert got.num_classes == k and got.config == ref.config
    labels = None if k is None else torch.tensor([0, 1, 2])
    kw = dict(num=3, shape=(1, 8, 8), seed=5, steps=3, labels=labels, null_class=k)
    torch.testing.assert_close(
        generate(got.denoiser, **kw), generate(ref.denoiser, **kw), rtol=0, atol=0
    )


def test_dit_exports_to_onnx_and_safetensors_but_not_diffusers(tmp_path):
    run_dir = make_run(tmp_path / "run", 3, **{"model.preset": "dit-tiny"})
    res = cli(run_dir, "--format", "diffusers", "--out", tmp_path / "d")
    assert res.exit_code == 2 and "only U-Net backbones" in res.output
    res = cli(run_dir, "--format", "onnx", "--out", tmp_path / "o")
    assert res.exit_code == 0, res.output
    assert "max relative error" in res.output
    assert load_exported(export_run(run_dir, "safetensors", tmp_path / "s").out).num_classes == 3


def test_weights_option_picks_the_raw_or_the_ema_weights(tmp_path):
    run_dir = make_run(tmp_path / "run")
    for weights in ("model", "ema"):
        out = tmp_path / weights
        assert (
            cli(run_dir, "--format", "safetensors", "--weights", weights, "--out", out).exit_code
            == 0
        )
        got = load_exported(out).denoiser.state_dict()
        ref = load_run(run_dir, weights=weights).denoiser.state_dict()
        assert all(torch.equal(got[k], ref[k]) for k in ref)
        assert json.loads((out / MARKER).read_text())["source"]["weights"] == weights
    a, b = (load_exported(tmp_path / w).denoiser.state_dict() for w in ("model", "ema"))
    assert not torch.equal(a["backbone.unet.conv_in.weight"], b["backbone.unet.conv_in.weight"])


def test_safetensors_export_detects_a_modified_file(tmp_path):
    make_run(tmp_path / "run")
    export_run(tmp_path / "run", "safetensors", tmp_path / "st")
    meta = json.loads((tmp_path / "st/model.json").read_text())
    meta["data"]["class_names"] = ["sneaky"]
    (tmp_path / "st/model.json").write_text(json.dumps(meta))
    with pytest.raises(ConfigError, match="SHA-256 mismatch"):
        load_exported(tmp_path / "st")


def test_export_manifest_names_outside_the_directory_are_refused(tmp_path):
    make_run(tmp_path / "run")
    export_run(tmp_path / "run", "safetensors", tmp_path / "st")
    (tmp_path / "secret").write_text("x")
    info = json.loads((tmp_path / "st" / MARKER).read_text())
    info["files"]["../secret"] = "0" * 64
    (tmp_path / "st" / MARKER).write_text(json.dumps(info))
    with pytest.raises(ConfigError, match="outside the export"):
        load_exported(tmp_path / "st")


def test_out_dir_rules(tmp_path, monkeypatch):
    run_dir = make_run(tmp_path / "run")
    # "--out ." in an empty working directory exports into it.
    (tmp_path / "here").mkdir()
    monkeypatch.chdir(tmp_path / "here")
    inode = (tmp_path / "here").stat().st_ino
    assert cli(run_dir, "--format", "safetensors", "--out", ".").exit_code == 0
    assert load_exported(tmp_path / "here").num_classes is None
    assert (tmp_path / "here").stat().st_ino == inode  # the same directory, not a replacement
    # Non-empty directory that is not an export: refused, untouched.
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    res = cli(run_dir, "--format", "safetensors", "--out", busy)
    assert res.exit_code == 2 and "not empty" in res.output
    assert sorted(p.name for p in busy.iterdir()) == ["keep.txt"]
    # Empty directory: used. A previous export: replaced. No staging leftovers.
    (tmp_path / "empty").mkdir()
    assert cli(run_dir, "--format", "safetensors", "--out", tmp_path / "empty").exit_code == 0
    assert cli(run_dir, "--format", "safetensors", "--out", tmp_path / "empty").exit_code == 0
    load_exported(tmp_path / "empty")
    # A previous export with a file added by someone else: refused, that file kept.
    (tmp_path / "empty/notes.txt").write_text("user's")
    res = cli(run_dir, "--format", "safetensors", "--out", tmp_path / "empty")
    assert res.exit_code == 2 and "notes.txt" in res.output
    assert (tmp_path / "empty/notes.txt").read_text() == "user's"
    # A symbolic link is not followed.
    (tmp_path / "link").symlink_to(tmp_path / "empty", target_is_directory=True)
    res = cli(run_dir, "--format", "safetensors", "--out", tmp_path / "link")
    assert res.exit_code == 2 and "symbolic link" in res.output
    # A file where the directory should be.
    (tmp_path / "afile").write_text("x")
    assert cli(run_dir, "--format", "onnx", "--out", tmp_path / "afile").exit_code == 2
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name or ".old-" in p.name]


def test_refusals_exit_2(tmp_path):
    run_dir = make_run(tmp_path / "run", 3, **{"diffusion.objective": "flow"})
    res = cli(run_dir, "--format", "tflite", "--out", tmp_path / "o")
    assert res.exit_code == 2 and "unknown" in res.output
    res = cli(run_dir, "--format", "diffusers", "--out", tmp_path / "o")
    assert res.exit_code == 2 and "class-conditional flow" in res.output
    res = cli(tmp_path / "nowhere", "--format", "onnx", "--out", tmp_path / "o")
    assert res.exit_code == 2 and "not a run directory" in res.output
    res = cli(run_dir, "--format", "onnx", "--weights", "best", "--out", tmp_path / "o")
    assert res.exit_code == 2
    assert not (tmp_path / "o").exists()


def test_a_trained_run_exports_to_every_format_through_the_cli(tiny_args, tmp_path):
    """A real (2-step) training run, class-conditional EDM on digits, end to end."""
    from diffusers import DiffusionPipeline

    run_dir = tmp_path / "run"
    args = tiny_args(run_dir, **{"train.max_steps": 2, "train.checkpoint_every": 2})
    res = runner.invoke(app, ["train", *args])
    assert res.exit_code == 0, res.output
    for fmt in ("diffusers", "safetensors", "onnx"):
        res = cli(run_dir, "--format", fmt, "--out", tmp_path / fmt)
        assert res.exit_code == 0, res.output
        assert f"exported {fmt}" in res.output and str(tmp_path / fmt) in res.output
    pipe = DiffusionPipeline.from_pretrained(tmp_path / "diffusers")
    pipe.set_progress_bar_config(disable=True)
    out = pipe(batch_size=2, class_labels=[3, 4], num_inference_steps=2, output_type="np")
    assert out.images.shape == (2, 8, 8, 1)
    assert load_exported(tmp_path / "safetensors").class_names == load_run(run_dir).class_names
