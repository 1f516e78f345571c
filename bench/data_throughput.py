"""Loader throughput vs training-step throughput, images/s, at several resolutions.

For each size it writes real JPEGs (Fashion-MNIST images, tinted, upscaled to 1.5× × 1.25×
the training size so decoding and resizing do real work) to a folder and the same images to
WebDataset tar shards, then measures:

- loader: `open_loader` with `data.loader: stream` and the default worker count, images/s
  delivered as decoded, cropped, augmented (hflip), collated float batches;
- step: `objective(D, x, cond, gen).mean().backward(); opt.step()` for the default model
  (`build_denoiser`, `build_objective`), images/s.

    .venv/bin/python bench/data_throughput.py [--sizes 32 64 256] [--images 512]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from difftrain.config import load_config
from difftrain.data import open_loader
from difftrain.data.loader import default_workers
from difftrain.data.sources import read_idx
from difftrain.pipeline.build import build_denoiser, build_objective

FASHION = Path("/usr/share/datasets/fashion-mnist")
TINTS = [(255, 90, 90), (90, 200, 90), (90, 120, 255), (230, 200, 60), (200, 90, 220)]


def source_images(n: int, size: int) -> list[Image.Image]:
    """n RGB images of (1.5·size × 1.25·size) made from Fashion-MNIST."""
    raw = read_idx(FASHION / "train-images-idx3-ubyte.gz")[:n]
    w, h = int(size * 1.5), int(size * 1.25)
    out = []
    for i, a in enumerate(raw):
        tint = np.array(TINTS[i % len(TINTS)], dtype=np.float32) / 255
        rgb = (255 - (255 - a[..., None].astype(np.float32)) * tint).astype(np.uint8)
        out.append(Image.fromarray(rgb).resize((w, h), Image.Resampling.BICUBIC))
    return out


def write_sources(root: Path, images: list[Image.Image]) -> tuple[Path, Path]:
    import webdataset as wds

    folder, shards = root / "jpegs", root / "shards"
    folder.mkdir()
    shards.mkdir()
    per_shard = max(1, len(images) // 4)
    writer = None
    for i, img in enumerate(images):
        img.save(folder / f"{i:06d}.jpg", quality=90)
        if i % per_shard == 0:
            if writer:
                writer.close()
            writer = wds.TarWriter(str(shards / f"shard-{i // per_shard:04d}.tar"))
        writer.write({"__key__": f"{i:06d}", "jpg": (folder / f"{i:06d}.jpg").read_bytes()})
    writer.close()
    return folder, shards


def loader_rate(path: Path, source: str, size: int, batch: int, batches: int) -> float:
    cfg = load_config(
        None,
        [
            f"data.source={source}",
            f"data.path={path}",
            f"data.resolution={size}",
            "data.loader=stream",
            "data.val_fraction=0",
            "data.hflip=true",
        ],
    ).data
    loader, _ = open_loader(cfg, seed=0, batch_size=batch)
    loader.next()  # workers started, prefetch queue filled
    t = time.perf_counter()
    for _ in range(batches):
        loader.next()
    rate = batches * batch / (time.perf_counter() - t)
    loader.close()
    return rate


def step_rate(size: int, batch: int, steps: int) -> float:
    cfg = load_config(None, [f"data.resolution={size}", "data.channels=3"])
    torch.manual_seed(0)
    denoiser = build_denoiser(cfg, None)
    objective = build_objective(cfg)
    opt = torch.optim.AdamW(denoiser.parameters(), lr=1e-4)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(batch, 3, size, size) * 2 - 1

    def step():
        opt.zero_grad(set_to_none=True)
        objective(denoiser, x, None, gen).mean().backward()
        opt.step()

    step()  # warm-up
    t = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * batch / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[32, 64, 256])
    ap.add_argument("--images", type=int, default=512)
    ap.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = ap.parse_args()
    torch.set_num_threads(2)
    # (loader batch, loader batches, step batch, steps) per size: a few seconds each on 2 cores.
    plan = {32: (64, 12, 32, 4), 64: (32, 12, 16, 3), 256: (16, 8, 4, 2)}
    rows = []
    for size in args.sizes:
        lb, lk, sb, sk = plan.get(size, (16, 8, 4, 2))
        with tempfile.TemporaryDirectory() as tmp:
            folder, shards = write_sources(Path(tmp), source_images(args.images, size))
            jpeg = loader_rate(folder, "folder", size, lb, lk)
            tar = loader_rate(shards, "webdataset", size, lb, lk)
        step = step_rate(size, sb, sk)
        rows.append(
            {
                "size": size,
                "jpeg_folder": jpeg,
                "tar_shards": tar,
                "train_step": step,
                "ratio_folder": jpeg / step,
                "ratio_shards": tar / step,
            }
        )
        print(f"{size}px done", flush=True)
    print(f"\nworkers: {default_workers()} (default), torch threads: {torch.get_num_threads()}")
    head = ("size", "folder img/s", "shards img/s", "step img/s", "folder/step", "shards/step")
    print(f"{head[0]:>5} " + " ".join(f"{h:>13}" for h in head[1:]))
    for r in rows:
        cells = [f"{r['jpeg_folder']:.0f}", f"{r['tar_shards']:.0f}", f"{r['train_step']:.2f}"]
        cells += [f"{r['ratio_folder']:.1f}x", f"{r['ratio_shards']:.1f}x"]
        print(f"{r['size']:>5} " + " ".join(f"{c:>13}" for c in cells))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
