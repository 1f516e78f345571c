"""Fine-tuning a pretrained Stable Diffusion pipeline (issue 10) on a tiny random SD 1.x-layout
pipeline that the tests save in diffusers format: LoRA, full and DreamBooth runs through
`difftrain train`, the LoRA file in diffusers, merged export, exact resume, frozen weights,
scheduler mapping, and the refusal of pickled checkpoints."""

from __future__ import annotations

import json
import pickle

import pytest
import torch
import yaml
from safetensors.torch import load_file
from typer.testing import CliRunner

from difftrain.cli.main import app
from tests.sd_fixtures import make_tiny_sd, write_images

runner = CliRunner()
torch.set_num_threads(1)
PROMPT = "a photo of sks dog"


def invoke(*args, code: int = 0):
    res = runner.invoke(app, [str(a) for a in args])
    assert res.exit_code == code, res.output + repr(res.exception)
    return res


@pytest.fixture(scope="module")
def sd(tmp_path_factory):
    """(pipeline dir, image folder) shared by the module (building the pipeline takes seconds)."""
    root = tmp_path_factory.mktemp("sd")
    return make_tiny_sd(root / "pipe"), write_images(root / "imgs", 5)


def write_config(path, pipe, imgs, run_dir, **sections):
    cfg = {
        "data": {"source": "folder", "path": str(imgs), "resolution": 32, "val_fraction": 0.2},
        "model": {"pretrained": str(pipe)},
        "finetune": {"method": "lora", "lora": {"rank": 4}},
        "optim": {"lr": 1e-2},
        "train": {"run_dir": str(run_dir), "batch_size": 2, "max_steps": 4,
                  "checkpoint_every": 2, "sample_every": 2, "posthoc_ema_sigma_rels": [],
                  "ema_halflife_kimg": 0, "log_every": 1, "keep_checkpoints": 5},
        "sample": {"sampler": "euler", "steps": 3, "num": 2, "prompts": [PROMPT]},
        "logging": {"tensorboard": False, "progress": False},
    }  # fmt: skip
    for name, values in sections.items():
        cfg.setdefault(name, {}).update(values)
    path.write_text(yaml.safe_dump(cfg))
    return path


def unet_probe(unet, seed: int = 0) -> torch.Tensor:
    """The U-Net's ε on fixed random latents, timesteps and text states."""
    g = torch.Generator().manual_seed(seed)
    x, s = torch.randn(2, 4, 16, 16, generator=g), torch.randn(2, 77, 32, generator=g)
    with torch.no_grad():
        return unet(x, torch.tensor([10.0, 500.0]), encoder_hidden_states=s).sample


def base_pipe(pipe):
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline.from_pretrained(
        pipe, use_safetensors=True, local_files_only=True, safety_checker=None
    )


@pytest.fixture(scope="module")
def lora_run(sd, tmp_path_factory):
    """A 4-step LoRA run through the CLI."""
    pipe, imgs = sd
    root = tmp_path_factory.mktemp("lora")
    invoke("train", write_config(root / "c.yaml", pipe, imgs, root / "run"))
    return root / "run"


def test_config_resolved_from_pipeline(lora_run):
    cfg = yaml.safe_load((lora_run / "config.yaml").read_text())
    d = cfg["diffusion"]
    assert (d["objective"], d["prediction"], d["beta_schedule"]) == ("vp", "eps", "scaled-linear")
    assert (d["beta_start"], d["beta_end"], d["num_train_timesteps"]) == (0.00085, 0.012, 1000)
    assert cfg["text"]["encoder"] == "path" and cfg["text"]["max_length"] == 77
    assert 14.0 < d["sigma_max"] < 15.0  # SD's σ at t = 999 (≈ 14.61)
    # Validation grids every sample_every steps, same prompts (and seeds) each time.
    assert {p.name for p in (lora_run / "samples").glob("step-*.png")} == {
        "step-0000002.png", "step-0000004.png"}  # fmt: skip


