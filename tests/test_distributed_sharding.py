"""Data sharding across ranks: in one epoch no sample is trained on twice, and the ranks together
train on exactly what one process would (in-memory data, image folders, tar shards)."""

from __future__ import annotations

import pytest

from difftrain.config import load_config
from difftrain.data import open_loader
from difftrain.train.batches import MemoryBatches
from difftrain.train.setup import prepare_data
from tests.conftest import TINY
from tests.data_fixtures import make_class_folder, make_shards

WORLD = 2


def keys_per_rank(make, steps: int, world: int = WORLD) -> list[list[str]]:
    """Keys each rank trains on over `steps` steps (make(rank, world) → batches)."""
    out = []
    for rank in range(world):
        batches = make(rank, world)
        out.append([k for _ in range(steps) for k in batches.next().keys])
        batches.close()
    return out


def assert_sharded(make, steps: int, epoch_size: int | None = None) -> None:
    ranks = keys_per_rank(make, steps)
    everyone = [k for keys in ranks for k in keys]
    assert len(everyone) == len(set(everyone))  # no sample twice, within or across ranks
    assert all(len(k) == len(ranks[0]) for k in ranks)  # every rank trains on as many rows
    if epoch_size is not None:
        assert len(everyone) == epoch_size  # the ranks cover the whole epoch
    (single,) = keys_per_rank(make, steps, world=1)
    assert sorted(single) == sorted(everyone)  # the same samples as one process


def test_in_memory_data_is_sharded_by_rows_of_the_global_batch():
    cfg = load_config(TINY, ["train.batch_size=16", "train.grad_accum=2"])
    data, _val = prepare_data(cfg, None)
    steps = len(data) // 16  # one epoch (whole batches)

    def make(rank, world):
        return MemoryBatches(data, cfg, rank, world, {"epoch": 0, "cursor": 0})

    assert_sharded(make, steps)


def test_image_folder_stream_is_sharded(tmp_path):
    root = make_class_folder(tmp_path / "folder", per_class=8)  # 24 images
    cfg = load_config(
        None,
        [f"data.path={root}", "data.resolution=8", "data.loader=stream", "data.val_fraction=0"],
    ).data

    def make(rank, world):
        loader, _ = open_loader(cfg, seed=0, batch_size=4, rank=rank, world=world, workers=0)
        return loader

    assert_sharded(make, steps=6, epoch_size=24)


def test_tar_shards_are_sharded(tmp_path):
    make_shards(tmp_path / "shards", n_shards=4, per_shard=6)  # 24 records
    cfg = load_config(
        None,
        [
            f"data.path={tmp_path / 'shards'}",
            "data.source=webdataset",
            "data.resolution=8",
            "data.loader=stream",
            "data.val_fraction=0",
        ],
    ).data

    def make(rank, world):
        loader, _ = open_loader(cfg, seed=0, batch_size=4, rank=rank, world=world, workers=0)
        return loader

    assert_sharded(make, steps=6, epoch_size=24)


def test_fewer_shards_than_processes_is_a_clear_error(tmp_path):
    from difftrain.data import DataError

    make_shards(tmp_path / "shards", n_shards=1, per_shard=4)
    cfg = load_config(
        None,
        [f"data.path={tmp_path / 'shards'}", "data.source=webdataset", "data.loader=stream"],
    ).data
    with pytest.raises(DataError, match="1 shards for 2 processes"):
        open_loader(cfg, seed=0, batch_size=4, rank=0, world=2, workers=0)
