"""make deletes only what make created: the demos' run directories carry a marker file written by
scripts/demo_dir.sh, and `fresh`/`remove` touch nothing else (a user's run under the same name,
a symlink to one, or any other directory is refused or kept, and named)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "demo_dir.sh"


def demo_dir(*args) -> subprocess.CompletedProcess:
    return subprocess.run(["sh", str(SCRIPT), *map(str, args)], capture_output=True, text=True)


def users_run(path: Path) -> Path:
    (path / "checkpoints").mkdir(parents=True)
    (path / "checkpoints" / "weights.safetensors").write_bytes(b"mine")
    return path


def test_fresh_creates_marks_and_empties_only_its_own(tmp_path):
    a, b = tmp_path / "runs/demo", tmp_path / "runs/emoji"
    assert demo_dir("fresh", a, b).returncode == 0
    assert (a / ".made-by-make").is_file() and (b / ".made-by-make").is_file()
    (a / "old.png").write_bytes(b"x")
    assert demo_dir("fresh", a).returncode == 0
    assert sorted(p.name for p in a.iterdir()) == [".made-by-make"]


def test_fresh_refuses_a_users_run_and_deletes_nothing(tmp_path):
    mine = users_run(tmp_path / "runs/emoji-t2i")
    ours = tmp_path / "runs/emoji-vae"
    assert demo_dir("fresh", ours).returncode == 0
    (ours / "keep.txt").write_text("demo output")
    res = demo_dir("fresh", ours, mine)
    assert res.returncode == 2
    assert f"{mine} exists and was not made by make" in res.stderr
    assert "nothing was deleted" in res.stderr
    assert (mine / "checkpoints/weights.safetensors").read_bytes() == b"mine"
    assert (ours / "keep.txt").is_file()  # checked before any deletion


def test_fresh_refuses_a_symlink_even_to_a_marked_directory(tmp_path):
    target = tmp_path / "elsewhere"
    assert demo_dir("fresh", target).returncode == 0
    (target / "data.bin").write_bytes(b"1")
    link = tmp_path / "runs-link"
    link.symlink_to(target)
    assert demo_dir("fresh", link).returncode == 2
    assert (target / "data.bin").is_file()


def test_remove_keeps_and_names_what_it_did_not_make(tmp_path):
    ours, mine = tmp_path / "demo", users_run(tmp_path / "mine")
    assert demo_dir("fresh", ours).returncode == 0
    res = demo_dir("remove", ours, mine, tmp_path / "absent")
    assert res.returncode == 0
    assert not ours.exists()
    assert f"kept {mine} (not made by make)" in res.stdout
    assert (mine / "checkpoints/weights.safetensors").read_bytes() == b"mine"


def test_bad_usage_exits_2():
    assert demo_dir().returncode == 2
    assert demo_dir("wipe", "/tmp").returncode == 2


def test_makefile_deletes_runs_only_through_the_script():
    text = (ROOT / "Makefile").read_text()
    removals = [ln.strip() for ln in text.splitlines() if re.search(r"\brm\s+-\w*r", ln)]
    assert removals, "clean removes the venv and build outputs"
    assert not [ln for ln in removals if "runs" in ln]
    for target in ("demo", "demo-t2i"):
        recipe = text.split(f"\n{target}:")[1].split("\n\n")[0]
        assert "scripts/demo_dir.sh fresh" in recipe
    assert "scripts/demo_dir.sh remove runs/demo runs/emoji-vae runs/emoji-t2i" in text
