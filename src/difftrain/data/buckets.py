"""Aspect-ratio bucketing (as kohya / SimpleTuner): batches of one shape, several resolutions.

Buckets are (width, height) pairs with sides a multiple of `step` and area at most the
resolution squared, for each configured resolution. An image goes to the bucket of closest
aspect ratio at the largest resolution it does not need upscaling for (or the largest
resolution, with `upscale`). Each epoch shuffles within buckets, cuts full batches, and
shuffles the batches: the plan is a function of (seed, epoch) only.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from difftrain.data.order import mix_seed


def make_buckets(resolution: int, step: int, max_ratio: float) -> list[tuple[int, int]]:
    """(w, h) pairs, sides multiples of step, area in [½, 1]·resolution², long/short ≤ max_ratio:
    for each width up to the square, the tallest height that fits, and each one's mirror."""
    area = resolution * resolution
    out = set()
    for w in range(step, resolution // step * step + 1, step):
        h = min(area // w // step * step, int(w * max_ratio) // step * step)
        if h >= w and 2 * w * h >= area:
            out.update({(w, h), (h, w)})
    side = resolution // step * step
    out.add((side, side))
    best: dict[float, tuple[int, int]] = {}  # one bucket per ratio: the largest
    for w, h in out:
        r = round(w / h, 6)
        if r not in best or w * h > best[r][0] * best[r][1]:
            best[r] = (w, h)
    return sorted(best.values(), key=lambda s: s[0] / s[1])


def all_buckets(resolutions: list[int], step: int, max_ratio: float) -> list[tuple[int, int]]:
    """The union of every resolution's buckets, in a fixed order."""
    seen: list[tuple[int, int]] = []
    for r in sorted(resolutions):
        for b in make_buckets(r, step, max_ratio):
            if b not in seen:
                seen.append(b)
    return seen


def assign(
    sizes: list[tuple[int, int]], resolutions: list[int], step: int, max_ratio: float, upscale: bool
) -> tuple[list[tuple[int, int]], np.ndarray]:
    """(buckets, bucket index per image)."""
    buckets = all_buckets(resolutions, step, max_ratio)
    per_res = {r: [buckets.index(b) for b in make_buckets(r, step, max_ratio)] for r in resolutions}
    res_sorted = sorted(resolutions)
    out = np.empty(len(sizes), dtype=np.int64)
    for i, (w, h) in enumerate(sizes):
        fits = [r for r in res_sorted if r * r <= w * h]
        r = res_sorted[-1] if upscale or not fits else fits[-1]
        if not fits and not upscale:
            r = res_sorted[0]
        ar = math.log(w / h)
        out[i] = min(per_res[r], key=lambda k: abs(math.log(buckets[k][0] / buckets[k][1]) - ar))
    return buckets, out


def epoch_batches(
    bucket_of: np.ndarray, batch_size: int, seed: int, epoch: int
) -> list[np.ndarray]:
    """Positions (into bucket_of) of each full batch of epoch `epoch`; a remainder waits a turn."""
    g = torch.Generator().manual_seed(mix_seed(seed, epoch, 0xB0))
    batches = []
    for b in np.unique(bucket_of):
        members = np.flatnonzero(bucket_of == b)
        members = members[torch.randperm(len(members), generator=g).numpy()]
        for s in range(0, len(members) - batch_size + 1, batch_size):
            batches.append(members[s : s + batch_size])
    order = torch.randperm(len(batches), generator=g).numpy()
    return [batches[k] for k in order]


def bucket_counts(
    buckets: list[tuple[int, int]], bucket_of: np.ndarray, batch_size: int
) -> list[dict]:
    """Per bucket: size, images, full batches per epoch (for `data inspect` and dry runs)."""
    out = []
    for k, (w, h) in enumerate(buckets):
        n = int((bucket_of == k).sum())
        if n:
            out.append({"width": w, "height": h, "images": n, "batches": n // batch_size})
    return out
