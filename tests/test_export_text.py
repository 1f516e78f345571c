"""--format diffusers for text-to-image latent runs: a StableDiffusionPipeline directory that
unmodified diffusers loads; its tokenizer gives difftrain's token ids and its samples (with
classifier-free guidance) match difftrain's for the same initial latents.

Tolerance: max |diffusers − difftrain| ≤ 1e-3 on decoded images in [0, 1] (EDM: diffusers starts
from √(σ_max²+1)·ε, difftrain from σ_max·ε; VP: DDIM's trailing steps, 5 dividing T = 1000)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from diffusers import DiffusionPipeline

from difftrain.config import ConfigError
from difftrain.export.diffusers_fmt import matching_sampler, matching_sigmas
from difftrain.export.run_export import export_run
from difftrain.export.weights import load_exported
from difftrain.pipeline.checkpoint import sha256
from difftrain.pipeline.generate import generate
from difftrain.pipeline.run import load_run
from difftrain.samplers import randn, sample_generators
from tests.export_helpers import make_text_latent_run

PROMPTS = ["red square", "blue disc", "", "a much longer prompt that gets truncated"]


@pytest.mark.parametrize(
    "tokenizer,objective,pooled",
    [("byte", "edm", False), ("bpe", "vp", False), ("byte", "edm", True)],
)
def test_stable_diffusion_layout_reproduces_difftrain(tmp_path, tokenizer, objective, pooled):
    run_dir = make_text_latent_run(
        tmp_path / "run", tokenizer, **{"diffusion.objective": objective, "text.pooled": pooled}
    )
    export_run(run_dir, "diffusers", tmp_path / "sd")
    index = json.loads((tmp_path / "sd/model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    unet_cfg = json.loads((tmp_path / "sd/unet/config.json").read_text())
    assert unet_cfg["addition_embed_type"] == ("text" if pooled else None)
    pipe = DiffusionPipeline.from_pretrained(tmp_path / "sd")
    pipe.set_progress_bar_config(disable=True)
    run = load_run(run_dir)
    # The exported tokenizer gives the run's ids (including "" = the guidance null, truncation).
    hf = pipe.tokenizer(
        PROMPTS,
        padding="max_length",
        max_length=pipe.tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids
    assert torch.equal(hf, run.text.ids(PROMPTS))
    # Samples with guidance 2 from the same initial latents.
    n, steps, prompts = 2, 5, PROMPTS[:2]
    shape = tuple(run.sample_shape)
    noise = randn((n, *shape), sample_generators(3, range(n)))
    images = pipe(
        prompt=prompts,
        guidance_scale=2.0,
        num_inference_steps=steps,
        latents=noise.clone(),
        output_type="np",
    ).images
    x = generate(
        run.denoiser,
        num=n,
        shape=shape,
        seed=3,
        labels=run.text.ids(prompts),
        null_class=run.text.null(),
        guidance=2.0,
        sampler=matching_sampler(run.config),
        sigmas=matching_sigmas(run.config, steps),
    )
    ref = (run.to_images(x) / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    assert images.shape == ref.shape == (n, 16, 16, 3) and ref.std() > 0.01
    err = np.abs(images - ref).max()
    print(f"diffusers parity text {objective}: max |diffusers - difftrain| = {err:.1e}")
    assert err <= 1e-3


def test_text_flow_runs_are_refused_for_diffusers(tmp_path):
    run_dir = make_text_latent_run(tmp_path / "run", "byte", **{"diffusion.objective": "flow"})
    with pytest.raises(Exception, match="FlowMatchEulerDiscreteScheduler"):
        export_run(run_dir, "diffusers", tmp_path / "a")
    assert not (tmp_path / "a").exists()


@pytest.mark.parametrize(
    "kw,reason",
    [
        ({"shift_factor": 0.1}, "shift_factor"),
        ({"text": False}, "latent model without text"),
        ({"latent": False}, "pixel-space text model"),
    ],
)
def test_runs_without_a_stock_pipeline_are_refused(tmp_path, kw, reason):
    run_dir = make_text_latent_run(tmp_path / "run", **kw)
    with pytest.raises(ConfigError, match=reason):
        export_run(run_dir, "diffusers", tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("tokenizer", ["bpe", "byte"])
def test_safetensors_export_of_a_text_latent_run_samples_like_the_run(tmp_path, tokenizer):
    """Autoencoder and tokenizer travel with the weights; the run directory is not needed."""
    run_dir = make_text_latent_run(tmp_path / "run", tokenizer)
    export_run(run_dir, "safetensors", tmp_path / "st")
    ref = load_run(run_dir)
    shutil.rmtree(run_dir)
    got = load_exported(tmp_path / "st")
    assert got.sample_shape == ref.sample_shape and got.latents.scale == ref.latents.scale
    assert torch.equal(got.text.ids(PROMPTS), ref.text.ids(PROMPTS))
    outs = []
    for run in (ref, got):
        x = generate(
            run.denoiser,
            num=2,
            shape=run.sample_shape,
            seed=1,
            labels=run.text.ids(PROMPTS[:2]),
            null_class=run.text.null(),
            guidance=2.0,
            steps=3,
        )
        outs.append(run.to_images(x))
    assert outs[0].shape == (2, 3, 16, 16)
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0)


def test_safetensors_export_never_follows_a_path_in_its_config(tmp_path):
    run_dir = make_text_latent_run(tmp_path / "run", "byte")
    export_run(run_dir, "safetensors", tmp_path / "st")
    meta = json.loads((tmp_path / "st/model.json").read_text())
    meta["config"]["latent"]["autoencoder"] = str(run_dir / "autoencoder")
    (tmp_path / "st/model.json").write_text(json.dumps(meta))
    info = json.loads((tmp_path / "st/export.json").read_text())
    info["files"]["model.json"] = sha256(tmp_path / "st/model.json")  # a consistent forgery
    (tmp_path / "st/export.json").write_text(json.dumps(info))
    with pytest.raises(ConfigError, match="malformed export config"):
        load_exported(tmp_path / "st")


def test_pretrained_text_encoders_are_refused_for_safetensors_and_onnx(tmp_path):
    """text.encoder = 'path' reads its encoder and tokenizer from outside the run."""
    from difftrain.export.onnx_fmt import check_onnx_supported
    from difftrain.export.weights import check_safetensors_exportable

    run = load_run(make_text_latent_run(tmp_path / "run", "byte"))
    text = run.config.text.model_copy(update={"encoder": "path", "path": tmp_path / "clip"})
    run.config = run.config.model_copy(update={"text": text})
    for check in (check_onnx_supported, check_safetensors_exportable):
        with pytest.raises(ConfigError, match="text.encoder = 'path'"):
            check(run)
