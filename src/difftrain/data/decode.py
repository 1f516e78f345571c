"""Safe image decoding and the bad-file report.

Every image goes through `decode_image`: file-system checks, a header-only size check (so a
decompression bomb is refused before a pixel is decoded), the first frame only, EXIF
orientation applied, and a mode normal form (L, RGB, or F for 16-bit grayscale). Failures raise
`BadImage` with a reason from `REASONS`; callers skip, count and list them in `BadFiles`.
"""

from __future__ import annotations

import io
import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from difftrain.data.errors import DataError

REASONS = {
    "missing": "file or symlink target does not exist",
    "unreadable": "no permission to read",
    "empty": "zero bytes",
    "not_an_image": "content is not an image Pillow can read (wrong extension or not an image)",
    "too_large": "pixel count over data.max_pixels (possible decompression bomb)",
    "truncated": "image data ends early",
    "corrupt": "image data cannot be decoded",
    "no_image": "sample has no image field",
    "bad_label": "a .cls side file (or JSON label) that is not a non-negative integer",
    "bad_metadata": "a .json side file that is not valid JSON, or has fields of the wrong type",
    "bad_caption": "a caption side file that is not UTF-8 text",
    "duplicate": "a tar member name (or sample key) that appears twice in one shard",
    "member_too_large": "a tar member over data.max_member_bytes (skipped, never read)",
}

HIGH_BIT_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I"}
EXIF_ORIENTATION = 0x0112


class BadImage(Exception):
    """An image that cannot be used; `reason` is a key of REASONS."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason, self.detail = reason, detail


@dataclass
class BadFiles:
    """Skipped inputs by reason, out of `total` looked at; nothing is dropped silently."""

    total: int = 0
    files: list[dict] = field(default_factory=list)  # {"path", "reason", "detail"}
    _seen: set[str] = field(default_factory=set, repr=False, compare=False)

    def add(self, path: str, reason: str, detail: str = "") -> bool:
        """Record a bad input once (found again, e.g. in a later epoch: not counted twice)."""
        if str(path) in self._seen:
            return False
        self._seen.add(str(path))
        self.files.append({"path": str(path), "reason": reason, "detail": detail[:300]})
        return True

    def extend(self, other: BadFiles) -> None:
        for f in other.files:
            self.add(f["path"], f["reason"], f["detail"])

    def __len__(self) -> int:
        return len(self.files)

    @property
    def by_reason(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for f in self.files:
            out.setdefault(f["reason"], []).append(f["path"])
        return out

    @property
    def rate(self) -> float:
        return len(self.files) / self.total if self.total else 0.0

    def summary(self) -> str:
        parts = [f"{len(v)} {k}" for k, v in sorted(self.by_reason.items())]
        return ", ".join(parts) if parts else "none"

    def check_rate(self, max_fraction: float, where: str) -> None:
        """Abort (DataError) when more than `max_fraction` of the inputs are bad."""
        if self.total and self.rate > max_fraction:
            raise DataError(
                f"{where}: {len(self)} of {self.total} files are unusable ({self.rate:.1%} > "
                f"data.max_bad_fraction = {max_fraction}): {self.summary()}. First: "
                f"{self.files[0]['path']} ({self.files[0]['reason']}). Fix or remove them "
                "(`difftrain data inspect` lists all), or raise data.max_bad_fraction"
            )

    def to_dict(self) -> dict:
        return {
            "total": self.total,
            "bad": len(self),
            "rate": round(self.rate, 6),
            "by_reason": {k: len(v) for k, v in sorted(self.by_reason.items())},
            "reasons": {k: REASONS[k] for k in sorted(self.by_reason) if k in REASONS},
            "files": self.files,
        }


def write_bad_files(run_dir: str | Path, bad: BadFiles) -> Path:
    """Write `bad_files.json` (counts by reason and every skipped file) into the run directory."""
    path = Path(run_dir) / "bad_files.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(bad.to_dict(), indent=1))
    return path


def check_file(path: Path) -> None:
    """File-system checks before opening: broken symlink, permissions, zero bytes."""
    if not path.exists():
        raise BadImage("missing", "broken symlink" if path.is_symlink() else "not found")
    if not os.access(path, os.R_OK):
        raise BadImage("unreadable", "os.access(R_OK) is false")
    if path.stat().st_size == 0:
        raise BadImage("empty")


def _open(src: Path | bytes) -> Image.Image:
    """Open lazily (header only); Pillow's own bomb error is mapped to too_large."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(io.BytesIO(src) if isinstance(src, bytes) else src)
    except Image.DecompressionBombError as err:
        raise BadImage("too_large", str(err)) from None
    except PermissionError as err:
        raise BadImage("unreadable", str(err)) from None
    except FileNotFoundError as err:
        raise BadImage("missing", str(err)) from None
    except (UnidentifiedImageError, SyntaxError, ValueError, OSError) as err:
        truncated = "truncat" in str(err).lower() and not isinstance(err, UnidentifiedImageError)
        raise BadImage("truncated" if truncated else "not_an_image", str(err)) from None


