"""Latent cache: keyed by autoencoder + preprocessing, reused when unchanged, damage is a clear
error, flips cached as encoded variants, built atomically. A tiny random AutoencoderKL."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL

from difftrain.config import load_config
from difftrain.data import DataError, load_data, to_model_range
from difftrain.data.latent_cache import cache_inputs, cache_key, open_cache, open_or_build
from difftrain.pipeline.latent import Latents, autoencoder_hash, load_autoencoder
from tests.data_fixtures import make_class_folder


def tiny_ae(path, channels: int = 1, seed: int = 0):
    """A random 2-level AutoencoderKL (downsampling 2, 4 latent channels) saved as safetensors."""
    torch.manual_seed(seed)
    vae = AutoencoderKL(
        in_channels=channels,
        out_channels=channels,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(8, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=8,
        scaling_factor=0.7,
    )
    vae.save_pretrained(path, safe_serialization=True)
    return path


class Counting:
    """The cache's encoder: (mean, logvar) of a real autoencoder, counting images encoded."""

    def __init__(self, vae):
        self.latents, self.images = Latents(vae, 1.0), 0

    def __call__(self, x):
        self.images += len(x)
        return self.latents.encode(x)


def digits_cfg(*extra):
    return load_config(None, ["data.source=digits", "data.resolution=8", "data.channels=1", *extra])


@pytest.fixture(scope="module")
def digits():
    return load_data(digits_cfg("data.max_images=40").data)


@pytest.fixture
def vae(tmp_path):
    return load_autoencoder(tiny_ae(tmp_path / "ae"))


def build(cache_dir, cfg, vae, data, **kw):
    enc = Counting(vae)
    inputs = cache_inputs(cfg.data, autoencoder_hash(vae))
    cache, built = open_or_build(cache_dir, inputs, lambda: data, enc, shard_size=16, **kw)
    return cache, built, enc.images


def test_cache_reused_when_nothing_changed(tmp_path, vae, digits):
    cfg = digits_cfg("data.max_images=40")
    a, built, n = build(tmp_path / "c", cfg, vae, digits)
    assert built and n == 40 and len(a) == 40 and len(a.mean) == 3  # shards of 16, 16, 8
    b, built, n = build(tmp_path / "c", cfg, vae, digits)
    assert not built and n == 0  # nothing encoded the second time
    idx = torch.tensor([0, 17, 39, 5])
    for x, y in zip(a.gather(idx), b.gather(idx), strict=True):
        assert torch.equal(x, y)
    # The cached mean is the encoder's posterior mean of exactly those images.
    mean, _ = Latents(vae, 1.0).encode(to_model_range(digits.images[idx]))
    assert torch.allclose(a.gather(idx)[0], mean, atol=1e-6)
    assert torch.equal(a.labels, digits.labels)
    assert [p.name for p in (tmp_path / "c").iterdir()] == [a.root.name]  # no temp folder left


def test_new_cache_when_autoencoder_weights_change(tmp_path, vae, digits):
    cfg = digits_cfg("data.max_images=40")
    a, _, _ = build(tmp_path / "c", cfg, vae, digits)
    with torch.no_grad():
        vae.encoder.conv_in.weight[0, 0, 0, 0] += 1e-3
    b, built, n = build(tmp_path / "c", cfg, vae, digits)
    assert built and n == 40 and b.root != a.root and a.root.is_dir()  # old one untouched
    # Only the scaling factor differs: same encoder output, same cache.
    vae.register_to_config(scaling_factor=0.123)
    _, built, _ = build(tmp_path / "c", cfg, vae, digits)
    assert not built


