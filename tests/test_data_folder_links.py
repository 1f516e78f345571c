"""The folder source follows directory symlinks (each real directory once, so cycles end) and
counts unreadable directories as bad instead of dropping them (issue 13, item 13)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from difftrain.config import load_config
from difftrain.data import load_data
from difftrain.data.folder import FolderSource
from tests.data_fixtures import COLORS, pattern


def cfg(root, *extra):
    base = [f"data.path={root}", "data.resolution=8", "data.max_bad_fraction=0.5"]
    return load_config(None, base + list(extra)).data


def images(d: Path, n: int, color) -> None:
    d.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        pattern((10, 10), color, seed=i).save(d / f"{i}.png")


def test_symlinked_class_directories_are_followed_and_cycles_end(tmp_path):
    root, elsewhere = tmp_path / "data", tmp_path / "elsewhere"
    images(root / "cats", 3, COLORS["red"])
    images(elsewhere / "dogs", 2, COLORS["blue"])
    images(elsewhere / "dogs" / "puppies", 1, COLORS["blue"])
    (root / "dogs").symlink_to(elsewhere / "dogs", target_is_directory=True)
    (elsewhere / "dogs" / "again").symlink_to(root, target_is_directory=True)  # a cycle
    (root / "cats" / "self").symlink_to(".", target_is_directory=True)  # a cycle of one
    (root / "also_cats").symlink_to(root / "cats", target_is_directory=True)  # seen already
    (root / "dogs_parent").symlink_to(elsewhere, target_is_directory=True)  # holds dogs again
    data = load_data(cfg(root))
    assert data.class_names == ["cats", "dogs"]  # dogs_parent adds no file twice
    assert len(data) == 6 and not data.skipped  # each file once: 3 cats, 2 + 1 dogs
    assert sorted(data.labels.tolist()) == [0, 0, 0, 1, 1, 1]
    assert {Path(f).relative_to(root).parts[0] for f in data.files} == {"cats", "dogs"}


def test_broken_directory_symlink_is_not_an_image(tmp_path):
    images(tmp_path / "a", 2, COLORS["red"])
    (tmp_path / "gone").symlink_to(tmp_path / "nowhere", target_is_directory=True)
    assert len(load_data(cfg(tmp_path))) == 2


def _in_child(fn, drop_root: bool) -> dict:
    """fn() in a forked child (as `nobody` when we are root); its JSON result or its error."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.close(r)
        try:
            if drop_root:
                os.setgid(65534)
                os.setuid(65534)  # root reads mode-000 directories; `nobody` does not
            out = fn()
        except BaseException as err:  # noqa: BLE001 - report anything to the parent
            out = {"error": f"{type(err).__name__}: {err}"}
        os.write(w, json.dumps(out).encode())
        os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        out = json.loads(f.read())
    os.waitpid(pid, 0)
    return out


def test_unreadable_directory_is_counted_as_bad():
    """As root the checks run in a child that drops to `nobody` (uid 65534): root can list a
    mode-000 directory, so only another user shows the behaviour. As a normal user they run
    as that user (in a child too)."""
    d = Path(tempfile.mkdtemp())  # under /tmp, so `nobody` can reach it
    as_nobody = os.geteuid() == 0

    def open_folder(*extra):
        src = FolderSource.open(cfg(d, *extra))
        return {"keys": len(src.keys), "bad": src.bad.to_dict()}

    try:
        d.chmod(0o755)
        images(d / "ok", 3, COLORS["red"])
        images(d / "locked", 2, COLORS["blue"])
        (d / "locked").chmod(0)
        out = _in_child(open_folder, as_nobody)
        assert "error" not in out, out["error"]
        assert out["keys"] == 3
        assert out["bad"]["by_reason"] == {"unreadable": 1}
        assert out["bad"]["files"][0]["path"] == str(d / "locked") and out["bad"]["total"] == 4
        # Over data.max_bad_fraction (1 of 4 > 10%) the run stops, naming the limit and why.
        out = _in_child(lambda: len(load_data(cfg(d, "data.max_bad_fraction=0.1"))), as_nobody)
        assert "DataError" in out["error"] and "max_bad_fraction" in out["error"]
        assert "unreadable" in out["error"]
        # Only unreadable directories: a clear error, not a bare "no images".
        (d / "ok").chmod(0)
        out = _in_child(open_folder, as_nobody)
        assert "DataError" in out["error"] and "unreadable" in out["error"]
    finally:
        for p in (d / "locked", d / "ok"):
            p.chmod(0o755)
        shutil.rmtree(d)
