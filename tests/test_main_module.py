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


def test_the_cli_starts_without_torch_or_diffusers():
    """Help and bad-input messages come in about a second: the heavy libraries load only when a
    command needs them (an import of diffusers alone takes ~10 s on a 2-core CPU)."""
    code = (
        "import sys, difftrain.cli.main, difftrain.errors\n"
        "print(sorted(m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_error_types_are_the_same_objects_everywhere():
    from difftrain.data import DataError
    from difftrain.errors import CheckpointError as C
    from difftrain.errors import DataError as D
    from difftrain.errors import TrainingDiverged as T
    from difftrain.pipeline.checkpoint import CheckpointError
    from difftrain.train.loop import TrainingDiverged

    assert (DataError, CheckpointError, TrainingDiverged) == (D, C, T)
