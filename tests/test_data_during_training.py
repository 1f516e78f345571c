"""Files found bad while training reach bad_files.json and metrics.jsonl, data.max_bad_fraction
holds during training, and the loop logs the share of time spent waiting for data (issue 13,
items 12 and 24)."""

from __future__ import annotations

import json
import time

import pytest
from typer.testing import CliRunner

from difftrain.cli.main import app
from difftrain.config import load_config
from difftrain.data import DataError, open_loader
from difftrain.data.decode import probe_image
from tests.conftest import TINY
from tests.data_fixtures import COLORS, encode, pattern

runner = CliRunner()
N, N_BAD = 20, 5


def truncated_png(k: int) -> bytes:
    """A PNG cut after its header: `verify: header` passes it, decoding fails."""
    data = encode(pattern((16, 16), COLORS["red"], seed=100 + k), "PNG")
    return data[: len(data) // 2]


def make_folder(root):
    """N PNGs, N_BAD of them truncated after the header."""
    root.mkdir(parents=True)
    bad = set()
    for k in range(N):
        f = root / f"img{k:02d}.png"
        if k % 4 == 1:
            f.write_bytes(truncated_png(k))
            bad.add(str(f))
        else:
            f.write_bytes(encode(pattern((16, 16), COLORS["blue"], seed=k), "PNG"))
    assert len(bad) == N_BAD
    probe_image(root / "img01.png", 10**6)  # the header really is intact
    return bad


def train_args(root, run, **extra):
    sets = {
        "data.source": "folder",
        "data.path": root,
        "data.resolution": 8,
        "data.channels": 1,
        "data.loader": "stream",
        "data.workers": 1,
        "data.val_fraction": 0,
        "train.run_dir": run,
        "train.batch_size": 5,
        "train.max_steps": 8,  # two epochs of the 20 files
        "train.log_every": 1,
        "train.checkpoint_every": 4,
        "train.sample_every": 1000,
        "logging.tensorboard": "false",
        "logging.progress": "false",
        "sample.num": 4,
        "sample.steps": 2,
    }
    sets.update(extra)
    out = ["train", str(TINY)]
    for k, v in sets.items():
        out += ["--set", f"{k}={v}"]
    return out


def rows(run):
    return [json.loads(r) for r in (run / "metrics.jsonl").read_text().splitlines()]


def test_files_found_bad_while_training_reach_report_and_metrics(tmp_path):
    bad = make_folder(tmp_path / "imgs")
    run = tmp_path / "run"
    res = runner.invoke(app, train_args(tmp_path / "imgs", run, **{"data.max_bad_fraction": 0.5}))
    assert res.exit_code == 0, res.output + repr(res.exception)
    report = json.loads((run / "bad_files.json").read_text())
    assert {f["path"] for f in report["files"]} == bad  # none found at start: all while training
    assert report["by_reason"] == {"truncated": N_BAD} and report["total"] == N
    logged = [r for r in rows(run) if "train/loss" in r]
    assert len(logged) == 8 and logged[-1]["data/bad_files"] == N_BAD
    assert logged[0]["data/bad_files"] <= N_BAD  # grows as the files are met
    for r in logged:
        assert 0.0 <= r["train/data_wait"] <= 1.0


def test_max_bad_fraction_holds_during_training(tmp_path):
    bad = make_folder(tmp_path / "imgs")
    run = tmp_path / "run"
    res = runner.invoke(app, train_args(tmp_path / "imgs", run))  # default 5%: 1 of 20
    assert res.exit_code == 2, res.output + repr(res.exception)
    assert "data.max_bad_fraction = 0.05" in res.output and "while training" in res.output
    report = json.loads((run / "bad_files.json").read_text())
    assert 2 <= report["bad"] <= N_BAD and {f["path"] for f in report["files"]} <= bad
    assert (run / "checkpoints" / "step-0000000" / "manifest.json").is_file()


def test_streamed_shards_truncated_after_the_header(tmp_path):
    """The same through WebDataset shards and the Loader itself (the issue's reproduction)."""
    import webdataset as wds

    (tmp_path / "s").mkdir()
    with wds.TarWriter(str(tmp_path / "s" / "shard-0000.tar")) as tw:
        for k in range(N):
            img = encode(pattern((16, 16), COLORS["green"], seed=k), "PNG")
            tw.write({"__key__": f"k{k:02d}", "png": truncated_png(k) if k % 4 == 1 else img})
    base = [
        "data.source=webdataset",
        f"data.path={tmp_path / 's'}",
        "data.resolution=8",
        "data.loader=stream",
        "data.val_fraction=0",
    ]
    cfg = load_config(None, [*base, "data.max_bad_fraction=0.5"]).data
    loader, _ = open_loader(cfg, seed=0, batch_size=5, workers=1)
    assert len(loader.bad) == 0  # verify: header cannot see it
    for _ in range(8):
        loader.next()
    loader.close()
    found = sorted(loader.bad.by_reason["truncated"])
    assert found == [f"shard-0000.tar/k{k:02d}" for k in (1, 5, 9, 13, 17)] and len(loader.bad) == 5
    loader, _ = open_loader(load_config(None, base).data, seed=0, batch_size=5, workers=0)
    with pytest.raises(DataError, match="max_bad_fraction"):
        for _ in range(8):
            loader.next()


def test_a_batch_with_no_decodable_sample_is_counted_and_skipped(tmp_path):
    import webdataset as wds

    (tmp_path / "s").mkdir()
    with wds.TarWriter(str(tmp_path / "s" / "shard-0000.tar")) as tw:
        for k in range(6):
            img = encode(pattern((16, 16), COLORS["green"], seed=k), "PNG")
            tw.write({"__key__": f"k{k}", "png": truncated_png(k) if k < 2 else img})
    sets = [
        "data.source=webdataset",
        f"data.path={tmp_path / 's'}",
        "data.resolution=8",
        "data.loader=stream",
        "data.val_fraction=0",
        "data.shuffle_buffer=1",  # file order: the first batch is both bad samples
        "data.max_bad_fraction=0.5",
    ]
    loader, _ = open_loader(load_config(None, sets).data, seed=0, batch_size=2, workers=1)
    assert loader.next().keys == ["k2", "k3"]
    assert sorted(loader.bad.by_reason["truncated"]) == ["shard-0000.tar/k0", "shard-0000.tar/k1"]
    loader.close()


class SlowBatches:
    """A stand-in for a loader that takes `delay` seconds per batch (a slow disk)."""

    def __init__(self, delay):
        from difftrain.data.decode import BadFiles

        self.delay, self.bad = delay, BadFiles(total=10)

    def next(self):
        time.sleep(self.delay)
        return None


def test_data_wait_is_the_share_of_step_time_spent_in_next(tmp_path):
    from difftrain.train.data_watch import WatchedBatches

    data = WatchedBatches(SlowBatches(0.03), tmp_path)
    t = time.perf_counter()
    for _ in range(5):
        data.next()
        time.sleep(0.03)  # the step itself
    share = data.pop_wait() / (time.perf_counter() - t)
    assert 0.25 < share < 0.75 and data.pop_wait() == 0.0
    data.inner.bad.add("x.png", "truncated")
    data.next()  # a new bad file is written at once, not at the end of the run
    assert json.loads((tmp_path / "bad_files.json").read_text())["bad"] == 1
