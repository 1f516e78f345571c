"""train.time_limit: a wall-clock budget becomes a fixed step count; stops are clean; resume is exact."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from difftrain.cli.main import app
from difftrain.config import ConfigError, load_config
from difftrain.config.duration import parse_duration
from difftrain.train import time_budget
from difftrain.train.loop import train
from difftrain.train.optim import lr_at
from difftrain.train.time_budget import MEASURE_STEPS, PRICED_SAFETY, EventCosts, planned_steps

runner = CliRunner()
FAST = {"train.batch_size": 16, "train.checkpoint_every": 100, "train.posthoc_snapshot_every": 100}


def rows(run):
    return [json.loads(r) for r in (run / "metrics.jsonl").read_text().splitlines()]


def final_state(run):
    last = sorted((run / "checkpoints").glob("step-*"))[-1]
    return last, json.loads((last / "state.json").read_text())


def cfg_of(args):
    """tiny_args (a CLI list) → a Config, for in-process runs."""
    sets = [a for i, a in enumerate(args) if i and args[i - 1] == "--set"]
    return load_config(args[0], sets)


def fake_clock(monkeypatch, tick: float = 0.1):
    """A simulated wall clock: each reading is `tick` seconds after the previous one."""
    t = [0.0]

    def now():
        t[0] += tick
        return t[0]

    monkeypatch.setattr(time_budget, "clock", now)


@pytest.mark.parametrize(
    "text,seconds", [("90s", 90), ("10m", 600), ("2h", 7200), ("1h30m", 5400), ("0.5m", 30)]
)
def test_durations_parse(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["10", "10x", "m", "-5m", "0s", "10m extra", "1000h"])
def test_bad_time_limit_is_a_config_error_naming_the_key(bad, tiny_args):
    with pytest.raises(ConfigError, match="train.time_limit"):
        load_config(None, [f"train.time_limit={bad}"])
    res = runner.invoke(app, ["train", *tiny_args(**{"train.time_limit": bad})])
    assert res.exit_code == 2 and "train.time_limit" in res.output


def test_plan_is_bounded_by_max_steps_and_steps_done():
    assert planned_steps(600, 60, 0.5, 10, 10_000) == 10 + int(0.9 * 540 / 0.5)
    assert planned_steps(600, 60, 0.001, 10, 800) == 800  # fast machine: finishes early
    assert planned_steps(600, 700, 0.5, 10, 800) == 10  # budget already spent: stop now


def test_event_counts_include_the_periodic_and_the_final_ones():
    ev = EventCosts(validation=100, grid=10, evaluation=1000, checkpoint_every=40, sample_every=50,
                    eval_every=80)  # fmt: skip
    # Steps 13..100: validations at 40, 80 and the end (100); grids at 50 and 100; evaluations at
    # 80 (a multiple of both 40 and 80) and the end.
    assert ev.forwards(12, 100) == 3 * 100 + 2 * 10 + 2 * 1000
    # Ending on a periodic step counts it once: validations at 40 and 80 (= the end).
    assert ev.forwards(12, 80) == 2 * 100 + 2 * 10 + 1 * 1000
    off = EventCosts(100, 10, 0, 40, 50, 0)  # evaluation off
    assert off.forwards(12, 100) == 3 * 100 + 2 * 10


def test_plan_pays_for_validation_grids_and_evaluation_first():
    """The demo's case: the plan is the longest run whose steps and events fit the budget."""
    ev = EventCosts(validation=9 * 512, grid=50 * 35, evaluation=300 * 12, checkpoint_every=400,
                    sample_every=400, eval_every=400)  # fmt: skip
    limit, elapsed, step_s, done, batch = 600, 30, 1.6, 12, 64
    p = planned_steps(limit, elapsed, step_s, done, 800, ev, batch)
    fwd = step_s / (3 * batch)

    def cost(n: int) -> float:
        return (n - done) * step_s / PRICED_SAFETY + ev.forwards(done, n) * fwd

    assert cost(p) <= limit - elapsed < cost(p + 1)
    # Unpriced, the 10% margin is all that is left for the events: here it is too little.
    plain = planned_steps(limit, elapsed, step_s, done, 800)
    assert cost(plain) > limit - elapsed and done < p < plain
    assert planned_steps(limit, elapsed, 0.001, done, 800, ev, batch) == 800  # fast: max_steps
    assert planned_steps(limit, 700, step_s, done, 800, ev, batch) == done  # spent: stop now


def test_tiny_time_limit_stops_with_final_checkpoint_grid_and_validation(tiny_args, tmp_path):
    """Real clock: a 2 s budget on a run whose max_steps would take minutes."""
    run = tmp_path / "run"
    res = runner.invoke(
        app,
        ["train", *tiny_args(run, **{"train.time_limit": "2s", "train.max_steps": 100_000})],
    )
    assert res.exit_code == 0, res.output
    last, state = final_state(run)
    step = state["step"]
    # Either the plan ended it, or (a loaded machine) the limit came first and stopped it.
    stopped = any(r.get("train/time_limit_stop") == 1 for r in rows(run))
    assert 1 <= step < 100_000 and (stopped or state["run"]["planned_steps"] == step)
    assert last.name == f"step-{step:07d}" and (last / "ema.safetensors").is_file()
    assert (run / "samples" / f"step-{step:07d}.png").is_file()
    at_end = [r for r in rows(run) if r["step"] == step]
    assert any("val/loss" in r for r in at_end)


