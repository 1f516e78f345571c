"""Autoencoder: round trip, scaling factor, diffusers save/load, loss pieces, PatchGAN schedule."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import AutoencoderKL
from safetensors.torch import save_file

from difftrain.config import Config, ConfigError
from difftrain.models.autoencoder import (
    AE_PRESETS,
    KLAutoencoder,
    build_autoencoder,
    latent_scaling_factor,
    load_autoencoder,
    resolve_ae_preset,
    save_autoencoder,
)
from difftrain.models.discriminator import NLayerDiscriminator, patch_output_side
from difftrain.models.lpips import LPIPS, load_lpips
from difftrain.pipeline.build import check_config
from difftrain.train.autoencoder import (
    AutoencoderLoss,
    DiscriminatorStep,
    adaptive_weight,
    hinge_d_loss,
)


def tiny_vae(channels: int = 3, res: int = 16) -> AutoencoderKL:
    torch.manual_seed(0)
    return build_autoencoder(resolve_ae_preset("vae-tiny"), channels, res)


@pytest.mark.parametrize("name", ["vae-mini", "vae-tiny", "vae-small", "vae-base"])
def test_presets_downsample_as_declared(name):
    p = AE_PRESETS[name]
    assert p.latent_channels == 4 and p.downsample_factor in (4, 8)
    vae = build_autoencoder(p, 3, 32)
    assert len(vae.config.block_out_channels) == len(p.block_out_channels)


def test_round_trip_shapes_and_scaling_factor():
    vae = tiny_vae()
    x = torch.rand(6, 3, 16, 16) * 2 - 1
    ae = KLAutoencoder(vae)
    rec, mean, logvar = ae(x, torch.randn(ae.latent_shape(x)))
    assert rec.shape == x.shape and mean.shape == logvar.shape == (6, 4, 4, 4)  # ×4 preset
    s = latent_scaling_factor(vae, x, batch_size=4)
    # 1/std of posterior samples drawn from the same fixed seed, whatever the batch size.
    post = vae.encode(x).latent_dist
    noise = torch.randn(post.mean.shape, generator=torch.Generator().manual_seed(0))
    z = post.mean + post.std * noise
    assert s == pytest.approx(1 / z.std().item(), rel=1e-5)
    assert latent_scaling_factor(vae, x, batch_size=6) == pytest.approx(s, rel=1e-5)
    assert s * z.std().item() == pytest.approx(1.0, rel=1e-5)  # scaled latents have unit std


def test_save_load_diffusers_dir_run_dir_and_pipeline_dir(tmp_path):
    vae = tiny_vae()
    out = save_autoencoder(vae, tmp_path / "run" / "autoencoder", 0.5)
    conf = json.loads((out / "config.json").read_text())
    assert conf["scaling_factor"] == 0.5 and conf["_class_name"] == "AutoencoderKL"
    assert (out / "diffusion_pytorch_model.safetensors").is_file()
    assert not list((tmp_path / "run").glob(".autoencoder*"))  # no temporary left behind
    save_autoencoder(vae, out, 0.25)  # replacing an existing export
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    want = vae.decode(vae.encode(x).latent_dist.mode()).sample
    # A diffusers save by someone else, a pipeline folder with vae/, and a difftrain run dir.
    vae.save_pretrained(tmp_path / "plain", safe_serialization=True)
    vae.save_pretrained(tmp_path / "pipe" / "vae", safe_serialization=True)
    for path in (tmp_path / "run", out, tmp_path / "plain", tmp_path / "pipe"):
        got = load_autoencoder(path)
        assert isinstance(got, AutoencoderKL)
        torch.testing.assert_close(got.decode(got.encode(x).latent_dist.mode()).sample, want)
    assert load_autoencoder(tmp_path / "run").config.scaling_factor == 0.25


def test_load_autoencoder_bad_paths_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="no such directory"):
        load_autoencoder(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no autoencoder found"):
        load_autoencoder(tmp_path / "empty")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_autoencoder(bad)
    (bad / "config.json").write_text(json.dumps({"_class_name": "UNet2DModel"}))
    with pytest.raises(ConfigError, match="expected 'AutoencoderKL'"):
        load_autoencoder(bad)
    # Pickled weights only: refused, never unpickled.
    vae = tiny_vae()
    vae.save_pretrained(tmp_path / "pickled", safe_serialization=False)
    with pytest.raises(ConfigError, match="only safetensors"):
        load_autoencoder(tmp_path / "pickled")
    # A truncated weights file.
    vae.save_pretrained(tmp_path / "trunc", safe_serialization=True)
    w = tmp_path / "trunc" / "diffusion_pytorch_model.safetensors"
    w.write_bytes(w.read_bytes()[:100])
    with pytest.raises(ConfigError, match="cannot load"):
        load_autoencoder(tmp_path / "trunc")
    # A run's autoencoder/ that is a link to somewhere else is not followed.
    run = tmp_path / "run"
    run.mkdir()
    (run / "autoencoder").symlink_to(tmp_path / "trunc")
    with pytest.raises(ConfigError, match="outside"):
        load_autoencoder(run)


def test_adaptive_weight_is_the_ratio_of_gradient_norms_at_the_last_layer():
    w = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    nll = (3 * w).sum()  # gradient (3, 3): norm 3√2
    g = (w * torch.tensor([1.0, 0.0])).sum()  # gradient (1, 0): norm 1
    assert adaptive_weight(nll, g, w).item() == pytest.approx(3 * 2**0.5 / (1 + 1e-4))
    assert adaptive_weight(nll, g * 1e-9, w, max_weight=100.0).item() == 100.0  # clamped


def test_hinge_loss():
    assert hinge_d_loss(torch.full((2,), 2.0), torch.full((2,), -2.0)).item() == 0.0
    assert hinge_d_loss(torch.zeros(2), torch.zeros(2)).item() == 1.0


def test_discriminator_starts_at_disc_start_and_trains_only_then():
    vae = KLAutoencoder(tiny_vae())
    torch.manual_seed(0)
    disc = NLayerDiscriminator(3, 8, 2)
    loss = AutoencoderLoss("l1", 1e-6, False, disc=disc, disc_weight=0.5, disc_start=2)
    step = DiscriminatorStep(disc, torch.optim.Adam(disc.parameters(), lr=1e-2), loss)
    x = torch.rand(4, 3, 16, 16) * 2 - 1
    before = {k: v.clone() for k, v in disc.state_dict().items()}
    for s in (0, 1):
        loss.begin_step(s)
        plain = loss(vae, x)
        assert "ae/adaptive_weight" not in loss.stats and step() == {}
    assert all(torch.equal(before[k], v) for k, v in disc.state_dict().items())
    loss.begin_step(2)
    with_gan = loss(vae, x)
    assert loss.stats["ae/adaptive_weight"] > 0 and not torch.equal(with_gan, plain)
    with_gan.mean().backward()
    assert all(p.grad is None for p in disc.parameters())  # frozen outside its own step
    stats = step()
    assert set(stats) >= {"disc/loss", "disc/logits_real", "disc/logits_fake"}
    assert not torch.equal(before["main.0.weight"], disc.state_dict()["main.0.weight"])
    assert loss.pairs == [] and step() == {}  # pairs are used once


def test_discriminator_patch_geometry():
    for side, n in ((16, 2), (32, 3), (64, 3)):
        out = NLayerDiscriminator(3, 8, n)(torch.zeros(2, 3, side, side))
        assert out.shape == (2, 1, patch_output_side(side, n), patch_output_side(side, n))
    assert patch_output_side(16, 3) == 0


def test_lpips_hook_loads_local_weights_and_is_a_distance(tmp_path):
    torch.manual_seed(0)
    sd = {f"net.{k}": v for k, v in LPIPS().net.state_dict().items()}
    sd.update(
        {
            f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1)
            for i, c in enumerate([64, 128, 256, 512, 512])
        }
    )
    sd["scaling_layer.shift"] = torch.tensor([-0.030, -0.088, -0.188])[None, :, None, None]
    path = tmp_path / "lpips.safetensors"
    save_file(sd, path)
    net = load_lpips(path)
    x, y = torch.rand(2, 3, 16, 16) * 2 - 1, torch.rand(2, 3, 16, 16) * 2 - 1
    assert net(x, x).abs().max().item() < 1e-6 and (net(x, y) > 0).all()
    with pytest.raises(ConfigError, match="no such file"):
        load_lpips(tmp_path / "missing.safetensors")
    save_file({"foo": torch.zeros(1)}, tmp_path / "other.safetensors")
    with pytest.raises(ConfigError, match="not LPIPS-VGG weights"):
        load_lpips(tmp_path / "other.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"junk")
    with pytest.raises(ConfigError, match="not a safetensors file"):
        load_lpips(tmp_path / "junk.safetensors")


def ae_config(**over) -> Config:
    base = {
        "data": {"source": "digits", "resolution": 16, "channels": 1},
        "model": {"kind": "autoencoder", "preset": "vae-tiny"},
    }
    for key, value in over.items():
        section, name = key.split(".")
        base.setdefault(section, {})[name] = value
    return Config.model_validate(base)


@pytest.mark.parametrize(
    "over, match",
    [
        ({"model.preset": "unet-small"}, "not an autoencoder preset"),
        ({"data.resolution": 18}, "divisible by 4"),
        ({"autoencoder.lpips_weight": 1.0}, "needs autoencoder.lpips_weights"),
        (
            {"autoencoder.lpips_weight": 1.0, "autoencoder.lpips_weights": "/nope.safetensors"},
            "no such file",
        ),
        ({"autoencoder.disc_start": 100}, "only used with autoencoder.disc_weight"),
        ({"autoencoder.disc_weight": 0.5, "autoencoder.disc_layers": 3}, "disc_layers <= 2"),
        ({"model.attention_levels": [1]}, "not used by autoencoder"),
        ({"eval.every": 10}, "eval.every"),
        ({"model.block_out_channels": [32, 48]}, "multiple of 32"),
    ],
)
def test_bad_autoencoder_configs_name_the_key(over, match):
    with pytest.raises(ConfigError, match=match):
        check_config(ae_config(**over))


def test_autoencoder_section_on_a_diffusion_run_is_an_error():
    cfg = Config.model_validate({"autoencoder": {"kl_weight": 1e-3}})
    with pytest.raises(ConfigError, match="autoencoder.kl_weight is only used when model.kind"):
        check_config(cfg)
    check_config(ae_config(**{"autoencoder.disc_weight": 0.5, "autoencoder.disc_layers": 2}))


def test_emoji_vae_config_is_a_valid_autoencoder_config(tmp_path):
    from PIL import Image

    from difftrain.config import load_config
    from tests.conftest import REPO

    (tmp_path / "a").mkdir()
    Image.new("RGB", (64, 64), "white").save(tmp_path / "a" / "x.png")
    cfg = load_config(REPO / "configs" / "emoji-vae.yaml", [f"data.path={tmp_path}"])
    assert cfg.model.kind == "autoencoder" and cfg.data.resolution == 32
    check_config(cfg)
    assert resolve_ae_preset(cfg.model.preset).downsample_factor == 4  # 32×32 → 8×8 latents


def test_posterior_noise_comes_from_the_step_generator():
    ae, x = KLAutoencoder(tiny_vae()), torch.rand(3, 3, 16, 16) * 2 - 1

    def run(sample: bool, seed: int) -> torch.Tensor:
        return AutoencoderLoss("l2", 1.0, sample)(ae, x, None, torch.Generator().manual_seed(seed))

    assert torch.equal(run(True, 1), run(True, 1)) and not torch.equal(run(True, 1), run(True, 2))
    assert torch.equal(run(False, 1), run(False, 2))  # the posterior mean draws nothing
