"""Durable, pickle-free checkpoints: safetensors for tensors, JSON for the rest.

A checkpoint is a directory `checkpoints/step-NNNNNNN/` written under a temporary name, fsynced,
then renamed, so a reader never sees a partial one. `manifest.json` holds each file's SHA-256.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from difftrain.errors import CheckpointError

MANIFEST = "manifest.json"


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


# No room for the write: a full disk, a quota, or a file-size limit (ulimit -f, EFBIG).
NO_ROOM = {errno.ENOSPC: "No space left on device", errno.EDQUOT: "Disk quota exceeded",
           errno.EFBIG: "File too large"}  # fmt: skip


def is_disk_full(err: BaseException) -> bool:
    """ENOSPC/EDQUOT/EFBIG from Python, or the same OS error wrapped by safetensors' Rust writer."""
    if isinstance(err, OSError) and err.errno in NO_ROOM:
        return True
    return any(text in str(err) for text in NO_ROOM.values())


def _unshared(group: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CPU tensors of a group, tied weights copied (safetensors refuses shared storage; T5 ties
    its input embedding to `shared`): loading sets both names to the same values again."""
    seen, out = set(), {}
    for k, v in group.items():
        t = v.detach().cpu().contiguous()
        if t.untyped_storage().data_ptr() in seen:
            t = t.clone()
        seen.add(t.untyped_storage().data_ptr())
        out[k] = t
    return out


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
            save_file(_unshared(group), tmp / f"{name}.safetensors")
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
            what = f"checkpoint step {step} under {ckpt_root}"
            raise disk_full_error(what, ckpt_root, err) from None
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def member(root: Path, name: object, what: str) -> Path:
    """`root / name` for a plain file name read from a run directory, else ValueError.

    Names in manifests and indexes are untrusted: no separators, no `..`, nothing that resolves
    (through a symlink) outside `root`.
    """
    if (
        not isinstance(name, str)
        or name in ("", ".", "..")
        or "/" in name
        or "\\" in name
        or "\0" in name
        or Path(name).is_absolute()
    ):
        raise ValueError(f"{what}: {name!r} is not a plain file name inside {root}")
    path = root / name
    if path.exists() and not path.resolve().is_relative_to(root.resolve()):
        raise ValueError(f"{what}: {name!r} resolves outside {root}")
    return path


def read_manifest(path: Path) -> dict[str, str]:
    """The manifest's {file name: SHA-256}, validated; CheckpointError if it is malformed."""
    mf = path / MANIFEST
    if not mf.is_file():
        raise CheckpointError(f"{path}: no {MANIFEST} (partial checkpoint)")
    try:
        manifest = json.loads(mf.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{mf}: unreadable manifest ({err})") from None
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict) or "state.json" not in files:
        raise CheckpointError(f"{mf}: malformed manifest (needs a 'files' map listing state.json)")
    for name, digest in files.items():
        try:
            member(path, name, str(mf))
        except ValueError as err:
            raise CheckpointError(str(err)) from None
        if not isinstance(digest, str):
            raise CheckpointError(f"{mf}: the hash of {name!r} is not a string")
    return files


def verify_checkpoint(path: Path) -> dict[str, str]:
    """Raise CheckpointError unless the manifest is well formed and every file in it is present
    with its hash. Returns the manifest's {file name: SHA-256}."""
    files = read_manifest(path)
    for name, digest in files.items():
        f = path / name
        if not f.is_file():
            raise CheckpointError(f"{f}: listed in the manifest but missing")
        if sha256(f) != digest:
            raise CheckpointError(f"{f}: SHA-256 mismatch (corrupt or truncated file)")
    return files


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
    """Verify, then load the named tensor groups and state.json; each must be in the manifest."""
    listed = verify_checkpoint(path)
    for f in (p for p in path.iterdir() if p.suffix == ".safetensors"):
        if f.stem in groups and f.name not in listed:
            raise CheckpointError(f"{f}: not listed in {path / MANIFEST}; refusing to load it")
    tensors = {
        g: load_file(path / f"{g}.safetensors") for g in groups if f"{g}.safetensors" in listed
    }
    try:
        state = json.loads((path / "state.json").read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path / 'state.json'}: unreadable ({err})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path / 'state.json'}: not a JSON object")
    return tensors, state