def test_new_cache_when_preprocessing_changes(tmp_path, vae):
    h = autoencoder_hash(vae)
    base = cache_key(cache_inputs(digits_cfg().data, h))
    for change in (
        "data.resolution=16",
        "data.resize=pad",
        "data.max_images=10",
        "data.hflip=true",
        "data.augment.hflip=0.3",
        "data.class_conditional=false",
    ):
        assert cache_key(cache_inputs(digits_cfg(change).data, h)) != base, change
    # A folder source: touching, adding or renaming a file changes the key.
    root = make_class_folder(tmp_path / "imgs", per_class=2, formats=("PNG",))
    cfg = load_config(None, ["data.source=folder", f"data.path={root}", "data.resolution=8"])
    key = cache_key(cache_inputs(cfg.data, h))
    assert cache_key(cache_inputs(cfg.data, h)) == key
    f = next(root.rglob("*.png"))
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert cache_key(cache_inputs(cfg.data, h)) != key
    # ...but a cache folder inside the data folder does not change it.
    key = cache_key(cache_inputs(cfg.data, h, exclude=(root / "latents",)))
    (root / "latents").mkdir()
    (root / "latents" / "x.npy").write_bytes(b"x")
    assert cache_key(cache_inputs(cfg.data, h, exclude=(root / "latents",))) == key


def test_flip_variants_are_encodings_of_mirrored_images(tmp_path, vae, digits):
    cfg = digits_cfg("data.max_images=40", "data.hflip=true")
    cache, _, n = build(tmp_path / "c", cfg, vae, digits)
    assert cache.variants == 2 and n == 80
    idx = torch.tensor([3, 20])
    mirrored, _ = Latents(vae, 1.0).encode(to_model_range(digits.images[idx]).flip(-1))
    got, _ = cache.gather(idx, torch.tensor([1, 1]))
    assert torch.allclose(got, mirrored, atol=1e-6)
    assert not torch.allclose(got, cache.gather(idx)[0].flip(-1), atol=1e-3)  # not equivariant


@pytest.mark.parametrize(
    "damage",
    ["garbage", "missing", "bad_name", "wrong_shape", "truncated_shard", "other_inputs", "labels"],
)
def test_damaged_cache_is_a_clear_error(tmp_path, vae, digits, damage):
    cfg = digits_cfg("data.max_images=40")
    cache, _, _ = build(tmp_path / "c", cfg, vae, digits)
    root, man = cache.root, cache.root / "manifest.json"
    doc = json.loads(man.read_text())
    if damage == "garbage":
        man.write_bytes(b"\xff{not json")
    elif damage == "missing":
        man.unlink()
    elif damage == "bad_name":
        doc["shards"][0]["name"] = "../../etc/passwd"
        man.write_text(json.dumps(doc))
    elif damage == "wrong_shape":
        doc["latent_shape"] = [4, 8, 8]
        man.write_text(json.dumps(doc))
    elif damage == "truncated_shard":
        p = root / "shard-00001.mean.npy"
        p.write_bytes(p.read_bytes()[:200])
    elif damage == "other_inputs":
        doc["inputs"]["resolution"] = 64
        man.write_text(json.dumps(doc))
    elif damage == "labels":
        np.save(root / "labels.npy", np.full(40, 99, np.int64))
    inputs = cache_inputs(cfg.data, autoencoder_hash(vae))
    with pytest.raises(DataError, match="latent cache .* is damaged.*remove that folder"):
        open_cache(tmp_path / "c", inputs)
    assert root.is_dir() and any(root.iterdir())  # never deleted


def test_failed_build_leaves_nothing_behind(tmp_path, vae, digits):
    cfg = digits_cfg("data.max_images=40")
    calls = []

    def failing(x):
        calls.append(len(x))
        if len(calls) == 2:
            raise RuntimeError("encoder failed")
        return Latents(vae, 1.0).encode(x)

    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "mine.txt").write_text("user file")
    inputs = cache_inputs(cfg.data, autoencoder_hash(vae))
    with pytest.raises(RuntimeError, match="encoder failed"):
        open_or_build(tmp_path / "c", inputs, lambda: digits, failing, batch_size=16)
    assert [p.name for p in (tmp_path / "c").iterdir()] == ["mine.txt"]
    assert open_cache(tmp_path / "c", inputs) is None
