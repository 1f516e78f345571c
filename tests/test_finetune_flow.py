"""Fine-tuning the flow-matching transformer pipelines (issue 10): tiny random SD3 and FLUX
pipelines saved in diffusers format by the test; LoRA runs of a few steps through `difftrain
train`, the LoRA file in the diffusers pipeline, the denoiser against diffusers' own
transformer call, and the scheduler → `flow` mapping (shift, FLUX's dynamic shift)."""

from __future__ import annotations

import json
import math

import pytest
import torch
import yaml
from safetensors.torch import load_file

from tests.flow_fixtures import make_tiny_flux, make_tiny_sd3
from tests.sd_fixtures import write_images
from tests.test_finetune_sd import PROMPT, invoke, write_config

torch.set_num_threads(1)
T5_TOKENS = 16  # text.max_length: the T5 part of each prompt row (pipelines: 256 / 512)
MAKERS = {"sd3": make_tiny_sd3, "flux": make_tiny_flux}


@pytest.fixture(scope="module")
def imgs(tmp_path_factory):
    return write_images(tmp_path_factory.mktemp("imgs") / "imgs", 5)


@pytest.fixture(scope="module", params=["sd3", "flux"])
def flow_run(request, imgs, tmp_path_factory):
    """(family, pipeline dir, run dir) of a 4-step LoRA run through the CLI."""
    root = tmp_path_factory.mktemp(request.param)
    pipe = MAKERS[request.param](root / "pipe")
    cfg = write_config(root / "c.yaml", pipe, imgs, root / "run", text={"max_length": T5_TOKENS},
                       optim={"lr": 3e-2})  # fmt: skip
    invoke("train", cfg)
    return request.param, pipe, root / "run"


def load_pipe(family, pipe):
    from diffusers import FluxPipeline, StableDiffusion3Pipeline

    cls = StableDiffusion3Pipeline if family == "sd3" else FluxPipeline
    return cls.from_pretrained(pipe, use_safetensors=True, local_files_only=True)


