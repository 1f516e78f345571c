"""Figures of an Explanation (PNG bytes), shared by `difftrain explain` and report.html."""

from __future__ import annotations

import io
import json
from pathlib import Path

import torch

from difftrain.eval.explain import Explanation, prompt_positions, sigma_learning


def _png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _show(ax, img: torch.Tensor) -> None:
    """An image in [-1, 1] (C×H×W) in grey or colour."""
    x = ((img.clamp(-1, 1) + 1) / 2).permute(1, 2, 0).numpy()
    ax.imshow(x[..., 0] if x.shape[-1] == 1 else x[..., :3], cmap="gray", vmin=0, vmax=1)


def trajectory_png(e: Explanation, to_images) -> bytes:
    """Rows: x_σ, x0 prediction, |residual|, |D(c) − D(∅)|; one column per σ."""
    plt = _plt()
    n = len(e.sigmas)
    fig, axes = plt.subplots(4, n, figsize=(1.5 * n, 6.2), squeeze=False)
    noisy, pred = to_images(e.noisy), to_images(e.predicted)
    resid = e.residual.abs().mean(1)
    vmax = float(e.cond_diff.max()) or 1.0  # one scale across σ; all-zero maps stay blank
    names = ["x_σ = x0 + σn", "D(x_σ, σ, c)", "|x_σ − D|", "|D(c) − D(∅)|"]
    for j, s in enumerate(e.sigmas):
        _show(axes[0, j], noisy[j])
        _show(axes[1, j], pred[j])
        axes[2, j].imshow(resid[j].numpy(), cmap="magma")
        axes[3, j].imshow(e.cond_diff[j].numpy(), cmap="magma", vmin=0, vmax=vmax)
        axes[0, j].set_title(f"σ={s:.3g}", fontsize=8)
        for i in range(4):
            axes[i, j].set_xticks([])
            axes[i, j].set_yticks([])
            if j == 0:
                axes[i, j].set_ylabel(names[i], fontsize=7)
    fig.suptitle(f"conditional difference max {float(e.cond_diff.max()):.3g}", fontsize=8)
    return _png(fig)


def daam_png(e: Explanation, image: torch.Tensor) -> bytes:
    """The sample and one heat map per prompt token, each scaled to its own maximum."""
    plt = _plt()
    pos = prompt_positions(e.tokens or [])[:16]
    fig, axes = plt.subplots(1, len(pos) + 1, figsize=(1.6 * (len(pos) + 1), 1.9), squeeze=False)
    _show(axes[0, 0], image)
    axes[0, 0].set_title("sample", fontsize=8)
    size = image.shape[-2:]
    for ax, i in zip(axes[0, 1:], pos, strict=True):
        m = e.daam[i][None, None]
        m = torch.nn.functional.interpolate(m, size=size, mode="bilinear", align_corners=False)[
            0, 0
        ]
        _show(ax, image)
        ax.imshow((m / m.max().clamp_min(1e-12)).numpy(), cmap="jet", alpha=0.5, vmin=0, vmax=1)
        # A token is text from the tokenizer: "$" would start matplotlib mathtext.
        ax.set_title(repr(e.tokens[i])[1:-1][:12].replace("$", r"\$"), fontsize=8)
    for ax in axes[0]:
        ax.set_xticks([])
        ax.set_yticks([])
    return _png(fig)


def loss_by_sigma_png(rows: list[dict]) -> bytes | None:
    """Validation loss per σ against step (log scales), or None without validations."""
    plt = _plt()
    table = sigma_learning(rows)
    if not table:
        return None
    fig, ax = plt.subplots(figsize=(6.2, 3.6))
    cmap = plt.get_cmap("viridis")
    for i, t in enumerate(table):
        key = next(k for r in rows for k in r if k.startswith("val/loss_sigma_")
                   and float(k.rsplit("_", 1)[1]) == t["sigma"])  # fmt: skip
        pts = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), int | float)]
        ax.plot(*zip(*pts, strict=True), "o-", ms=3, label=f"σ={t['sigma']:.3g}",
                color=cmap(i / max(1, len(table) - 1)))  # fmt: skip
    ax.set(xlabel="step", ylabel="λ(σ)-weighted validation loss", yscale="log",
           title="Validation loss by noise level")  # fmt: skip
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3)
    return _png(fig)


def write_explanation(e: Explanation, run, rows: list[dict], out: Path) -> list[Path]:
    """trajectory.png, daam.png (text), loss_by_sigma.png and explain.json into `out`."""
    out.mkdir(parents=True, exist_ok=True)
    to_images = run.to_images
    files = {"trajectory.png": trajectory_png(e, to_images)}
    if e.daam is not None:
        files["daam.png"] = daam_png(e, to_images(e.x0)[0])
    loss_png = loss_by_sigma_png(rows)
    if loss_png is not None:
        files["loss_by_sigma.png"] = loss_png
    paths = []
    for name, data in files.items():
        (out / name).write_bytes(data)
        paths.append(out / name)
    summary = {
        "checkpoint": str(run.checkpoint),
        "sigmas": e.sigmas,
        "cond_diff_mean": [float(m.mean()) for m in e.cond_diff],
        "tokens": e.tokens,
        "sigma_learning": sigma_learning(rows),
    }
    (out / "explain.json").write_text(json.dumps(summary, indent=1))
    return [*paths, out / "explain.json"]
