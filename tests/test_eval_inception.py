"""The FID Inception-v3 path: locating the weight file, strict loading, the forward pass.

The published weights cannot be downloaded here, so a file with the same tensor names and
shapes (random values) goes through the same code path a user's real file takes.
"""

from __future__ import annotations

import pytest
import torch

from difftrain.config import ConfigError
from difftrain.eval import inception as inc

from .eval_helpers import one_thread, single_thread  # noqa: F401 (autouse fixture)


@pytest.fixture
def no_weights(monkeypatch, tmp_path):
    """No explicit path, no env var, an empty torch.hub cache."""
    monkeypatch.delenv(inc.ENV_VAR, raising=False)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    return tmp_path


@pytest.fixture(scope="module")
def random_weight_file(tmp_path_factory):
    torch.manual_seed(0)
    net = inc.InceptionV3FID()
    for name, t in net.state_dict().items():
        if name.endswith("running_var"):
            t.uniform_(0.5, 1.5)
        elif t.dtype.is_floating_point and t.dim() > 1:
            t.normal_(0, (1.0 / t[0].numel()) ** 0.5)
    path = tmp_path_factory.mktemp("w") / inc.WEIGHTS_FILENAME
    torch.save(net.state_dict(), path)
    return path


def test_missing_weights_error_names_file_url_size_hash_and_places(no_weights):
    with pytest.raises(ConfigError) as err:
        inc.find_inception_weights(None)
    msg = str(err.value)
    for needle in (
        inc.WEIGHTS_FILENAME,
        inc.WEIGHTS_URL,
        "95,628,359 bytes",
        inc.WEIGHTS_SHA256,
        inc.ENV_VAR,
        "--inception-weights",
        str(no_weights / "hub" / "checkpoints" / inc.WEIGHTS_FILENAME),
    ):
        assert needle in msg


def test_explicit_path_that_does_not_exist_is_reported(no_weights):
    with pytest.raises(ConfigError, match="no such file"):
        inc.find_inception_weights(no_weights / "missing.pth")


def test_weights_are_found_by_env_var_and_hub_cache(no_weights, random_weight_file, monkeypatch):
    monkeypatch.setenv(inc.ENV_VAR, str(random_weight_file.parent))  # a directory works too
    assert inc.find_inception_weights(None) == random_weight_file
    monkeypatch.delenv(inc.ENV_VAR)
    hub = no_weights / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    (hub / inc.ALT_FILENAME).write_bytes(random_weight_file.read_bytes())
    assert inc.find_inception_weights(None) == hub / inc.ALT_FILENAME


def test_loads_strictly_and_embeds_grayscale_images(random_weight_file):
    net, prov = inc.load_inception(random_weight_file)
    assert prov["sha256_ok"] is False  # random values: not the published file
    images = torch.randint(0, 256, (2, 1, 28, 28), dtype=torch.uint8)
    with one_thread():
        feats = net(images)
    assert feats.shape == (2, 2048) and torch.isfinite(feats).all()
    assert (feats >= 0).all()  # pool3 averages ReLU outputs


def test_a_wrong_file_is_rejected(tmp_path):
    bad = tmp_path / inc.WEIGHTS_FILENAME
    torch.save({"fc.weight": torch.zeros(3, 3)}, bad)
    with pytest.raises(ConfigError, match="not the FID Inception-v3 weights"):
        inc.load_inception(bad)


def test_tf1_resize_of_a_constant_image_is_constant():
    x = torch.full((1, 3, 28, 28), 77.0)
    assert torch.equal(inc.resize_like_tf1(x, 299), torch.full((1, 3, 299, 299), 77.0))
