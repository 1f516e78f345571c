"""train.time_limit: turn a wall-clock budget into a step count, once, so the run stays well-formed.

The rule (README "Time budgets"): the loop runs WARMUP_STEPS untimed steps (first calls are
slow: allocation, lazy initialisation), then MEASURE_STEPS steps, measures their mean wall time r,
and fixes

    planned = min(max_steps, steps_done + floor(SAFETY · (limit − elapsed) / r))

where `elapsed` counts from the start of `train` (data loading, model build and the step-0
checkpoint included). The LR schedule, post-hoc EMA snapshots and the progress bar then use
`planned` as the run's length, and the checkpoint records it, so `--resume` continues the same
schedule exactly. The (1 − SAFETY) share is left for periodic validation, grids and checkpoints
and the final ones. If the run still reaches the limit before `planned` (the machine got
slower), it stops after the current step with a final checkpoint, validation and grid; the LR
has then not finished its decay, and the stop is logged as `train/time_limit_stop`.

The first MEASURE_STEPS steps run with the schedule of `max_steps`: with warm-up of at least
that many steps (the usual case) their LR does not depend on the run's length at all.
"""

from __future__ import annotations

import math
import time

from difftrain.config.duration import parse_duration

WARMUP_STEPS = 2  # first steps of an invocation, not timed: first-call and allocator overheads
MEASURE_STEPS = 10  # steps (after the warm-up ones) whose mean wall time fixes the plan
SAFETY = 0.9  # share of the remaining budget planned for steps; the rest for grids/validation/saves
clock = time.monotonic  # wall clock (a module attribute so tests can run on a simulated one)


def planned_steps(
    limit_s: float, elapsed_s: float, step_s: float, steps_done: int, max_steps: int
) -> int:
    """The run's length under the budget: never above max_steps, never below steps_done."""
    remaining = max(0.0, limit_s - elapsed_s) * SAFETY
    extra = math.floor(remaining / max(step_s, 1e-9))
    return max(steps_done, min(max_steps, steps_done + extra))


class TimeBudget:
    """Wall-clock state of one `train` invocation under train.time_limit (None: no limit)."""

    def __init__(self, time_limit: str | None):
        self.limit_s = parse_duration(time_limit) if time_limit else None
        self.t0 = clock()
        self.loop_start: float | None = None
        self.measure_start: float | None = None
        self.loop_steps = 0

    def elapsed(self) -> float:
        return clock() - self.t0

    def start(self) -> None:
        """Call just before the first step of this invocation."""
        self.loop_start, self.measure_start, self.loop_steps = clock(), None, 0

    def step_done(self) -> bool:
        """Count a step; True exactly when the measurement window has just ended."""
        self.loop_steps += 1
        if self.loop_steps == WARMUP_STEPS:
            self.measure_start = clock()
        return self.limit_s is not None and self.loop_steps == WARMUP_STEPS + MEASURE_STEPS

    def step_seconds(self) -> float:
        """Mean wall time of the steps after the warm-up ones (grids and saves included)."""
        if self.measure_start is not None and self.loop_steps > WARMUP_STEPS:
            return (clock() - self.measure_start) / (self.loop_steps - WARMUP_STEPS)
        return (clock() - (self.loop_start or self.t0)) / max(1, self.loop_steps)

    def expired(self) -> bool:
        """True once the wall-clock limit has passed."""
        return self.limit_s is not None and self.elapsed() >= self.limit_s


def agreed_plan(acc, budget: TimeBudget, steps_done: int, max_steps: int) -> int:
    """planned_steps from the processes' mean timings, so every process plans the same length."""
    import torch

    t = torch.tensor([budget.elapsed(), budget.step_seconds()], dtype=torch.float64)
    elapsed, step_s = acc.reduce(t.to(acc.device), reduction="mean").tolist()
    return planned_steps(budget.limit_s, elapsed, step_s, steps_done, max_steps)


def agreed(acc, budget: TimeBudget) -> bool:
    """True when any process has passed the limit (all processes stop at the same step)."""
    if acc.num_processes == 1:
        return budget.expired()
    import torch

    flag = torch.tensor(float(budget.expired()), device=acc.device)
    return bool(acc.reduce(flag, reduction="sum").item())
