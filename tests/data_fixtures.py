"""Real files for the data tests: every format, every special mode, every kind of bad input."""

from __future__ import annotations

import io
import json
import os
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

COLORS = {"red": (220, 30, 30), "green": (30, 200, 60), "blue": (40, 60, 220)}


def pattern(size: tuple[int, int], color: tuple[int, int, int], seed: int = 0) -> Image.Image:
    """A colored image with a seeded texture (so content hashes differ)."""
    w, h = size
    rng = np.random.default_rng(seed)
    base = np.array(color, dtype=np.float32)[None, None]
    noise = rng.integers(-20, 21, size=(h, w, 3))
    return Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8), "RGB")


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def make_class_folder(
    root: Path, per_class: int = 4, formats=("PNG", "JPEG", "WEBP", "BMP")
) -> Path:
    """root/<class>/<i>.<ext>, sizes vary, formats cycle; captions in metadata.jsonl for 'red',
    kohya .txt side-cars for 'green', none for 'blue'."""
    ext = {
        "PNG": ".png",
        "JPEG": ".jpg",
        "WEBP": ".webp",
        "BMP": ".bmp",
        "GIF": ".gif",
        "TIFF": ".tif",
    }
    for c, (name, color) in enumerate(COLORS.items()):
        d = root / name
        d.mkdir(parents=True, exist_ok=True)
        rows = []
        for i in range(per_class):
            fmt = formats[i % len(formats)]
            size = (40 + 8 * i, 32 + 4 * c)
            f = d / f"{name}_{i}{ext[fmt]}"
            f.write_bytes(encode(pattern(size, color, seed=10 * c + i), fmt))
            rows.append({"file_name": f.name, "text": f"a {name} square number {i}"})
            if name == "green":
                f.with_suffix(".txt").write_text(f"green thing {i}\n")
        if name == "red":
            (d / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return root


def make_special_images(root: Path) -> dict[str, Path]:
    """One file per tricky mode; returns name → path."""
    root.mkdir(parents=True, exist_ok=True)
    out = {}
    rgba = Image.new("RGBA", (16, 16), (255, 0, 0, 0))  # fully transparent red
    rgba.paste((0, 0, 255, 255), (0, 0, 8, 16))  # opaque blue left half
    out["rgba"] = root / "rgba.png"
    rgba.save(out["rgba"])
    la = Image.new("LA", (16, 16), (0, 0))  # transparent black → white
    out["la"] = root / "la.png"
    la.save(out["la"])
    p = Image.new("P", (16, 16), 1)
    p.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    out["p_transparent"] = root / "p_transparent.png"
    p.save(out["p_transparent"], transparency=1)  # index 1 (red) is transparent → white
    out["cmyk"] = root / "cmyk.jpg"
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(out["cmyk"], quality=95)  # red
    grad = np.tile(np.linspace(0, 65535, 64), (32, 1)).astype(np.uint16)  # 16-bit ramp
    out["gray16_png"] = root / "gray16.png"
    Image.fromarray(grad).save(out["gray16_png"])
    out["gray16_tiff"] = root / "gray16.tif"
    Image.fromarray(grad).save(out["gray16_tiff"])
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    land = Image.new("RGB", (48, 24), (255, 255, 255))
    land.paste((0, 0, 0), (0, 0, 24, 24))  # black left half (stored)
    out["exif_rot"] = root / "exif_rot.jpg"
    land.save(out["exif_rot"], exif=exif, quality=95)
    frames = [Image.new("P", (16, 16), 0), Image.new("P", (16, 16), 1)]
    for f in frames:
        f.putpalette([0, 200, 0, 200, 0, 200] + [0] * 762)
    out["gif"] = root / "anim.gif"
    frames[0].save(out["gif"], save_all=True, append_images=frames[1:], duration=50)
    out["jpeg_named_png"] = root / "really_a_jpeg.png"
    out["jpeg_named_png"].write_bytes(encode(pattern((20, 20), (10, 10, 200)), "JPEG"))
    out["tiff_rgb"] = root / "rgb.tiff"
    pattern((20, 20), (200, 200, 0)).save(out["tiff_rgb"])
    return out


def write_png_bomb(path: Path, w: int = 20000, h: int = 20000) -> Path:
    """A valid 1-bit PNG of w×h that is tiny on disk (~50 KB): decoded, 400 MB."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    comp = zlib.compressobj(9)
    row = b"\x00" * (1 + (w + 7) // 8)
    idat = b"".join(comp.compress(row) for _ in range(h)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", w, h, 1, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )
    return path


def make_bad_files(root: Path) -> dict[str, Path]:
    """One file per bad-input reason (unreadable is made by `make_unreadable`)."""
    root.mkdir(parents=True, exist_ok=True)
    out = {}
    png = encode(pattern((64, 64), (1, 2, 3), seed=99), "PNG")
    out["truncated_png"] = root / "truncated.png"
    out["truncated_png"].write_bytes(png[: len(png) // 2])
    jpg = encode(pattern((64, 64), (4, 5, 6), seed=98), "JPEG")
    out["truncated_jpg"] = root / "truncated.jpg"
    out["truncated_jpg"].write_bytes(jpg[: len(jpg) // 2])
    out["empty"] = root / "empty.png"
    out["empty"].write_bytes(b"")
    out["text"] = root / "notes.jpg"
    out["text"].write_text("this is not an image\n")
    out["bomb"] = write_png_bomb(root / "bomb.png")
    out["broken_link"] = root / "gone.png"
    os.symlink(root / "does-not-exist.png", out["broken_link"])
    return out


EXPECTED_REASONS = {
    "truncated_png": "truncated",
    "truncated_jpg": "truncated",
    "empty": "empty",
    "text": "not_an_image",
    "bomb": "too_large",
    "broken_link": "missing",
}


def make_unreadable(path: Path) -> Path:
    """A real image with mode 000 (unreadable for anyone but root)."""
    path.write_bytes(encode(pattern((8, 8), (9, 9, 9)), "PNG"))
    path.chmod(0)
    return path


def make_shards(
    root: Path, n_shards: int = 3, per_shard: int = 6, size=(24, 16), bad: bool = False
) -> list[Path]:
    """WebDataset shards written with webdataset's TarWriter: jpg/png + txt caption + cls label."""
    import webdataset as wds

    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for s in range(n_shards):
        path = root / f"shard-{s:04d}.tar"
        with wds.TarWriter(str(path)) as tw:
            for i in range(per_shard):
                k = s * per_shard + i
                color = list(COLORS.values())[k % 3]
                fmt = "JPEG" if k % 2 else "PNG"
                sample = {
                    "__key__": f"s{k:05d}",
                    "cls": str(k % 3).encode(),
                    "txt": f"sample {k}".encode(),
                }
                sample["jpg" if fmt == "JPEG" else "png"] = encode(
                    pattern(size, color, seed=k), fmt
                )
                tw.write(sample)
            if bad and s == 0:
                tw.write({"__key__": "broken", "png": b"\x89PNG\r\n\x1a\nnot really", "cls": b"0"})
                tw.write({"__key__": "captiononly", "txt": b"no image here", "cls": b"0"})
        paths.append(path)
    return paths


def make_hf(root: Path, n: int = 9) -> tuple[Path, Path]:
    """The same rows saved with save_to_disk and as a parquet file."""
    from datasets import ClassLabel, Dataset, Features, Value
    from datasets import Image as HFImage

    names = list(COLORS)
    rows = {
        "image": [pattern((20 + i, 18), COLORS[names[i % 3]], seed=i) for i in range(n)],
        "label": [i % 3 for i in range(n)],
        "text": [f"hf {names[i % 3]} {i}" if i % 4 else "" for i in range(n)],
    }
    features = Features(
        {"image": HFImage(), "label": ClassLabel(names=names), "text": Value("string")}
    )
    ds = Dataset.from_dict(rows, features=features)
    saved, parquet = root / "saved", root / "parquet" / "train.parquet"
    ds.save_to_disk(str(saved))
    parquet.parent.mkdir(parents=True)
    ds.to_parquet(str(parquet))
    return saved, parquet