def newest_good(ckpt_root: Path) -> tuple[Path | None, list[tuple[Path, str]]]:
    """The newest checkpoint that verifies (None if none does), and each newer one with why it
    failed. Stops at the first good one: older checkpoints are not hashed."""
    bad: list[tuple[Path, str]] = []
    for path in reversed(list_checkpoints(ckpt_root)):
        try:
            verify_checkpoint(path)
            return path, bad
        except CheckpointError as err:
            bad.append((path, str(err)))
    return None, bad


def prune_checkpoints(ckpt_root: Path, keep: int, protect: set[str] = frozenset()) -> None:
    """Keep the newest `keep` checkpoints that verify (and those in `protect`, the best).

    Corrupt ones are not counted, so they can never push out the newest good checkpoint; those
    newer than the oldest kept good one are left for the user to inspect (a resumed run rewrites
    the same step names), older ones are deleted with the good ones beyond `keep`.
    """
    good = 0
    for path in reversed(list_checkpoints(ckpt_root)):
        if good < keep:
            try:
                _verify_cached(path)
                good += 1
            except CheckpointError:
                pass
            continue
        if path.name not in protect:
            shutil.rmtree(path, ignore_errors=True)


# Pruning runs after every save; re-hashing k unchanged checkpoints each time is wasted work.
_VERIFIED: dict[str, tuple] = {}


def _verify_cached(path: Path) -> None:
    """verify_checkpoint, skipped when this process verified the same files (same stat) before."""
    key = tuple(sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in path.iterdir()))
    if _VERIFIED.get(str(path)) == key:
        return
    verify_checkpoint(path)
    _VERIFIED[str(path)] = key


TMP_PATTERN = re.compile(r"\.tmp-step-\d{7}-(\d+)")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale_tmp(ckpt_root: Path) -> list[Path]:
    """Remove temporary checkpoint dirs left by killed saves: only our naming pattern, and only
    those whose writer process is gone (never the live process's). Returns what was removed."""
    removed = []
    if not ckpt_root.is_dir():
        return removed
    for path in ckpt_root.iterdir():
        m = TMP_PATTERN.fullmatch(path.name)
        if m and path.is_dir() and not path.is_symlink() and not _alive(int(m.group(1))):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def resume_checkpoint(run_dir: Path) -> Path | None:
    """The checkpoint `--resume` continues from: the newest good one; None for a run that has not
    started. A run that has checkpoints (or metrics) but no good checkpoint is a ConfigError
    naming what was found: restarting it from step 0 would overwrite its history."""
    from difftrain.config import ConfigError

    good, bad = newest_good(run_dir / "checkpoints")
    for _path, problem in bad:
        warnings.warn(f"skipping bad checkpoint: {problem}", stacklevel=2)
    if good is not None:
        return good
    metrics = run_dir / "metrics.jsonl"
    if bad or (metrics.is_file() and metrics.stat().st_size > 0):
        what = "; ".join(f"{p.name}: {why}" for p, why in bad) or f"no checkpoints, but {metrics}"
        raise ConfigError(
            f"--resume: {run_dir} has no good checkpoint to continue from ({what}). Nothing was "
            "changed. Repair or restore a checkpoint, or train into a new train.run_dir"
        )
    return None


def disk_full_error(what: str, ckpt_root: Path, err: BaseException | None = None) -> DiskFullError:
    """The one message for a full disk, wherever it happens: what failed, what is intact, the fix."""
    good = newest_good(ckpt_root)[0]
    intact = f"the previous checkpoint {good.name} is intact" if good else "no earlier checkpoint"
    limit = err is not None and (
        getattr(err, "errno", None) == errno.EFBIG or NO_ROOM[errno.EFBIG] in str(err)
    )
    why = " (File too large: a file-size limit such as ulimit -f was reached)" if limit else ""
    return DiskFullError(
        f"disk full while writing {what}{why}; {intact}. "
        "Free space (or move train.run_dir), then run again with --resume"
    )


@contextmanager
def stop_if_disk_full(what: str, ckpt_root: Path) -> Iterator[None]:
    """Turn a full disk inside the block into the DiskFullError message the checkpoints give."""
    try:
        yield
    except CheckpointError:
        raise
    except Exception as err:
        if is_disk_full(err):
            raise disk_full_error(what, ckpt_root, err) from None
        raise


def write_text_atomic(path: Path, text: str) -> None:
    """Write through a temporary file and rename, so a failed write leaves the old file whole."""
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
