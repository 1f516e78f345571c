"""Resize modes and generator-driven augmentation."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from difftrain.config import ConfigError, load_config
from difftrain.data import augment_batch
from difftrain.data.transforms import augment, fit
from tests.data_fixtures import pattern


def aug_cfg(*overrides: str):
    return load_config(None, list(overrides)).data


@pytest.mark.parametrize("mode", ["crop", "random_crop", "pad", "stretch"])
def test_fit_reaches_the_size(mode):
    img = pattern((50, 20), (10, 200, 10))
    assert fit(img, (16, 16), mode, (0.9, 0.1)).size == (16, 16)
    assert fit(img, (24, 8), mode).size == (24, 8)


def test_pad_is_white_and_random_crop_moves():
    img = Image.new("RGB", (40, 10), (0, 0, 0))
    padded = fit(img, (16, 16), "pad")
    assert padded.getpixel((8, 0)) == (255, 255, 255) and padded.getpixel((8, 8)) == (0, 0, 0)
    grad = (
        Image.linear_gradient("L").transpose(Image.Transpose.ROTATE_90).resize((64, 16))
    )  # left-right ramp
    left, right = (
        fit(grad, (16, 16), "random_crop", (0.0, 0.0)),
        fit(grad, (16, 16), "random_crop", (0.99, 0.0)),
    )
    assert left.getpixel((0, 0)) != right.getpixel((0, 0))
    assert fit(grad, (16, 16), "crop", (0.0, 0.0)).getpixel((0, 0)) == fit(
        grad, (16, 16), "crop"
    ).getpixel((0, 0))


def batch():
    return torch.rand(6, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1


def test_augmentation_is_reproducible_and_bounded():
    cfg = aug_cfg(
        "data.augment.rotate=1",
        "data.augment.resized_crop=1",
        "data.augment.color_jitter=1",
        "data.augment.hflip=0.5",
        "data.augment.brightness=0.5",
    )
    a = augment_batch(batch(), cfg, torch.Generator().manual_seed(7))
    b = augment_batch(batch(), cfg, torch.Generator().manual_seed(7))
    c = augment_batch(batch(), cfg, torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.min() >= -1 and a.max() <= 1 and not torch.equal(a, batch())


def test_all_off_is_identity_and_hflip_one_flips():
    x = batch()
    assert torch.equal(augment_batch(x, aug_cfg(), torch.Generator()), x)
    flipped = augment_batch(x, aug_cfg("data.augment.hflip=1"), torch.Generator())
    assert torch.equal(flipped, x.flip(-1))
    assert torch.equal(
        augment_batch(x, aug_cfg("data.hflip=true"), torch.Generator().manual_seed(0)),
        augment_batch(x, aug_cfg("data.augment.hflip=0.5"), torch.Generator().manual_seed(0)),
    )


def test_rotation_and_crop_keep_the_center_roughly():
    x = torch.full((1, 1, 32, 32), -1.0)
    x[..., 12:20, 12:20] = 1.0  # a white square in the middle
    cfg = aug_cfg("data.augment.rotate=1", "data.augment.rotate_degrees=10").augment
    y = augment(x, cfg, 0.0, torch.Generator().manual_seed(1))
    assert y[0, 0, 16, 16] > 0.9 and y[0, 0, 0, 0] < -0.9 and not torch.equal(x, y)
    # Enabling another augmentation does not change which images rotate (fixed draws per image).
    cfg2 = aug_cfg(
        "data.augment.rotate=1", "data.augment.rotate_degrees=10", "data.augment.color_jitter=0"
    ).augment
    assert torch.equal(y, augment(x, cfg2, 0.0, torch.Generator().manual_seed(1)))


@pytest.mark.parametrize(
    "override, key",
    [
        ("data.augment.rotate=1.5", "data.augment.rotate"),
        ("data.augment.resized_crop_scale=[0.9,0.2]", "data.augment"),
        ("data.caption_policy=maybe", "data.caption_policy"),
        ("data.max_bad_fraction=2", "data.max_bad_fraction"),
        ("data.source=s3", "data.source"),
        ("data.workers=-1", "data.workers"),
        ("data.buckets.max_ratio=0.5", "data.buckets.max_ratio"),
        ("data.caption_ext=txt", "data.caption_ext"),
        ("data.augment.flip=1", "data.augment.flip"),
    ],
)
def test_invalid_data_config_names_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(None, [override])


def test_config_time_checks(tmp_path):
    from difftrain.data.checks import check_data

    (tmp_path / "x.png").write_bytes(b"")
    cases = [
        (["data.source=webdataset"], "needs .tar shard"),
        (["data.source=hf"], "save_to_disk folder or .parquet"),
        (["data.source=idx", "data.split=validation"], "data.split = 'validation'"),
        (["data.buckets.enabled=true"], "data.loader = 'stream'"),
        (
            ["data.buckets.enabled=true", "data.loader=stream", "data.buckets.step=12"],
            "data.buckets.step = 12",
        ),
    ]
    for overrides, message in cases:
        cfg = load_config(None, [f"data.path={tmp_path}", *overrides]).data
        with pytest.raises(ConfigError, match=message):
            check_data(cfg, factor=8)
