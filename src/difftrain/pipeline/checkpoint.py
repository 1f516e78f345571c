"""Durable, pickle-free checkpoints: safetensors for tensors, JSON for the rest.

A checkpoint is a directory `checkpoints/step-NNNNNNN/` written under a temporary name, fsynced,
then renamed, so a reader never sees a partial one. `manifest.json` holds each file's SHA-256.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

MANIFEST = "manifest.json"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, partial or corrupt."""


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def flatten_state(obj: Any, prefix: str = "") -> tuple[dict[str, torch.Tensor], Any]:
    """Split a nested state (dicts/lists of tensors and scalars) into tensors + a JSON skeleton."""
    tensors: dict[str, torch.Tensor] = {}

    def walk(o: Any, key: str) -> Any:
        if isinstance(o, torch.Tensor):
            tensors[key] = o.detach().cpu().contiguous()
            return {"__tensor__": key}
        if isinstance(o, dict):
            return {
                "__dict__": [
                    [walk(k, f"{key}.k{i}"), walk(v, f"{key}.{i}")]
                    for i, (k, v) in enumerate(o.items())
                ]
            }
        if isinstance(o, (list, tuple)):
            return {
                "__list__": [walk(v, f"{key}.{i}") for i, v in enumerate(o)],
                "tuple": isinstance(o, tuple),
            }
        if o is None or isinstance(o, (bool, int, float, str)):
            return o
        raise TypeError(f"cannot store {type(o).__name__} at {key!r} in a checkpoint")

    return tensors, walk(obj, prefix or "s")


def unflatten_state(skeleton: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of flatten_state."""
    if isinstance(skeleton, dict):
        if "__tensor__" in skeleton:
            return tensors[skeleton["__tensor__"]]
        if "__dict__" in skeleton:
            return {
                unflatten_state(k, tensors): unflatten_state(v, tensors)
                for k, v in skeleton["__dict__"]
            }
        if "__list__" in skeleton:
            items = [unflatten_state(v, tensors) for v in skeleton["__list__"]]
            return tuple(items) if skeleton.get("tuple") else items
    return skeleton


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class DiskFullError(CheckpointError):
    """No space left while writing; the previous checkpoints are untouched."""


def is_disk_full(err: BaseException) -> bool:
    """ENOSPC/EDQUOT from Python, or the same OS error wrapped by safetensors' Rust writer."""
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(err)
    return "No space left on device" in text or "Disk quota exceeded" in text


def write_checkpoint(
    ckpt_root: Path,
    step: int,
    tensors: dict[str, dict[str, torch.Tensor]],
    state: dict,
    after_each_file=None,
) -> Path:
    """Write {name}.safetensors for each tensor group plus state.json, atomically. Returns the dir.

    `after_each_file(path)` is called after each file is written (used to test a kill mid-write).
    """
    ckpt_root.mkdir(parents=True, exist_ok=True)
    final = ckpt_root / f"step-{step:07d}"
    tmp = ckpt_root / f".tmp-step-{step:07d}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        for name, group in tensors.items():
            save_file(
                {k: v.detach().cpu().contiguous() for k, v in group.items()},
                tmp / f"{name}.safetensors",
            )
            if after_each_file is not None:
                after_each_file(tmp / f"{name}.safetensors")
        (tmp / "state.json").write_text(json.dumps(state, indent=1))
        files = sorted(p.name for p in tmp.iterdir())
        for name in files:
            with open(tmp / name, "rb") as f:
                os.fsync(f.fileno())
        manifest = {"step": step, "files": {n: sha256(tmp / n) for n in files}}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
        with open(tmp / MANIFEST, "rb") as f:
            os.fsync(f.fileno())
        _fsync_dir(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(ckpt_root)
    except Exception as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if is_disk_full(err):
            prev = list_checkpoints(ckpt_root)
            raise DiskFullError(
                f"disk full while writing checkpoint step {step} under {ckpt_root}; "
                f"{'the previous checkpoint ' + prev[-1].name + ' is intact' if prev else 'no earlier checkpoint'}. "
                "Free space (or move train.run_dir), then run again with --resume"
            ) from None
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def verify_checkpoint(path: Path) -> None:
    """Raise CheckpointError unless every file in the manifest is present with its hash."""
    mf = path / MANIFEST
    if not mf.is_file():
        raise CheckpointError(f"{path}: no {MANIFEST} (partial checkpoint)")
    try:
        manifest = json.loads(mf.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{mf}: unreadable manifest ({err})") from None
    for name, digest in manifest["files"].items():
        f = path / name
        if not f.is_file():
            raise CheckpointError(f"{f}: listed in the manifest but missing")
        if sha256(f) != digest:
            raise CheckpointError(f"{f}: SHA-256 mismatch (corrupt or truncated file)")


def list_checkpoints(ckpt_root: Path) -> list[Path]:
    """Completed checkpoint directories, oldest first (temporary ones are ignored)."""
    if not ckpt_root.is_dir():
        return []
    return sorted(p for p in ckpt_root.iterdir() if p.is_dir() and p.name.startswith("step-"))


def latest_good_checkpoint(ckpt_root: Path) -> Path | None:
    """The newest checkpoint that verifies; warns about each newer one that does not."""
    for path in reversed(list_checkpoints(ckpt_root)):
        try:
            verify_checkpoint(path)
            return path
        except CheckpointError as err:
            warnings.warn(f"skipping bad checkpoint: {err}", stacklevel=2)
    return None


def read_checkpoint(
    path: Path, groups: list[str]
) -> tuple[dict[str, dict[str, torch.Tensor]], dict]:
    """Verify, then load the named tensor groups and state.json."""
    verify_checkpoint(path)
    tensors = {
        g: load_file(path / f"{g}.safetensors")
        for g in groups
        if (path / f"{g}.safetensors").is_file()
    }
    return tensors, json.loads((path / "state.json").read_text())


def prune_checkpoints(ckpt_root: Path, keep: int, protect: set[str] = frozenset()) -> None:
    """Delete all but the newest `keep` checkpoints and those named in `protect` (the best)."""
    for path in list_checkpoints(ckpt_root)[:-keep]:
        if path.name not in protect:
            shutil.rmtree(path, ignore_errors=True)
