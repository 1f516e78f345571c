"""`--format safetensors`: the denoiser's weights + a JSON config, loadable by difftrain alone.

Layout: `model.safetensors` (the full denoiser state, text encoder included), `model.json`
(resolved config, classes, step), and for latent runs `autoencoder/` (diffusers AutoencoderKL,
safetensors), for BPE text runs `text/tokenizer.json`: the same names as in a run directory.
"""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import load_file, save_file

from difftrain.config import ConfigError
from difftrain.config.load import config_from_dict
from difftrain.export.outdir import verify_export
from difftrain.pipeline.build import build_denoiser
from difftrain.pipeline.latent import AE_SUBDIR, Latents, load_autoencoder, sample_shape
from difftrain.pipeline.run import LoadedRun
from difftrain.pipeline.text import TextConditioning, save_tokenizer

FORMAT = "difftrain-safetensors"
WEIGHTS, CONFIG = "model.safetensors", "model.json"


def check_safetensors_exportable(run: LoadedRun) -> None:
    """A pretrained text encoder is built from text.path, outside the run: not packaged."""
    if run.config.text.encoder == "path":
        raise ConfigError(
            "--format safetensors: runs with text.encoder = 'path' (a pretrained encoder read "
            "from text.path) are not packaged yet; use --format diffusers"
        )


def write_safetensors(run: LoadedRun, stage: Path) -> None:
    """model.safetensors + model.json (+ autoencoder/ and text/tokenizer.json when used)."""
    check_safetensors_exportable(run)
    state = {k: v.detach().cpu().contiguous() for k, v in run.denoiser.state_dict().items()}
    save_file(state, stage / WEIGHTS, metadata={"format": FORMAT})
    cfg = run.config.model_dump(mode="json")
    if run.autoencoder is not None:
        run.autoencoder.save_pretrained(stage / AE_SUBDIR, safe_serialization=True)
        cfg["latent"]["autoencoder"] = AE_SUBDIR  # resolved against the export on load
        cfg["latent"]["scaling_factor"] = run.latents.scale  # what the run trained with
    if run.text is not None:
        save_tokenizer(run.text.tokenizer, stage)  # BPE only; byte needs no file
    meta = {
        "format": FORMAT,
        "version": 1,
        "config": cfg,
        "data": {"num_classes": run.state["data"]["num_classes"], "class_names": run.class_names},
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
        latent = meta["config"].get("latent", {}).get("autoencoder")
        if latent not in (None, AE_SUBDIR):  # never follow a path written into the file
            raise ValueError
    except (ValueError, KeyError, TypeError, AttributeError):
        raise ConfigError(f"{root / CONFIG}: malformed export config") from None
    if latent is not None:
        meta["config"]["latent"]["autoencoder"] = str(root / AE_SUBDIR)
    cfg = config_from_dict(meta["config"])
    shape = sample_shape(cfg, root)
    denoiser = build_denoiser(cfg, k, shape)
    try:
        denoiser.load_state_dict(load_file(root / WEIGHTS))
    except RuntimeError as err:
        raise ConfigError(f"{root / WEIGHTS}: weights do not fit the config ({err})") from None
    denoiser.eval()
    vae = latents = None
    if latent is not None:
        vae = load_autoencoder(root / AE_SUBDIR)
        latents = Latents.for_config(cfg, vae)
    text = TextConditioning.open(cfg, root)
    state = {"data": {"num_classes": k, "class_names": names}}
    if isinstance(meta.get("step"), int):
        state["step"] = meta["step"]
    return LoadedRun(cfg, denoiser, root / WEIGHTS, state, vae, shape, latents, text)
