"""Cost of one training step of the emoji text-to-image model vs the Fashion-MNIST demo's step.

    python bench/t2i_cost.py

Counts floating-point operations (torch.utils.flop_counter) of a forward + backward at batch 64,
which does not depend on what else runs on the machine, and times a few steps (which does).
"""

from __future__ import annotations

import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from difftrain.config import Config, load_config
from difftrain.pipeline.build import build_denoiser

BATCH = 64
TEXT = load_config("configs/emoji-t2i.yaml").text


def model(preset: str, res: int, ch: int, text: bool):
    cfg = Config(
        data={"resolution": res, "channels": 3},
        model={"preset": preset},
        text=TEXT if text else {},
    )
    den = build_denoiser(cfg, None if text else 10, shape=(ch, res, res))
    cond = (
        torch.randint(3, 2000, (BATCH, TEXT.max_length)) if text else torch.randint(0, 10, (BATCH,))
    )
    return den, torch.randn(BATCH, ch, res, res), cond


def step(den, x, cond) -> None:
    den(x, torch.ones(BATCH), cond).square().mean().backward()


def main() -> None:
    rows = {
        "fashion-mnist demo (unet-small, 28×28×1, class)": ("unet-small", 28, 1, False),
        "emoji t2i (unet-cond-small, 16×16×4 latents, text)": ("unet-cond-small", 16, 4, True),
        "dit-tiny, 16×16×4 latents, text": ("dit-tiny", 16, 4, True),
    }
    base = None
    for name, spec in rows.items():
        den, x, cond = model(*spec)
        with FlopCounterMode(display=False) as fc:
            step(den, x, cond)
        flops = fc.get_total_flops()
        base = base or flops
        times = []
        for _ in range(3):
            t = time.perf_counter()
            step(den, x, cond)
            times.append(time.perf_counter() - t)
        print(f"{name}: {flops / 1e9:.1f} GFLOP/step ({flops / base:.2f}×), "
              f"{min(times):.2f} s/step here (threads: {torch.get_num_threads()})")  # fmt: skip


if __name__ == "__main__":
    main()
