"""`difftrain train CONFIG --plan`: real steps, step time, peak memory, estimate, largest batch."""

from __future__ import annotations

from typer.testing import CliRunner

from difftrain.cli.main import app
from difftrain.config import load_config
from difftrain.train.plan import plan, read_peak, reset_peak
from tests.conftest import TINY

SETS = ["train.batch_size=8", "train.max_steps=1000", "train.checkpoint_every=100"]


def test_plan_measures_and_suggests_the_largest_batch_under_the_limit(tmp_path):
    run_dir = tmp_path / "run"
    cfg = load_config(TINY, [*SETS, f"train.run_dir={run_dir}"])
    p = plan(cfg, steps=2, memory_limit=2**40, max_batch=32)  # limit far away: the cap stops it
    assert [q["batch_size"] for q in p["probes"]] == [8, 16, 32]
    assert all(q["fits"] and q["step_s"] > 0 and q["peak_bytes"] > 0 for q in p["probes"])
    assert p["suggested_batch_size"] == 32
    assert p["estimated_run_seconds"] >= p["step_seconds"] * 1000
    assert not run_dir.exists()  # writes nothing into the run directory
    # A limit below what the configured batch needs: nothing fits, no doubling, no suggestion.
    q = plan(cfg, steps=2, memory_limit=1, max_batch=32)
    assert q["suggested_batch_size"] is None
    assert [r["batch_size"] for r in q["probes"]] == [8]
    assert q["probes"][0]["stopped"] == "peak memory above the limit"


def test_peak_memory_window_sees_a_new_allocation():
    reset_peak()
    before = read_peak()
    block = bytearray(64 * 2**20)  # touched below, so resident
    block[::4096] = b"x" * len(block[::4096])
    assert read_peak() >= before + 60 * 2**20
    del block


def test_plan_cli_prints_the_plan_and_bad_limit_is_exit_2(tmp_path):
    run_dir = tmp_path / "run"
    base = ["train", str(TINY), "--set", f"train.run_dir={run_dir}"]
    base += [a for s in SETS for a in ("--set", s)]
    out = CliRunner().invoke(app, [*base, "--plan", "--plan-steps", "2", "--plan-max-batch", "16"])
    assert out.exit_code == 0, out.output[-2000:]
    for text in ("step time", "peak memory", "estimated run", "largest batch that fits: 16"):
        assert text in out.output
    assert not run_dir.exists()
    bad = CliRunner().invoke(app, [*base, "--plan", "--plan-memory", "-1"])
    assert bad.exit_code == 2 and "--plan-memory" in bad.output
