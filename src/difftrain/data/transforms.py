"""Preprocessing to a square, fixed resolution, and batch-time augmentation."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image


def to_mode(img: Image.Image, channels: int) -> Image.Image:
    """Grayscale ('L') or RGB; transparency is composited onto white first."""
    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(bg, rgba)
    return img.convert("L" if channels == 1 else "RGB")


def fit_square(img: Image.Image, resolution: int, mode: str) -> Image.Image:
    """Reach resolution×resolution by 'crop' (shorter side, center crop), 'pad' or 'stretch'."""
    w, h = img.size
    if (w, h) == (resolution, resolution):
        return img
    if mode == "stretch":
        return img.resize((resolution, resolution), Image.Resampling.BICUBIC)
    if mode == "pad":
        side = max(w, h)
        fill = 255 if img.mode == "RGB" else 0
        canvas = Image.new(img.mode, (side, side), (fill,) * len(img.getbands()) if img.mode == "RGB" else 0)
        canvas.paste(img, ((side - w) // 2, (side - h) // 2))
        return canvas.resize((resolution, resolution), Image.Resampling.BICUBIC)
    scale = resolution / min(w, h)
    nw, nh = max(resolution, round(w * scale)), max(resolution, round(h * scale))
    img = img.resize((nw, nh), Image.Resampling.BICUBIC)
    left, top = (nw - resolution) // 2, (nh - resolution) // 2
    return img.crop((left, top, left + resolution, top + resolution))


def pil_to_uint8(img: Image.Image) -> np.ndarray:
    """PIL image → uint8 array C×H×W."""
    arr = np.asarray(img, dtype=np.uint8)
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def to_model_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] → float32 [-1, 1]."""
    return images.float().div(127.5).sub(1.0)


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """float [-1, 1] → uint8 [0, 255], rounded and clipped."""
    return ((x.float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)


def random_hflip(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Flip each image left-right with probability 1/2 (x: B×C×H×W)."""
    flip = torch.rand(x.shape[0], generator=generator) < 0.5
    return torch.where(flip.view(-1, 1, 1, 1).to(x.device), x.flip(-1), x)
