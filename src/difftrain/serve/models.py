"""The model being served: load a run (or an export), name it, and swap in a newer best one.

`--watch` polls the run directory. A newer best checkpoint is loaded beside the current one
and then swapped in with one reference assignment: a batch that already started keeps the
model it started with, so no request in flight is dropped, and every answer names its model.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from dataclasses import dataclass
from pathlib import Path

from difftrain.config import ConfigError
from difftrain.pipeline.checkpoint import CheckpointError, latest_good_checkpoint, verify_checkpoint
from difftrain.pipeline.run import LoadedRun, load_run

log = logging.getLogger("difftrain.serve")
CHECKPOINT_NAME = re.compile(r"^step-\d{1,12}$")


@dataclass(frozen=True)
class Served:
    """One loaded model and the name every answer carries."""

    run: LoadedRun
    name: str
    step: int


def _step(path: Path) -> int:
    return int(path.name.split("-", 1)[1]) if CHECKPOINT_NAME.match(path.name) else -1


def best_checkpoint(run_dir: Path) -> Path | None:
    """The best checkpoint named by checkpoints/best.json; the latest good one if there is none.

    best.json is untrusted: its name must look like `step-N`, resolve inside checkpoints/ and
    verify. A best.json that exists but fails any of this (or is being rewritten) gives None:
    the caller keeps what it has rather than fall back to a checkpoint that is not the best.
    """
    root = run_dir / "checkpoints"
    if not (root / "best.json").exists():
        return latest_good_checkpoint(root)
    try:
        best = json.loads((root / "best.json").read_text())["best"][0]["checkpoint"]
        if isinstance(best, str) and CHECKPOINT_NAME.match(best):
            path = (root / best).resolve()
            if path.parent == root.resolve() and path.is_dir():
                verify_checkpoint(path)
                return path
    except (OSError, ValueError, KeyError, IndexError, TypeError, CheckpointError) as err:
        log.warning("watch: %s/best.json not usable now: %s", root, err)
    return None


def load_served(path: Path, weights: str = "ema", checkpoint: Path | None = None) -> Served:
    """A run directory (its best checkpoint) or a safetensors export directory."""
    path = Path(path)
    if (path / "config.yaml").is_file():
        ckpt = checkpoint or best_checkpoint(path) or latest_good_checkpoint(path / "checkpoints")
        if ckpt is None:
            raise CheckpointError(f"{path}: no complete checkpoint under checkpoints/; train first")
        run = load_run(path, weights=weights, checkpoint=ckpt)
        return Served(run, f"{path.name}/{ckpt.name}:{weights}", _step(ckpt))
    try:  # an export written by `difftrain export --format safetensors`
        from difftrain.export.weights import load_exported
    except ImportError:  # pragma: no cover - export is part of the package
        load_exported = None
    if load_exported is None or not path.is_dir():
        raise ConfigError(f"{path}: not a run directory (no config.yaml) nor an export directory")
    run = load_exported(path)
    return Served(run, f"{path.name}:export", int(run.state.get("step", -1)))


class ModelHolder:
    """The current model; `watch()` starts a thread that swaps in newer best checkpoints."""

    def __init__(self, path: Path, weights: str = "ema", device: str = "cpu"):
        self.path, self.weights, self.device = Path(path), weights, device
        self.current = self._prepare(load_served(self.path, weights))
        self.swaps = 0
        self.reload_failures = 0
        self.listeners: list = []  # called with the new Served after each swap
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _prepare(self, served: Served) -> Served:
        run = served.run
        run.to(self.device) if hasattr(run, "to") else run.denoiser.to(self.device)
        return served

    def check_once(self) -> bool:
        """Swap in the run's best checkpoint if it is newer than the one served; True if so."""
        ckpt = best_checkpoint(self.path)
        if ckpt is None or _step(ckpt) <= self.current.step:
            return False
        try:
            new = self._prepare(load_served(self.path, self.weights, ckpt))
        except (ConfigError, CheckpointError, OSError, RuntimeError, ValueError, KeyError) as err:
            self.reload_failures += 1  # keep serving the current model
            log.warning("watch: cannot load %s: %s", ckpt, err)
            return False
        old, self.current = self.current, new  # one assignment: batches in flight keep `old`
        self.swaps += 1
        log.warning("watch: now serving %s (was %s)", new.name, old.name)
        for fn in self.listeners:
            fn(new)
        return True

    def watch(self, interval: float = 2.0) -> None:
        """Poll the run directory every `interval` seconds in a daemon thread."""
        if not (self.path / "config.yaml").is_file():
            raise ConfigError(f"--watch needs a run directory; {self.path} is an export")

        def loop() -> None:
            while not self._stop.wait(interval):
                try:
                    self.check_once()
                except Exception as err:  # never let the watcher die silently
                    self.reload_failures += 1
                    log.warning("watch: %s", err)

        self._thread = threading.Thread(target=loop, name="difftrain-watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
