"""The suite runs where users run it: as a non-root user, without unshare or a mountable tmpfs,
and without the Fashion-MNIST package (only `make demo` installs it)."""

from __future__ import annotations

from pathlib import Path

import pytest

from .conftest import REPO
from .test_stability import tmpfs_unshare


def test_disk_full_test_skips_with_a_reason_when_no_tmpfs_can_be_mounted(tmp_path, monkeypatch):
    """A machine whose unshare cannot mount (no root, no user namespaces) skips, saying why: the
    disk-full test's probe, called here with PATH pointing at a failing or a missing unshare."""
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "unshare").write_text(
        "#!/bin/sh\necho 'unshare: operation not permitted' >&2\nexit 1\n"
    )
    (fake / "unshare").chmod(0o755)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    monkeypatch.setenv("PATH", f"{fake}:/usr/bin:/bin")
    with pytest.raises(pytest.skip.Exception, match="cannot mount a tmpfs here") as info:
        tmpfs_unshare(mnt)
    assert "operation not permitted" in str(info.value)
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))  # no unshare at all
    with pytest.raises(pytest.skip.Exception, match=r"needs unshare\(1\)"):
        tmpfs_unshare(mnt)


def test_no_test_reads_data_that_make_test_does_not_install():
    system_data = "/usr/share/" + "datasets"  # split so that this file does not match itself
    users = [p.name for p in Path(REPO / "tests").glob("*.py") if system_data in p.read_text()]
    assert users == [], f"tests reading {system_data}: {users}; make the data in the test"
