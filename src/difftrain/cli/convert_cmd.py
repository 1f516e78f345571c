"""`difftrain convert-single-file FILE --config DIR --out DIR`: an original-layout Stable
Diffusion .safetensors → a diffusers pipeline folder (difftrain.pipeline.single_file)."""

from __future__ import annotations

from pathlib import Path

import typer

from difftrain.cli.common import console, handle_errors


@handle_errors
def convert_single_file(
    file: Path = typer.Argument(..., help="Single-file checkpoint (.safetensors, LDM layout)."),
    config: Path = typer.Option(
        ...,
        "--config",
        help="Local diffusers pipeline folder of the same family (configs, "
        "tokenizer, scheduler; its weights are not used).",
    ),
    out: Path = typer.Option(..., "--out", help="New directory for the diffusers pipeline."),
) -> None:
    """Convert a single-file Stable Diffusion checkpoint into a diffusers pipeline folder."""
    from difftrain.pipeline.single_file import convert_single_file as convert

    done = convert(file, config, out)
    console.print(
        f"wrote a diffusers pipeline to {done}; fine-tune it with model.pretrained: {done}",
        highlight=False,
    )
