"""`difftrain export`: a thin wrapper over difftrain.export.run_export.export_run."""

from __future__ import annotations

from pathlib import Path

import typer

from difftrain.cli.common import EXIT_FAILURE, console, err_console, handle_errors


@handle_errors
def export(
    run_dir: Path = typer.Argument(..., help="A run directory written by `difftrain train`."),
    format: str = typer.Option(..., "--format", help="diffusers, safetensors or onnx."),
    out: Path = typer.Option(
        ..., "--out", help="New or empty directory (or a previous export, which is replaced)."
    ),
    weights: str = typer.Option("ema", "--weights", help="'ema' or 'model'."),
) -> None:
    """Export a trained run for diffusers, for difftrain alone (safetensors), or for ONNX."""
    from difftrain.export.onnx_fmt import ExportCheckFailed
    from difftrain.export.run_export import export_run

    try:
        result = export_run(run_dir, format, out, weights)
    except ExportCheckFailed as err:
        err_console.print(
            f"[bold red]export failed:[/] {err}; nothing was written", highlight=False
        )
        raise typer.Exit(EXIT_FAILURE) from None
    console.print(
        f"exported {result.format} ({len(result.files)} files) to {result.out}; {result.detail}",
        highlight=False,
    )
