"""`difftrain explain RUN --out DIR`: trajectory, conditional difference, DAAM, loss by σ."""

from __future__ import annotations

from pathlib import Path

import typer

from difftrain.cli.common import console, handle_errors


@handle_errors
def explain(
    run_dir: Path = typer.Argument(..., help="Run directory."),
    out: Path = typer.Option(..., "--out", help="Output directory for the PNGs and explain.json."),
    class_label: int | None = typer.Option(None, "--class-label", help="Class to explain."),
    prompt: str | None = typer.Option(None, "--prompt", help="Prompt to explain (text models)."),
    sigma: list[float] = typer.Option(
        [], "--sigma", help="Noise level of a strip column (repeatable; default 0.1 0.5 1 2 5)."
    ),
    seed: int = typer.Option(0, "--seed", min=0, max=2**62, help="Sample and noise seed."),
    steps: int | None = typer.Option(None, "--steps", min=1, max=1000, help="Sampler steps."),
    weights: str = typer.Option("ema", "--weights", help="'ema' or 'model'."),
) -> None:
    """Explain what a trained denoiser does for one seeded sample (writes PNGs into --out)."""
    from difftrain.config import ConfigError
    from difftrain.eval.explain import DEFAULT_SIGMAS
    from difftrain.eval.explain import explain as run_explain
    from difftrain.eval.explain_plots import write_explanation
    from difftrain.eval.plots import read_metrics
    from difftrain.eval.report import clean_rows
    from difftrain.pipeline.run import load_run

    if weights not in ("ema", "model"):
        raise ConfigError(f"--weights {weights!r}: allowed 'ema' or 'model'")
    run = load_run(run_dir, weights=weights)
    e = run_explain(run, class_label=class_label, prompt=prompt, sigmas=sigma or DEFAULT_SIGMAS,
                    seed=seed, steps=steps)  # fmt: skip
    rows = clean_rows(read_metrics(run_dir / "metrics.jsonl"))
    paths = write_explanation(e, run, rows, out)
    console.print(f"wrote {', '.join(p.name for p in paths)} to {out}", markup=False)
