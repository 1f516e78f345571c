"""Matplotlib figures for the report, returned as PNG data URIs (base64), never files."""

from __future__ import annotations

import base64
import io
import json
import math
from pathlib import Path

import torch


def _png_b64(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _fig_b64(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return _png_b64(buf.getvalue())


def read_metrics(path: Path) -> list[dict]:
    """Rows of metrics.jsonl (unreadable lines skipped)."""
    rows = []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows


def series(rows: list[dict], key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of one key, keeping numeric values only."""
    pts = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float))]
    return [p[0] for p in pts], [float(p[1]) for p in pts]


def moving_mean(values: list[float], window: int) -> list[float]:
    """Trailing mean over `window` values (shorter at the start)."""
    out, acc = [], 0.0
    for i, v in enumerate(values):
        acc += v - (values[i - window] if i >= window else 0.0)
        out.append(acc / min(i + 1, window))
    return out


def training_plots(rows: list[dict]) -> list[tuple[str, str]]:
    """(title, data-URI) for loss, validation loss by σ, learning rate and gradient norm."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plots = []
    fig, ax = plt.subplots(figsize=(6.2, 3.6))
    s, v = series(rows, "train/loss")
    if s:
        w = max(1, len(v) // 15)
        if w > 1:
            ax.plot(s, v, color="#9ab", lw=0.8, label="train (raw)")
        label = "train, σ ~ training distribution" + (f" (mean of {w} logs)" if w > 1 else "")
        ax.plot(s, moving_mean(v, w), color="#2457c5", lw=1.6, label=label)
    s, v = series(rows, "val/loss_train_sigma")
    if s:  # the validation curve to compare with train/loss: the same σ mix
        ax.plot(
            s, v, "o-", color="#2a9d3f", label="validation, σ ~ training distribution (fixed draw)"
        )
    s, v = series(rows, "val/loss")
    if s:  # a different σ mix (weighted towards the extremes): not comparable with train/loss
        ax.plot(s, v, "s--", color="#d1495b", label="validation, mean over 8 fixed σ (0.01–20)")
    ax.set(xlabel="step", ylabel="loss", yscale="log", title="Loss")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    plots.append(("Loss", _fig_b64(fig)))

    sigma_keys = sorted(
        {k for r in rows for k in r if k.startswith("val/loss_sigma_")},
        key=lambda k: float(k.rsplit("_", 1)[1]),
    )
    if sigma_keys:
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 3.6))
        cmap = plt.get_cmap("viridis")
        for i, k in enumerate(sigma_keys):
            s, v = series(rows, k)
            a1.plot(
                s,
                v,
                "o-",
                ms=3,
                color=cmap(i / max(1, len(sigma_keys) - 1)),
                label=f"σ={k.rsplit('_', 1)[1]}",
            )
        a1.set(
            xlabel="step",
            ylabel="λ(σ)-weighted loss",
            yscale="log",
            title="Validation loss by noise level",
        )
        a1.legend(fontsize=7, ncol=2)
        a1.grid(alpha=0.3)
        last = [r for r in rows if sigma_keys[0] in r]
        for j, r in enumerate(last[-4:] if len(last) > 1 else last):
            xs = [float(k.rsplit("_", 1)[1]) for k in sigma_keys]
            a2.plot(
                xs,
                [r.get(k, math.nan) for k in sigma_keys],
                "o-",
                label=f"step {r['step']}",
                alpha=0.4 + 0.6 * (j + 1) / min(4, len(last)),
            )
        a2.set(xscale="log", yscale="log", xlabel="σ", ylabel="loss", title="Loss vs σ")
        a2.legend(fontsize=7)
        a2.grid(alpha=0.3)
        fig.tight_layout()
        plots.append(("Validation loss by noise level", _fig_b64(fig)))

    panels = [
        (k, t)
        for k, t in (
            ("train/lr", "Learning rate"),
            ("train/grad_norm", "Gradient norm"),
            ("train/img_per_s", "Throughput (img/s)"),
        )
        if series(rows, k)[0]
    ]
    if panels:
        fig, axes = plt.subplots(1, len(panels), figsize=(3.9 * len(panels), 3.2), squeeze=False)
        for ax, (k, title) in zip(axes[0], panels, strict=True):
            s, v = series(rows, k)
            ax.plot(s, v, color="#2457c5", lw=1.2)
            ax.set(xlabel="step", title=title)
            ax.grid(alpha=0.3)
        plots.append(("Learning rate, gradient norm, throughput", _fig_b64(fig)))
    return plots


def metric_history(rows: list[dict], evals: list[dict]) -> dict[str, list[tuple[int, float, str]]]:
    """metric → [(step, value, source)] from in-training 'eval/…' rows and eval.json entries."""
    hist: dict[str, list[tuple[int, float, str]]] = {}
    for r in rows:
        for k, v in r.items():
            if k.startswith("eval/") and k != "eval/seconds" and isinstance(v, (int, float)):
                hist.setdefault(k.removeprefix("eval/"), []).append(
                    (r["step"], float(v), "training")
                )
    for e in evals:
        tag = f"evaluate ({e['settings']['num']} samples, {e['settings']['steps']} steps)"
        for k, v in e.get("metrics", {}).items():
            if isinstance(v, (int, float)) and not k.endswith("_std") and not k.endswith("_sem"):
                hist.setdefault(k, []).append((e["step"], float(v), tag))
    return hist


def metrics_plot(hist: dict[str, list[tuple[int, float, str]]]) -> str | None:
    """One small panel per metric; in-training values as lines, on-demand ones as markers."""
    if not hist:
        return None
    import matplotlib.pyplot as plt

    names = sorted(hist)
    cols = min(4, len(names))
    nrows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(3.4 * cols, 2.8 * nrows), squeeze=False)
    for ax, name in zip(axes.flat, names, strict=False):
        by_source: dict[str, list[tuple[int, float]]] = {}
        for step, v, src in sorted(hist[name]):
            by_source.setdefault(src, []).append((step, v))
        for src, pts in by_source.items():
            style = "o-" if src == "training" else "s"
            ax.plot([p[0] for p in pts], [p[1] for p in pts], style, ms=4, label=src)
        ax.set(title=name, xlabel="step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    for ax in list(axes.flat)[len(names) :]:
        ax.axis("off")
    fig.tight_layout()
    return _fig_b64(fig)


def trajectory_figure(run, num: int, seed: int = 0) -> str:
    """Predicted x0 after each sampler step for `num` samples (rows), from the sample settings."""
    import matplotlib.pyplot as plt

    from difftrain.data import to_uint8
    from difftrain.pipeline.build import build_sigmas
    from difftrain.pipeline.generate import default_labels
    from difftrain.samplers import SAMPLERS, CFGDenoiser, randn, sample_generators

    cfg, k = run.config, run.num_classes
    shape = tuple(getattr(run, "sample_shape", ()) or ())  # latent runs: the latent shape
    shape = shape or (cfg.data.channels, cfg.data.resolution, cfg.data.resolution)
    sigmas = build_sigmas(cfg, cfg.sample.steps)  # the configured sample.schedule
    gens = sample_generators(seed, range(num))
    x_t = randn((num, *shape), gens) * sigmas[0]  # the same noise `generate(seed=seed)` uses
    labels = default_labels(num, k)
    den = CFGDenoiser(run.denoiser, cfg.sample.guidance, k) if k is not None else run.denoiser
    frames: list[tuple[float, torch.Tensor]] = []
    final = SAMPLERS[cfg.sample.sampler](
        den,
        x_t,
        sigmas,
        cond=labels,
        generator=gens,
        callback=lambda d: frames.append((float(d["sigma"]), d["denoised"].clone())),
    )
    frames.append((0.0, final))
    cols = len(frames)
    fig, axes = plt.subplots(num, cols, figsize=(0.75 * cols, 0.8 * num + 0.4), squeeze=False)
    for j, (sig, imgs) in enumerate(frames):
        u8 = to_uint8(run.to_images(imgs)).permute(0, 2, 3, 1).numpy()  # latents: decoded
        for i in range(num):
            ax = axes[i, j]
            ax.imshow(u8[i, ..., 0] if u8.shape[-1] == 1 else u8[i], cmap="gray", vmin=0, vmax=255)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title("final" if j == cols - 1 else f"σ={sig:.3g}", fontsize=6)
            if j == 0 and labels is not None and run.class_names:
                ax.set_ylabel(run.class_names[int(labels[i])], fontsize=6)
    fig.subplots_adjust(wspace=0.05, hspace=0.05)
    return _fig_b64(fig)
