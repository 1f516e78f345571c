"""`difftrain sample`: build a GenerationRequest, run it batch by batch, write as it goes."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import typer

from difftrain.cli.common import console, handle_errors
from difftrain.config import ConfigError


def parse_interval(text: str | None) -> tuple[float, float] | None:
    """'LO,HI' → (lo, hi), or a ConfigError saying how to write it."""
    if text is None:
        return None
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise ConfigError(
            f"--guidance-interval {text!r}: write it as LO,HI, e.g. 0.28,5.42"
        ) from None
    if not 0 <= lo < hi:
        raise ConfigError(f"--guidance-interval {text!r}: needs 0 <= LO < HI")
    return lo, hi


def read_prompt_file(path: Path | None) -> list[str]:
    """Non-empty lines of a UTF-8 prompt file; a missing or unreadable file is a ConfigError."""
    if path is None:
        return []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(
            f"--prompt-file {str(path)!r}: cannot read it as UTF-8 text ({err})"
        ) from None
    prompts = [line.strip() for line in lines if line.strip()]
    if not prompts:
        raise ConfigError(f"--prompt-file {str(path)!r}: no prompts in it (one per line)")
    return prompts


@handle_errors
def sample(
    run_dir: Path = typer.Argument(..., help="A run directory written by `difftrain train`."),
    num: int = typer.Option(64, "--num", min=1, help="Number of images (at most 100000)."),
    steps: int | None = typer.Option(
        None, "--steps", min=1, help="Sampler steps (default: the run's sample.steps)."
    ),
    seed: int = typer.Option(0, "--seed", min=0, help="Sample i depends only on (seed, i)."),
    first_index: int = typer.Option(
        0, "--first-index", min=0, help="Index of the first image (continue a previous call)."
    ),
    class_label: int | None = typer.Option(None, "--class-label", help="Generate only this class."),
    prompt: list[str] = typer.Option(
        [],
        "--prompt",
        help="Text prompt (text models); repeatable: --num images and a grid row each.",
    ),
    prompt_file: Path | None = typer.Option(
        None, "--prompt-file", help="A UTF-8 text file of prompts, one per line (like --prompt)."
    ),
    negative_prompt: str | None = typer.Option(
        None, "--negative-prompt", help="Text to guide away from (text models)."
    ),
    guidance: float | None = typer.Option(
        None, "--guidance", min=0.0, help="Classifier-free guidance weight (default: the run's)."
    ),
    batch_size: int = typer.Option(64, "--batch-size", min=1, max=4096),
    sampler: str | None = typer.Option(
        None, "--sampler", help="Sampler name (default: the run's sample.sampler)."
    ),
    schedule: str | None = typer.Option(
        None, "--schedule", help="karras, uniform or training (default: the run's sample.schedule)."
    ),
    eta: float | None = typer.Option(
        None, "--eta", min=0.0, max=1.0, help="ddim noise (0 = deterministic)."
    ),
    s_churn: float | None = typer.Option(
        None, "--s-churn", min=0.0, help="edm-stochastic S_churn (default: the run's)."
    ),
    guidance_interval: str | None = typer.Option(
        None, "--guidance-interval", help="LO,HI: apply guidance only for sigma in (LO, HI]."
    ),
    init_image: Path | None = typer.Option(
        None, "--init-image", help="Start from this image (img2img / SDEdit)."
    ),
    strength: float | None = typer.Option(
        None, "--strength", min=0.0, max=1.0, help="img2img strength (default 0.8; 1 with --mask)."
    ),
    mask: Path | None = typer.Option(
        None,
        "--mask",
        help="Inpainting mask, the init image's size: white = generate, black = keep.",
    ),
    resample: int = typer.Option(
        1, "--resample", min=1, help="RePaint resampling repeats per step (with --mask)."
    ),
    weights: str = typer.Option("ema", "--weights", help="'ema' or 'model'."),
    out: Path = typer.Option(..., "--out", help="Output directory for PNGs and grid.png."),
    npz: Path | None = typer.Option(
        None, "--npz", help="Also write images (and labels) to this .npz."
    ),
    grid_cols: int | None = typer.Option(None, "--grid-cols", min=1, help="Images per grid row."),
) -> None:
    """Generate images from a trained run (written batch by batch as they are made)."""
    import torch
    from tqdm.auto import tqdm

    from difftrain.pipeline.request import GenerationRequest, Limits, plan_request, run_request
    from difftrain.pipeline.run import load_run
    from difftrain.pipeline.sample_writer import SampleWriter, grid_indices

    limits = Limits()
    if num > limits.max_num:  # before loading anything: an absurd count fails at once
        raise ConfigError(
            f"--num {num}: at most {limits.max_num} images per command (each is written as "
            "it is made); for more, run again with --first-index to continue the same seed"
        )
    if weights not in ("ema", "model"):
        raise ConfigError(f"--weights {weights!r}: allowed 'ema' or 'model'")
    prompts = list(prompt) + read_prompt_file(prompt_file)
    for opt, path in (("--init-image", init_image), ("--mask", mask)):
        if path is not None and not path.is_file():
            raise ConfigError(f"{opt} {str(path)!r}: no such file")
    req = GenerationRequest(
        num=num,
        seed=seed,
        first_index=first_index,
        class_label=class_label,
        prompt=prompts[0] if prompts else None,
        negative_prompt=negative_prompt,
        sampler=sampler,
        steps=steps,
        schedule=schedule,
        guidance=guidance,
        guidance_interval=parse_interval(guidance_interval),
        eta=eta,
        s_churn=s_churn,
        init_image=init_image,
        mask=mask,
        strength=strength,
        resample=resample,
    )
    run = load_run(run_dir, weights=weights)
    plan = plan_request(run, req, limits)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    run.to(device) if hasattr(run, "to") else run.denoiser.to(device)  # latent runs: the VAE too
    if run.config.data.source == "sequence":  # windows, not images: CSV (+ .npz), data units
        from difftrain.pipeline.sequence import write_run_samples

        paths = write_run_samples(run, plan, run_dir, out, npz, batch_size)
        console.print(f"wrote {num} sequences to {', '.join(map(str, paths))}", markup=False)
        return
    k = run.num_classes
    blocks = k is not None and class_label is None and not prompts
    idx, cols = grid_indices(num, k, blocks)
    # Several prompts: one request each with the same seeds (rows differ only by their prompt),
    # written one after another; the grid has a row per prompt.
    plans = [plan] + [plan_request(run, replace(req, prompt=p), limits) for p in prompts[1:]]
    total = num * len(plans)
    if len(plans) > 1:
        idx, cols = grid_indices(total, len(plans), True)
    writer = SampleWriter(out, total, npz=npz, grid=(idx, grid_cols or cols))
    try:
        with tqdm(total=total, desc="sample", unit="img") as bar:
            for j, p in enumerate(plans):
                for batch in run_request(run, p, batch_size=batch_size, callback=bar.update):
                    writer.add(replace(batch, start=batch.start + j * num))
    except BaseException:
        writer.abort()
        raise
    writer.close()
    info = {
        "checkpoint": str(run.checkpoint),
        **plan.info(),
        "init_image": str(init_image) if init_image else None,
        "mask": str(mask) if mask else None,
        "grid_images": len(idx),
        **({"prompts": prompts} if len(prompts) > 1 else {}),
    }
    (out / "sample.json").write_text(json.dumps(info, indent=1))
    console.print(
        f"wrote {total} images and grid.png to {out}" + (f"; arrays to {npz}" if npz else ""),
        markup=False,
        highlight=False,
    )
