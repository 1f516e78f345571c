"""An .npz that cannot be used is a clear DataError (exit 2) naming the file and the array,
never a raw ValueError and never NaN silently turned into black (issue 13, item 14)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from difftrain.cli.main import app
from difftrain.config import load_config
from difftrain.data import DataError, load_data

RNG = np.random.default_rng(0)
GOOD = RNG.integers(0, 256, (6, 8, 8, 3), dtype=np.uint8)


def cfg(path):
    return load_config(None, ["data.source=npz", f"data.path={path}", "data.resolution=8"]).data


def nan_images():
    a = RNG.random((6, 8, 8)).astype(np.float32)
    a[2, 3, 4] = np.nan
    return a


def inf_images():
    a = RNG.random((6, 8, 8))
    a[5, 0, 0] = np.inf
    return a


CASES = {
    "object_images": (
        dict(images=np.array([GOOD[0], "x"], dtype=object)),
        r"'images'.*object",
    ),
    "no_images": (dict(pictures=GOOD), r"no 'images' array.*pictures"),
    "zero_images": (dict(images=np.zeros((0, 8, 8), np.uint8)), r"'images'.*no images"),
    "nan": (dict(images=nan_images()), r"'images'.*1 NaN.*\[2, 3, 4\]"),
    "inf": (dict(images=inf_images()), r"'images'.*infinite"),
    "flat": (dict(images=np.zeros((6, 64), np.uint8)), r"'images'.*shape \(6, 64\)"),
    "two_channels": (dict(images=np.zeros((6, 8, 8, 2), np.uint8)), r"'images'.*2 channels"),
    "strings": (dict(images=np.array([["a"]])), r"'images'.*dtype <U1"),
    "object_labels": (
        dict(images=GOOD, labels=np.array([0, "cat", 1, 2, 0, 1], dtype=object)),
        r"'labels'.*object",
    ),
    "label_count": (dict(images=GOOD, labels=np.arange(5)), r"'labels'.*5 labels for 6 images"),
    "fractional_labels": (
        dict(images=GOOD, labels=np.array([0, 1.5, 1, 2, 0, 1])),
        r"'labels'.*whole numbers",
    ),
    "negative_labels": (dict(images=GOOD, labels=np.array([0, -1, 1, 2, 0, 1])), r"'labels'.*>= 0"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_npz_is_a_clear_error_naming_the_file_and_array(tmp_path, case):
    arrays, message = CASES[case]
    path = tmp_path / f"{case}.npz"
    np.savez(path, **arrays)  # object arrays are pickled by savez: we never unpickle them
    with pytest.raises(DataError, match=message) as err:
        load_data(cfg(path))
    assert str(path) in str(err.value)


def test_not_an_npz_file(tmp_path):
    path = tmp_path / "fake.npz"
    path.write_text("not a zip\n")
    with pytest.raises(DataError, match=f"{path}.*not a readable .npz"):
        load_data(cfg(path))


def test_bad_npz_exits_2_through_the_cli(tmp_path):
    path = tmp_path / "nan.npz"
    np.savez(path, images=nan_images())
    res = CliRunner().invoke(app, ["data", "inspect", str(path), "--set", "data.resolution=8"])
    assert res.exit_code == 2, res.output + repr(res.exception)
    assert "NaN" in res.output and "'images'" in res.output


def test_good_npz_variants_still_load(tmp_path):
    floats = RNG.random((4, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "f.npz", images=floats, labels=np.array([0.0, 1.0, 1.0, 0.0]))
    data = load_data(
        load_config(
            None,
            [
                "data.source=npz",
                f"data.path={tmp_path / 'f.npz'}",
                "data.resolution=8",
                "data.channels=1",
            ],
        ).data
    )
    expected = torch.from_numpy(np.round(floats * 255).astype(np.uint8))[:, None]
    assert torch.equal(data.images, expected) and data.labels.tolist() == [0, 1, 1, 0]
