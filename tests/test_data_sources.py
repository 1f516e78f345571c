"""Sources: image folders (labels, captions), Hugging Face saved/parquet, WebDataset, arrays."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
import torch

from difftrain.config import load_config
from difftrain.data import DataError, load_data, open_source
from tests.data_fixtures import COLORS, make_class_folder, make_hf, make_shards


def cfg_for(*overrides: str):
    return load_config(None, list(overrides)).data


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_class_folder(tmp_path_factory.mktemp("folder"), per_class=4)


def test_class_folder_labels_captions_and_formats(folder):
    data = load_data(cfg_for(f"data.path={folder}", "data.resolution=16"))
    assert data.images.shape == (12, 3, 16, 16) and data.images.dtype == torch.uint8
    assert data.class_names == sorted(COLORS)  # blue, green, red
    assert torch.bincount(data.labels).tolist() == [4, 4, 4]
    train, val = data.split(0.25, seed=0)
    assert sorted(train.ids.tolist() + val.ids.tolist()) == list(range(12))
    assert all(f.endswith((".png", ".jpg", ".webp", ".bmp")) for f in train.files + val.files)
    by_label = dict(zip(data.labels.tolist(), data.captions, strict=False))
    assert by_label[2].startswith("a red square")  # metadata.jsonl (HF imagefolder)
    assert by_label[1].startswith("green thing")  # kohya .txt side-car
    assert by_label[0] == ""  # none: policy 'empty'
    # Colors survive decode + resize: red images are red.
    red = data.images[data.labels == 2].float().mean(dim=(0, 2, 3))
    assert red[0] > 150 and red[1] < 80


def test_caption_policies(folder):
    data = load_data(
        cfg_for(f"data.path={folder}", "data.resolution=8", "data.caption_policy=filename")
    )
    blue = [c for c, y in zip(data.captions, data.labels.tolist(), strict=False) if y == 0]
    assert blue[0] == "blue 0"
    with pytest.raises(DataError, match="caption_policy = 'error'"):
        load_data(cfg_for(f"data.path={folder}", "data.caption_policy=error"))


def test_flat_and_nested_folders(tmp_path):
    make_class_folder(tmp_path / "a" / "deep", per_class=2)  # classes one level down: recursive
    flat = tmp_path / "flat"
    flat.mkdir()
    for p in (tmp_path / "a" / "deep" / "red").iterdir():
        if p.suffix != ".jsonl":
            (flat / p.name).write_bytes(p.read_bytes())
    src = open_source(cfg_for(f"data.path={flat}"))
    assert len(src) == 2 and src.labels is None and src.captions is None
    nested = load_data(cfg_for(f"data.path={tmp_path / 'a'}", "data.resolution=8"))
    assert len(nested) == 6 and nested.class_names == ["deep"]  # first sub-folder is the class


def test_no_images_is_a_clear_error(tmp_path):
    (tmp_path / "readme.md").write_text("hi")
    with pytest.raises(DataError, match="no image files"):
        load_data(cfg_for(f"data.path={tmp_path}"))


@pytest.fixture(scope="module")
def hf_paths(tmp_path_factory):
    import datasets

    root = tmp_path_factory.mktemp("hf")
    datasets.config.HF_DATASETS_CACHE = root / "cache"  # parquet loading caches here
    return make_hf(root)


@pytest.mark.parametrize("which", [0, 1], ids=["save_to_disk", "parquet"])
def test_hugging_face_sources(hf_paths, which):
    data = load_data(
        cfg_for("data.source=hf", f"data.path={hf_paths[which]}", "data.resolution=16")
    )
    assert data.images.shape == (9, 3, 16, 16)
    assert data.class_names == list(COLORS)  # the ClassLabel names
    assert data.labels.tolist() == [i % 3 for i in range(9)]
    assert data.captions[1] == "hf green 1" and data.captions[0] == ""  # empty → policy 'empty'
    red = data.images[data.labels == 0].float().mean(dim=(0, 2, 3))
    assert red[0] > 150 and red[2] < 80


def test_hugging_face_split_and_column_errors(hf_paths):
    with pytest.raises(DataError, match="data.image_column = 'pixels'"):
        load_data(cfg_for("data.source=hf", f"data.path={hf_paths[0]}", "data.image_column=pixels"))


def test_webdataset_shards_in_memory_with_bad_samples(tmp_path):
    make_shards(tmp_path, n_shards=2, per_shard=5, bad=True)
    data = load_data(
        cfg_for(
            "data.source=webdataset",
            f"data.path={tmp_path}",
            "data.resolution=16",
            "data.max_bad_fraction=0.5",
        )
    )
    assert data.images.shape == (10, 3, 16, 16)
    assert data.class_names == ["0", "1", "2"] and data.labels.tolist() == [
        k % 3 for k in range(10)
    ]
    assert data.captions[3] == "sample 3"
    assert {k: len(v) for k, v in data.skipped.items()} == {"no_image": 1, "truncated": 1}
    assert data.bad.total == 12


def test_array_sources_still_work(tmp_path):
    digits = load_data(cfg_for("data.source=digits", "data.channels=1", "data.resolution=8"))
    assert digits.images.shape == (1797, 1, 8, 8) and digits.num_classes == 10
    imgs = np.random.default_rng(0).integers(0, 256, (5, 6, 6, 3), dtype=np.uint8)
    np.savez(tmp_path / "a.npz", images=imgs, labels=np.arange(5) % 2)
    npz = load_data(
        cfg_for("data.source=npz", f"data.path={tmp_path / 'a.npz'}", "data.resolution=6")
    )
    assert torch.equal(npz.images, torch.from_numpy(imgs).permute(0, 3, 1, 2))
    # IDX files made here (the Fashion-MNIST package is only installed by `make demo`): images
    # gzipped as distributed, labels plain; a directory named *fashion* gets its class names.
    idx_dir = tmp_path / "fashion-mnist"
    idx_dir.mkdir()
    pixels = np.random.default_rng(1).integers(0, 256, (120, 28, 28), dtype=np.uint8)
    labels = np.arange(120, dtype=np.uint8) % 10
    with gzip.open(idx_dir / "train-images-idx3-ubyte.gz", "wb") as f:
        f.write(bytes([0, 0, 8, 3]) + struct.pack(">III", 120, 28, 28) + pixels.tobytes())
    (idx_dir / "train-labels-idx1-ubyte").write_bytes(
        bytes([0, 0, 8, 1]) + struct.pack(">I", 120) + labels.tobytes()
    )
    idx = load_data(
        cfg_for(
            "data.source=idx",
            f"data.path={idx_dir}",
            "data.channels=1",
            "data.resolution=28",
            "data.max_images=100",
        )
    )
    assert idx.images.shape == (100, 1, 28, 28) and idx.class_names[0] == "T-shirt/top"
    assert torch.equal(idx.images[:, 0], torch.from_numpy(pixels[:100]))
    assert idx.labels.tolist() == (labels[:100] % 10).tolist()
