"""Fine-tuning an SDXL pipeline (issue 10) on a tiny random StableDiffusionXLPipeline saved by
the test: two CLIP text encoders (penultimate states side by side, CLIP-G's pooled projection),
micro-conditioning ids, a LoRA run through `difftrain train`, and the LoRA file in diffusers."""

from __future__ import annotations

import pytest
import torch
import yaml
from safetensors.torch import load_file

from tests.flow_fixtures import make_tiny_sdxl
from tests.sd_fixtures import write_images
from tests.test_finetune_sd import PROMPT, invoke, write_config

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def sdxl_run(tmp_path_factory):
    """(pipeline dir, image folder, run dir) of a 4-step LoRA run through the CLI."""
    root = tmp_path_factory.mktemp("sdxl")
    pipe, imgs = make_tiny_sdxl(root / "pipe"), write_images(root / "imgs", 5)
    invoke("train", write_config(root / "c.yaml", pipe, imgs, root / "run"))
    return pipe, imgs, root / "run"


def load_pipe(pipe):
    from diffusers import StableDiffusionXLPipeline

    return StableDiffusionXLPipeline.from_pretrained(
        pipe, use_safetensors=True, local_files_only=True
    )


def diffusers_eps(p, x_t, t, prompt):
    """The SDXL pipeline's own U-Net call: its encode_prompt and add_time_ids at 32 px."""
    with torch.no_grad():
        states, _, pooled, _ = p.encode_prompt(prompt, do_classifier_free_guidance=False)
        n = x_t.shape[0]
        ids = p._get_add_time_ids((32, 32), (0, 0), (32, 32), dtype=x_t.dtype,
                                  text_encoder_projection_dim=p.text_encoder_2.config.projection_dim)  # fmt: skip
        added = {"text_embeds": pooled.expand(n, -1), "time_ids": ids.expand(n, -1)}
        return p.unet(x_t, t, encoder_hidden_states=states.expand(n, -1, -1),
                      added_cond_kwargs=added).sample  # fmt: skip


def probe(p):
    g = torch.Generator().manual_seed(0)
    return diffusers_eps(p, torch.randn(2, 4, 16, 16, generator=g), torch.tensor([10, 500]), PROMPT)


def test_config_and_grids(sdxl_run):
    _, _, run = sdxl_run
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["diffusion"]["objective"] == "vp" and cfg["diffusion"]["prediction"] == "eps"
    assert (run / "samples" / "step-0000004.png").is_file()


def test_lora_file_loads_in_sdxl_pipeline_and_equals_difftrain(sdxl_run):
    from difftrain.pipeline.run import load_run

    pipe, _, run = sdxl_run
    assert all("lora" in k for k in load_file(run / "lora" / "pytorch_lora_weights.safetensors"))
    p = load_pipe(pipe)
    base = probe(p)
    p.load_lora_weights(run / "lora")  # unchanged diffusers API
    loaded = probe(p)
    p.unet = load_run(run).denoiser.backbone.unet
    ours = probe(p)
    moved, err = (loaded - base).abs().max().item(), (loaded - ours).abs().max().item()
    print(f"SDXL: LoRA moved the output by {moved:.2e}; diffusers vs difftrain {err:.2e}")
    assert moved > 1e-4 and err <= 1e-5


def test_denoiser_equals_diffusers_x0(sdxl_run, tmp_path):
    """D(x, σ, prompt) equals x0 from the pipeline's own U-Net call: both text encoders, the
    pooled embedding and the micro-conditioning ids agree."""
    from diffusers import DDPMScheduler

    from difftrain.config import load_config
    from difftrain.pipeline.build import build_denoiser
    from difftrain.pipeline.pretrained import resolve_pretrained
    from difftrain.pipeline.text import open_tokenizer

    pipe, imgs, _ = sdxl_run
    cfg = resolve_pretrained(load_config(write_config(tmp_path / "c.yaml", pipe, imgs, tmp_path)))
    den = build_denoiser(cfg, None).eval()
    p = load_pipe(pipe)
    ac_table = DDPMScheduler.from_pretrained(pipe, subfolder="scheduler").alphas_cumprod
    ids = open_tokenizer(cfg).encode([PROMPT, PROMPT])
    assert ids.shape == (2, 154)  # CLIP-L and CLIP-G ids side by side
    g = torch.Generator().manual_seed(1)
    x0, noise = torch.randn(2, 4, 16, 16, generator=g), torch.randn(2, 4, 16, 16, generator=g)
    for t in (50, 900):
        ac = ac_table[t]
        x_t = ac.sqrt() * x0 + (1 - ac).sqrt() * noise
        eps = diffusers_eps(p, x_t, torch.tensor([t, t]), PROMPT)
        theirs = (x_t - (1 - ac).sqrt() * eps) / ac.sqrt()
        with torch.no_grad():
            ours = den(x_t / ac.sqrt(), ((1 - ac) / ac).sqrt().expand(2), ids)
        assert torch.allclose(ours, theirs, atol=1e-4, rtol=1e-4), (t, (ours - theirs).abs().max())


def test_sdxl_text_encoder_training_refused(sdxl_run, tmp_path):
    pipe, imgs, _ = sdxl_run
    cfg = write_config(tmp_path / "c.yaml", pipe, imgs, tmp_path / "r",
                       finetune={"train_text_encoder": True})  # fmt: skip
    res = invoke("train", cfg, code=2)
    assert "finetune.train_text_encoder with an SDXL pipeline" in res.output


@pytest.mark.parametrize("name", ["sdxl-lora.yaml", "sd3-lora.yaml"])
def test_config_examples_are_valid_and_placeholders_fail_clearly(name):
    from difftrain.config import load_config
    from tests.conftest import REPO

    example = REPO / "configs" / name
    cfg = load_config(example)
    assert cfg.finetune.method == "lora" and cfg.finetune.gradient_checkpointing
    res = invoke("train", example, "--dry-run", code=2)
    assert f"model.pretrained = '{cfg.model.pretrained}'" in res.output
