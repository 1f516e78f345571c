"""Loader headroom inside a real training run: the share of step time spent waiting for data.

For each size it writes real JPEGs (Fashion-MNIST images when its Debian package is installed,
else scikit-learn's digits; tinted, upscaled to 1.5× × 1.25× the training size so decoding and
resizing do real work) to a folder and the same images to WebDataset tar shards, then runs
difftrain's own training loop (`train()`, default model, `data.loader: stream`, default worker
count, hflip) on each and reads from its metrics.jsonl, over the steps after a warm-up:

- img/s: images trained between the warm-up row and the last row over the wall time between;
- data wait: `train/data_wait`, the share of step time the loop spent in `next()` waiting for a
  batch (time-weighted over the same steps). Near 0: the loader keeps up; near 1: data-bound.

The loader and the step share the same cores here, as they do in training; timing them apart
would overstate the headroom. With `--loader-alone` it also times the loader by itself.

    .venv/bin/python bench/data_throughput.py [--sizes 32 64 256] [--images 512]
"""

from __future__ import annotations

import argparse
import json
import os
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
from difftrain.train import train

FASHION = Path("/usr/share/datasets/fashion-mnist")
TINTS = [(255, 90, 90), (90, 200, 90), (90, 120, 255), (230, 200, 60), (200, 90, 220)]


def gray_images(n: int) -> np.ndarray:
    """n grayscale uint8 images: Fashion-MNIST if installed, else scikit-learn's digits."""
    if (FASHION / "train-images-idx3-ubyte.gz").is_file():
        return read_idx(FASHION / "train-images-idx3-ubyte.gz")[:n]
    from sklearn.datasets import load_digits

    d = np.round(load_digits().images / 16 * 255).astype(np.uint8)
    return d[np.arange(n) % len(d)]


def source_images(n: int, size: int) -> list[Image.Image]:
    """n RGB images of (1.5·size × 1.25·size)."""
    w, h = int(size * 1.5), int(size * 1.25)
    out = []
    for i, a in enumerate(gray_images(n)):
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


def data_overrides(path: Path, source: str, size: int) -> list[str]:
    return [
        f"data.source={source}",
        f"data.path={path}",
        f"data.resolution={size}",
        "data.channels=3",
        "data.loader=stream",
        "data.val_fraction=0",
        "data.hflip=true",
    ]


def training_run(path: Path, source: str, size: int, batch: int, steps: int, warmup: int) -> dict:
    """img/s and time-weighted train/data_wait over the steps after `warmup` of a real run."""
    with tempfile.TemporaryDirectory() as d:
        run = Path(d) / "run"
        sets = data_overrides(path, source, size) + [
            f"train.run_dir={run}",
            f"train.batch_size={batch}",
            f"train.max_steps={warmup + steps}",
            "train.log_every=1",
            "train.checkpoint_every=1000000000",
            "train.sample_every=1000000000",
            "logging.progress=false",
            "logging.tensorboard=false",
            "sample.num=1",
            "sample.steps=1",
        ]
        train(load_config(None, sets))
        rows = [json.loads(r) for r in (run / "metrics.jsonl").read_text().splitlines()]
    return headroom(rows, warmup, warmup + steps, batch)


def headroom(rows: list[dict], start: int, end: int, batch: int) -> dict:
    """img/s and the share of wall time spent waiting for data over the steps in (start, end]."""
    by_step = {r["step"]: r for r in rows if "train/data_wait" in r}
    wait = sum(
        by_step[s]["train/data_wait"] * (by_step[s]["time"] - by_step[s - 1]["time"])
        for s in range(start + 1, end + 1)
    )
    seconds = by_step[end]["time"] - by_step[start]["time"]
    return {"img_per_s": (end - start) * batch / seconds, "data_wait": wait / seconds}


def loader_rate(path: Path, source: str, size: int, batch: int, batches: int) -> float:
    """The loader by itself (nothing else on the cores): an upper bound, not the headroom."""
    cfg = load_config(None, data_overrides(path, source, size)).data
    loader, _ = open_loader(cfg, seed=0, batch_size=batch)
    loader.next()  # workers started, prefetch queue filled
    t = time.perf_counter()
    for _ in range(batches):
        loader.next()
    rate = batches * batch / (time.perf_counter() - t)
    loader.close()
    return rate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[32, 64, 256])
    ap.add_argument("--images", type=int, default=512)
    ap.add_argument("--steps", type=int, default=None, help="timed steps (default: per size)")
    ap.add_argument("--loader-alone", action="store_true", help="also time the loader alone")
    ap.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = ap.parse_args()
    # (batch, timed steps) per size: tens of seconds each on 2 cores; 2 warm-up steps.
    plan = {32: (32, 8), 64: (16, 6), 256: (4, 4)}
    warmup, rows = 2, []
    for size in args.sizes:
        batch, steps = plan.get(size, (4, 4))
        steps = args.steps or steps
        row = {"size": size, "batch": batch, "steps": steps}
        with tempfile.TemporaryDirectory() as tmp:
            folder, shards = write_sources(Path(tmp), source_images(args.images, size))
            for name, path, source in [
                ("folder", folder, "folder"),
                ("shards", shards, "webdataset"),
            ]:
                row[name] = training_run(path, source, size, batch, steps, warmup)
                if args.loader_alone:
                    row[name]["loader_alone_img_per_s"] = loader_rate(path, source, size, batch, 8)
        rows.append(row)
        print(f"{size}px done", flush=True)
    print(
        f"\nworkers: {default_workers()} (default), torch threads: {torch.get_num_threads()}, "
        f"cores: {os.cpu_count()}, 1-min load average: {os.getloadavg()[0]:.1f}"
    )
    head = ("size", "batch", "folder img/s", "folder wait", "shards img/s", "shards wait")
    print(" ".join(f"{h:>13}" for h in head))
    for r in rows:
        f, s = r["folder"], r["shards"]
        cells = [r["size"], r["batch"], f"{f['img_per_s']:.1f}", f"{100 * f['data_wait']:.0f}%"]
        cells += [f"{s['img_per_s']:.1f}", f"{100 * s['data_wait']:.0f}%"]
        print(" ".join(f"{c:>13}" for c in cells))
        if args.loader_alone:
            print(
                f"{'':>13} loader alone: folder {f['loader_alone_img_per_s']:.0f} img/s, "
                f"shards {s['loader_alone_img_per_s']:.0f} img/s"
            )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
