"""The suite runs where users run it: as a non-root user, without unshare or a mountable tmpfs,
and without the Fashion-MNIST package (only `make demo` installs it)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from .conftest import REPO

DISK_FULL = "tests/test_stability.py::test_disk_full_keeps_previous_checkpoint_and_stops_clearly"


def run_pytest(test: str, path: str) -> str:
    """Run one test in a fresh pytest with PATH set to `path`; its report lines."""
    res = subprocess.run(
        [sys.executable, "-m", "pytest", test, "-q", "-rs", "-p", "no:cacheprovider"],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, "PATH": path},
        timeout=300,
    )
    return res.stdout + res.stderr


def test_disk_full_test_skips_with_a_reason_when_no_tmpfs_can_be_mounted(tmp_path):
    """A machine whose unshare cannot mount (no root, no user namespaces) skips, saying why."""
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "unshare").write_text(
        "#!/bin/sh\necho 'unshare: operation not permitted' >&2\nexit 1\n"
    )
    (fake / "unshare").chmod(0o755)
    out = run_pytest(DISK_FULL, f"{fake}:/usr/bin:/bin")
    assert "1 skipped" in out, out
    assert "cannot mount a tmpfs here" in out and "operation not permitted" in out, out
    empty = tmp_path / "empty"
    empty.mkdir()
    out = run_pytest(DISK_FULL, str(empty))  # no unshare at all
    assert "1 skipped" in out and "needs unshare(1)" in out, out


def test_no_test_reads_data_that_make_test_does_not_install():
    system_data = "/usr/share/" + "datasets"  # split so that this file does not match itself
    users = [p.name for p in Path(REPO / "tests").glob("*.py") if system_data in p.read_text()]
    assert users == [], f"tests reading {system_data}: {users}; make the data in the test"
