"""The domain feature network on real data (8×8 digits): accuracy, round trip, FID sanity."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from difftrain.config import ConfigError, load_config
from difftrain.data import load_data
from difftrain.eval import metrics as M
from difftrain.eval.features import (
    load_feature_net,
    run_extractor,
    save_feature_net,
    train_feature_net,
)

from .conftest import TINY
from .eval_helpers import one_thread, single_thread  # noqa: F401 (autouse fixture)


@pytest.fixture(scope="module")
def digits():
    cfg = load_config(TINY)
    return load_data(cfg.data).split(0.25, seed=0)


@pytest.fixture(scope="module")
def feature_net(digits):
    train, val = digits
    with one_thread():  # tiny convolutions: a second thread only adds synchronisation
        return train_feature_net(
            train, val, width=8, feature_dim=16, epochs=3, batch_size=32, lr=3e-3
        )


def blur(u8: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of uint8 images (reflect padding)."""
    r = max(1, int(3 * sigma))
    t = torch.arange(-r, r + 1, dtype=torch.float32)
    k = torch.exp(-(t**2) / (2 * sigma**2))
    k = k / k.sum()
    x = F.pad(u8.float(), (r, r, r, r), mode="reflect")
    x = F.conv2d(x, k.view(1, 1, 1, -1))
    x = F.conv2d(x, k.view(1, 1, -1, 1))
    return x.round().clamp(0, 255).to(torch.uint8)


def add_noise(u8: torch.Tensor, std: float) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return (
        (u8.float() + torch.randn(u8.shape, generator=g) * std)
        .round()
        .clamp(0, 255)
        .to(torch.uint8)
    )


def test_classifier_learns_the_held_out_digits(feature_net):
    net, info = feature_net
    assert info["val_accuracy"] > 0.85
    assert info["spec"] == {"channels": 1, "num_classes": 10, "width": 8, "feature_dim": 16}


def test_training_accuracy_is_measured_on_a_bounded_even_subset(feature_net, digits):
    from difftrain.eval import features as features_mod

    net, info = feature_net
    train = digits[0]
    assert info["train_accuracy_images"] == min(len(train), features_mod.TRAIN_ACCURACY_IMAGES)
    sub = features_mod._subset(train, 100)
    assert len(sub) == 100 and torch.equal(sub.images[0], train.images[0])
    assert torch.equal(sub.images[-1], train.images[-1])
    assert torch.equal(sub.labels, train.labels[torch.linspace(0, len(train) - 1, 100).long()])


def test_save_and_load_give_identical_features(feature_net, digits, tmp_path):
    net, info = feature_net
    save_feature_net(net, info, tmp_path / "features")
    saved = json.loads((tmp_path / "features" / "feature_net.json").read_text())
    assert saved["format"] == "difftrain-feature-net/1"
    loaded, _ = load_feature_net(tmp_path / "features")
    images = digits[1].images[:50]
    a, la = run_extractor(net, images)
    b, lb = run_extractor(loaded, images)
    assert torch.equal(a, b) and torch.equal(la, lb)


def test_missing_feature_net_names_the_command(tmp_path):
    with pytest.raises(ConfigError, match="difftrain features train"):
        load_feature_net(tmp_path / "nowhere")


def test_fid_grows_monotonically_with_blur_and_noise(feature_net, digits):
    net, _ = feature_net
    real = digits[1].images  # 449 held-out digits
    with one_thread():
        _check_monotonic(net, real)


def _check_monotonic(net, real):
    feats = lambda u8: run_extractor(net, u8)[0]  # noqa: E731
    ref = feats(real)
    assert M.fid(ref, ref) == pytest.approx(0.0, abs=1e-6)
    blurred = [M.fid(ref, feats(blur(real, s))) for s in (0.5, 1.0, 2.0)]
    noised = [M.fid(ref, feats(add_noise(real, s))) for s in (8, 32, 96)]
    assert blurred == sorted(blurred) and blurred[0] > 0
    assert noised == sorted(noised) and noised[0] > 0
    # KID agrees on the ordering of the extremes.
    assert M.kid(ref, feats(blur(real, 2.0)))[0] > M.kid(ref, feats(blur(real, 0.5)))[0]
