"""Choose the EMA length after training: reconstruct post-hoc EMAs and score them on validation.

`posthoc_sweep` reconstructs each σ_rel from a run's power-EMA snapshots (EDM2 App. C.2), computes
the deterministic validation loss of each on the run's own validation split, and writes the best
as a checkpoint-compatible directory (`ema.safetensors` + `state.json` + `manifest.json`), so
`load_run(run_dir, checkpoint=run_dir / "ema_best")` samples from it.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from difftrain.config import ConfigError, load_config
from difftrain.data import to_model_range
from difftrain.eval.validation import sigma_grid, validation_loss
from difftrain.pipeline.build import build_denoiser
from difftrain.pipeline.checkpoint import latest_good_checkpoint, read_checkpoint, write_checkpoint
from difftrain.train.posthoc_ema import (
    MAX_SIGMA_REL,
    SNAPSHOT_DIR,
    Snapshot,
    list_snapshots,
    posthoc_coefficients,
    reconstruct,
    sigma_rel_to_gamma,
)
from difftrain.train.setup import prepare_data

DEFAULT_SWEEP = (0.01, 0.02, 0.03, 0.04, 0.05, 0.07, 0.10, 0.13, 0.16, 0.20, 0.25)


def parse_sigma_rels(text: str, option: str = "--sigma-rels") -> list[float]:
    """'0.02,0.05' → [0.02, 0.05], each checked to lie in (0, sqrt(1/12))."""
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        msg = f"{option} {text!r}: write comma-separated numbers, e.g. 0.05,0.1"
        raise ConfigError(msg) from None
    bad = [v for v in values if not 0 < v < MAX_SIGMA_REL]
    if not values or bad:
        raise ConfigError(
            f"{option} {text!r}: each σ_rel must lie in (0, {MAX_SIGMA_REL:.4f}) (e.g. 0.05,0.1)"
        )
    return values


def run_snapshots(run_dir: Path, step: int | None) -> tuple[list[Snapshot], int]:
    """The run's snapshots and the reconstruction step (default: the last), or a ConfigError."""
    snaps = list_snapshots(run_dir)
    if not snaps:
        raise ConfigError(
            f"{run_dir}: no post-hoc EMA snapshots under {SNAPSHOT_DIR}/; train with "
            "train.posthoc_ema_sigma_rels set (e.g. [0.05, 0.1])"
        )
    steps = sorted({s.step for s in snaps})
    if step is not None and step not in steps:
        raise ConfigError(f"--step {step}: no snapshot at that step (snapshot steps: {steps})")
    return snaps, steps[-1] if step is None else step


WRITTEN_BY = "difftrain ema"  # state.json marks a directory as this command's output
OWN_FILES = {"ema.safetensors", "state.json", "manifest.json"}


def check_out_dir(out: Path, option: str = "--out") -> None:
    """Refuse an output directory this command did not write (ConfigError → exit 2).

    A missing or empty directory is fine; a non-empty one only if it holds exactly what a previous
    `difftrain ema` wrote (its files, marked in state.json), since it is replaced as a whole.
    """
    out = Path(out)
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise ConfigError(f"{option} {str(out)!r}: exists and is not a directory; pick a new path")
    if not out.exists():
        return
    names = sorted(p.name for p in out.iterdir())
    if not names:
        return
    try:
        state = json.loads((out / "state.json").read_text())
        # Outputs of earlier versions carry no marker but always a "posthoc_ema" record.
        ours = set(names) <= OWN_FILES and (
            state.get("written_by") == WRITTEN_BY or "posthoc_ema" in state
        )
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError, TypeError):
        ours = False
    if not ours:
        shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
        raise ConfigError(
            f"{option} {str(out)!r}: not empty and not written by `{WRITTEN_BY}` (it holds "
            f"{shown}); nothing was changed. Pass a new or empty directory"
        )


def write_weights(out: Path, tensors: dict[str, torch.Tensor], state: dict) -> Path:
    """A checkpoint-compatible directory at `out` holding ema.safetensors, atomically replaced.

    Only a missing, empty or previously written output directory is replaced (check_out_dir).
    """
    out = Path(out)
    check_out_dir(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.tmp-{os.getpid()}"
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)  # ours: this name and this process id
    try:
        state = {**state, "written_by": WRITTEN_BY}
        written = write_checkpoint(staging, state["step"], {"ema": tensors}, state)
        if out.exists():
            os.replace(out, old)  # out was checked above: empty, or our previous output
        os.replace(written, out)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


def _data_info(run_dir: Path, cfg, data) -> dict:
    """num_classes and class_names as the run recorded them (falls back to the data)."""
    ckpt = latest_good_checkpoint(run_dir / "checkpoints")
    if ckpt is not None:
        return read_checkpoint(ckpt, [])[1]["data"]
    if data is None:
        data, _ = prepare_data(cfg, None)
    return {"num_classes": data.num_classes, "class_names": data.class_names}


