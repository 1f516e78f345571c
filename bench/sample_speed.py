"""Sampling speed: img/s of `difftrain sample`-equivalent generation over its settings.

Generates `--num` class-balanced images (sample i from (seed, i), the labels `difftrain sample`
uses by default) with `pipeline.generate.generate` — the function `difftrain sample` calls — from
a run's EMA weights, or from a randomly initialised model of a config (weights do not change the
cost), and times each setting in one process, wall clock:

  * batch size (`--batches`), under the default `torch.no_grad`;
  * `torch.inference_mode` instead of `no_grad`, and channels-last weights, with the largest
    difference of the images from the default's (0 = bitwise equal);
  * `torch.compile` of the denoiser (first call, compile time included, reported separately);
  * torch intra-op threads (`--threads`);
  * other samplers (`--samplers name:steps[:guidance],...`, e.g. `heun:18:1` for the previous
    demo default); their quality is not measured here: compare them at equal domain FID with
    `difftrain evaluate --sampler S --steps N` (bench/sampling_settings.sh).

Figures depend on the machine and on what else runs on it: run on an idle machine, and write the
load average (printed) next to any figure you quote.

    .venv/bin/python bench/sample_speed.py --run runs/demo --num 1000            # the issue's size
    .venv/bin/python bench/sample_speed.py --config configs/tiny.yaml --num 32   # a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from difftrain.config import load_config
from difftrain.pipeline.build import build_denoiser, build_sigmas, sampler_options
from difftrain.pipeline.generate import default_labels, generate
from difftrain.pipeline.latent import sample_shape


def load_model(args) -> tuple[object, torch.nn.Module, int | None]:
    """(config, denoiser in eval mode, number of classes) from --run or --config."""
    if args.run:
        from difftrain.pipeline.run import load_run

        run = load_run(args.run)
        return run.config, run.denoiser.eval(), run.num_classes
    cfg = load_config(args.config)
    torch.manual_seed(0)
    k = args.classes or None
    return cfg, build_denoiser(cfg, k).eval(), k


def timed(
    cfg, den, k, num, batch, sampler, steps, mode=torch.no_grad, guidance=None
) -> tuple[float, torch.Tensor]:
    """(seconds, images) of one generation of `num` images.

    guidance None = the config's sample.guidance and sample.guidance_interval; a number = that
    weight at every step (no interval).
    """
    interval = cfg.sample.guidance_interval if guidance is None else None
    guidance = cfg.sample.guidance if guidance is None else guidance
    labels = default_labels(num, k)
    t = time.perf_counter()
    with mode():
        images = generate(
            den, num=num, shape=sample_shape(cfg), seed=0, labels=labels, null_class=k,
            guidance=guidance, guidance_interval=interval, sampler=sampler,
            sigmas=build_sigmas(cfg, steps),
            sampler_options=sampler_options(sampler), batch_size=batch,
        )  # fmt: skip
    return time.perf_counter() - t, images


def row(name: str, secs: float, num: int, images=None, ref=None, **extra) -> dict:
    out = {"setting": name, "seconds": round(secs, 3), "img_per_s": round(num / secs, 2)}
    if images is not None and ref is not None:
        out["max_abs_diff_vs_default"] = float((images - ref).abs().max())
    out.update(extra)
    print(json.dumps(out), flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--run", help="run directory (EMA weights of its latest checkpoint)")
    src.add_argument("--config", help="config: a randomly initialised model of it")
    ap.add_argument("--classes", type=int, default=10, help="--config: classes (0 = none)")
    ap.add_argument("--num", type=int, default=1000)
    ap.add_argument("--batches", default="16,64,256", help="batch sizes to time")
    ap.add_argument("--threads", default="", help="intra-op thread counts to time, e.g. 1,2")
    ap.add_argument(
        "--samplers",
        default="dpmpp-2m:10,dpmpp-2m:6",
        help="name:steps[:guidance],... (no guidance given: the config's, with its interval)",
    )
    ap.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    ap.add_argument("--out", help="also write the rows as JSON here")
    args = ap.parse_args()

    cfg, den, k = load_model(args)
    sampler, steps, num = cfg.sample.sampler, cfg.sample.steps, args.num
    print(json.dumps({"load_average": os.getloadavg(), "threads": torch.get_num_threads(),
                      "sampler": sampler, "steps": steps, "num": num}))  # fmt: skip
    rows = []
    batches = [int(b) for b in args.batches.split(",") if b]
    base_batch = 64 if 64 in batches else batches[0]
    timed(cfg, den, k, min(num, base_batch), base_batch, sampler, steps)  # warm-up
    ref = None
    for b in batches:
        secs, images = timed(cfg, den, k, num, b, sampler, steps)
        ref = images if b == base_batch else ref
        rows.append(row(f"no_grad batch {b}", secs, num))
    secs, images = timed(cfg, den, k, num, base_batch, sampler, steps, torch.inference_mode)
    rows.append(row(f"inference_mode batch {base_batch}", secs, num, images, ref))
    cl = den.to(memory_format=torch.channels_last)
    secs, images = timed(cfg, cl, k, num, base_batch, sampler, steps)
    rows.append(row(f"channels_last batch {base_batch}", secs, num, images, ref))
    den = den.to(memory_format=torch.contiguous_format)
    for n in [int(t) for t in args.threads.split(",") if t]:
        old = torch.get_num_threads()
        torch.set_num_threads(n)
        secs, _ = timed(cfg, den, k, num, base_batch, sampler, steps)
        torch.set_num_threads(old)
        rows.append(row(f"{n} threads batch {base_batch}", secs, num))
    for spec in [s for s in args.samplers.split(",") if s]:
        name, n_steps, *g = spec.split(":")
        guidance = float(g[0]) if g else None
        secs, _ = timed(cfg, den, k, num, base_batch, name, int(n_steps), guidance=guidance)
        label = f"{name} {n_steps} steps" + (f" guidance {guidance:g}" if g else "")
        rows.append(row(f"{label} batch {base_batch}", secs, num))
    if not args.no_compile:
        try:
            compiled = torch.compile(den)
            first, _ = timed(cfg, compiled, k, min(num, base_batch), base_batch, sampler, steps)
            secs, images = timed(cfg, compiled, k, num, base_batch, sampler, steps)
            rows.append(row(f"torch.compile batch {base_batch}", secs, num, images, ref,
                            first_call_seconds=round(first, 2)))  # fmt: skip
        except Exception as err:  # a compile failure is a row, not a crash
            rows.append({"setting": "torch.compile", "error": repr(err)[:300]})
            print(json.dumps(rows[-1]))
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
