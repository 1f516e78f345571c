"""Seeded generation and image grids. Sample i depends only on (seed, i)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from difftrain.samplers import (
    SAMPLERS,
    CFGDenoiser,
    karras_sigmas,
    randn,
    sample_generators,
    sample_img2img,
    sample_inpaint,
)


def default_labels(num: int, num_classes: int | None) -> torch.Tensor | None:
    """Contiguous blocks of classes: with num = 100 and 10 classes, sample i has label i // 10."""
    if num_classes is None:
        return None
    return torch.arange(num) * num_classes // num


@torch.no_grad()
def generate(
    denoiser: Callable,
    *,
    num: int,
    shape: tuple[int, int, int],
    seed: int,
    labels: torch.Tensor | None = None,
    null_class: int | None = None,
    sampler: str = "heun",
    steps: int = 18,
    guidance: float = 1.0,
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
    rho: float = 7.0,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    first_index: int = 0,
    callback: Callable[[int], None] | None = None,
    sigmas: torch.Tensor | None = None,
    sampler_options: dict | None = None,
    guidance_interval: tuple[float, float] | None = None,
    init_images: torch.Tensor | None = None,
    strength: float = 1.0,
    mask: torch.Tensor | None = None,
    resample: int = 1,
    rows: Sequence[tuple[int, int]] | None = None,
) -> torch.Tensor:
    """Generate `num` images in [-1, 1] (float32, N×C×H×W on the CPU).

    `sigmas` (n+1 values ending in 0) overrides the Karras schedule built from steps, sigma_min,
    sigma_max and rho; `sampler_options` go to the sampler (e.g. eta, s_churn).
    With `init_images` (C×H×W or num×C×H×W in [-1, 1]) this is img2img (SDEdit) at `strength`
    (0 returns the input); with `mask` too (1 = generate, 0 = keep; broadcastable) it inpaints,
    keeping the masked-out pixels exactly, with RePaint `resample` > 1 repeats per step.
    `rows` gives each sample its own (seed, index), overriding seed and first_index, so that
    several requests can share one forward pass and still get their own images.
    """
    if guidance != 1.0 and (labels is None or null_class is None):
        raise ValueError("guidance needs a class-conditional model and labels")
    if mask is not None and init_images is None:
        raise ValueError("inpainting needs init_images (the known pixels) along with the mask")
    sample_fn = SAMPLERS[sampler]
    if sigmas is None:
        sigmas = karras_sigmas(steps, sigma_min, sigma_max, rho)
    sigmas = sigmas.to(device)
    den = denoiser
    if null_class is not None:
        den = CFGDenoiser(denoiser, guidance, null_class, interval=guidance_interval)
    options = dict(sampler_options or {})
    out = []
    for start in range(0, num, batch_size):
        idx = range(first_index + start, first_index + min(start + batch_size, num))
        if rows is None:
            gens = sample_generators(seed, idx, device="cpu")
        else:  # (seed, index) per sample: one generator each, exactly as if requested alone
            part = rows[start : start + len(idx)]
            gens = [sample_generators(s, [i], device="cpu")[0] for s, i in part]
        noise = randn((len(idx), *shape), gens).to(device)
        cond = None if labels is None else labels[start : start + len(idx)].to(device)
        if init_images is None:
            x0 = sample_fn(den, noise * sigmas[0], sigmas, cond=cond, generator=gens, **options)
        else:
            init = _rows(init_images, start, len(idx), shape).to(device)
            fn = sample_fn
            if mask is not None:
                known, m = init, _rows(mask, start, len(idx), shape).to(device)
                fn = partial(sample_inpaint, sample_fn, known=known, mask=m, resample=resample)
            x0 = sample_img2img(
                fn,
                den,
                init,
                sigmas,
                noise,
                strength=strength,
                cond=cond,
                generator=gens,
                **options,
            )
        out.append(x0.float().cpu())
        if callback is not None:
            callback(len(idx))
    return torch.cat(out)


def _rows(t: torch.Tensor, start: int, n: int, shape: tuple) -> torch.Tensor:
    """Rows start..start+n of a per-sample tensor; an unbatched or 1-row one is broadcast."""
    if t.dim() == len(shape):
        t = t.unsqueeze(0)
    if t.shape[0] == 1:
        return t.expand(n, *t.shape[1:])
    return t[start : start + n]


def make_grid(images: torch.Tensor, ncols: int | None = None, pad: int = 2) -> np.ndarray:
    """uint8 N×C×H×W → one H'×W'×C uint8 array, `ncols` per row (default ≈ √N), white gaps."""
    n, c, h, w = images.shape
    ncols = ncols or math.ceil(math.sqrt(n))
    nrows = math.ceil(n / ncols)
    grid = np.full((nrows * (h + pad) + pad, ncols * (w + pad) + pad, c), 255, dtype=np.uint8)
    arr = images.permute(0, 2, 3, 1).numpy()
    for i in range(n):
        r, col = divmod(i, ncols)
        y, x = pad + r * (h + pad), pad + col * (w + pad)
        grid[y : y + h, x : x + w] = arr[i]
    return grid


def save_image(arr: np.ndarray, path: Path, min_side: int = 0) -> None:
    """Save an H×W×C uint8 array as PNG; upscale (nearest) so the short side is >= min_side."""
    img = Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr)
    if min_side and min(img.size) < min_side:
        k = math.ceil(min_side / min(img.size))
        img = img.resize((img.width * k, img.height * k), Image.Resampling.NEAREST)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
