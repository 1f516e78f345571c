"""`difftrain train CONFIG --plan`: print the pre-flight plan (nothing is written)."""

from __future__ import annotations

from difftrain.cli.common import console
from difftrain.config import Config, ConfigError


def _gb(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**30:.2f} GB"


def _duration(s: float | None) -> str:
    if s is None:
        return "-"
    h, rem = divmod(int(s), 3600)
    return f"{h}h{rem // 60:02d}m{rem % 60:02d}s"


def print_plan(cfg: Config, steps: int, memory_gb: float | None, max_batch: int | None) -> dict:
    """Measure and print the plan; returns it."""
    from difftrain.train.plan import plan

    if memory_gb is not None and not 0 < memory_gb < 1e6:
        raise ConfigError(f"--plan-memory = {memory_gb}: give a positive number of GB")
    if max_batch is not None and max_batch < 1:
        raise ConfigError(f"--plan-max-batch = {max_batch}: give a positive batch size")
    limit = None if memory_gb is None else int(memory_gb * 2**30)
    p = plan(cfg, steps=steps, memory_limit=limit, max_batch=max_batch)
    console.print(
        f"plan for train.batch_size = {p['batch_size']} ({steps} real steps per batch size)\n"
        f"  step time        {p['step_seconds']:.4f} s\n"
        f"  peak memory      {_gb(p['peak_memory_bytes'])} ({p['peak_memory_is']})\n"
        f"  memory limit     {_gb(p['memory_limit_bytes'])}\n"
        f"  estimated run    {_duration(p['estimated_run_seconds'])} for "
        f"{p['max_steps']} steps (checkpoints and validation included)\n"
        f"  largest batch that fits: {p['suggested_batch_size']} "
        f"(measured by doubling up to {p['search_cap']})",
        highlight=False,
    )
    for q in p["probes"]:
        step = "-" if q["step_s"] is None else f"{q['step_s']:.4f} s/step"
        console.print(
            f"    batch {q['batch_size']:>6}: {step}, peak {_gb(q['peak_bytes'])}"
            + (f" — {q['stopped']}" if q["stopped"] else ""),
            highlight=False,
        )
    console.print(f"wrote {p['wrote']}", highlight=False)
    return p
