"""Metric sinks: metrics.jsonl (always) and TensorBoard (optional)."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from difftrain.pipeline.checkpoint import (
    disk_full_error,
    is_disk_full,
    stop_if_disk_full,
    write_text_atomic,
)


class MetricsLogger:
    """Append one JSON object per log event; mirror scalars to TensorBoard."""

    def __init__(self, run_dir: Path, tensorboard: bool, enabled: bool = True):
        self.enabled = enabled
        self.path = run_dir / "metrics.jsonl"
        self.ckpt_root = run_dir / "checkpoints"
        self.tb = None
        if enabled and tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(run_dir / "tensorboard"))

    def log(self, step: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        row = {"step": step, "time": round(time.time(), 3)}
        row.update(
            {
                k: (v if isinstance(v, (int, str)) or math.isfinite(v) else str(v))
                for k, v in values.items()
            }
        )
        line = memoryview((json.dumps(row) + "\n").encode())
        with open(self.path, "ab", buffering=0) as f:  # unbuffered: close() cannot fail later
            start = f.tell()
            try:
                while line:
                    line = line[f.write(line) :]
            except OSError as err:
                if not is_disk_full(err):
                    raise
                try:  # leave no torn row behind (best effort: the disk is full)
                    f.truncate(start)
                except OSError:
                    pass
                raise disk_full_error(str(self.path), self.ckpt_root, err) from None
        if self.tb is not None:
            for k, v in values.items():
                if isinstance(v, (int, float)):
                    self.tb.add_scalar(k, v, step)

    def truncate_after(self, step: int) -> None:
        """On resume, drop rows logged after the checkpoint so the file matches one clean run."""
        if not self.enabled or not self.path.is_file():
            return
        text = self.path.read_text(errors="replace")
        rows = [r for r in text.splitlines() if r.strip()]
        kept = [r for r in rows if _step(r) is not None and _step(r) <= step]
        if kept == rows and (not text or text.endswith("\n")):
            return  # nothing to drop: leave the file as it is
        # Atomic: a full disk here leaves the old file whole, never a truncated history.
        with stop_if_disk_full(str(self.path), self.ckpt_root):
            write_text_atomic(self.path, "".join(r + "\n" for r in kept))

    def close(self) -> None:
        """Close the TensorBoard writer."""
        if self.tb is not None:
            self.tb.close()


def _step(row: str) -> int | None:
    """The step of one metrics.jsonl row; None for a torn row (a write cut short by a kill or a
    full disk), which resuming drops."""
    try:
        step = json.loads(row)["step"]
    except (json.JSONDecodeError, KeyError, TypeError):
        return None
    return step if type(step) is int else None