def test_plan_sets_the_schedule_and_resume_finishes_nothing_more(tiny_args, monkeypatch, tmp_path):
    fake_clock(monkeypatch)  # 0.1 s per clock reading: the plan is deterministic
    run = tmp_path / "run"
    args = tiny_args(run, **{"train.time_limit": "2s", "train.max_steps": 200, **FAST})
    train(cfg_of(args))
    _, state = final_state(run)
    planned = state["run"]["planned_steps"]
    assert MEASURE_STEPS < planned == state["step"] < 200
    cfg = cfg_of(args)
    for r in rows(run):  # the cosine decay ends at the planned step, not at max_steps
        if "train/lr" in r:
            assert r["train/lr"] == pytest.approx(lr_at(r["step"] - 1, cfg.optim, planned))
    # --resume of a run that finished its plan trains nothing more (the plan is kept).
    train(cfg_of(args), resume=True)
    assert final_state(run)[1]["step"] == planned


def test_hard_stop_then_resume_equals_an_uninterrupted_run(tiny_args, monkeypatch, tmp_path):
    """The limit reached before the plan: clean stop; --resume keeps the recorded plan, and the
    whole run equals one trained with max_steps = the plan and no time limit."""
    from difftrain.train.task import DiffusionTask

    fake_clock(monkeypatch)
    monkeypatch.setattr(time_budget, "SAFETY", 1e6)  # plan = max_steps; the clock then stops it
    monkeypatch.setattr(DiffusionTask, "event_forwards", lambda self, val_n: None)  # unpriced
    run, ref = tmp_path / "run", tmp_path / "ref"
    extra = {"train.max_steps": 24, **FAST}
    train(cfg_of(tiny_args(run, **{"train.time_limit": "2s", **extra})))
    last, state = final_state(run)
    stopped = state["step"]
    assert MEASURE_STEPS < stopped < 24 and state["run"]["planned_steps"] == 24
    assert (run / "samples" / f"step-{stopped:07d}.png").is_file()  # final grid, off-schedule
    assert any(r.get("train/time_limit_stop") == 1 and r["step"] == stopped for r in rows(run))
    # Resume with a longer limit: no re-plan, no stop; continues to the recorded 24 steps.
    train(cfg_of(tiny_args(run, **{"train.time_limit": "1h", **extra})), resume=True)
    assert final_state(run)[1]["step"] == 24
    train(cfg_of(tiny_args(ref, **extra)))
    got = {r["step"]: r["train/loss"] for r in rows(run) if "train/loss" in r}
    want = {r["step"]: r["train/loss"] for r in rows(ref) if "train/loss" in r}
    assert got == pytest.approx(want, rel=1e-5, abs=1e-6)


def test_dry_run_names_the_time_limit(tiny_args):
    res = runner.invoke(app, ["train", *tiny_args(**{"train.time_limit": "10m"}), "--dry-run"])
    assert res.exit_code == 0 and "time_limit" in res.output and "10m" in res.output


def test_time_limited_run_evaluates_at_its_final_step(tiny_args, monkeypatch, tmp_path):
    """eval.every that the planned end does not hit still evaluates there (the demo's case)."""
    run = tmp_path / "run"
    extra = {"eval.every": 1000, "eval.num": 20, "eval.steps": 2, "eval.metrics": "[fid,acc]"}
    args = tiny_args(run, **{"train.time_limit": "2s", "train.max_steps": 200, **FAST, **extra})
    res = runner.invoke(app, ["features", "train", *args, "--set", "features.epochs=1"])
    assert res.exit_code == 0, res.output
    fake_clock(monkeypatch)
    train(cfg_of(args))
    step = final_state(run)[1]["step"]
    assert step < 200
    assert any(r["step"] == step and "eval/fid_domain" in r for r in rows(run))


def test_slow_first_steps_do_not_shrink_the_plan(monkeypatch):
    """First calls are slow (allocation, lazy init); the plan uses the steps after them."""
    from difftrain.train import time_budget as tb

    now = [0.0]
    monkeypatch.setattr(tb, "clock", lambda: now[0])
    budget = tb.TimeBudget("100m")
    budget.start()
    ended = []
    for i in range(tb.WARMUP_STEPS + tb.MEASURE_STEPS):
        now[0] += 30.0 if i < tb.WARMUP_STEPS else 1.0
        ended.append(budget.step_done())
    assert ended.index(True) == len(ended) - 1  # the window ends after warm-up + measured steps
    assert budget.step_seconds() == pytest.approx(1.0)  # was 5.8 s with the slow steps averaged in
