"""`difftrain evaluate`: evaluate one checkpoint of a run directory and record it in eval.json."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import torch

from difftrain.config import ConfigError
from difftrain.eval.evaluate import (
    SampleQuality,
    generate_for_eval,
    likelihood,
    load_extractors,
    reference_images,
)


def _entry_key(entry: dict) -> tuple:
    s = entry["settings"]
    keys = ("features", "num", "sampler", "steps", "seed", "guidance", "guidance_interval")
    return (entry["step"], str(entry.get("weights")), *(str(s.get(k)) for k in keys))


def _well_formed(entry) -> bool:
    """An evaluation entry has an integer step, a settings dict and a metrics dict."""
    return (
        isinstance(entry, dict)
        and type(entry.get("step")) is int
        and isinstance(entry.get("settings"), dict)
        and isinstance(entry.get("metrics"), dict)
    )


def read_evaluations(path: Path) -> tuple[list[dict], str | None]:
    """The well-formed entries of eval.json and a note on what was ignored (None: nothing).

    eval.json lives in a run directory, so it is untrusted: a damaged file or entry is
    skipped with a note, never a traceback.
    """
    if not path.is_file():
        return [], None
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        return [], f"{path.name} ignored: not readable JSON ({type(err).__name__})"
    entries = doc.get("evaluations") if isinstance(doc, dict) else None
    if not isinstance(entries, list):
        return [], f"{path.name} ignored: it holds no list of evaluations"
    good = [e for e in entries if _well_formed(e)]
    bad = len(entries) - len(good)
    return good, (f"{path.name}: {bad} malformed evaluation(s) ignored" if bad else None)


def write_eval_json(path: Path, entry: dict) -> dict:
    """Add `entry` to eval.json's list (replacing one with the same step and settings)."""
    doc: dict = {}
    kept = [e for e in read_evaluations(path)[0] if _entry_key(e) != _entry_key(entry)]
    doc["evaluations"] = sorted([*kept, entry], key=lambda e: e["step"])
    doc["latest"] = entry
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1))
    return doc


def evaluate_run(
    run_dir: str | Path,
    *,
    metrics: list[str],
    num: int,
    sampler: str,
    steps: int,
    seed: int,
    features: str = "domain",
    guidance: float = 1.0,
    guidance_interval: tuple[float, float] | None = None,
    weights: str = "ema",
    checkpoint: Path | None = None,
    feature_net: Path | None = None,
    inception_weights: Path | None = None,
    nll_num: int | None = None,
    nll_steps: int | None = None,
    out: Path | None = None,
    device: str | torch.device = "cpu",
    progress: Callable[[str, int, int], None] | None = None,
) -> dict:
    """Evaluate one checkpoint of a run directory and record it in eval.json (run dir or `out`).

    `guidance_interval` None = the run's `sample.guidance_interval` (guidance everywhere if unset).
    """
    from difftrain.data import load_data
    from difftrain.pipeline.run import load_run
    from difftrain.samplers import SAMPLERS

    if sampler not in SAMPLERS:
        raise ConfigError(f"--sampler {sampler!r}: unknown (allowed: {', '.join(SAMPLERS)})")
    if features not in ("domain", "inception"):
        raise ConfigError(f"--features {features!r}: allowed 'domain' or 'inception'")
    run = load_run(run_dir, weights=weights, checkpoint=checkpoint)
    cfg, k = run.config, run.num_classes
    interval = guidance_interval or cfg.sample.guidance_interval
    if k is None:
        metrics = [m for m in metrics if m != "acc"]
    if "nll" in metrics and run.autoencoder is not None:
        raise ConfigError(
            "--metrics nll: a latent model's likelihood would be of latents, not of images; "
            "drop nll for this run"
        )
    t0 = time.time()
    train, val = load_data(cfg.data).split(cfg.data.val_fraction, cfg.train.seed)
    extractor, classifier = load_extractors(cfg, metrics, features, feature_net, inception_weights)
    result: dict[str, float] = {}
    timing = {}
    if any(m in metrics for m in ("fid", "kid", "pr", "acc")):
        reference, split = reference_images(train, val, num, seed)
        quality = SampleQuality(reference, extractor, classifier, metrics, device)
        timing["reference_features_s"] = round(time.time() - t0, 2)
        t1 = time.time()
        run.to(device)
        done = [0]

        def tick(n: int) -> None:
            done[0] += n
            if progress is not None:
                progress("generate", done[0], num)

        fake, labels = generate_for_eval(
            run.denoiser,
            cfg,
            num,
            k,
            sampler=sampler,
            steps=steps,
            seed=seed,
            guidance=guidance,
            guidance_interval=interval,
            device=device,
            callback=tick,
            to_images=run.to_images,  # latent models: decoded to pixels
            shape=run.sample_shape or None,
        )
        timing["generate_s"] = round(time.time() - t1, 2)
        t2 = time.time()
        result.update(quality(fake, labels))
        timing["metrics_s"] = round(time.time() - t2, 2)
    else:
        split = None
    if "nll" in metrics:
        t3 = time.time()
        run.denoiser.to(device)
        data = val if len(val) else train
        result.update(
            likelihood(
                run.denoiser,
                cfg,
                data,
                nll_num or cfg.eval.nll_num,
                nll_steps or cfg.eval.nll_steps,
                seed,
                device,
            )
        )
        timing["nll_s"] = round(time.time() - t3, 2)
    entry = {
        "step": run.state["step"],
        "checkpoint": str(run.checkpoint),
        "weights": weights,
        "settings": {
            "metrics": metrics,
            "num": num,
            "sampler": sampler,
            "steps": steps,
            "seed": seed,
            "guidance": guidance,
            "guidance_interval": list(interval) if interval else None,
            "features": features,
            "reference_split": split,
            "nll_num": nll_num or cfg.eval.nll_num,
            "nll_steps": nll_steps or cfg.eval.nll_steps,
            "nll_conditional": k is not None,
        },
        "feature_extractor": extractor.info | {"kind": extractor.kind} if extractor else None,
        "metrics": result,
        "seconds": timing | {"total_s": round(time.time() - t0, 2)},
        "time": round(time.time(), 3),
    }
    path = (Path(out) if out else Path(run_dir)) / "eval.json"
    write_eval_json(path, entry)
    entry["path"] = str(path)
    return entry
