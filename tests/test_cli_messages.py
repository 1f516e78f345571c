"""The CLI prints user text literally: Rich markup in a path, a class name or a message is shown
as written, never interpreted (a stray "[/raw]" once raised MarkupError with exit 1)."""

from __future__ import annotations

import subprocess
import sys

from PIL import Image
from typer.testing import CliRunner

from difftrain.cli.main import app

from .conftest import TINY

runner = CliRunner()


def test_markup_in_a_config_value_is_printed_literally(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        TINY.read_text().replace("source: digits", 'source: folder\n  path: "photos[/raw]"')
    )
    res = runner.invoke(app, ["train", str(cfg), "--dry-run"])
    assert res.exit_code == 2, res.output
    assert "photos[/raw]" in res.output and "MarkupError" not in res.output


def test_markup_in_an_override_and_a_path_as_a_real_process(tmp_path):
    """The installed entry point, stderr as a terminal user sees it."""
    res = subprocess.run(
        [sys.executable, "-m", "difftrain.cli.main", "train", str(tmp_path / "[bold]x[/].yaml")],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 2, res.stderr
    assert "[bold]x[/].yaml" in res.stderr and "does not exist" in res.stderr
    res = subprocess.run(
        [
            sys.executable, "-m", "difftrain.cli.main", "train", str(TINY), "--dry-run",
            "--set", "data.source=folder", "--set", "data.path=[red]photos[/red]/[/raw]",
        ],
        capture_output=True,
        text=True,
    )  # fmt: skip
    assert res.returncode == 2, res.stderr
    assert "[red]photos[/red]/[/raw]" in res.stderr and "Traceback" not in res.stderr


def test_markup_in_class_names_is_printed_literally(tmp_path):
    """`data inspect` tables show folder names from the user's disk as they are."""
    names = ["[bold]cls", "[red]b[on blue]"]  # a folder name cannot hold "/"
    for k, name in enumerate(names):
        (tmp_path / name).mkdir()
        for i in range(3):
            Image.new("RGB", (8, 8), (40 * k, 10 * i, 0)).save(tmp_path / name / f"{i}.png")
    res = runner.invoke(
        app, ["data", "inspect", str(tmp_path), "--set", "data.resolution=8", "--quick"]
    )
    assert res.exit_code == 0, res.output
    for name in names:
        assert name in res.output, res.output
