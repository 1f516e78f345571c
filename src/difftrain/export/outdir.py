"""Write an export atomically: stage in a temporary sibling directory, then rename into place.

`--out` must be new, empty, or a previous export by `difftrain export` (recognised by its
`export.json`, whose file list must cover everything in the directory). Nothing else is ever
deleted: a directory holding files the export did not write is refused.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from difftrain.config import ConfigError
from difftrain.pipeline.checkpoint import sha256

MARKER = "export.json"
TOOL = "difftrain export"


def _listed_files(out: Path) -> set[str] | None:
    """The files a previous export says it wrote, or None if `out` is not one of ours."""
    try:
        info = json.loads((out / MARKER).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(info, dict) or info.get("tool") != TOOL:
        return None
    files = info.get("files")
    if not isinstance(files, dict) or not all(isinstance(k, str) for k in files):
        return None
    return set(files) | {MARKER}


def _all_entries(root: Path) -> tuple[set[str], set[str]]:
    """(files, directories) under root as POSIX paths relative to it; symlinks count as files."""
    files, dirs = set(), set()
    for dirpath, dirnames, filenames in os.walk(root):
        rel = Path(dirpath).relative_to(root)
        for d in dirnames:
            p = Path(dirpath) / d
            (files if p.is_symlink() else dirs).add((rel / d).as_posix())
        files.update((rel / f).as_posix() for f in filenames)
    return files, dirs


def check_out_dir(out: Path) -> bool:
    """Raise ConfigError unless `out` may receive an export; True if it holds a previous one."""
    if out.is_symlink():
        raise ConfigError(f"--out {str(out)!r}: is a symbolic link; name the directory itself")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {str(out)!r}: exists and is not a directory; choose a new path")
    if not out.exists() or not any(out.iterdir()):
        return False
    listed = _listed_files(out)
    if listed is None:
        raise ConfigError(
            f"--out {str(out)!r}: directory is not empty and is not a previous `difftrain export`; "
            "choose a new or empty directory"
        )
    files, dirs = _all_entries(out)
    parents = {p.as_posix() for f in listed for p in Path(f).parents if p != Path(".")}
    extra = sorted((files - listed) | (dirs - parents))
    if extra:
        raise ConfigError(
            f"--out {str(out)!r}: holds files a previous export did not write ({', '.join(extra[:5])}); "
            "move them away or choose a new directory"
        )
    return True


def write_marker(stage: Path, fmt: str, source: dict) -> dict:
    """Hash every staged file into export.json (the marker and the integrity manifest)."""
    files, _ = _all_entries(stage)
    info = {
        "tool": TOOL,
        "format": fmt,
        "source": source,
        "files": {f: sha256(stage / f) for f in sorted(files)},
    }
    (stage / MARKER).write_text(json.dumps(info, indent=1))
    return info


def verify_export(root: Path) -> dict:
    """Check every file in export.json against its SHA-256; return the marker."""
    if not (root / MARKER).is_file():
        raise ConfigError(f"{root}: no {MARKER}; not a `difftrain export` directory")
    try:
        info = json.loads((root / MARKER).read_text())
        files = info["files"]
        assert isinstance(files, dict)
    except (ValueError, KeyError, AssertionError, TypeError):
        raise ConfigError(f"{root / MARKER}: unreadable export manifest") from None
    resolved = root.resolve()
    for name, digest in files.items():
        path = (root / name).resolve()
        if resolved not in path.parents:  # names read from disk are untrusted
            raise ConfigError(f"{root / MARKER}: file {name!r} points outside the export")
        if not path.is_file():
            raise ConfigError(f"{root / name}: listed in {MARKER} but missing")
        if sha256(path) != digest:
            raise ConfigError(f"{root / name}: SHA-256 mismatch (corrupt or modified file)")
    return info


@contextlib.contextmanager
def staged(out: Path) -> Iterator[Path]:
    """Yield a fresh staging directory next to `out`; on success it becomes `out` (a rename)."""
    replace = check_out_dir(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = out.parent / f".{out.name}.tmp-{os.getpid()}"
    if stage.exists():
        raise ConfigError(f"{stage}: a staging directory from another export exists; remove it")
    stage.mkdir()
    try:
        yield stage
        if replace:
            old = out.parent / f".{out.name}.old-{os.getpid()}"
            os.replace(out, old)
            os.replace(stage, out)
            shutil.rmtree(old)  # verified above: only files a previous export wrote
        elif out.exists():
            # Keep the user's (empty) directory itself, e.g. a shell's working directory: move
            # the entries in, the marker last, so export.json means the export is complete.
            for entry in sorted(stage.iterdir(), key=lambda p: p.name == MARKER):
                os.replace(entry, out / entry.name)
            stage.rmdir()
        else:
            os.replace(stage, out)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
