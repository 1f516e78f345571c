"""Text-to-image through the CLI: a captioned folder → train a few steps → sample with prompts."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from difftrain.cli.main import app
from difftrain.pipeline.run import load_run

runner = CliRunner()
torch.set_num_threads(1)


def invoke(*args, code: int = 0):
    res = runner.invoke(app, [str(a) for a in args])
    assert res.exit_code == code, res.output + repr(res.exception)
    return res


def captioned_folder(root):
    """8 tiny images with metadata.jsonl captions: red squares and blue discs."""
    root.mkdir()
    rows = []
    yy, xx = np.mgrid[:16, :16]
    for i in range(8):
        img = np.full((16, 16, 3), 255, np.uint8)
        if i % 2 == 0:
            img[4:12, 4:12] = (220, 20, 20)
            text = "red square"
        else:
            img[(yy - 8) ** 2 + (xx - 8) ** 2 < 20] = (20, 20, 220)
            text = "blue disc"
        Image.fromarray(img).save(root / f"{i}.png")
        rows.append({"file_name": f"{i}.png", "text": text})
    (root / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return root


@pytest.fixture(scope="module")
def text_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("t2i")
    data = captioned_folder(tmp / "data")
    run = tmp / "run"
    cfg = tmp / "t2i.yaml"
    cfg.write_text(
        f"""
data: {{path: {data}, resolution: 16, val_fraction: 0.25}}
model: {{preset: unet-cond-tiny}}
text: {{encoder: scratch, tokenizer: bpe, vocab_size: 300, width: 32, heads: 2, layers: 1,
        max_length: 8, caption_dropout: 0.2}}
train: {{run_dir: {run}, batch_size: 4, max_steps: 3, checkpoint_every: 3, sample_every: 3,
         log_every: 1, posthoc_ema_sigma_rels: []}}
