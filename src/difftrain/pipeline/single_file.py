"""A single-file Stable Diffusion checkpoint (`.safetensors` in the original LDM layout, as
CivitAI and the original repositories publish them) → a diffusers pipeline folder, once, through
diffusers' single-file loader (`from_single_file`).

The file holds weights only; the component configs, tokenizer and scheduler come from a local
pipeline folder of the same family (`--config`), so nothing is downloaded. The folder written is
an ordinary `model.pretrained` for fine-tuning. Pickled files (`.ckpt`) are refused: convert them
to safetensors first. The output is written beside `out` and renamed into place, so a failed
conversion leaves nothing behind; an existing `out` is refused, never replaced.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from difftrain.config import ConfigError
from difftrain.models.families import FLUX, SD, SD3, SDXL, detect_family
from difftrain.models.pretrained import PICKLE_SUFFIXES, PretrainedError, check_pipeline_dir

# Families whose diffusers pipeline class converts a single file (SD3/FLUX files hold the
# transformer alone or with other key layouts: not supported here).
SINGLE_FILE_FAMILIES = (SD, SDXL)
# What a file must contain (a key prefix) to be an LDM Stable Diffusion checkpoint.
LDM_UNET_PREFIX = "model.diffusion_model."


def read_header_keys(file: Path) -> list[str]:
    """The tensor names of a safetensors file (header only; no weights are read)."""
    from safetensors import safe_open

    try:
        with safe_open(str(file), framework="pt") as f:
            return list(f.keys())
    except Exception as err:  # SafetensorError, OSError: not a readable safetensors file
        raise ConfigError(
            f"{file}: not a readable .safetensors file ({type(err).__name__}: "
            f"{str(err).splitlines()[0][:200] if str(err) else 'no detail'})"
        ) from None


def check_inputs(file: Path, config_dir: Path, out: Path):
    """The family of `config_dir`, after checking the three paths; ConfigError names the fix."""
    if not file.is_file():
        raise ConfigError(f"{file}: no such file (a single-file .safetensors checkpoint)")
    if file.suffix in PICKLE_SUFFIXES:
        raise ConfigError(
            f"{file}: a pickled checkpoint can execute code when loaded; convert it to "
            ".safetensors first (only weights are read from a .safetensors file)"
        )
    if file.suffix != ".safetensors":
        raise ConfigError(f"{file}: expected a .safetensors file")
    if out.exists():
        raise ConfigError(f"--out {out}: already exists; choose a new directory")
    try:
        family = detect_family(config_dir)
    except ValueError as err:
        raise ConfigError(f"--config {config_dir}: {err}") from None
    if family not in SINGLE_FILE_FAMILIES:
        raise ConfigError(
            f"--config {config_dir}: a {family.pipeline} folder; single files are converted for "
            f"{', '.join(f.pipeline for f in SINGLE_FILE_FAMILIES)} (for "
            f"{SD3.pipeline}/{FLUX.pipeline} use a diffusers folder)"
        )
    if not (config_dir / "model_index.json").is_file():
        raise ConfigError(
            f"--config {config_dir}: no model_index.json; give a diffusers pipeline folder of the "
            "same family (its configs, tokenizer and scheduler are used; its weights are not)"
        )
    keys = read_header_keys(file)
    if not any(k.startswith(LDM_UNET_PREFIX) for k in keys):
        raise ConfigError(
            f"{file}: no '{LDM_UNET_PREFIX}*' weights, so not a single-file Stable Diffusion "
            f"checkpoint in the original layout ({len(keys)} tensors, e.g. {keys[:2]})"
        )
    return family


def convert_single_file(file: Path, config_dir: Path, out: Path) -> Path:
    """Convert `file` with the configs of `config_dir` into the new pipeline folder `out`."""
    import diffusers

    file, config_dir, out = Path(file), Path(config_dir), Path(out)
    family = check_inputs(file, config_dir, out)
    cls = getattr(diffusers, family.pipeline)
    try:
        pipe = cls.from_single_file(
            str(file), config=str(config_dir), local_files_only=True, safety_checker=None
        )
    except (ValueError, KeyError, RuntimeError, OSError) as err:
        raise ConfigError(
            f"{file}: diffusers could not load it with the configs of {config_dir} "
            f"({type(err).__name__}: {str(err).splitlines()[0][:300] if str(err) else ''}); "
            "check that --config is a pipeline folder of the same model (shapes must match)"
        ) from None
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        pipe.save_pretrained(stage, safe_serialization=True)
        check_pipeline_dir(stage, family.subfolders)  # a complete, safetensors-only folder
        stage.rename(out)
    except (OSError, PretrainedError):
        shutil.rmtree(stage, ignore_errors=True)  # our own staging directory only
        raise
    return out
