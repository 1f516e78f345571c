"""Inpainting keeps the known pixels exactly; img2img at strength 0 returns its input; the
guidance interval switches guidance off outside (σ_lo, σ_hi]."""

from __future__ import annotations

import pytest
import torch

from difftrain.pipeline.generate import generate
from difftrain.samplers import (
    SAMPLERS,
    CFGDenoiser,
    img2img_sigmas,
    karras_sigmas,
    sample_img2img,
    sample_inpaint,
)

MU, S = 0.2, 0.5


def denoiser(x, sigma, cond=None):
    """Ideal denoiser for N(μ, s²) data, computed in float32 like a network."""
    s2 = sigma.float().view(-1, 1, 1, 1) ** 2
    return (S**2 * x.float() + s2 * MU) / (S**2 + s2)


def known_and_mask():
    g = torch.Generator().manual_seed(0)
    known = torch.rand(3, 1, 6, 6, generator=g) * 2 - 1
    mask = torch.zeros(1, 1, 6, 6)
    mask[..., 2:5, 1:4] = 1  # generate this block, keep the rest
    return known, mask


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_inpainting_keeps_known_pixels_exactly(name):
    known, mask = known_and_mask()
    g = torch.Generator().manual_seed(1)
    x_T = torch.randn(known.shape, generator=g) * 80
    out = sample_inpaint(
        SAMPLERS[name],
        denoiser,
        x_T,
        karras_sigmas(6),
        known=known,
        mask=mask,
        generator=torch.Generator().manual_seed(2),
    )
    keep = mask.expand_as(known) == 0
    assert torch.equal(out[keep], known[keep])
    assert not torch.allclose(out[~keep], known[~keep])


def test_inpainting_harmonises_the_hole_and_repaint_resampling_runs():
    """Per-pixel independent data: the hole is filled from the prior, so its mean tends to μ;
    RePaint resampling keeps the known pixels exact too."""
    known, mask = known_and_mask()
    known = known.repeat(200, 1, 1, 1)
    x_T = torch.randn(known.shape, generator=torch.Generator().manual_seed(3)) * 80
    out = sample_inpaint(
        SAMPLERS["ddpm"],
        denoiser,
        x_T,
        karras_sigmas(100),
        known=known,
        mask=mask,
        resample=3,
        generator=torch.Generator().manual_seed(4),
    )
    keep = mask.expand_as(known) == 0
    assert torch.equal(out[keep], known[keep])
    assert abs(out[~keep].mean().item() - MU) < 0.05
    assert abs(out[~keep].std().item() - S) < 0.05


def test_img2img_strength():
    x = torch.rand(2, 1, 4, 4) * 2 - 1
    noise = torch.randn(x.shape)
    sig = karras_sigmas(10)
    calls = []

    def counting(x, sigma, cond=None):
        calls.append(1)
        return denoiser(x, sigma, cond)

    out = sample_img2img(SAMPLERS["heun"], counting, x, sig, noise, strength=0.0)
    assert torch.equal(out, x) and not calls  # strength 0: the input, no network call
    assert len(img2img_sigmas(sig, 0.6)) == 7 and img2img_sigmas(sig, 0.6)[-1] == 0  # 6 of 10 steps
    assert torch.equal(img2img_sigmas(sig, 1.0), sig)
    low = sample_img2img(SAMPLERS["euler"], denoiser, x, sig, noise, strength=0.2)
    high = sample_img2img(SAMPLERS["euler"], denoiser, x, sig, noise, strength=1.0)
    assert (low - x).abs().mean() < (high - x).abs().mean()  # stronger edits move further
    with pytest.raises(ValueError, match="strength"):
        img2img_sigmas(sig, 1.5)


def test_generate_with_init_image_and_mask():
    """The pipeline path used by `difftrain sample --init-image --mask`."""
    known, mask = known_and_mask()
    init = known[0]
    same = generate(
        denoiser,
        num=3,
        shape=(1, 6, 6),
        seed=0,
        sampler="dpmpp-2m",
        steps=5,
        init_images=init,
        strength=0.0,
    )
    assert torch.equal(same, init.expand(3, -1, -1, -1))
    out = generate(
        denoiser,
        num=3,
        shape=(1, 6, 6),
        seed=0,
        sampler="ddim",
        steps=5,
        sampler_options={"eta": 1.0},
        init_images=init,
        strength=1.0,
        mask=mask[0],
    )
    keep = mask[0].expand(3, 1, 6, 6) == 0
    assert torch.equal(out[keep], init.expand(3, -1, -1, -1)[keep])
    one = generate(
        denoiser,
        num=1,
        shape=(1, 6, 6),
        seed=0,
        sampler="ddim",
        steps=5,
        first_index=2,
        sampler_options={"eta": 1.0},
        init_images=init,
        strength=1.0,
        mask=mask[0],
    )
    torch.testing.assert_close(one[0], out[2])  # sample i depends only on (seed, i)


def test_guidance_interval():
    def cond_denoiser(x, sigma, cond):
        return x * 0 + cond.float().view(-1, 1, 1, 1)  # D = the label

    x, cond = torch.zeros(4, 1, 2, 2), torch.tensor([3, 3, 3, 3])
    sigma = torch.tensor([0.1, 1.0, 5.0, 50.0])
    full = CFGDenoiser(cond_denoiser, 2.0, null_cond=0)(x, sigma, cond)
    assert torch.equal(full[:, 0, 0, 0], torch.full((4,), 6.0))  # 0 + 2·(3 − 0)
    part = CFGDenoiser(cond_denoiser, 2.0, null_cond=0, interval=(0.5, 5.0))(x, sigma, cond)
    assert part[:, 0, 0, 0].tolist() == [3.0, 6.0, 6.0, 3.0]
