"""Sequence demo on the weekly Mauna Loa CO2 series shipped inside statsmodels (with gaps).

python scripts/sequence_demo.py prepare data/co2.csv      # 2284 weeks, 59 missing values
difftrain train configs/co2-seq.yaml
python scripts/sequence_demo.py evaluate runs/co2-seq --plot runs/co2-seq/real_vs_generated.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def prepare(out: Path) -> None:
    """Write the series as CSV (date, co2); missing weeks stay empty cells."""
    from statsmodels.datasets import co2

    df = co2.load_pandas().data
    out.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(out, index_label="date", na_rep="", columns=["co2"])
    print(f"wrote {len(df)} rows ({int(df['co2'].isna().sum())} missing) to {out}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("out", type=Path)
    e = sub.add_parser("evaluate")
    e.add_argument("run_dir", type=Path)
    e.add_argument("--num", type=int, default=200)
    e.add_argument("--steps", type=int, default=None)
    e.add_argument("--plot", type=Path, default=None)
    a = ap.parse_args()
    if a.cmd == "prepare":
        prepare(a.out)
        return
    import numpy as np

    from difftrain.config import load_config
    from difftrain.eval.sequence_eval import evaluate_sequence_run, real_windows
    from difftrain.eval.sequence_metrics import sequence_metrics

    out = {"generated": evaluate_sequence_run(a.run_dir, a.num, a.steps, plot=a.plot)}
    # References on the same metrics: real vs real (two random halves; the floor) and white
    # noise with each time step's real mean and std (a baseline that ignores time structure).
    real = real_windows(load_config(a.run_dir / "config.yaml"))
    rng = np.random.default_rng(0)
    perm = rng.permutation(len(real))
    half = len(real) // 2
    out["real_half_vs_half"] = sequence_metrics(real[perm[:half]], real[perm[half:]])
    mu, sd = np.nanmean(real, 0), np.nanstd(real, 0)
    noise = mu + sd * rng.standard_normal((a.num, *real.shape[1:]))
    out["per_step_gaussian"] = sequence_metrics(real, noise)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
