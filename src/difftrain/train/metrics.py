"""Metric sinks: metrics.jsonl (always) and TensorBoard (optional)."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path


class MetricsLogger:
    """Append one JSON object per log event; mirror scalars to TensorBoard."""

    def __init__(self, run_dir: Path, tensorboard: bool, enabled: bool = True):
        self.enabled = enabled
        self.path = run_dir / "metrics.jsonl"
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
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        if self.tb is not None:
            for k, v in values.items():
                if isinstance(v, (int, float)):
                    self.tb.add_scalar(k, v, step)

    def truncate_after(self, step: int) -> None:
        """On resume, drop rows logged after the checkpoint so the file matches one clean run."""
        if not self.enabled or not self.path.is_file():
            return
        rows = [r for r in self.path.read_text().splitlines() if r.strip()]
        kept = [r for r in rows if json.loads(r)["step"] <= step]
        self.path.write_text("".join(r + "\n" for r in kept))

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
