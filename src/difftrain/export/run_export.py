"""`difftrain export RUN_DIR --format F --out DIR`: load, check, write staged, rename into place."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from difftrain.config import ConfigError
from difftrain.export.outdir import check_out_dir, staged, write_marker
from difftrain.export.source import load_source, source_info

FORMATS = ("diffusers", "safetensors", "onnx")


@dataclass
class ExportResult:
    out: Path
    format: str
    files: list[str]
    detail: str  # one line for the user: pipeline class, check result...


def export_run(
    run_dir: str | Path, fmt: str, out: str | Path, weights: str = "ema"
) -> ExportResult:
    """Export the run's latest good checkpoint (EMA weights by default) to `out` as `fmt`."""
    # abspath, not resolve: "--out ." gets a real name and parent, and symlinks stay visible
    run_dir, out = Path(run_dir), Path(os.path.abspath(out))
    if fmt not in FORMATS:
        raise ConfigError(f"--format {fmt!r}: unknown (allowed: {', '.join(FORMATS)})")
    check_out_dir(out)  # refuse early, before loading anything
    run = load_source(run_dir, weights)
    if fmt == "diffusers" and getattr(run.config.model, "pretrained", None) is not None:
        from difftrain.export.finetuned import write_finetuned  # a fine-tuned SD pipeline

        write = write_finetuned
    elif fmt == "diffusers":
        from difftrain.export.diffusers_fmt import check_exportable, write_diffusers

        check_exportable(run)
        write = write_diffusers
    elif fmt == "onnx":
        from difftrain.export.onnx_fmt import check_onnx_supported, write_onnx

        check_onnx_supported(run)
        write = write_onnx
    else:
        from difftrain.export.weights import check_safetensors_exportable, write_safetensors

        check_safetensors_exportable(run)
        write = write_safetensors
    with staged(out) as stage:
        detail = write(run, stage)
        info = write_marker(stage, fmt, source_info(run, run_dir, weights))
    if fmt == "diffusers":
        detail = f"pipeline {detail}; load with DiffusionPipeline.from_pretrained({str(out)!r})"
    elif fmt == "onnx":
        detail = (
            f"checked against PyTorch with onnxruntime: max relative error "
            f"{detail['max_relative_error']:.1e} (tolerance {detail['tolerance']:.0e})"
        )
    else:
        detail = "load with difftrain.export.weights.load_exported"
    return ExportResult(out, fmt, sorted(info["files"]), detail)