sample: {{num: 4, steps: 2, guidance: 2.0}}
logging: {{tensorboard: false, progress: false}}
"""
    )
    invoke("train", cfg)
    return run


def test_a_text_run_resumes_exactly(text_run, tmp_path):
    from safetensors.torch import load_file

    cfg = text_run / "config.yaml"
    split = tmp_path / "split"
    invoke("train", cfg, "--set", f"train.run_dir={split}", "--set", "train.max_steps=2",
           "--set", "train.checkpoint_every=2")  # fmt: skip
    invoke("train", cfg, "--set", f"train.run_dir={split}", "--set", "train.checkpoint_every=2",
           "--resume")  # fmt: skip
    a = load_file(text_run / "checkpoints/step-0000003/model.safetensors")
    b = load_file(split / "checkpoints/step-0000003/model.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)  # text encoder and U-Net, bit for bit


def test_training_writes_the_tokenizer_and_prompt_grids(text_run):
    assert (text_run / "text" / "tokenizer.json").is_file()
    grid = text_run / "samples" / "step-0000003.png"
    assert grid.is_file()
    # default grid prompts: the distinct held-out captions first, one row each
    prompts = (text_run / "samples" / "prompts.txt").read_text().splitlines()
    assert sorted(prompts) == ["blue disc", "red square"]
    rows = [json.loads(r) for r in (text_run / "metrics.jsonl").read_text().splitlines()]
    assert any("val/loss" in r for r in rows)
    run = load_run(text_run)
    assert run.num_classes is None and run.text is not None
    assert any(".text.model." in k for k in run.denoiser.state_dict())  # trained jointly
    # validation is conditioned on the held-out captions (the logged number is reproduced)
    from difftrain.data import load_data, to_model_range
    from difftrain.eval.validation import sigma_grid, validation_loss

    cfg = run.config
    _, val = load_data(cfg.data).split(cfg.data.val_fraction, cfg.train.seed)
    x, ids = to_model_range(val.images), run.text.ids(val.captions)
    logged = [r["val/loss"] for r in rows if r.get("step") == 3 and "val/loss" in r][0]
    with torch.no_grad():
        ours = validation_loss(run.denoiser, x, ids, sigma_grid(n=8), seed=cfg.train.seed)
        null = validation_loss(run.denoiser, x, None, sigma_grid(n=8), seed=cfg.train.seed)
    assert ours["val/loss"] == pytest.approx(logged, rel=1e-5)
    assert null["val/loss"] != pytest.approx(logged, rel=1e-5)


def test_sample_with_prompts_and_a_negative_prompt(text_run, tmp_path):
    out = tmp_path / "gen"
    invoke("sample", text_run, "--prompt", "red square", "--prompt", "blue disc", "--num", 2,
           "--steps", 2, "--guidance", 3, "--negative-prompt", "blue", "--out", out)  # fmt: skip
    assert sorted(p.name for p in out.glob("0*.png")) == [f"{i:06d}.png" for i in range(4)]
    assert (out / "grid.png").is_file()
    info = json.loads((out / "sample.json").read_text())
    assert info["prompts"] == ["red square", "blue disc"] and info["guidance"] == 3.0
    a = np.asarray(Image.open(out / "000000.png"), dtype=np.int32)
    b = np.asarray(Image.open(out / "000002.png"), dtype=np.int32)
    assert np.abs(a - b).max() > 0  # same seed and index, different prompt → different image
    # a prompt file gives the same images as the same prompts on the command line
    pf = tmp_path / "prompts.txt"
    pf.write_text("red square\n\nblue disc\n")
    out2 = tmp_path / "gen2"
    invoke("sample", text_run, "--prompt-file", pf, "--num", 2, "--steps", 2, "--guidance", 3,
           "--negative-prompt", "blue", "--out", out2)  # fmt: skip
    for i in range(4):
        assert np.array_equal(
            np.asarray(Image.open(out / f"{i:06d}.png")),
            np.asarray(Image.open(out2 / f"{i:06d}.png")),
        )


def test_sample_without_a_prompt_uses_the_empty_prompt(text_run, tmp_path):
    invoke("sample", text_run, "--num", 2, "--steps", 2, "--out", tmp_path / "a")
    invoke("sample", text_run, "--prompt", "", "--num", 2, "--steps", 2, "--out", tmp_path / "b")
    for i in range(2):
        a = np.asarray(Image.open(tmp_path / "a" / f"{i:06d}.png"))
        assert np.array_equal(a, np.asarray(Image.open(tmp_path / "b" / f"{i:06d}.png")))


def test_streamed_captions_train_a_byte_tokenizer_model(text_run, tmp_path):
    run = tmp_path / "stream"
    invoke("train", text_run / "config.yaml", "--set", f"train.run_dir={run}",
           "--set", "data.loader=stream", "--set", "data.workers=0",
           "--set", "text.tokenizer=byte", "--set", "train.max_steps=2")  # fmt: skip
    assert (run / "checkpoints" / "step-0000002").is_dir()
    assert not (run / "text").exists()  # bytes need no tokenizer file
    res = invoke("train", text_run / "config.yaml", "--set", f"train.run_dir={tmp_path / 's2'}",
                 "--set", "data.loader=stream", "--set", "data.workers=0", code=2)  # fmt: skip
    assert "text.tokenizer = 'byte'" in res.output  # BPE needs every caption up front


def test_bad_prompt_inputs_exit_2(text_run, tmp_path):
    res = invoke("sample", text_run, "--prompt-file", tmp_path / "nope.txt", "--out", tmp_path / "o",
                 code=2)  # fmt: skip
    assert "--prompt-file" in res.output
    empty = tmp_path / "empty.txt"
    empty.write_text("\n \n")
    res = invoke("sample", text_run, "--prompt-file", empty, "--out", tmp_path / "o", code=2)
    assert "no prompts" in res.output


def test_a_tampered_tokenizer_file_is_refused(text_run, tmp_path):
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(text_run, copy)
    (copy / "text" / "tokenizer.json").write_text('{"model": 5}')
    res = invoke("sample", copy, "--prompt", "red square", "--num", 1, "--out", tmp_path / "o",
                 code=2)  # fmt: skip
    assert "tokenizer" in res.output


def test_prompt_eval_script_on_a_text_run(text_run, tmp_path):
    import importlib.util
    from dataclasses import asdict
    from pathlib import Path

    from difftrain.eval.features import FORMAT, FeatureNet, FeatureNetSpec, save_feature_net

    spec = FeatureNetSpec(channels=3, num_classes=2, width=8, feature_dim=8)
    info = {"format": FORMAT, "spec": asdict(spec), "class_names": ["red", "blue"]}
    save_feature_net(FeatureNet(spec), info, tmp_path / "features")
    prompts = tmp_path / "p.tsv"
    prompts.write_text("red square\tred\nblue disc\tblue\n")
    script = Path(__file__).resolve().parents[1] / "scripts" / "prompt_eval.py"
    mod_spec = importlib.util.spec_from_file_location("prompt_eval_script", script)
    mod = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(mod)
    out = tmp_path / "eval.json"
    result = mod.main([str(text_run), "--prompts", str(prompts), "--feature-net",
                       str(tmp_path / "features"), "--num", "2", "--steps", "2", "--out", str(out)])  # fmt: skip
    saved = json.loads(out.read_text())
    assert saved["prompt_accuracy"] == result["prompt_accuracy"]
    assert set(saved["per_prompt"]) == {"red square", "blue disc"} and saved["chance"] == 0.5
    assert saved["images"] == 4 and saved["reference_images"] == 2
    # --checkpoint scores a named checkpoint (not the latest) and records which.
    ckpts = sorted((text_run / "checkpoints").glob("step-*"))
    ckpt = ckpts[0]
    assert len(ckpts) > 1 and saved["checkpoint"] == str(ckpts[-1])
    again = mod.main([str(text_run), "--prompts", str(prompts), "--feature-net",
                      str(tmp_path / "features"), "--num", "2", "--steps", "2", "--out", str(out),
                      "--checkpoint", str(ckpt)])  # fmt: skip
    assert again["checkpoint"] == str(ckpt)


def test_a_short_run_learns_to_follow_prompts(tmp_path):
    """64 images, two captions that differ only in the colour word; 100 steps of 16 are enough
    for samples to take the prompt's colour (measured: 16 of 16 after 150 steps)."""
    root = tmp_path / "data"
    root.mkdir()
    rows = []
    for i in range(64):
        img = np.full((8, 8, 3), 255, np.uint8)
        red = i % 2 == 0
        img[2:6, 2:6] = (220, 20, 20) if red else (20, 20, 220)
        Image.fromarray(img).save(root / f"{i}.png")
        rows.append({"file_name": f"{i}.png", "text": "red square" if red else "blue square"})
    (root / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(
        f"""
data: {{path: {root}, resolution: 8, val_fraction: 0.1}}
model: {{preset: unet-cond-tiny}}
text: {{encoder: scratch, vocab_size: 300, width: 32, heads: 2, layers: 1, max_length: 8}}
optim: {{lr: 2.0e-3}}
train: {{run_dir: {tmp_path / "run"}, batch_size: 16, max_steps: 100, checkpoint_every: 100,
         sample_every: 100, posthoc_ema_sigma_rels: [], ema_halflife_kimg: 0.5}}
sample: {{num: 4, steps: 10, guidance: 2.0}}
logging: {{tensorboard: false, progress: false}}
"""
    )
    invoke("train", cfg)
    out = tmp_path / "gen"
    invoke("sample", tmp_path / "run", "--prompt", "red square", "--prompt", "blue square",
           "--num", 8, "--steps", 10, "--guidance", 2, "--out", out)  # fmt: skip
    centre = [np.asarray(Image.open(out / f"{i:06d}.png"), float)[2:6, 2:6].mean((0, 1))
              for i in range(16)]  # fmt: skip
    follows = [c[0] > c[2] + 50 for c in centre[:8]] + [c[2] > c[0] + 50 for c in centre[8:]]
    assert sum(follows) >= 14, centre
