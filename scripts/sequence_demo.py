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
    from difftrain.eval.sequence_eval import evaluate_sequence_run

    print(json.dumps(evaluate_sequence_run(a.run_dir, a.num, a.steps, plot=a.plot), indent=1))


if __name__ == "__main__":
    main()
