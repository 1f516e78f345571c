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
    resume: bool = typer.Option(False, "--resume", help="Continue from the latest good checkpoint."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the resolved config and sizes, then exit."),
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
        f"final loss {result.final_loss:.4f}; skipped steps {result.skipped_steps}\n"
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
    guidance: float = typer.Option(1.0, "--guidance", min=0.0, help="Classifier-free guidance weight."),
    batch_size: int = typer.Option(64, "--batch-size", min=1),
    sampler: str = typer.Option("heun", "--sampler", help="Sampler name."),
    weights: str = typer.Option("ema", "--weights", help="'ema' or 'model'."),
    out: Path = typer.Option(..., "--out", help="Output directory for PNGs and grid.png."),
    npz: Path | None = typer.Option(None, "--npz", help="Also write images (and labels) to this .npz."),
    grid_cols: int | None = typer.Option(None, "--grid-cols", help="Images per grid row."),
) -> None:
    """Generate images from a trained run."""
    from difftrain.data import to_uint8
    from difftrain.pipeline.generate import default_labels, generate, make_grid, save_image
    from difftrain.pipeline.run import load_run
    from difftrain.samplers import SAMPLERS

    if sampler not in SAMPLERS:
        raise ConfigError(f"--sampler {sampler!r}: unknown (allowed: {', '.join(SAMPLERS)})")
    if weights not in ("ema", "model"):
        raise ConfigError(f"--weights {weights!r}: allowed 'ema' or 'model'")
    run = load_run(run_dir, weights=weights)
    cfg, k = run.config, run.num_classes
    if class_label is not None:
        if k is None:
            raise ConfigError("--class-label: this model is unconditional; drop the option")
        if not 0 <= class_label < k:
            raise ConfigError(f"--class-label {class_label}: allowed 0..{k - 1} ({', '.join(run.class_names)})")
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
            run.denoiser, num=num, seed=seed, labels=labels, null_class=k, sampler=sampler,
            shape=(cfg.data.channels, cfg.data.resolution, cfg.data.resolution), steps=steps,
            guidance=guidance, sigma_min=cfg.diffusion.sigma_min, sigma_max=cfg.diffusion.sigma_max,
            rho=cfg.sample.rho, batch_size=batch_size, device=device, callback=bar.update,
        )  # fmt: skip
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
    info = {"checkpoint": str(run.checkpoint), "num": num, "steps": steps, "seed": seed, "guidance": guidance}
    (out / "sample.json").write_text(json.dumps(info, indent=1))
    console.print(f"wrote {num} images and grid.png to {out}" + (f"; arrays to {npz}" if npz else ""))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
