"""Preprocessing to a fixed size (per sample, on PIL images) and augmentation (batched tensors).

Geometry runs on PIL images in mode L, RGB or F (16-bit sources stay float until `to_array`).
Augmentations run on float tensors in [-1, 1] and draw every random number from the
`torch.Generator` they are given, a fixed number per image, so a run is reproducible.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from difftrain.data.decode import normalize_mode

RESAMPLE = Image.Resampling.BICUBIC


def to_mode(img: Image.Image, channels: int) -> Image.Image:
    """Grayscale, RGB, or F for 16-bit gray; transparency is composited onto white first."""
    return normalize_mode(img, channels)


def fit(
    img: Image.Image,
    size: tuple[int, int],
    mode: str = "crop",
    offset: tuple[float, float] | None = None,
) -> Image.Image:
    """Reach `size` = (w, h) by 'crop' / 'random_crop' (cover, then crop), 'pad' or 'stretch'.

    `offset` in [0, 1)² places a random crop (None = center).
    """
    tw, th = size
    w, h = img.size
    if (w, h) == (tw, th):
        return img
    if mode == "stretch":
        return img.resize((tw, th), RESAMPLE)
    if mode == "pad":
        scale = min(tw / w, th / h)
        nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
        fill = 255.0 if img.mode == "F" else (255,) * len(img.getbands())
        canvas = Image.new(img.mode, (tw, th), fill if img.mode != "L" else 255)
        canvas.paste(img.resize((nw, nh), RESAMPLE), ((tw - nw) // 2, (th - nh) // 2))
        return canvas
    scale = max(tw / w, th / h)  # cover: the shorter side (relative to the target) matches
    nw, nh = max(tw, round(w * scale)), max(th, round(h * scale))
    if (nw, nh) != (w, h):
        img = img.resize((nw, nh), RESAMPLE)
    fx, fy = (0.5, 0.5) if offset is None or mode != "random_crop" else offset
    left, top = int(fx * (nw - tw + 1)) if nw > tw else 0, int(fy * (nh - th + 1)) if nh > th else 0
    return img.crop((left, top, left + tw, top + th))


def fit_square(img: Image.Image, resolution: int, mode: str) -> Image.Image:
    """Reach resolution×resolution by center 'crop', 'pad' or 'stretch'."""
    return fit(img, (resolution, resolution), mode)


def to_array(img: Image.Image, channels: int) -> np.ndarray:
    """PIL image → C×H×W: uint8 for 8-bit modes, float32 in [0, 255] for F (16-bit sources)."""
    dtype = np.float32 if img.mode == "F" else np.uint8
    arr = np.asarray(img, dtype=dtype)
    if arr.ndim == 2:
        arr = arr[None]
        return np.repeat(arr, 3, axis=0) if channels == 3 else arr
    return arr.transpose(2, 0, 1)


def pil_to_uint8(img: Image.Image, channels: int | None = None) -> np.ndarray:
    """PIL image → uint8 C×H×W; float (16-bit) data is rounded here, the final scale."""
    arr = to_array(img, channels or (1 if img.mode in ("L", "F") else 3))
    return np.clip(np.rint(arr), 0, 255).astype(np.uint8) if arr.dtype != np.uint8 else arr


def to_model_range(images: torch.Tensor) -> torch.Tensor:
    """[0, 255] (uint8 or float) → float32 [-1, 1]."""
    return images.float().div(127.5).sub(1.0)


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """float [-1, 1] → uint8 [0, 255], rounded and clipped."""
    return ((x.float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)


def random_hflip(
    x: torch.Tensor, generator: torch.Generator | None, p: float = 0.5
) -> torch.Tensor:
    """Flip each image left-right with probability p (x: B×C×H×W)."""
    flip = torch.rand(x.shape[0], generator=generator) < p
    return torch.where(flip.view(-1, 1, 1, 1).to(x.device), x.flip(-1), x)


# ---- Augmentation on batches in [-1, 1] ----

N_DRAWS = 12  # random numbers per image, whatever is enabled: turning one on never shifts another


def _affine(x: torch.Tensor, u: torch.Tensor, aug) -> torch.Tensor:
    """Small rotation and random resized crop as one resampling (only where one is active)."""
    b, _, h, w = x.shape
    rot_on = u[:, 1] < aug.rotate
    crop_on = u[:, 3] < aug.resized_crop
    active = rot_on | crop_on
    if not bool(active.any()):
        return x
    angle = (u[:, 2] * 2 - 1) * math.radians(aug.rotate_degrees) * rot_on
    lo, hi = aug.resized_crop_scale
    area = lo + (hi - lo) * u[:, 4]
    ratio = torch.exp((u[:, 5] * 2 - 1) * math.log(4 / 3))
    sw = torch.where(crop_on, (area * ratio).sqrt().clamp(max=1.0), torch.ones(b))
    sh = torch.where(crop_on, (area / ratio).sqrt().clamp(max=1.0), torch.ones(b))
    cx, cy = (u[:, 6] * 2 - 1) * (1 - sw), (u[:, 7] * 2 - 1) * (1 - sh)
    cos, sin = angle.cos(), angle.sin()
    # theta maps output to input in normalized coords: diag(w,h)^-1 · R · diag(w,h) · diag(sw,sh)
    theta = torch.stack([
        torch.stack([cos * sw, -sin * (h / w) * sh, cx], -1),
        torch.stack([sin * (w / h) * sw, cos * sh, cy], -1),
    ], 1)  # fmt: skip  # B×2×3
    idx = active.nonzero().squeeze(1)
    grid = F.affine_grid(theta[idx].to(x), [len(idx), *x.shape[1:]], align_corners=False)
    out = x.clone()
    out[idx] = F.grid_sample(
        x[idx], grid, mode="bilinear", padding_mode="border", align_corners=False
    )
    return out


def _jitter(x: torch.Tensor, u: torch.Tensor, aug) -> torch.Tensor:
    """Brightness, contrast, saturation factors in [1-s, 1+s] (torchvision's ColorJitter order)."""
    on = (u[:, 8] < aug.color_jitter).view(-1, 1, 1, 1)
    if not bool(on.any()):
        return x
    y = (x + 1) / 2  # [0, 1]

    def factor(col: int, strength: float) -> torch.Tensor:
        return (1 + (u[:, col] * 2 - 1) * strength).view(-1, 1, 1, 1).to(x)

    y = (y * factor(9, aug.brightness)).clamp(0, 1)
    mean = y.mean(dim=(1, 2, 3), keepdim=True)
    y = ((y - mean) * factor(10, aug.contrast) + mean).clamp(0, 1)
    if y.shape[1] == 3:
        gray = (0.299 * y[:, 0:1] + 0.587 * y[:, 1:2] + 0.114 * y[:, 2:3]).expand_as(y)
        y = ((y - gray) * factor(11, aug.saturation) + gray).clamp(0, 1)
    return torch.where(on, y * 2 - 1, x)


def augment(
    x: torch.Tensor, aug, hflip_p: float, generator: torch.Generator | None
) -> torch.Tensor:
    """Apply the configured augmentations (x: B×C×H×W float in [-1, 1]); each has a probability."""
    if not (hflip_p or aug.rotate or aug.resized_crop or aug.color_jitter):
        return x
    u = torch.rand(x.shape[0], N_DRAWS, generator=generator)
    x = _affine(x, u, aug)
    flip = (u[:, 0] < hflip_p).view(-1, 1, 1, 1).to(x.device)
    x = torch.where(flip, x.flip(-1), x)
    return _jitter(x, u, aug)


def augment_batch(x: torch.Tensor, cfg, generator: torch.Generator | None) -> torch.Tensor:
    """The in-memory path's augmentation from a DataConfig (`data.hflip` means p = 0.5)."""
    return augment(x, cfg.augment, hflip_probability(cfg), generator)


def hflip_probability(cfg) -> float:
    """`data.augment.hflip`, or 0.5 when the older `data.hflip: true` is set."""
    return max(cfg.augment.hflip, 0.5 if cfg.hflip else 0.0)
