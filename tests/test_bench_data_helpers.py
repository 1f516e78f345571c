"""The bench scripts' measurements: training img/s over all timed steps, and the loader headroom
as the time-weighted share of step time spent waiting for data (issue 13, item 24)."""

from __future__ import annotations

import importlib.util

import pytest

from tests.conftest import REPO


def bench(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_eval_speed_counts_every_timed_step():
    # 20 timed steps of batch 8 after a warm-up of 5; one slow step (a snapshot write) inside.
    rows = [{"step": 5, "time": 100.0, "train/loss": 1.0, "train/img_per_s": 10.0}]
    t = 100.0
    for step in range(6, 26):
        t += 5.0 if step == 12 else 1.0
        rows.append({"step": step, "time": t, "train/loss": 1.0, "train/img_per_s": 8.0})
    rows.append({"step": 25, "time": t})  # a validation row without train/loss: ignored
    rate = bench("eval_speed").img_per_s_between(rows, 5, 25, 8)
    assert rate == pytest.approx(20 * 8 / 24.0)  # all 20 steps, the slow one once


def test_data_throughput_headroom_is_time_weighted():
    rows = [{"step": 2, "time": 10.0, "train/data_wait": 0.9}]  # warm-up: not counted
    for step, dt, wait in [(3, 1.0, 0.0), (4, 3.0, 0.5), (5, 1.0, 0.0)]:
        rows.append({"step": step, "time": rows[-1]["time"] + dt, "train/data_wait": wait})
    got = bench("data_throughput").headroom(rows, 2, 5, batch=4)
    assert got["data_wait"] == pytest.approx(1.5 / 5.0)
    assert got["img_per_s"] == pytest.approx(3 * 4 / 5.0)
