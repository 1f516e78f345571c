"""`python -m difftrain` is the entry point that `torchrun -m` and `accelerate launch -m` use."""

import subprocess
import sys


def test_python_dash_m_runs_the_cli():
    out = subprocess.run(
        [sys.executable, "-m", "difftrain", "train", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "--resume" in out.stdout


def test_python_dash_m_reports_bad_input_with_exit_2(tmp_path):
    missing = tmp_path / "no-such.yaml"
    out = subprocess.run(
        [sys.executable, "-m", "difftrain", "train", str(missing)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2, (out.stdout, out.stderr)
