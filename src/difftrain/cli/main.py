"""The `difftrain` command line: one verb per user intention, each a thin call into the library."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import typer
import yaml

from difftrain.cli.common import console, handle_errors
from difftrain.config import ConfigError, dump_config, load_config

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)

SET_HELP = "Override a config key, e.g. --set optim.lr=2e-4 (repeatable)."


@app.command()
@handle_errors
def train(
    config: Path = typer.Argument(..., help="YAML config file (or a run directory)."),
    set_: list[str] = typer.Option([], "--set", help=SET_HELP),
    resume: bool = typer.Option(
        False, "--resume", help="Continue from the latest good checkpoint."
    ),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Print the resolved config and sizes, then exit."
    ),
) -> None:
    """Train a diffusion model as configured."""
    from difftrain.pipeline.build import check_config
    from difftrain.train import train as run_train

    cfg = load_config(config, set_)
    check_config(cfg)  # before any data or model is loaded
    if dry_run:
        console.print(dump_config(cfg), highlight=False)
    result = run_train(cfg, resume=resume, dry_run=dry_run)
    if dry_run:
        console.print(yaml.safe_dump(result, sort_keys=False), highlight=False)
        return
    console.print(
        f"trained {result.step} steps ({result.images_seen} images) in {result.seconds:.0f}s; "
        f"final loss {result.final_loss:.4f}; skipped steps {result.skipped_steps}; "
        f"rollbacks {result.rollbacks}" + ("; stopped early" if result.stopped_early else "") + "\n"
        f"run directory: {result.run_dir}  (checkpoints/, samples/, metrics.jsonl, tensorboard/)"
    )


@app.command()
@handle_errors
def sample(
    run_dir: Path = typer.Argument(..., help="A run directory written by `difftrain train`."),
    num: int = typer.Option(64, "--num", min=1, help="Number of images."),
    steps: int = typer.Option(18, "--steps", min=1, help="Sampler steps."),
    seed: int = typer.Option(0, "--seed", min=0, help="Sample i depends only on (seed, i)."),
    class_label: int | None = typer.Option(None, "--class-label", help="Generate only this class."),
    guidance: float = typer.Option(
        1.0, "--guidance", min=0.0, help="Classifier-free guidance weight."
    ),
    batch_size: int = typer.Option(64, "--batch-size", min=1),
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
        None, "--mask", help="Inpainting mask image: white = generate, black = keep."
    ),
    resample: int = typer.Option(
        1, "--resample", min=1, help="RePaint resampling repeats per step (with --mask)."
    ),
    weights: str = typer.Option("ema", "--weights", help="'ema' or 'model'."),
    out: Path = typer.Option(..., "--out", help="Output directory for PNGs and grid.png."),
    npz: Path | None = typer.Option(
        None, "--npz", help="Also write images (and labels) to this .npz."
    ),
    grid_cols: int | None = typer.Option(None, "--grid-cols", help="Images per grid row."),
) -> None:
    """Generate images from a trained run."""
    from difftrain.data import to_uint8
    from difftrain.pipeline.build import build_sigmas, sampler_options
    from difftrain.pipeline.generate import (
        default_labels,
        generate,
        load_image,
        load_mask,
        make_grid,
        save_image,
    )
    from difftrain.pipeline.run import load_run
    from difftrain.samplers import SAMPLERS

    if sampler is not None and sampler not in SAMPLERS:
        raise ConfigError(f"--sampler {sampler!r}: unknown (allowed: {', '.join(SAMPLERS)})")
    if weights not in ("ema", "model"):
        raise ConfigError(f"--weights {weights!r}: allowed 'ema' or 'model'")
    for opt, path in (("--init-image", init_image), ("--mask", mask)):
        if path is not None and not path.is_file():
            raise ConfigError(f"{opt} {str(path)!r}: no such file")
    if mask is not None and init_image is None:
        raise ConfigError("--mask needs --init-image (the image whose masked-out pixels are kept)")
    if strength is not None and init_image is None:
        raise ConfigError("--strength needs --init-image")
    interval = None
    if guidance_interval is not None:
        try:
            lo, hi = (float(v) for v in guidance_interval.split(","))
        except ValueError:
            raise ConfigError(
                f"--guidance-interval {guidance_interval!r}: write it as LO,HI, e.g. 0.28,5.42"
            ) from None
        if not 0 <= lo < hi:
            raise ConfigError(f"--guidance-interval {guidance_interval!r}: needs 0 <= LO < HI")
        interval = (lo, hi)
    run = load_run(run_dir, weights=weights)
    cfg, k = run.config, run.num_classes
    sampler = sampler or cfg.sample.sampler
    if eta is None and sampler == "ddim":
        eta = cfg.sample.eta
    if s_churn is None and sampler == "edm-stochastic":
        s_churn = cfg.sample.s_churn
    options = sampler_options(sampler, eta, s_churn)
    sigmas = build_sigmas(cfg, steps, schedule)
    res, ch = cfg.data.resolution, cfg.data.channels
    init = load_image(init_image, ch, res, cfg.data.resize) if init_image is not None else None
    mask_t = load_mask(mask, res, cfg.data.resize) if mask is not None else None
    if strength is None:
        strength = 1.0 if mask is not None else 0.8
    if class_label is not None:
        if k is None:
            raise ConfigError("--class-label: this model is unconditional; drop the option")
        if not 0 <= class_label < k:
            raise ConfigError(
                f"--class-label {class_label}: allowed 0..{k - 1} ({', '.join(run.class_names)})"
            )
        labels = torch.full((num,), class_label, dtype=torch.long)
    else:
        labels = default_labels(num, k)
    if guidance != 1.0 and k is None:
        raise ConfigError("--guidance needs a class-conditional model; drop the option")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    run.denoiser.to(device)
    from tqdm.auto import tqdm

    with tqdm(total=num, desc="sample", unit="img") as bar:
        images = generate(
            run.denoiser,
            num=num,
            seed=seed,
            labels=labels,
            null_class=k,
            sampler=sampler,
            shape=(cfg.data.channels, cfg.data.resolution, cfg.data.resolution),
            steps=steps,
            guidance=guidance,
            sigmas=sigmas,
            sampler_options=options,
            guidance_interval=interval,
            init_images=init,
            strength=strength,
            mask=mask_t,
            resample=resample,
            batch_size=batch_size,
            device=device,
            callback=bar.update,
        )
    u8 = to_uint8(images)
    out.mkdir(parents=True, exist_ok=True)
    for i in range(num):
        save_image(u8[i : i + 1].permute(0, 2, 3, 1)[0].numpy(), out / f"{i:06d}.png")
    if grid_cols is None and k is not None and class_label is None and num % k == 0:
        grid_cols = num // k  # one row per class
    save_image(make_grid(u8, grid_cols), out / "grid.png", min_side=256)
    if npz is not None:
        arrays = {"images": u8.permute(0, 2, 3, 1).numpy()}
        if labels is not None:
            arrays["labels"] = labels.numpy().astype(np.int64)
        npz.parent.mkdir(parents=True, exist_ok=True)
        np.savez(npz, **arrays)
    info = {
        "checkpoint": str(run.checkpoint),
        "num": num,
        "sampler": sampler,
        "steps": steps,
        "schedule": schedule or cfg.sample.schedule,
        "options": options,
        "seed": seed,
        "guidance": guidance,
        "guidance_interval": interval,
        "init_image": str(init_image) if init_image else None,
        "strength": strength if init_image else None,
        "mask": str(mask) if mask else None,
        "resample": resample,
    }
    (out / "sample.json").write_text(json.dumps(info, indent=1))
    console.print(
        f"wrote {num} images and grid.png to {out}" + (f"; arrays to {npz}" if npz else "")
    )


from difftrain.cli.eval_cmd import evaluate, report  # noqa: E402
from difftrain.cli.features_cmd import features_app  # noqa: E402

app.command(name="evaluate")(evaluate)
app.command(name="report")(report)
app.add_typer(features_app, name="features")
from difftrain.cli.ema_cmd import ema  # noqa: E402

app.command(name="ema")(ema)
from difftrain.cli.data_cmd import data_app  # noqa: E402

app.add_typer(data_app, name="data")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