def test_vp_schedule_equals_the_pipeline_scheduler(sd):
    from diffusers import DDPMScheduler

    from difftrain.diffusion import make_alphas_cumprod
    from difftrain.pipeline.pretrained import scheduler_diffusion

    pipe, _ = sd
    m = scheduler_diffusion(pipe)
    ours = make_alphas_cumprod(m["beta_schedule"], m["num_train_timesteps"], m["beta_start"],
                               m["beta_end"], m["zero_terminal_snr"])  # fmt: skip
    theirs = DDPMScheduler.from_pretrained(pipe, subfolder="scheduler").alphas_cumprod
    assert torch.allclose(ours.float(), theirs.float(), atol=1e-6)


def test_lora_file_loads_in_diffusers_and_equals_difftrain(lora_run, sd):
    from difftrain.pipeline.run import load_run

    pipe, _ = sd
    lora = lora_run / "lora" / "pytorch_lora_weights.safetensors"
    unet_file = pipe / "unet" / "diffusion_pytorch_model.safetensors"
    assert lora.stat().st_size < unet_file.stat().st_size / 10  # only the adapters
    assert all("lora" in k for k in load_file(lora))
    ours = unet_probe(load_run(lora_run).denoiser.backbone.unet)
    sd_pipe = base_pipe(pipe)
    base = unet_probe(sd_pipe.unet)
    sd_pipe.load_lora_weights(lora_run / "lora")  # unchanged diffusers API
    loaded = unet_probe(sd_pipe.unet)
    moved, err = (loaded - base).abs().max().item(), (loaded - ours).abs().max().item()
    print(f"LoRA moved the output by {moved:.2e}; diffusers vs difftrain max error {err:.2e}")
    assert moved > 1e-4 and err <= 1e-5


def test_lora_frozen_weights_stay_frozen(lora_run, sd):
    pipe, _ = sd
    base_unet = load_file(pipe / "unet" / "diffusion_pytorch_model.safetensors")
    base_text = load_file(pipe / "text_encoder" / "model.safetensors")
    model = load_file(lora_run / "checkpoints" / "step-0000004" / "model.safetensors")
    checked, lora_b = 0, []
    for key, t in model.items():
        if "lora_B" in key:
            lora_b.append(t.abs().max().item())
        if "lora_" in key:
            continue
        name = key.replace(".base_layer", "")
        if name.startswith("backbone.unet."):
            assert torch.equal(t, base_unet[name.removeprefix("backbone.unet.")]), key
            checked += 1
        elif name.startswith("backbone.text.model."):
            assert torch.equal(t, base_text[name.removeprefix("backbone.text.model.")]), key
            checked += 1
    assert checked == len(base_unet) + len(base_text)
    assert max(lora_b) > 0  # the adapters did train (B starts at 0)
    opt = load_file(lora_run / "checkpoints" / "step-0000004" / "optimizer.safetensors")
    assert sum(v.numel() for v in opt.values()) < 3 * sum(
        model[k].numel() for k in model if "lora" in k
    )  # Adam moments for the adapters only


def test_merged_export_loads_with_from_pretrained(lora_run, tmp_path):
    from diffusers import StableDiffusionPipeline

    from difftrain.pipeline.run import load_run

    invoke("export", lora_run, "--format", "diffusers", "--out", tmp_path / "merged")
    merged = StableDiffusionPipeline.from_pretrained(tmp_path / "merged", use_safetensors=True)
    assert not any("lora" in k for k in merged.unet.state_dict())
    ours = unet_probe(load_run(lora_run).denoiser.backbone.unet)
    err = (unet_probe(merged.unet) - ours).abs().max().item()
    print(f"merged export vs difftrain LoRA model: max error {err:.2e}")
    assert err <= 1e-5
    out = merged(PROMPT, num_inference_steps=2, height=32, width=32, output_type="np").images
    assert out.shape == (1, 32, 32, 3)