def diffusers_velocity(family, p, x_t, t, prompt):
    """The pipeline's own transformer call at flow time t (as in its __call__ loop)."""
    with torch.no_grad():
        if family == "sd3":
            states, _, pooled, _ = p.encode_prompt(prompt, prompt, prompt, do_classifier_free_guidance=False,
                                                   max_sequence_length=T5_TOKENS)  # fmt: skip
            return p.transformer(hidden_states=x_t, timestep=t * 1000, encoder_hidden_states=states,
                                 pooled_projections=pooled).sample  # fmt: skip
        states, pooled, text_ids = p.encode_prompt(prompt, prompt, max_sequence_length=T5_TOKENS)
        b, c, h, w = x_t.shape
        packed = p._pack_latents(x_t, b, c, h, w)
        ids = p._prepare_latent_image_ids(b, h // 2, w // 2, x_t.device, x_t.dtype)
        out = p.transformer(hidden_states=packed, timestep=t, guidance=None,
                            pooled_projections=pooled, encoder_hidden_states=states,
                            txt_ids=text_ids, img_ids=ids).sample  # fmt: skip
        return p._unpack_latents(
            out, h * p.vae_scale_factor, w * p.vae_scale_factor, p.vae_scale_factor
        )


def probe(family, p, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 4, 16, 16, generator=g)
    return diffusers_velocity(family, p, x, torch.tensor([0.3, 0.8]), [PROMPT, "a red cat"])


def test_config_maps_scheduler_to_flow(flow_run):
    family, _, run = flow_run
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    d = cfg["diffusion"]
    assert d["objective"] == "flow" and cfg["text"]["max_length"] == T5_TOKENS
    assert cfg["sample"]["schedule"] == "uniform"  # uniform in t, then shifted: FlowMatchEuler's
    if family == "sd3":
        assert d["flow_shift"] == 3.0  # the scheduler's static shift
    else:  # FLUX: exp(μ) at 32 px → 16 px latents → 8×8 = 64 packed tokens
        mu = 0.5 + (1.15 - 0.5) * (64 - 256) / (4096 - 256)
        assert d["flow_shift"] == pytest.approx(math.exp(mu), abs=1e-6)
    assert (run / "samples" / "step-0000004.png").is_file()


def test_lora_file_loads_in_diffusers_and_equals_difftrain(flow_run):
    from difftrain.pipeline.run import load_run

    family, pipe, run = flow_run
    lora = load_file(run / "lora" / "pytorch_lora_weights.safetensors")
    assert (
        lora and all("lora" in k for k in lora) and all(k.startswith("transformer.") for k in lora)
    )
    p = load_pipe(family, pipe)
    base = probe(family, p)
    p.load_lora_weights(run / "lora")  # unchanged diffusers API
    loaded = probe(family, p)
    # difftrain's own fine-tuned transformer, through the same diffusers call
    p.transformer = load_run(run).denoiser.backbone.transformer
    ours = probe(family, p)
    moved, err = (loaded - base).abs().max().item(), (loaded - ours).abs().max().item()
    print(f"{family}: LoRA moved the output by {moved:.2e}; diffusers vs difftrain {err:.2e}")
    assert moved > 1e-4 and err <= 1e-5


def test_lora_base_weights_stay_frozen(flow_run):
    family, pipe, run = flow_run
    base = load_file(pipe / "transformer" / "diffusion_pytorch_model.safetensors")
    model = load_file(run / "checkpoints" / "step-0000004" / "model.safetensors")
    checked = 0
    for key, t in model.items():
        name = key.replace(".base_layer", "")
        if "lora_" not in key and name.startswith("backbone.transformer."):
            assert torch.equal(t, base[name.removeprefix("backbone.transformer.")]), key
            checked += 1
    assert checked == len(base)
    assert max(t.abs().max().item() for k, t in model.items() if "lora_B" in k) > 0


def test_denoiser_equals_diffusers_velocity(flow_run, imgs, tmp_path):
    """D(x, σ, prompt) = x_t − t·v̂ with v̂ the pipeline's own transformer call at that t."""
    from difftrain.config import load_config
    from difftrain.pipeline.build import build_denoiser
    from difftrain.pipeline.pretrained import resolve_pretrained
    from difftrain.pipeline.text import open_tokenizer

    family, pipe, _ = flow_run
    cfg = write_config(tmp_path / "c.yaml", pipe, imgs, tmp_path, text={"max_length": T5_TOKENS})
    cfg = resolve_pretrained(load_config(cfg))
    den = build_denoiser(cfg, None).eval()
    p = load_pipe(family, pipe)
    ids = open_tokenizer(cfg).encode([PROMPT, PROMPT])
    g = torch.Generator().manual_seed(1)
    x0, noise = torch.randn(2, 4, 16, 16, generator=g), torch.randn(2, 4, 16, 16, generator=g)
    for t in (0.1, 0.5, 0.95):
        x_t = (1 - t) * x0 + t * noise
        v = diffusers_velocity(family, p, x_t, torch.full((2,), t), PROMPT)
        with torch.no_grad():
            sigma = torch.full((2,), t / (1 - t))
            ours = den(x_t / (1 - t), sigma, ids)  # σ-space input x0 + σ·ε
        assert torch.allclose(ours, x_t - t * v, atol=1e-4), (t, (ours - x_t + t * v).abs().max())


def test_bad_flow_configs_exit_2(flow_run, imgs, tmp_path):
    family, pipe, run = flow_run
    cfg = write_config(tmp_path / "c.yaml", pipe, imgs, tmp_path / "r", text={"max_length": 8})
    res = invoke("train", cfg, "--set", "finetune.train_text_encoder=true", code=2)
    assert "finetune.train_text_encoder" in res.output and "not supported yet" in res.output
    res = invoke("train", cfg, "--set", "diffusion.objective=flow", "--set",
                 "diffusion.flow_shift=7", code=2)  # fmt: skip
    assert "diffusion.flow_shift = 7.0 disagrees" in res.output
    res = invoke("train", cfg, "--set", "diffusion.objective=vp", code=2)
    assert "diffusion.objective = 'vp' disagrees" in res.output
    res = invoke("export", run, "--format", "diffusers", "--out", tmp_path / "m", code=2)
    assert "load_lora_weights" in res.output and not (tmp_path / "m").exists()


def test_unknown_pipeline_class_and_scheduler_exit_2(flow_run, imgs, tmp_path):
    import shutil

    family, pipe, _ = flow_run
    copy = tmp_path / "pipe"
    shutil.copytree(pipe, copy)
    index = json.loads((copy / "model_index.json").read_text())
    (copy / "model_index.json").write_text(json.dumps(index | {"_class_name": "WanPipeline"}))
    cfg = write_config(tmp_path / "c.yaml", copy, imgs, tmp_path / "r")
    res = invoke("train", cfg, code=2)
    assert "'WanPipeline' is not supported" in res.output
    (copy / "model_index.json").write_text(json.dumps(index))
    sched = copy / "scheduler" / "scheduler_config.json"
    sched.write_text(json.dumps(json.loads(sched.read_text()) | {"_class_name": "DDIMScheduler"}))
    res = invoke("train", cfg, code=2)
    assert "needs FlowMatchEulerDiscreteScheduler" in res.output


def test_flow_shift_in_training_times_and_sampling_schedule():
    from difftrain.diffusion import FlowLoss
    from difftrain.samplers import flow_sigmas

    g = torch.Generator().manual_seed(0)
    t1 = FlowLoss().sample_t(20000, g, "cpu")
    t3 = FlowLoss(shift=3.0).sample_t(20000, torch.Generator().manual_seed(0), "cpu")
    assert torch.allclose(t3, (3 * t1 / (1 + 2 * t1)).clamp(1e-5, 1 - 1e-4))
    assert t3.median() > 0.7 > t1.median()  # shifted toward noise (median 0.75 vs 0.5)
    s = flow_sigmas(4, 9999.0, 3.0)
    t = s / (1 + s)
    u = torch.linspace(9999 / 10000, 0, 5, dtype=torch.float64)
    assert torch.allclose(t.double(), 3 * u / (1 + 2 * u), atol=1e-5) and s[-1] == 0


def test_sample_cli_on_a_flow_run(flow_run, tmp_path):
    family, _, run = flow_run
    res = invoke("sample", run, "--num", 2, "--steps", 2, "--prompt", PROMPT, "--guidance", 2,
                 "--out", tmp_path / "out")  # fmt: skip
    assert len(list((tmp_path / "out").glob("*.png"))) >= 2, res.output


def test_dreambooth_full_finetune_on_sd3(imgs, tmp_path):
    """DreamBooth with prior preservation and full transformer weights, on the SD3 family."""
    pipe = make_tiny_sd3(tmp_path / "pipe")
    db = {"instance_prompt": PROMPT, "class_prompt": "a photo of a dog", "num_class_images": 2,
          "class_steps": 2, "drift_images": 1}  # fmt: skip
    cfg = write_config(
        tmp_path / "c.yaml", pipe, imgs, tmp_path / "run", text={"max_length": 8},
        finetune={"method": "full", "dreambooth": db}, data={"val_fraction": 0.0},
        sample={"prompts": []}, optim={"lr": 1e-3},
        train={"max_steps": 2, "best_metric": "val/prior_drift"},
    )  # fmt: skip
    invoke("train", cfg)
    x = load_file(tmp_path / "run" / "dreambooth" / "class_latents.safetensors")["class_x0"]
    assert x.shape == (2, 4, 16, 16)
    rows = [json.loads(r) for r in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert any("val/prior_drift" in r for r in rows)
    model = load_file(tmp_path / "run" / "checkpoints" / "step-0000002" / "model.safetensors")
    base = load_file(pipe / "transformer" / "diffusion_pytorch_model.safetensors")
    k = "pos_embed.proj.weight"
    assert not torch.equal(model[f"backbone.transformer.{k}"], base[k])  # full weights trained
