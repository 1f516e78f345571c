"""Init images and inpainting masks: decoded like training data, with one geometry for both.

Both go through `data.decode` (file checks, a header-only pixel limit against decompression
bombs, first frame, EXIF orientation) and then the run's `data.resize` (crop, pad or stretch),
so the mask covers exactly the pixels of the image it belongs to.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from difftrain.config import ConfigError
from difftrain.data.decode import BadImage, load_normalized
from difftrain.data.transforms import fit_square, pil_to_uint8, to_model_range

ImageSource = Path | bytes


def _name(src: ImageSource, what: str) -> str:
    return f"{what} {str(src)!r}" if isinstance(src, Path) else f"{what} ({len(src)} bytes)"


def _decode(src: ImageSource, channels: int, max_pixels: int, what: str) -> Image.Image:
    """The safe training decoder; a bad file is a ConfigError naming it and the reason."""
    try:
        return load_normalized(src, channels, max_pixels)
    except BadImage as err:
        hint = " (raise data.max_pixels in the run's config)" if err.reason == "too_large" else ""
        raise ConfigError(f"{_name(src, what)}: unusable image: {err}{hint}") from None


def load_init_image(
    src: ImageSource, channels: int, resolution: int, resize: str, max_pixels: int
) -> tuple[torch.Tensor, tuple[int, int]]:
    """C×H×W float in [-1, 1] at the model's resolution, and the decoded (w, h) before fitting."""
    img = _decode(src, channels, max_pixels, "init_image")
    size = img.size
    fitted = fit_square(img, resolution, resize)
    return to_model_range(torch.from_numpy(pil_to_uint8(fitted, channels).copy())), size


def load_mask(
    src: ImageSource, image_size: tuple[int, int], resolution: int, resize: str, max_pixels: int
) -> torch.Tensor:
    """1×1×H×W in {0, 1} (white ≥ 128 = generate, black = keep), fitted like its image.

    The mask must have the init image's size (after EXIF orientation of each): a mask of
    another size cannot say which pixels it covers. Padding (`data.resize: pad`) is "keep":
    the padded border of the image is known, not generated.
    """
    img = _decode(src, 1, max_pixels, "mask")
    if img.size != image_size:
        raise ConfigError(
            f"{_name(src, 'mask')}: is {img.size[0]}x{img.size[1]} but the init image is "
            f"{image_size[0]}x{image_size[1]}; the mask must have the image's size"
        )
    # Fit "keep" (inverted) with the image's own function: padding then fills with white =
    # keep, and crop/stretch move the mask exactly as they move the image's pixels.
    arr = np.asarray(img, dtype=np.float32)
    keep = Image.fromarray(np.where(arr >= 128, 0, 255).astype(np.uint8), mode="L")
    fitted = np.asarray(fit_square(keep, resolution, resize), dtype=np.float32)
    return torch.from_numpy((fitted < 128).astype(np.float32))[None, None]
