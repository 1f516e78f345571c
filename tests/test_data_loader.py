"""The decode-on-demand loader: order, exact resume, bucketing, shards, bad files at run time."""

from __future__ import annotations

import pytest
import torch

from difftrain.config import load_config
from difftrain.data import DataError, load_data, open_loader, to_model_range
from difftrain.data.loader import rank_rows
from difftrain.train.stream import BatchStream
from tests.data_fixtures import COLORS, encode, make_class_folder, make_shards, pattern

AUG = [
    "data.augment.rotate=0.5",
    "data.augment.color_jitter=0.5",
    "data.augment.hflip=0.5",
    "data.augment.resized_crop=0.5",
]


def data_cfg(path, *extra):
    base = [
        f"data.path={path}",
        "data.resolution=16",
        "data.loader=stream",
        "data.val_fraction=0.2",
    ]
    return load_config(None, base + list(extra)).data


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_class_folder(tmp_path_factory.mktemp("folder"), per_class=5)


def take(loader, n):
    return [loader.next() for _ in range(n)]


@pytest.mark.parametrize("workers", [0, 1])
def test_resume_mid_epoch_is_exact(folder, workers):
    cfg = data_cfg(folder, *AUG)
    loader, val = open_loader(cfg, seed=3, batch_size=5, workers=workers)
    assert len(val) == 3 and len(loader) == 12 and loader.num_classes == 3
    take(loader, 3)  # 15 of 12 train images: past one epoch boundary
    state = loader.state()
    assert state == {"epoch": 1, "cursor": 3}
    expected = take(loader, 4)
    loader.close()
    resumed, _ = open_loader(cfg, seed=3, batch_size=5, workers=workers, state=state)
    got = take(resumed, 4)
    resumed.close()
    for a, b in zip(expected, got, strict=True):
        assert a.keys == b.keys and torch.equal(a.x, b.x) and torch.equal(a.labels, b.labels)


