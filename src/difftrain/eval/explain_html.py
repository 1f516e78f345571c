"""The Explanations section of report.html (figures of eval/explain.py, embedded)."""

from __future__ import annotations

import base64
from pathlib import Path

from difftrain.eval.explain import explain, sigma_learning
from difftrain.eval.explain_plots import daam_png, trajectory_png


def _uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def explanation_section(run_dir: Path, cfg, rows: list[dict], esc, img) -> str:
    """HTML: the σ strip with the conditional difference, DAAM (text), and σ still learning."""
    from difftrain.config import ConfigError
    from difftrain.pipeline.checkpoint import CheckpointError
    from difftrain.pipeline.run import load_run

    parts = []
    table = sigma_learning(rows)
    if table:
        cells = "".join(
            f"<tr><td>{t['sigma']:.3g}</td><td>{t['loss']:.4g}</td><td>"
            + ("–" if t["relative_change"] is None else f"{100 * t['relative_change']:+.1f}%")
            + "</td></tr>"
            for t in table
        )
        parts.append(
            "<p>Validation loss by noise level at the last validation, and its change since "
            "the one before (a σ whose loss still falls is still learning; the curves are in "
            "Training curves).</p><table><tr><th>σ</th><th>loss</th><th>change</th></tr>"
            f"{cells}</table>"
        )
    if cfg.data.source == "sequence":
        return "".join(parts) or '<p class="muted">No validations yet.</p>'
    try:
        run = load_run(run_dir)
        prompt = (cfg.sample.prompts or [""])[0] if run.text is not None else None
        e = explain(run, prompt=prompt, seed=cfg.sample.seed)
    except (CheckpointError, ConfigError) as err:
        return "".join(parts) + f'<p class="muted">{esc(err)}</p>'
    cond = "the empty prompt" if run.text is not None else "the null class"
    parts.append(
        "<p>One seeded sample x0 (seed " + esc(cfg.sample.seed) + "), noised to x_σ at each σ: "
        "the denoiser's x0 prediction, the residual |x_σ − D| (σ times the predicted noise), and "
        f"|D(x_σ, σ, c) − D(x_σ, σ, ∅)| against {cond} (zero for an unconditional model).</p>"
        + img(_uri(trajectory_png(e, run.to_images)), "explanation strip")
    )
    if e.daam is not None:
        parts.append(
            f"<p>Cross-attention per token for the prompt {esc(repr(prompt))} (DAAM, Tang et "
            "al. 2022): averaged over heads, layers and sampler calls, each map scaled to its "
            "maximum.</p>" + img(_uri(daam_png(e, run.to_images(e.x0)[0])), "DAAM")
        )
    return "".join(parts)
