"""bench/sample_speed.py runs end to end at a tiny size and reports each setting (issue 14)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_sample_speed_bench_smoke(tmp_path):
    out = tmp_path / "rows.json"
    cmd = [sys.executable, str(REPO / "bench/sample_speed.py"), "--config",
           str(REPO / "configs/tiny.yaml"), "--num", "4", "--batches", "4,2", "--threads", "1",
           "--samplers", "euler:2,euler:2:1", "--no-compile", "--out", str(out)]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    rows = {r["setting"]: r for r in json.loads(out.read_text())}
    assert {"no_grad batch 2", "no_grad batch 4", "inference_mode batch 4",
            "channels_last batch 4", "1 threads batch 4", "euler 2 steps batch 4",
            "euler 2 steps guidance 1 batch 4"} <= set(rows)  # fmt: skip
    assert all(r["img_per_s"] > 0 for r in rows.values())
    # inference_mode changes no arithmetic: the same images bit for bit.
    assert rows["inference_mode batch 4"]["max_abs_diff_vs_default"] == 0.0
    assert rows["channels_last batch 4"]["max_abs_diff_vs_default"] < 1e-4
