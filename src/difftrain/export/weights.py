"""`--format safetensors`: the denoiser's weights + a JSON config, loadable by difftrain alone."""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import load_file, save_file

from difftrain.config import ConfigError
from difftrain.config.load import config_from_dict
from difftrain.export.outdir import verify_export
from difftrain.pipeline.build import build_denoiser
from difftrain.pipeline.run import LoadedRun

FORMAT = "difftrain-safetensors"
WEIGHTS, CONFIG = "model.safetensors", "model.json"


def write_safetensors(run: LoadedRun, stage: Path) -> None:
    """model.safetensors (the full denoiser state) + model.json (config and class names)."""
    state = {k: v.detach().cpu().contiguous() for k, v in run.denoiser.state_dict().items()}
    save_file(state, stage / WEIGHTS, metadata={"format": FORMAT})
    meta = {
        "format": FORMAT,
        "version": 1,
        "config": run.config.model_dump(mode="json"),
        "data": {"num_classes": run.num_classes, "class_names": run.class_names},
        "step": run.state.get("step"),
    }
    (stage / CONFIG).write_text(json.dumps(meta, indent=1))


def load_exported(export_dir: str | Path) -> LoadedRun:
    """Load a safetensors export (hashes checked) as a LoadedRun, like `load_run` on a run dir."""
    root = Path(export_dir)
    info = verify_export(root)
    if info.get("format") != "safetensors" or CONFIG not in info["files"]:
        raise ConfigError(
            f"{root}: not a `--format safetensors` export (format {info.get('format')!r})"
        )
    try:
        meta = json.loads((root / CONFIG).read_text())
        data = meta["data"]
        k, names = data["num_classes"], data["class_names"]
        if meta.get("format") != FORMAT or not (k is None or (isinstance(k, int) and k > 0)):
            raise ValueError
    except (ValueError, KeyError, TypeError):
        raise ConfigError(f"{root / CONFIG}: malformed export config") from None
    cfg = config_from_dict(meta["config"])
    denoiser = build_denoiser(cfg, k)
    try:
        denoiser.load_state_dict(load_file(root / WEIGHTS))
    except RuntimeError as err:
        raise ConfigError(f"{root / WEIGHTS}: weights do not fit the config ({err})") from None
    denoiser.eval()
    state = {"step": meta.get("step"), "data": {"num_classes": k, "class_names": names}}
    return LoadedRun(cfg, denoiser, root / WEIGHTS, state)