def _oriented_size(img: Image.Image) -> tuple[int, int]:
    w, h = img.size
    try:
        orientation = img.getexif().get(EXIF_ORIENTATION, 1)
    except Exception:  # malformed EXIF: decoding will tell
        orientation = 1
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)


def probe_image(src: Path | bytes, max_pixels: int) -> tuple[tuple[int, int], str]:
    """Header-only look: (width, height) after EXIF orientation, and the file's mode."""
    if isinstance(src, bytes) and not src:
        raise BadImage("empty")
    if isinstance(src, Path):
        check_file(src)
    img = _open(src)
    try:
        w, h = img.size
        if w * h > max_pixels:
            raise BadImage(
                "too_large", f"{w}x{h} = {w * h} pixels > data.max_pixels = {max_pixels}"
            )
        return _oriented_size(img), img.mode
    finally:
        img.close()


def decode_image(src: Path | bytes, max_pixels: int, draft: int | None = None) -> Image.Image:
    """Fully decode the first frame, with the size checked from the header first.

    `draft` lets the JPEG decoder scale down by 1/2..1/8 while keeping both sides >= draft.
    """
    if isinstance(src, bytes) and not src:
        raise BadImage("empty")
    if isinstance(src, Path):
        check_file(src)
    img = _open(src)
    w, h = img.size
    if w * h > max_pixels:
        img.close()
        raise BadImage("too_large", f"{w}x{h} = {w * h} pixels > data.max_pixels = {max_pixels}")
    try:
        if draft and img.format == "JPEG" and img.mode in ("RGB", "L"):
            img.draft(img.mode, (draft, draft))
        if getattr(img, "n_frames", 1) > 1:
            img.seek(0)  # GIF/TIFF: first frame only
        img.load()
        img = ImageOps.exif_transpose(img)
    except Image.DecompressionBombError as err:
        raise BadImage("too_large", str(err)) from None
    except OSError as err:
        msg = str(err)
        reason = "truncated" if "truncat" in msg or "broken data stream" in msg else "corrupt"
        raise BadImage(reason, msg) from None
    except (ValueError, SyntaxError, EOFError, IndexError, KeyError, TypeError) as err:
        raise BadImage("corrupt", f"{type(err).__name__}: {err}") from None
    return img


def normalize_mode(img: Image.Image, channels: int) -> Image.Image:
    """L or RGB (8-bit), or F (0..255 float) for 16-bit grayscale so no precision is lost.

    Transparency (RGBA, LA, PA, P with a transparent index) is composited onto white; CMYK
    and YCbCr are converted to RGB. 16-bit data is scaled by 255/65535 in float, never clipped.
    """
    if img.mode in HIGH_BIT_MODES:
        arr = np.asarray(img, dtype=np.float32)
        scale = 255.0 / 65535.0 if img.mode != "I" or arr.max() > 255 else 1.0
        return Image.fromarray(arr * scale)  # mode F (gray); to_array replicates it for RGB
    if img.mode == "F":
        return img
    if img.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (
        img.mode == "P" and "transparency" in img.info
    ):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, rgba)
    target = "L" if channels == 1 else "RGB"
    if img.mode == target:
        return img
    if img.mode == "CMYK" or channels == 3:
        img = img.convert("RGB")
    return img.convert(target)


def load_normalized(
    src: Path | bytes, channels: int, max_pixels: int, draft: int | None = None
) -> Image.Image:
    """decode_image + normalize_mode; conversion errors count as corrupt."""
    img = decode_image(src, max_pixels, draft)
    try:
        return normalize_mode(img, channels)
    except (OSError, ValueError) as err:
        raise BadImage("corrupt", f"mode {img.mode}: {err}") from None
