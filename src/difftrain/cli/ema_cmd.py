"""`difftrain ema RUN_DIR`: post-hoc EMA (EDM2) — sweep EMA lengths or export one."""

from __future__ import annotations

from pathlib import Path

import typer

from difftrain.cli.common import console, handle_errors


@handle_errors
def ema(
    run_dir: Path = typer.Argument(..., help="A run directory with post-hoc EMA snapshots."),
    sweep: bool = typer.Option(
        False, "--sweep", help="Score several σ_rel on validation; keep the best as ema_best/."
    ),
    sigma_rels: str | None = typer.Option(
        None, "--sigma-rels", help="Comma list for --sweep (default 0.01,...,0.25)."
    ),
    sigma_rel: float | None = typer.Option(
        None, "--sigma-rel", help="Reconstruct this one EMA length (relative std) and write it."
    ),
    step: int | None = typer.Option(
        None, "--step", min=1, help="Reconstruct at this snapshot step (default: the last)."
    ),
    out: Path | None = typer.Option(
        None,
        "--out",
        help="--sweep: directory for ema_sweep.json and ema_best/ (default RUN_DIR); "
        "--sigma-rel: the weights directory (default RUN_DIR/ema_posthoc/sigma_rel-X).",
    ),
) -> None:
    """Reconstruct EMAs of any length after training (Karras et al. 2024, post-hoc EMA)."""
    import torch

    from difftrain.config import ConfigError
    from difftrain.train.ema_sweep import (
        DEFAULT_SWEEP,
        export_posthoc,
        parse_sigma_rels,
        posthoc_sweep,
    )

    if sweep == (sigma_rel is not None):
        raise ConfigError("pass exactly one of --sweep or --sigma-rel X")
    if sigma_rel is not None:
        if sigma_rels is not None:
            raise ConfigError("--sigma-rels goes with --sweep; for one length use --sigma-rel")
        (value,) = parse_sigma_rels(str(sigma_rel), "--sigma-rel")
        target = out or run_dir / "ema_posthoc" / f"sigma_rel-{value:.4f}"
        path = export_posthoc(run_dir, value, target, step)
        console.print(
            f"wrote the σ_rel = {value:g} EMA to {path} (ema.safetensors; sample with "
            f"load_run(run_dir, checkpoint='{path}'))",
            highlight=False,
        )
        return

    values = parse_sigma_rels(sigma_rels) if sigma_rels else list(DEFAULT_SWEEP)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    from tqdm.auto import tqdm

    with tqdm(total=len(values), desc="ema sweep", unit="len") as bar:
        summary = posthoc_sweep(
            run_dir, values, step=step, out=out, device=device,
            progress=lambda i, n: bar.update(i - bar.n),
        )  # fmt: skip
    console.print(sweep_table(summary))
    best = summary["best"]
    console.print(
        f"best σ_rel = {best['sigma_rel']:g} (val/loss {best['val/loss']:.5f}); weights: "
        f"{best['weights']}; table: {Path(out or run_dir) / 'ema_sweep.json'}",
        highlight=False,
    )


def sweep_table(summary: dict):
    """The sweep as a rich table: one row per σ_rel, then the checkpoint's classic EMAs."""
    from rich.table import Table
    from rich.text import Text

    t = Table(
        title=f"post-hoc EMA at step {summary['step']} from {summary['snapshots']} snapshots "
        f"(stored σ_rel {', '.join(f'{s:g}' for s in summary['stored_sigma_rels'])}); "
        f"{summary['metric']} on {summary['val_images']} validation images"
    )
    for col in ("σ_rel", "γ", "val/loss", "Δ vs best", "profile fit error", "Σ|coef|"):
        t.add_column(col, justify="right")
    best = summary["best"]["val/loss"]
    for r in summary["results"]:
        mark = " ◀" if r["val/loss"] == best else ""
        warn = " (poor fit)" if r["fit_error"] > 0.05 else ""
        t.add_row(f"{r['sigma_rel']:g}", f"{r['gamma']:.2f}", f"{r['val/loss']:.5f}{mark}",
                  f"{r['val/loss'] - best:+.5f}", f"{r['fit_error']:.2e}{warn}",
                  f"{r['coef_l1']:.2f}")  # fmt: skip
    for r in summary["references"]:
        # Names come from the run directory: styled as Text, never parsed as markup.
        t.add_row(Text(str(r["weights"]), style="dim"), "", f"{r['val/loss']:.5f}",
                  f"{r['val/loss'] - best:+.5f}", Text(str(r["checkpoint"]), style="dim"),
                  "")  # fmt: skip
    return t
