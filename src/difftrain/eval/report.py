"""report.html: one self-contained page (images embedded as base64) describing a run directory.

Reads what the run directory holds — metrics.jsonl, eval.json, samples/step-*.png, config.yaml,
environment.json, the latest checkpoint — and adds a denoising trajectory (predicted x0 at each
sampler step) and a data summary. Plots are matplotlib PNGs; the page needs no network.
"""

from __future__ import annotations

import html
import io
import json
import re
import time
from pathlib import Path

import torch

from difftrain.config import load_config
from difftrain.eval.plots import (
    _png_b64,
    metric_history,
    metrics_plot,
    read_metrics,
    series,
    training_plots,
    trajectory_figure,
)
from difftrain.eval.run_eval import read_evaluations

# Everything below is read from a run directory, so it is untrusted: every field goes through
# esc() into the page, and only keys of this shape reach matplotlib (a '$' starts mathtext,
# which raises on bad input).
SAFE_KEY = re.compile(r"[A-Za-z0-9_./:@+-]{1,100}")
GRID_NAME = re.compile(r"step-(\d{1,12})\.png")

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0 auto;max-width:1180px;
padding:16px 24px;color:#1d2330;background:#fff}
h1{font-size:1.6em;margin:.2em 0}
h2{border-bottom:2px solid #dde3ee;padding-bottom:4px;margin-top:1.6em}
nav a{margin-right:14px;color:#2457c5;text-decoration:none}
table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #dde3ee;padding:3px 9px;
text-align:left;font-size:.92em}th{background:#f3f6fb}
pre{background:#f6f8fa;border:1px solid #dde3ee;padding:10px;overflow:auto;font-size:.85em}
.grid{display:flex;flex-wrap:wrap;gap:14px}.grid figure{margin:0}
figcaption{font-size:.85em;color:#555;text-align:center}img.px{image-rendering:pixelated}
.muted{color:#777}
"""


def esc(value) -> str:
    """Any value as HTML text (quotes included, so it is safe in attributes too)."""
    return html.escape(str(value), quote=True)


def _img(src: str, alt: str, width: int | None = None, pixelated: bool = False) -> str:
    w = f' width="{int(width)}"' if width else ""
    cls = ' class="px"' if pixelated else ""
    return f'<img src="{esc(src)}" alt="{esc(alt)}"{w}{cls}>'


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def clean_rows(rows: list) -> list[dict]:
    """metrics.jsonl rows with an integer step, keeping only keys the plots can show."""
    out = []
    for r in rows:
        if not isinstance(r, dict) or type(r.get("step")) is not int:
            continue
        out.append(
            {
                k: v
                for k, v in r.items()
                if SAFE_KEY.fullmatch(k)
                and (not k.startswith("val/loss_sigma_") or _is_number(k.rsplit("_", 1)[1]))
            }
        )
    return out


def plottable_evals(evals: list[dict]) -> list[dict]:
    """eval.json entries reduced to what metric_history reads: safe names, numeric values."""
    out = []
    for e in evals:
        st = e["settings"]
        settings = {k: st.get(k) if type(st.get(k)) is int else "?" for k in ("num", "steps")}
        metrics = {
            k: v
            for k, v in e["metrics"].items()
            if SAFE_KEY.fullmatch(k) and type(v) in (int, float)
        }
        out.append({"step": e["step"], "settings": settings, "metrics": metrics})
    return out


def read_json_dict(path: Path) -> dict | None:
    """A JSON object from `path`, or None when it is missing, unreadable or not an object."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return doc if isinstance(doc, dict) else None


def data_summary(cfg) -> tuple[dict, str | None]:
    """Counts, class balance and pixel statistics of the configured data, and a grid of examples."""
    from difftrain.data import load_data
    from difftrain.pipeline.generate import make_grid

    full = load_data(cfg.data)
    train, val = full.split(cfg.data.val_fraction, cfg.train.seed)
    px = full.images.float()
    info = {
        "source": cfg.data.source,
        "path": str(cfg.data.path) if cfg.data.path else "(bundled)",
        "images": len(full),
        "train / validation": f"{len(train)} / {len(val)} (val_fraction {cfg.data.val_fraction}, "
        f"seed {cfg.train.seed})",
        "shape (C×H×W)": "×".join(str(s) for s in full.images.shape[1:]),
        "pixel mean / std (0-255)": f"{px.mean():.1f} / {px.std():.1f}",
        "classes": full.num_classes or "unconditional",
        "skipped files": sum(len(v) for v in full.skipped.values()),
    }
    if full.labels is not None:
        counts = torch.bincount(full.labels, minlength=full.num_classes).tolist()
        info["class counts"] = ", ".join(
            f"{n}: {c}" for n, c in zip(full.class_names, counts, strict=True)
        )
        per = [torch.nonzero(full.labels == c).flatten()[:10] for c in range(full.num_classes)]
        idx = torch.cat(per)
        ncols = 10
    else:
        idx, ncols = torch.arange(min(64, len(full))), 8
    grid = make_grid(full.images[idx], ncols)
    from PIL import Image

    img = Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return info, _png_b64(buf.getvalue())


def _table(d: dict) -> str:
    rows = "".join(
        f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>"
        for k, v in d.items()
    )
    return f"<table>{rows}</table>"


def _fmt(v) -> str:
    return f"{v:.5g}" if isinstance(v, float) else str(v)


def write_report(
    run_dir: str | Path, out: str | Path | None = None, trajectory_samples: int = 6
) -> Path:
    """Build RUN_DIR/report.html (or `out`) from what the run directory holds; return its path."""
    from difftrain.config import ConfigError

    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise ConfigError(
            f"{run_dir}: not a run directory (no config.yaml); pass the train.run_dir"
        )
    cfg = load_config(run_dir / "config.yaml")
    rows = clean_rows(read_metrics(run_dir / "metrics.jsonl"))
    evals, eval_note = read_evaluations(run_dir / "eval.json")
    sec: list[tuple[str, str, str]] = []  # (anchor, title, html)

    # Summary: last logged values and the latest evaluation.
    summary = {}
    keys = ("train/loss", "val/loss_train_sigma", "val/loss", "train/images_seen",
            "train/skipped_steps", "train/planned_steps")  # fmt: skip
    for key in keys:
        s, v = series(rows, key)
        if s:
            summary[f"{key} (step {s[-1]})"] = _fmt(v[-1])
    body = _table(summary) if summary else '<p class="muted">metrics.jsonl is empty or missing.</p>'
    if eval_note:
        body += f'<p class="muted">{esc(eval_note)}</p>'
    if evals:
        e = evals[-1]
        st = e["settings"]
        body += (
            f"<p>Latest <code>difftrain evaluate</code>: step {esc(e['step'])}, "
            f"{esc(e.get('weights'))} weights, {esc(st.get('num'))} samples, "
            f"{esc(st.get('sampler'))} {esc(st.get('steps'))} steps, seed {esc(st.get('seed'))}, "
            f"features {esc(st.get('features'))}.</p>"
            + _table({k: _fmt(v) for k, v in e["metrics"].items()})
        )
    sec.append(("summary", "Summary", body))

    # Curves.
    plots = training_plots(rows) if rows else []
    sec.append(
        (
            "curves",
            "Training curves",
            "".join(f"<h3>{html.escape(t)}</h3>{_img(src, t)}" for t, src in plots)
            or '<p class="muted">No training metrics yet.</p>',
        )
    )
    hist_src = metrics_plot(metric_history(rows, plottable_evals(evals)))
    note = (
        "<p>In-training values come from <code>metrics.jsonl</code> (<code>eval/…</code>); markers "
        "from <code>eval.json</code>. <code>_domain</code> metrics use the run's feature network "
        "and "
        "are not comparable with Inception FID.</p>"
    )
    sec.append(
        (
            "metrics",
            "Sample-quality metrics over training",
            note + _img(hist_src, "metrics")
            if hist_src
            else '<p class="muted">No evaluations yet: set eval.every or run '
            "<code>difftrain evaluate</code>.</p>",
        )
    )

    # Sample grids over training.
    # Only our own grid names (step-<digits>.png); anything else in samples/ is not shown.
    grids = sorted(
        (int(m.group(1)), p)
        for p in (run_dir / "samples").glob("step-*.png")
        if (m := GRID_NAME.fullmatch(p.name)) and p.is_file()
    )
    figs = "".join(
        f"<figure>{_img(_png_b64(p.read_bytes()), p.stem, 260, True)}<figcaption>step "
        f"{step}</figcaption></figure>"
        for step, p in grids
    )
    sec.append(
        (
            "samples",
            "Samples over training",
            f'<div class="grid">{figs}</div>' if figs else '<p class="muted">No sample grids.</p>',
        )
    )

    # Denoising trajectory from the latest checkpoint.
    traj = '<p class="muted">No checkpoint yet.</p>'
    if cfg.data.source == "sequence":  # windows, not images: samples/ holds their plots
        traj = '<p class="muted">A sequence run: see the sample plots above.</p>'
    elif trajectory_samples > 0:
        from difftrain.pipeline.checkpoint import CheckpointError
        from difftrain.pipeline.run import load_run

        try:
            run = load_run(run_dir)
            src = trajectory_figure(run, trajectory_samples, seed=cfg.sample.seed)
            traj = (
                f"<p>Predicted x0 (the denoiser's output) at each of {cfg.sample.steps} "
                f"{html.escape(cfg.sample.sampler)} steps, EMA weights of "
                f"{html.escape(run.checkpoint.name)}; "
                f"seed {cfg.sample.seed}, guidance {cfg.sample.guidance}.</p>"
                + _img(src, "trajectory")
            )
        except CheckpointError as err:
            traj = f'<p class="muted">{html.escape(str(err))}</p>'
    sec.append(("trajectory", "Denoising trajectory", traj))
    if trajectory_samples > 0:  # what D predicts at chosen σ, what the condition changes, per token
        from difftrain.eval.explain_html import explanation_section

        sec.append(("explain", "Explanations", explanation_section(run_dir, cfg, rows, esc, _img)))

    # Data, config, environment, raw evaluation.
    try:
        info, grid_src = data_summary(cfg)
        data_html = _table(info) + (_img(grid_src, "real examples", 520, True) if grid_src else "")
    except Exception as err:  # the data may have moved since training; the report still renders
        data_html = f'<p class="muted">Data not readable now: {html.escape(str(err))}</p>'
    sec.append(("data", "Data", data_html))
    sec.append(
        (
            "config",
            "Config",
            "<details open><summary>config.yaml (resolved)</summary>"
            f"<pre>{html.escape((run_dir / 'config.yaml').read_text())}</pre></details>",
        )
    )
    env = read_json_dict(run_dir / "environment.json")
    sec.append(
        (
            "environment",
            "Versions and hardware",
            _table(env) if env else '<p class="muted">environment.json missing or unreadable</p>',
        )
    )
    if evals:
        sec.append(
            (
                "eval-json",
                "eval.json",
                f"<details><summary>{len(evals)} evaluation(s)</summary>"
                f"<pre>{html.escape(json.dumps(evals, indent=1))}</pre></details>",
            )
        )

    nav = "".join(f'<a href="#{a}">{html.escape(t)}</a>' for a, t, _ in sec)
    content = "".join(
        f'<section id="{a}"><h2>{html.escape(t)}</h2>{b}</section>' for a, t, b in sec
    )
    title = f"difftrain report — {run_dir.resolve().name}"
    page = (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title>"
        f"<style>{CSS}</style></head><body><h1>{html.escape(title)}</h1>"
        f'<p class="muted">{html.escape(str(run_dir.resolve()))} · generated '
        f"{time.strftime('%Y-%m-%d %H:%M:%S')}</p><nav>{nav}</nav>{content}</body></html>"
    )
    path = Path(out) if out else run_dir / "report.html"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path