def test_samples_do_not_depend_on_workers_or_batch_size(folder):
    cfg = data_cfg(folder, *AUG)
    seen = {}
    for workers, bs in [(0, 4), (1, 6), (0, 2)]:
        loader, _ = open_loader(cfg, seed=1, batch_size=bs, workers=workers)
        out = {}
        for b in take(loader, 12 // bs):  # exactly one epoch
            out.update({k: x for k, x in zip(b.keys, b.x, strict=True)})
        loader.close()
        assert len(out) == 12
        for k, x in out.items():
            if k in seen:
                assert torch.equal(seen[k], x), k
            seen[k] = x


def test_same_order_and_pixels_as_the_in_memory_path(folder):
    cfg = data_cfg(folder)
    data, _ = load_data(cfg).split(cfg.val_fraction, seed=5)
    stream = BatchStream(len(data), seed=5)
    loader, _ = open_loader(cfg, seed=5, batch_size=4, workers=0)
    for _ in range(4):
        idx = stream.next(4)
        assert torch.equal(loader.next().x, to_model_range(data.images[idx]))


def test_ranks_split_each_micro_batch():
    rows = [rank_rows(8, 2, r, 2) for r in range(2)]
    assert rows == [[0, 1, 4, 5], [2, 3, 6, 7]]


def test_decode_failure_during_training_is_replaced_and_recorded(tmp_path):
    root = make_class_folder(tmp_path / "f", per_class=4)
    cfg = data_cfg(root, "data.val_fraction=0", "data.max_bad_fraction=0.1")  # 1 of 12 allowed
    loader, _ = open_loader(cfg, seed=0, batch_size=6, workers=0)
    victim = root / "red" / "red_1.jpg"
    victim.write_bytes(victim.read_bytes()[:100])  # truncated after the start-up check
    keys = [k for b in take(loader, 4) for k in b.keys]
    assert str(victim) not in keys and len(keys) == 24
    assert loader.bad.by_reason == {"truncated": [str(victim)]}


def make_aspect_folder(root, n_per_shape=6):
    shapes = {"wide": (64, 32), "tall": (30, 60), "square": (40, 40)}
    for name, size in shapes.items():
        for i in range(n_per_shape):
            (root / name).mkdir(parents=True, exist_ok=True)
            pattern(size, COLORS["red"], seed=i).save(root / name / f"{i}.png")
    return root


def test_bucketing_one_shape_per_batch_and_multi_resolution(tmp_path):
    root = make_aspect_folder(tmp_path / "aspect")
    cfg = data_cfg(
        root,
        "data.buckets.enabled=true",
        "data.buckets.resolutions=[16,32]",
        "data.buckets.step=8",
        "data.val_fraction=0",
        "data.buckets.upscale=true",
        *AUG,
    )
    loader, _ = open_loader(cfg, seed=0, batch_size=3, workers=0)
    batches = take(loader, 6)  # one epoch: 18 images in 3 buckets of 6
    assert loader.state() == {"epoch": 1, "cursor": 0}
    shapes = {tuple(b.x.shape[2:]) for b in batches}
    assert shapes == {(16, 32), (32, 16), (32, 32)}  # (h, w): wide, tall, square; at 32 px area
    for b in batches:
        assert len({k.split("/")[-2] for k in b.keys}) == 1  # one aspect group per batch
    loader, _ = open_loader(cfg, seed=0, batch_size=3, workers=0, state={"epoch": 1, "cursor": 2})
    again, _ = open_loader(cfg, seed=0, batch_size=3, workers=0)
    ref = take(again, 6 + 4)[8:]
    for a, b in zip(take(loader, 2), ref, strict=True):
        assert a.keys == b.keys and torch.equal(a.x, b.x)


def test_bucketing_without_upscale_uses_the_smaller_resolution(tmp_path):
    root = make_aspect_folder(tmp_path / "aspect")
    cfg = data_cfg(
        root, "data.buckets.enabled=true", "data.buckets.resolutions=[16,64]", "data.val_fraction=0"
    )
    loader, _ = open_loader(cfg, seed=0, batch_size=3, workers=0)
    assert all(b.x.shape[2] * b.x.shape[3] <= 16 * 16 for b in take(loader, 6))


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    make_shards(root, n_shards=4, per_shard=6)
    return root


def test_shards_stream_each_sample_once_per_epoch_in_shuffled_order(shards):
    cfg = data_cfg(shards, "data.source=webdataset", "data.val_fraction=0", "data.shuffle_buffer=5")
    loader, _ = open_loader(cfg, seed=0, batch_size=4, workers=0)
    epoch0 = [k for b in take(loader, 6) for k in b.keys]
    epoch1 = [k for b in take(loader, 6) for k in b.keys]
    assert sorted(epoch0) == sorted(epoch1) == [f"s{k:05d}" for k in range(24)]
    assert epoch0 != epoch1 and epoch0 != sorted(epoch0)  # shard shuffle + buffer, new each epoch
    assert loader.state() == {"epoch": 1, "cursor": 24}  # epoch 2 starts at the next read


@pytest.mark.parametrize("workers", [0, 1])
def test_shards_resume_mid_epoch_is_exact(shards, workers):
    cfg = data_cfg(shards, "data.source=webdataset", "data.val_fraction=0.25", *AUG)
    loader, val = open_loader(cfg, seed=2, batch_size=4, workers=workers)
    assert 0 < len(val) < 24 and val.labels is not None
    take(loader, 3)
    state = loader.state()
    expected = take(loader, 5)
    loader.close()
    resumed, _ = open_loader(cfg, seed=2, batch_size=4, workers=workers, state=state)
    for a, b in zip(expected, take(resumed, 5), strict=True):
        assert a.keys == b.keys and torch.equal(a.x, b.x) and a.captions == b.captions
    resumed.close()
    loader, _ = open_loader(cfg, seed=2, batch_size=4, workers=0)
    train_keys = {k for b in take(loader, 8) for k in b.keys}
    assert len(train_keys) == 24 - len(val)  # validation samples are never trained on


def test_shards_two_ranks_read_disjoint_shards(shards):
    cfg = data_cfg(shards, "data.source=webdataset", "data.val_fraction=0")
    keys = []
    for rank in range(2):
        loader, _ = open_loader(cfg, seed=0, batch_size=4, rank=rank, world=2, workers=0)
        keys.append({k for b in take(loader, 6) for k in b.keys})  # 2 rows per step
    assert len(keys[0]) == len(keys[1]) == 12 and not (keys[0] & keys[1])


def test_random_crop_needs_per_sample_loader(folder):
    from difftrain.config import ConfigError
    from difftrain.data.checks import check_data

    cfg = load_config(None, [f"data.path={folder}", "data.resize=random_crop"]).data
    with pytest.raises(ConfigError, match="data.loader = 'stream'"):
        check_data(cfg)
    cfg = data_cfg(folder, "data.resize=random_crop")
    with pytest.raises(DataError, match="open_loader"):
        load_data(cfg)  # one square tensor cannot hold per-sample random crops
    loader, _ = open_loader(cfg, seed=0, batch_size=4, workers=0)
    assert take(loader, 1)[0].x.shape == (4, 3, 16, 16)
    enc = encode(pattern((8, 8), (1, 1, 1)), "PNG")
    assert enc[:4] == b"\x89PNG"
