"""`difftrain data inspect`: counts, histograms, captions, duplicates, bad files, steps."""

from __future__ import annotations

import json
import shutil

from typer.testing import CliRunner

from difftrain.cli.main import app
from tests.data_fixtures import make_bad_files, make_class_folder, make_shards

runner = CliRunner()


def test_inspect_folder_json(tmp_path):
    root = make_class_folder(tmp_path / "imgs", per_class=4)
    shutil.copy(root / "red" / "red_0.png", root / "red" / "copy_of_red_0.png")  # a duplicate
    bad = make_bad_files(tmp_path / "bad")
    for p in ("truncated_png", "empty", "bomb"):
        shutil.copy(bad[p], root / "blue" / bad[p].name)
    result = runner.invoke(app, ["data", "inspect", str(root), "--json", "--batch-size", "4"])
    assert result.exit_code == 0, result.output
    r = json.loads(result.output)
    assert r["source"] == "folder" and r["images"] == 13
    assert r["classes"] == {"blue": 4, "green": 4, "red": 5}
    assert r["bad_files"]["by_reason"] == {"empty": 1, "too_large": 1, "truncated": 1}
    assert r["bad_files"]["total"] == 16
    assert r["duplicates"]["groups"] == 1 and r["duplicates"]["extra_copies"] == 1
    assert r["captions"]["captioned"] == 8 and r["captions"]["words"]["max"] == 5
    assert set(r["modes"]) == {"RGB"} and r["distinct_sizes"] > 1
    assert r["val_images"] == 1 and r["steps_per_epoch"] == 12 // 4


def test_inspect_table_shards_and_config(tmp_path):
    make_shards(tmp_path / "shards", n_shards=2, per_shard=5, bad=True)
    result = runner.invoke(app, ["data", "inspect", str(tmp_path / "shards")])
    assert result.exit_code == 0, result.output
    assert "webdataset" in result.output and "bad files by reason" in result.output
    assert "no_image" in result.output
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"data:\n  source: webdataset\n  path: {tmp_path / 'shards'}\n  val_fraction: 0\n"
    )
    r = json.loads(
        runner.invoke(app, ["data", "inspect", str(cfg), "--json", "--batch-size", "3"]).output
    )
    assert (
        r["images"] == 10 and r["classes"] == {"0": 4, "1": 3, "2": 3} and r["steps_per_epoch"] == 3
    )


def test_inspect_bad_input_exits_2(tmp_path):
    result = runner.invoke(app, ["data", "inspect", str(tmp_path / "nope")])
    assert result.exit_code == 2
    result = runner.invoke(
        app, ["data", "inspect", str(tmp_path), "--set", "data.caption_policy=x"]
    )
    assert result.exit_code == 2 and "data.caption_policy" in result.output