def export_posthoc(
    run_dir: Path, sigma_rel: float, out: Path, step: int | None = None, extra: dict | None = None
) -> Path:
    """Reconstruct one σ_rel and write it as a checkpoint-compatible directory."""
    run_dir = Path(run_dir)
    check_out_dir(out)  # before any work: never replace a directory this command did not write
    cfg = load_config(run_dir / "config.yaml")
    snaps, step = run_snapshots(run_dir, step)
    used, x, fit = posthoc_coefficients(snaps, sigma_rel, step)
    info = {"sigma_rel": sigma_rel, "gamma": sigma_rel_to_gamma(sigma_rel), "step": step,
            "snapshots": len(used), "fit_error": fit, **(extra or {})}  # fmt: skip
    state = {"step": step, "data": _data_info(run_dir, cfg, None), "posthoc_ema": info}
    return write_weights(out, reconstruct(snaps, sigma_rel, step), state)


def posthoc_sweep(
    run_dir: Path,
    sigma_rels: Sequence[float] = DEFAULT_SWEEP,
    step: int | None = None,
    out: Path | None = None,
    device: str | torch.device = "cpu",
    progress: Callable[[int, int], None] | None = None,
) -> dict:
    """Score each σ_rel's reconstruction by validation loss; write ema_sweep.json and ema_best/.

    Also scores the checkpoint's classic EMAs (ema*.safetensors) as references. Outputs go to
    `out` (default: the run directory). Returns the dict written to ema_sweep.json.
    """
    run_dir = Path(run_dir)
    out = Path(out) if out is not None else run_dir
    check_out_dir(out / "ema_best", "--out (its ema_best/)")
    if not (run_dir / "config.yaml").is_file():
        raise ConfigError(f"{run_dir}: not a run directory (no config.yaml); pass train.run_dir")
    cfg = load_config(run_dir / "config.yaml")
    snaps, step = run_snapshots(run_dir, step)
    data, val = prepare_data(cfg, None)
    if not len(val):
        raise ConfigError(
            "data.val_fraction = 0: the sweep scores on the validation split; the run has none"
        )
    n = min(len(val), cfg.train.val_images)  # the loop's bound: comparable with its val/loss
    val_x, val_y = to_model_range(val.images[:n]), None if val.labels is None else val.labels[:n]
    info = _data_info(run_dir, cfg, data)
    denoiser = build_denoiser(cfg, info["num_classes"]).to(device).eval()

    def score(tensors: dict[str, torch.Tensor]) -> dict[str, float]:
        denoiser.load_state_dict(tensors)
        return validation_loss(denoiser, val_x, val_y, sigma_grid(n=8), cfg.diffusion.sigma_data,
                               seed=cfg.train.seed, device=device)  # fmt: skip

    results, best_weights = [], None
    for i, s in enumerate(sigma_rels):
        used, x, fit = posthoc_coefficients(snaps, s, step)
        tensors = reconstruct(snaps, s, step)
        row = {"sigma_rel": s, "gamma": sigma_rel_to_gamma(s), "fit_error": fit,
               "coef_l1": float(abs(x).sum()), **score(tensors)}  # fmt: skip
        if not results or row["val/loss"] < min(r["val/loss"] for r in results):
            best_weights = tensors
        results.append(row)
        if progress is not None:
            progress(i + 1, len(sigma_rels))
    best = min(results, key=lambda r: r["val/loss"])

    references = []
    ckpt = latest_good_checkpoint(run_dir / "checkpoints")
    if ckpt is not None:
        groups = sorted(p.stem for p in ckpt.glob("ema*.safetensors"))
        tensors, state = read_checkpoint(ckpt, groups)
        for g in groups:
            references.append({"weights": g, "checkpoint": ckpt.name, "step": state["step"],
                               "val/loss": score(tensors[g])["val/loss"]})  # fmt: skip

    best_dir = out / "ema_best"
    meta = {"sigma_rel": best["sigma_rel"], "gamma": best["gamma"], "step": step,
            "snapshots": len(used), "fit_error": best["fit_error"],
            "val/loss": best["val/loss"]}  # fmt: skip
    write_weights(best_dir, best_weights, {"step": step, "data": info, "posthoc_ema": meta})
    summary = {
        "run_dir": str(run_dir),
        "step": step,
        "snapshots": len(used),
        "stored_sigma_rels": sorted({round(s.sigma_rel, 6) for s in snaps}),
        "metric": "val/loss",
        "val_images": n,
        "results": results,
        "references": references,
        "best": {**meta, "weights": str(best_dir)},
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "ema_sweep.json").write_text(json.dumps(summary, indent=1))
    return summary