def test_lora_resume_is_exact(sd, lora_run, tmp_path):
    pipe, imgs = sd
    cfg = write_config(tmp_path / "c.yaml", pipe, imgs, tmp_path / "run")
    invoke("train", cfg, "--set", "train.max_steps=2")
    invoke("train", cfg, "--resume")
    a = load_file(tmp_path / "run" / "checkpoints" / "step-0000004" / "model.safetensors")
    b = load_file(lora_run / "checkpoints" / "step-0000004" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # The run directory alone (its resolved config.yaml) continues the run.
    invoke("train", tmp_path / "run", "--resume", "--set", "train.max_steps=5")
    assert (tmp_path / "run" / "checkpoints" / "step-0000005").is_dir()


def test_full_finetune_with_text_encoder(sd, tmp_path):
    pipe, imgs = sd
    cfg = write_config(
        tmp_path / "c.yaml", pipe, imgs, tmp_path / "run",
        finetune={"method": "full", "train_text_encoder": True, "gradient_checkpointing": True},
        optim={"lr": 1e-3}, train={"max_steps": 2, "ema_halflife_kimg": 0.002},
    )  # fmt: skip
    invoke("train", cfg)
    ck = tmp_path / "run" / "checkpoints" / "step-0000002"
    model, ema = load_file(ck / "model.safetensors"), load_file(ck / "ema.safetensors")
    base_unet = load_file(pipe / "unet" / "diffusion_pytorch_model.safetensors")
    base_text = load_file(pipe / "text_encoder" / "model.safetensors")
    k = "conv_in.weight"
    assert not torch.equal(model[f"backbone.unet.{k}"], base_unet[k])  # the U-Net trained
    q = "encoder.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(model[f"backbone.text.model.{q}"], base_text[q])  # and the encoder
    assert not torch.equal(ema[f"backbone.unet.{k}"], model[f"backbone.unet.{k}"])  # EMA lags
    assert not any("lora" in key for key in model)
    # The autoencoder is never trained: the run's copy equals the pipeline's vae/.
    vae = load_file(tmp_path / "run" / "autoencoder" / "diffusion_pytorch_model.safetensors")
    base_vae = load_file(pipe / "vae" / "diffusion_pytorch_model.safetensors")
    assert all(torch.equal(vae[n], base_vae[n]) for n in base_vae)
    from difftrain.pipeline.run import load_run

    assert load_run(tmp_path / "run").denoiser.backbone.unet.is_gradient_checkpointing


def test_dreambooth_prior_preservation(sd, tmp_path):
    pipe, imgs = sd
    db = {"instance_prompt": PROMPT, "class_prompt": "a photo of a dog", "num_class_images": 4,
          "class_steps": 2, "drift_images": 2}  # fmt: skip
    cfg = write_config(
        tmp_path / "c.yaml", pipe, imgs, tmp_path / "run",
        finetune={"method": "lora", "dreambooth": db}, data={"val_fraction": 0.0},
        sample={"prompts": []}, train={"best_metric": "val/prior_drift"},
    )  # fmt: skip
    invoke("train", cfg, "--set", "train.max_steps=2")
    folder = tmp_path / "run" / "dreambooth"
    x = load_file(folder / "class_latents.safetensors")["class_x0"]
    assert x.shape == (4, 4, 16, 16) and (folder / "class_images.png").is_file()
    stamp = (folder / "class_latents.safetensors").stat().st_mtime_ns
    rows = [json.loads(r) for r in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    drift = [r["val/prior_drift"] for r in rows if "val/prior_drift" in r]
    assert drift and drift[0] >= 0  # measured with no held-out image (val_fraction 0)
    prompts = (tmp_path / "run" / "samples" / "prompts.txt").read_text().splitlines()
    assert prompts == [PROMPT, "a photo of a dog"]
    invoke("train", cfg, "--resume")  # reuses the cached class images
    assert (folder / "class_latents.safetensors").stat().st_mtime_ns == stamp
    res = invoke("train", cfg, "--resume", "--set", "finetune.dreambooth.class_prompt=a cat",
                 "--set", "train.max_steps=6", code=2)  # fmt: skip
    assert "class images were made with other settings" in res.output


def test_prior_preservation_loss_pairs_instance_and_class():
    from difftrain.train.finetune_task import PriorPreservationLoss

    def per_example(den, x0, cond, gen):  # a stand-in objective: the mean of each row
        return x0.flatten(1).mean(1)

    loss = PriorPreservationLoss(per_example, torch.full((3, 1, 2, 2), 2.0),
                                 torch.zeros(1, 4, dtype=torch.long), weight=0.5)  # fmt: skip
    out = loss(None, torch.ones(2, 1, 2, 2), torch.zeros(2, 4, dtype=torch.long),
               torch.Generator().manual_seed(0))  # fmt: skip
    assert torch.equal(out, torch.tensor([2.0, 2.0]))  # 1 + 0.5 · 2


class Payload:
    """Unpickling this runs code: it would create the marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize("allow", [False, True])
def test_pickled_checkpoint_refused_and_payload_never_runs(sd, tmp_path, allow):
    pipe, imgs = sd
    marker = tmp_path / "PWNED"
    ckpt = tmp_path / "model.ckpt"
    with open(ckpt, "wb") as f:
        pickle.dump({"state_dict": {"w": torch.zeros(2)}, "evil": Payload(marker)}, f)
    cfg = write_config(tmp_path / "c.yaml", ckpt, imgs, tmp_path / "run",
                       model={"allow_pickle": allow})  # fmt: skip
    res = invoke("train", cfg, code=2)
    assert not marker.exists()
    assert ("weights_only" in res.output) if allow else ("allow_pickle" in res.output)


def test_pickled_pipeline_weights_refused(sd, tmp_path):
    import shutil

    pipe, imgs = sd
    copy = tmp_path / "pipe"
    shutil.copytree(pipe, copy)
    w = copy / "unet" / "diffusion_pytorch_model.safetensors"
    torch.save(load_file(w), copy / "unet" / "diffusion_pytorch_model.bin")
    w.unlink()
    res = invoke("train", write_config(tmp_path / "c.yaml", copy, imgs, tmp_path / "r"), code=2)
    assert "no .safetensors weights" in res.output and "diffusion_pytorch_model.bin" in res.output


def test_bad_configs_exit_2(sd, tmp_path):
    pipe, imgs = sd
    cfg = write_config(tmp_path / "c.yaml", pipe, imgs, tmp_path / "r")
    res = invoke("train", cfg, "--set", "diffusion.objective=vp", "--set",
                 "diffusion.prediction=v", code=2)  # fmt: skip
    assert "diffusion.prediction = 'v' disagrees" in res.output
    res = invoke("train", cfg, "--set", "diffusion.objective=edm", code=2)
    assert "diffusion.objective = 'edm' disagrees" in res.output
    res = invoke("train", cfg, "--set", "model.block_out_channels=[8,16]", code=2)
    assert "model.block_out_channels is not used with model.pretrained" in res.output
    res = invoke("train", cfg, "--set", "text.pooled=true", code=2)
    assert "text.pooled = true with model.pretrained" in res.output
    res = invoke("train", cfg, "--set", "finetune.lora.target_modules=[nope]", code=2)
    assert "finetune.lora" in res.output
    res = invoke("train", cfg, "--set", "model.pretrained=null", "--set", "finetune.method=full",
                 code=2)  # fmt: skip
    assert "finetune section needs model.pretrained" in res.output
    res = invoke("train", cfg, "--set", f"model.pretrained={tmp_path}", code=2)
    assert "missing" in res.output
    single = tmp_path / "sd15.safetensors"
    single.write_bytes(b"{}")
    res = invoke("train", cfg, "--set", f"model.pretrained={single}", code=2)
    assert "single-file checkpoint" in res.output and "difftrain convert-single-file" in res.output


def test_v_prediction_pipeline_maps_to_v(tmp_path):
    from difftrain.pipeline.pretrained import scheduler_diffusion

    (tmp_path / "scheduler").mkdir()
    conf = {"_class_name": "DDIMScheduler", "prediction_type": "v_prediction",
            "beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012,
            "rescale_betas_zero_snr": True}  # fmt: skip
    (tmp_path / "scheduler" / "scheduler_config.json").write_text(json.dumps(conf))
    m = scheduler_diffusion(tmp_path)
    assert (m["prediction"], m["zero_terminal_snr"]) == ("v", True)
    conf["beta_schedule"] = "exotic"
    (tmp_path / "scheduler" / "scheduler_config.json").write_text(json.dumps(conf))
    from difftrain.config import ConfigError

    with pytest.raises(ConfigError, match="beta_schedule"):
        scheduler_diffusion(tmp_path)


def test_adamw8bit_needs_bitsandbytes():
    from difftrain.config import ConfigError
    from difftrain.config.schema import OptimConfig
    from difftrain.train.optim import build_optimizer

    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        with pytest.raises(ConfigError, match="bitsandbytes"):
            build_optimizer([torch.nn.Parameter(torch.zeros(2))], OptimConfig(name="adamw8bit"))
    else:
        pytest.skip("bitsandbytes is installed here")


def test_text_state_cache_equals_encoder(lora_run):
    from difftrain.models.pretrained import TextStateCache
    from difftrain.pipeline.run import load_run

    backbone = load_run(lora_run).denoiser.backbone
    ids = torch.randint(0, 40, (3, 77))
    ids[1] = ids[0]
    cache = TextStateCache(backbone.text)
    first, again = cache(ids, 3), cache(ids, 3)
    assert torch.equal(first, backbone.text(ids, 3)) and torch.equal(first, again)
    assert len(cache.rows) == 2  # the repeated row is encoded once


def test_vae_stays_float32_under_mixed_precision(sd):
    from difftrain.pipeline.latent import Latents, load_autoencoder

    pipe, _ = sd
    lat = Latents(load_autoencoder(pipe), 0.18215)
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    ref_mean, _ = lat.encode(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # what accelerate's autocast sets up
        mean, _ = lat.encode(x)
        img = lat.to_images(lat.to_model(mean))
    assert mean.dtype == img.dtype == torch.float32 and torch.equal(mean, ref_mean)


def test_sample_a_lora_run_with_a_prompt(lora_run, tmp_path):
    res = invoke("sample", lora_run, "--num", 2, "--steps", 2, "--prompt", PROMPT,
                 "--guidance", 3, "--out", tmp_path / "out")  # fmt: skip
    assert len(list((tmp_path / "out").glob("*.png"))) >= 2, res.output


def test_config_example_is_valid_and_placeholder_fails_clearly(sd, tmp_path):
    from difftrain.config import load_config
    from tests.conftest import REPO

    example = REPO / "configs" / "sd15-lora.yaml"
    cfg = load_config(example)
    assert cfg.finetune.method == "lora" and cfg.finetune.gradient_checkpointing
    res = invoke("train", example, "--dry-run", code=2)
    assert "model.pretrained = '/path/to/stable-diffusion-v1-5'" in res.output
    pipe, imgs = sd
    res = invoke("train", example, "--dry-run", "--set", f"model.pretrained={pipe}", "--set",
           f"data.path={imgs}", "--set", "data.resolution=32", "--set",
           f"train.run_dir={tmp_path / 'r'}", "--set", "data.val_fraction=0.2")  # fmt: skip
    sizes = yaml.safe_load(res.output[res.output.rindex("train_images:") :])
    assert 0 < sizes["trainable_parameters"] < sizes["parameters"] / 10  # adapters only


def test_sdxl_style_unet_refused(sd, tmp_path):
    import shutil

    pipe, imgs = sd
    copy = tmp_path / "pipe"
    shutil.copytree(pipe, copy)
    conf = json.loads((copy / "unet" / "config.json").read_text())
    conf["addition_embed_type"] = "text_time"
    (copy / "unet" / "config.json").write_text(json.dumps(conf))
    res = invoke("train", write_config(tmp_path / "c.yaml", copy, imgs, tmp_path / "r"), code=2)
    assert "SDXL-style U-Net" in res.output


def test_text_encoder_lora_loads_in_diffusers(sd, tmp_path):
    from difftrain.pipeline.run import load_run

    pipe, imgs = sd
    cfg = write_config(tmp_path / "c.yaml", pipe, imgs, tmp_path / "run",
                       finetune={"train_text_encoder": True, "gradient_checkpointing": True},
                       train={"max_steps": 2})  # fmt: skip
    invoke("train", cfg)
    # Adapters train through checkpointed (recomputed) U-Net and encoder blocks too.
    model = load_file(tmp_path / "run" / "checkpoints" / "step-0000002" / "model.safetensors")
    for part in ("backbone.unet.", "backbone.text.model."):
        assert max(model[k].abs().max() for k in model if k.startswith(part) and "lora_B" in k) > 0
    text = load_run(tmp_path / "run").denoiser.backbone.text.model
    ids = torch.randint(0, 40, (2, 77))
    sd_pipe = base_pipe(pipe)
    with torch.no_grad():
        base = sd_pipe.text_encoder(ids).last_hidden_state
        sd_pipe.load_lora_weights(tmp_path / "run" / "lora")
        loaded = sd_pipe.text_encoder(ids).last_hidden_state
        ours = text(input_ids=ids).last_hidden_state
    assert (loaded - base).abs().max() > 1e-5 and (loaded - ours).abs().max() <= 1e-5


def test_ema_shares_frozen_weights_and_averages_adapters(lora_run):
    from difftrain.pipeline.run import load_run
    from difftrain.train.ema import EMA

    model = load_run(lora_run).denoiser
    ema = EMA(model)
    ptrs = {p.data_ptr() for p in model.parameters() if not p.requires_grad}
    shared = [p for p in ema.model.parameters() if p.data_ptr() in ptrs]
    assert len(shared) == len(ptrs) > 0  # the base U-Net and text encoder are not copied
    lora = next(p for n, p in model.named_parameters() if "lora_B" in n)
    with torch.no_grad():
        lora.add_(1.0)
    ema.update(model, beta=0.5)
    ema_lora = dict(ema.model.named_parameters())[
        next(n for n, p in model.named_parameters() if p is lora)
    ]
    assert torch.allclose(ema_lora, lora - 0.5)  # halfway from the old value
    assert torch.equal(ema.state_dict()["backbone.unet.conv_in.weight"],
                       model.state_dict()["backbone.unet.conv_in.weight"])  # fmt: skip


def test_lora_runs_default_posthoc_ema_off(sd, tmp_path):
    from difftrain.config import load_config
    from difftrain.pipeline.pretrained import resolve_pretrained

    pipe, imgs = sd
    path = write_config(tmp_path / "c.yaml", pipe, imgs, tmp_path / "r")
    cfg = yaml.safe_load(path.read_text())
    del cfg["train"]["posthoc_ema_sigma_rels"]
    path.write_text(yaml.safe_dump(cfg))
    assert resolve_pretrained(load_config(path)).train.posthoc_ema_sigma_rels == []
    explicit = resolve_pretrained(load_config(path, ["train.posthoc_ema_sigma_rels=[0.05]"]))
    assert explicit.train.posthoc_ema_sigma_rels == [0.05]


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_denoiser_equals_diffusers_x0_prediction(sd, tmp_path, prediction):
    """D(x, σ, prompt) of a loaded pipeline equals diffusers' pred_original_sample (SD 1.x ε and
    SD 2.x-style v): the scheduler → vp mapping, timesteps, scaling and text encoding agree."""
    from diffusers import DDPMScheduler

    from difftrain.config import load_config
    from difftrain.pipeline.build import build_denoiser
    from difftrain.pipeline.pretrained import resolve_pretrained

    pipe = sd[0] if prediction == "epsilon" else make_tiny_sd(tmp_path / "pipe-v", prediction)
    cfg = resolve_pretrained(load_config(write_config(tmp_path / "c.yaml", pipe, sd[1], tmp_path)))
    den = build_denoiser(cfg, None).eval()
    ref = base_pipe(pipe)
    sched = DDPMScheduler.from_pretrained(pipe, subfolder="scheduler")
    g = torch.Generator().manual_seed(1)
    x0, noise = torch.randn(2, 4, 16, 16, generator=g), torch.randn(2, 4, 16, 16, generator=g)
    ids = ref.tokenizer([PROMPT] * 2, padding="max_length", max_length=77, return_tensors="pt")
    ids = ids.input_ids
    for t in (50, 500, 900):
        ac = sched.alphas_cumprod[t]
        x_t = ac.sqrt() * x0 + (1 - ac).sqrt() * noise
        with torch.no_grad():
            out = ref.unet(x_t, t, encoder_hidden_states=ref.text_encoder(ids)[0]).sample
            theirs = sched.step(out, t, x_t).pred_original_sample
            sigma = ((1 - ac) / ac).sqrt()
            ours = den(x_t / ac.sqrt(), sigma.expand(2), ids)  # σ-space input x0 + σ·ε
        assert torch.allclose(ours, theirs, atol=1e-4, rtol=1e-4), (t, (ours - theirs).abs().max())
