"""Pre-flight planner: a few real steps of the one training loop in a scratch directory.

It reports the step time, the peak memory and the estimated time of the configured run, and the
largest batch that fits a memory limit, found by measuring (doubling the batch until the peak
passes the limit, the device runs out of memory, or the data or a cap stops it). Nothing is
written into the run directory: each probe trains in a temporary directory removed after it.
"""

from __future__ import annotations

import ctypes
import gc
import json
import statistics
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from difftrain.config import Config, ConfigError

CPU_PEAK = "peak resident memory of the process (VmHWM)"
GPU_PEAK = "torch.cuda.max_memory_allocated"


@dataclass
class Probe:
    """One measured batch size."""

    batch_size: int
    step_s: float | None = None
    peak_bytes: int | None = None
    fits: bool = False
    stopped: str | None = None  # why this size was not measured or does not fit


def reset_peak() -> None:
    """Start a new peak-memory window (GPU: allocator stats; CPU: Linux clear_refs)."""
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        return
    gc.collect()
    try:  # hand freed heap back to the OS, so the last probe's memory does not count in this one
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass  # not glibc
    try:  # "5" resets the process's peak RSS to the current RSS (Linux ≥ 4.0)
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass  # not Linux: the peak then covers the process's whole life (an upper bound)


def read_peak() -> int:
    """Bytes: the peak since reset_peak()."""
    if torch.cuda.is_available():
        return int(torch.cuda.max_memory_allocated())
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def default_memory_limit() -> int:
    """90% of the GPU's memory, or of the machine's RAM on the CPU."""
    if torch.cuda.is_available():
        return int(torch.cuda.get_device_properties(0).total_memory * 0.9)
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024 * 9 // 10
    raise ConfigError("cannot read the machine's memory; pass --plan-memory GB")


def _probe_config(cfg: Config, run_dir: Path, batch_size: int, steps: int) -> Config:
    """The run's config, trained for `steps` steps at `batch_size` into `run_dir`."""
    data = cfg.model_dump(mode="python")
    data["train"].update(
        run_dir=run_dir, batch_size=batch_size, max_steps=steps, log_every=1,
        checkpoint_every=steps, sample_every=10**9, early_stopping_patience=None,
    )  # fmt: skip
    data["sample"].update(num=1, steps=1)  # the end-of-run grid is not part of a step
    data["eval"]["every"] = 0
    data["logging"].update(progress=False, tensorboard=False)
    return Config.model_validate(data)


def is_oom(err: BaseException) -> bool:
    """An out-of-memory error of the device (or the CPU allocator)."""
    return isinstance(err, (torch.cuda.OutOfMemoryError, MemoryError)) or (
        isinstance(err, RuntimeError) and "out of memory" in str(err).lower()
    )


def probe(cfg: Config, batch_size: int, steps: int) -> tuple[Probe, float]:
    """(measured probe, seconds of the run outside its steps) for one batch size."""
    from difftrain.train.loop import train

    with tempfile.TemporaryDirectory(prefix="difftrain-plan-") as tmp:
        pcfg = _probe_config(cfg, Path(tmp) / "run", batch_size, steps)
        reset_peak()
        try:
            summary = train(pcfg)
        except Exception as err:  # noqa: BLE001 — only running out of memory ends the search
            if not is_oom(err):
                raise
            return Probe(batch_size, stopped=f"out of memory ({type(err).__name__})"), 0.0
        peak = read_peak()
        rows = [json.loads(r) for r in (Path(tmp) / "run" / "metrics.jsonl").open()]
    times = [batch_size / r["train/img_per_s"] for r in rows if r.get("train/img_per_s")]
    step_s = statistics.median(times[1:] or times)  # the first step warms up
    return Probe(batch_size, step_s, peak), max(0.0, summary.seconds - sum(times))


def plan(
    cfg: Config,
    steps: int = 4,
    memory_limit: int | None = None,
    max_batch: int | None = None,
) -> dict:
    """Measure the configured batch, then double it while it fits; the plan as a dict."""
    if steps < 2:
        raise ConfigError("--plan-steps must be at least 2 (the first step warms up)")
    limit = memory_limit or default_memory_limit()
    cap = max_batch or 16 * cfg.train.batch_size
    tc = cfg.train
    first, overhead = probe(cfg, tc.batch_size, steps)
    first.fits = first.peak_bytes is not None and first.peak_bytes <= limit
    if first.peak_bytes is not None and not first.fits:
        first.stopped = "peak memory above the limit"
    probes = [first]
    b = tc.batch_size * 2
    while probes[-1].fits and b <= cap:
        try:
            p, _ = probe(cfg, b, steps)
        except ConfigError as err:  # e.g. the batch exceeds the data
            probes.append(Probe(b, stopped=str(err).splitlines()[0]))
            break
        p.fits = p.peak_bytes is not None and p.peak_bytes <= limit
        if p.peak_bytes is not None and not p.fits:
            p.stopped = "peak memory above the limit"
        probes.append(p)
        b *= 2
    fitting = [p.batch_size for p in probes if p.fits]
    checkpoints = tc.max_steps // tc.checkpoint_every + 1
    est = None if first.step_s is None else first.step_s * tc.max_steps + overhead / 2 * checkpoints
    return {
        "batch_size": tc.batch_size,
        "step_seconds": first.step_s,
        "peak_memory_bytes": first.peak_bytes,
        "peak_memory_is": GPU_PEAK if torch.cuda.is_available() else CPU_PEAK,
        "memory_limit_bytes": limit,
        "max_steps": tc.max_steps,
        "estimated_run_seconds": est,
        "suggested_batch_size": max(fitting) if fitting else None,
        "search_cap": cap,
        "probes": [asdict(p) for p in probes],
        "wrote": "nothing (each probe trained in a temporary directory, since removed)",
    }
