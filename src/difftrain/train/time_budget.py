"""train.time_limit: turn a wall-clock budget into a step count, once, so the run stays well-formed.

The rule (README "Time budgets"): the loop runs WARMUP_STEPS untimed steps (first calls are
slow: allocation, lazy initialisation), then MEASURE_STEPS steps, measures their mean wall time r,
and fixes

    planned = min(max_steps, steps_done + floor(SAFETY · (limit − elapsed) / r))

where `elapsed` counts from the start of `train` (data loading, model build and the step-0
checkpoint included). The LR schedule, post-hoc EMA snapshots and the progress bar then use
`planned` as the run's length, and the checkpoint records it, so `--resume` continues the same
schedule exactly. The (1 − SAFETY) share is left for validation, grids and checkpoints. When the
task can say what its validations and sample grids cost in denoiser forwards (`EventCosts`), that
cost is taken off the budget first: each forward is priced at a third of a training step's time
per image (a step is one forward and a backward of about twice its cost), and the plan is the
largest step count whose steps, periodic events and final validation/grid/evaluation fit, with
(1 − PRICED_SAFETY) of the step time left for checkpoints. If the run still reaches the limit
before `planned` (the machine got slower), it stops after the current step with a final
checkpoint, validation and grid; the LR has then not finished its decay, and the stop is logged
as `train/time_limit_stop`.

The first MEASURE_STEPS steps run with the schedule of `max_steps`: with warm-up of at least
that many steps (the usual case) their LR does not depend on the run's length at all.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from difftrain.config.duration import parse_duration

WARMUP_STEPS = 2  # first steps of an invocation, not timed: first-call and allocator overheads
MEASURE_STEPS = 10  # steps (after the warm-up ones) whose mean wall time fixes the plan
SAFETY = 0.9  # share of the remaining budget planned for steps; the rest for grids/validation/saves
# The same with validation, grids and evaluation priced. Kept at 0.9, the value `make demo` was
# measured with (README): it used 319 s of a 390 s limit, so a smaller margin would fit.
PRICED_SAFETY = 0.9
clock = time.monotonic  # wall clock (a module attribute so tests can run on a simulated one)


@dataclass(frozen=True)
class EventCosts:
    """Denoiser forwards (images × calls) of each event that interrupts training.

    `validation` runs at every `checkpoint_every` step and at the end; `grid` at every
    `sample_every` step and at the end; `evaluation` (0 = off) at the end and at steps that are
    multiples of both `checkpoint_every` and `eval_every`.
    """

    validation: int
    grid: int
    evaluation: int
    checkpoint_every: int
    sample_every: int
    eval_every: int

    def forwards(self, steps_done: int, planned: int) -> int:
        """Forwards of the events of steps steps_done+1 .. planned (the final ones included)."""

        def count(every: int) -> int:  # periodic events before `planned`, plus the final one
            return (planned - 1) // every - steps_done // every + 1 if every > 0 else 0

        both = math.lcm(self.checkpoint_every, self.eval_every) if self.eval_every else 0
        return (
            count(self.checkpoint_every) * self.validation
            + count(self.sample_every) * self.grid
            + (count(both) * self.evaluation if self.evaluation else 0)
        )


def event_costs(cfg, task, val_n: int, evaluates: bool) -> EventCosts | None:
    """The run's EventCosts from its config and task; None when the task cannot price them."""
    from difftrain.samplers import nfe

    per_event = task.event_forwards(val_n)
    if per_event is None:
        return None
    e, tc = cfg.eval, cfg.train
    return EventCosts(
        validation=per_event[0],
        grid=per_event[1],
        evaluation=e.num * nfe(e.sampler, e.steps) * (2 if cfg.sample.guidance != 1.0 else 1)
        if evaluates
        else 0,
        checkpoint_every=tc.checkpoint_every,
        sample_every=tc.sample_every,
        eval_every=e.every if evaluates else 0,
    )


def planned_steps(
    limit_s: float,
    elapsed_s: float,
    step_s: float,
    steps_done: int,
    max_steps: int,
    events: EventCosts | None = None,
    images_per_step: int = 1,
) -> int:
    """The run's length under the budget: never above max_steps, never below steps_done.

    Without `events`: steps_done + floor(SAFETY · (limit − elapsed) / step_s). With them, the
    largest length whose steps (at step_s / PRICED_SAFETY each) and events (forwards at
    step_s / (3 · images_per_step) each) fit in limit − elapsed.
    """
    remaining = max(0.0, limit_s - elapsed_s)
    step_s = max(step_s, 1e-9)
    if events is None:
        extra = math.floor(remaining * SAFETY / step_s)
        return max(steps_done, min(max_steps, steps_done + extra))
    extra = math.floor(remaining * PRICED_SAFETY / step_s)
    hi = max(steps_done, min(max_steps, steps_done + extra))
    forward_s = step_s / (3 * max(1, images_per_step))

    def fits(planned: int) -> bool:
        cost = (planned - steps_done) * step_s / PRICED_SAFETY
        return cost + events.forwards(steps_done, planned) * forward_s <= remaining

    lo = steps_done  # largest length that fits: the cost grows with the length
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid - 1)
    return lo


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


def agreed_plan(
    acc,
    budget: TimeBudget,
    steps_done: int,
    max_steps: int,
    events: EventCosts | None = None,
    images_per_step: int = 1,
) -> int:
    """planned_steps from the processes' mean timings, so every process plans the same length."""
    import torch

    t = torch.tensor([budget.elapsed(), budget.step_seconds()], dtype=torch.float64)
    elapsed, step_s = acc.reduce(t.to(acc.device), reduction="mean").tolist()
    return planned_steps(
        budget.limit_s, elapsed, step_s, steps_done, max_steps, events, images_per_step
    )


def agreed(acc, budget: TimeBudget) -> bool:
    """True when any process has passed the limit (all processes stop at the same step)."""
    if acc.num_processes == 1:
        return budget.expired()
    import torch

    flag = torch.tensor(float(budget.expired()), device=acc.device)
    return bool(acc.reduce(flag, reduction="sum").item())
