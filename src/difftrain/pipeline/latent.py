"""Latent space of a run: which autoencoder, its geometry and hash, scaling, decoding to pixels.

A latent run keeps a copy of its autoencoder in `RUN/autoencoder/` (diffusers format,
safetensors), so the run directory alone is enough to resume, sample and evaluate it.
The denoiser sees x0 = (z - shift_factor) × scaling_factor (diffusers' convention), and
`Latents.to_images` inverts that before decoding.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import torch

from difftrain.config import Config, ConfigError
from difftrain.models.autoencoder import find_autoencoder_dir
from difftrain.models.autoencoder import load_autoencoder as _load_autoencoder

AE_SUBDIR = "autoencoder"  # inside an autoencoder run dir and inside a latent run dir
# Config keys that do not change what the encoder computes (so they do not key the cache).
_UNHASHED_KEYS = {"scaling_factor", "shift_factor", "force_upcast"}


def autoencoder_dir(path: str | Path, key: str = "latent.autoencoder") -> Path:
    """The diffusers folder of an autoencoder run dir (`PATH/autoencoder/`), PATH, or `vae/`."""
    try:
        return find_autoencoder_dir(path)
    except ConfigError as err:
        raise ConfigError(f"{key} = '{path}': {err}") from None


def run_autoencoder_dir(cfg: Config, run_dir: str | Path | None = None) -> Path:
    """A run's own autoencoder copy when it has one, else the configured latent.autoencoder."""
    if run_dir is not None and (Path(run_dir) / AE_SUBDIR / "config.json").is_file():
        return Path(run_dir) / AE_SUBDIR
    if cfg.latent.autoencoder is None:
        raise ConfigError("latent.autoencoder is null: this is a pixel-space run")
    return autoencoder_dir(cfg.latent.autoencoder)


@dataclass(frozen=True)
class Geometry:
    """What the denoiser needs to know about an autoencoder without loading its weights."""

    channels: int  # latent channels
    downsample: int  # pixel side / latent side
    in_channels: int  # image channels the encoder takes
    scaling_factor: float
    shift_factor: float


def read_geometry(ae_dir: Path, cfg: Config | None = None) -> Geometry:
    """Latent channels, downsampling and scaling from an AutoencoderKL config.json (validated)."""
    path = Path(ae_dir) / "config.json"
    try:
        conf = json.loads(path.read_text())
        channels = int(conf["latent_channels"])
        levels = len(conf["block_out_channels"])
        in_channels = int(conf.get("in_channels", 3))
        scale = float(conf.get("scaling_factor") or 1.0)
        shift = float(conf.get("shift_factor") or 0.0)
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ConfigError(
            f"{path}: not a readable AutoencoderKL config ({type(err).__name__}: {err})"
        ) from None
    if not (0 < channels <= 64 and 0 < levels <= 8 and in_channels in (1, 3)):
        raise ConfigError(f"{path}: implausible autoencoder geometry in config.json")
    if cfg is not None and cfg.latent.scaling_factor is not None:
        scale = cfg.latent.scaling_factor
    return Geometry(channels, 2 ** (levels - 1), in_channels, scale, shift)


def sample_shape(cfg: Config, run_dir: str | Path | None = None) -> tuple[int, int, int]:
    """(C, H, W) the denoiser works in: pixels, the autoencoder's latents, or C×1×L windows."""
    if cfg.data.source == "sequence":  # channels are known from the run's sequence.json
        from difftrain.pipeline.sequence import SequenceInfo

        if run_dir is None:
            raise ConfigError("a sequence run's shape is read from its run directory")
        return SequenceInfo.load(Path(run_dir)).shape
    res = cfg.data.resolution
    if cfg.latent.autoencoder is None:
        return (cfg.data.channels, res, res)
    g = read_geometry(run_autoencoder_dir(cfg, run_dir), cfg)
    return (g.channels, res // g.downsample, res // g.downsample)


def check_latent_config(cfg: Config, unet_downsample: int) -> None:
    """Resolution divisible by AE × U-Net downsampling; channels agree; augmentations cacheable."""
    if cfg.latent.autoencoder is None:
        return
    g = read_geometry(autoencoder_dir(cfg.latent.autoencoder), cfg)
    need = g.downsample * unet_downsample
    res = cfg.data.resolution
    if res % need:
        raise ConfigError(
            f"data.resolution = {res}: must be divisible by {need} = {g.downsample} (the "
            f"autoencoder's downsampling) × {unet_downsample} (model.preset "
            f"{cfg.model.preset!r}); try {max(need, res // need * need)}"
        )
    if g.in_channels != cfg.data.channels:
        raise ConfigError(
            f"data.channels = {cfg.data.channels} but the autoencoder at "
            f"'{cfg.latent.autoencoder}' takes {g.in_channels}-channel images; set "
            f"data.channels = {g.in_channels}"
        )
    if cfg.data.buckets.enabled or cfg.data.resize == "random_crop":
        raise ConfigError(
            "latent.autoencoder does not combine with data.buckets or data.resize = "
            "'random_crop' (cached latents have one fixed geometry); turn those off"
        )
    cache_dir = cfg.latent.cache_dir
    if cfg.latent.cache and cache_dir is not None and cache_dir.exists() and not cache_dir.is_dir():
        raise ConfigError(f"latent.cache_dir = '{cache_dir}': is a file; point it at a folder")
    if cfg.eval.every and "nll" in cfg.eval.metrics:
        raise ConfigError(
            "eval.metrics has nll: a latent model's likelihood would be of latents, not of "
            "images; remove nll from eval.metrics"
        )
    a = cfg.data.augment
    uncached = [k for k in ("rotate", "resized_crop", "color_jitter") if getattr(a, k) > 0]
    if uncached and cfg.latent.cache:
        raise ConfigError(
            f"data.augment.{uncached[0]} > 0 cannot be applied to cached latents (only flips are "
            "cached); set latent.cache = false to encode every step, or turn it off"
        )


def load_autoencoder(path: str | Path):
    """The frozen AutoencoderKL at an autoencoder run dir or diffusers folder (safetensors)."""
    try:
        vae = _load_autoencoder(path)
    except ConfigError as err:
        raise ConfigError(f"autoencoder '{path}': {err}") from None
    return vae.eval().requires_grad_(False)


def autoencoder_hash(vae) -> str:
    """sha256 of the weights (names, dtypes, shapes, bytes) and the config that shapes encoding."""
    h = hashlib.sha256()
    conf = {k: v for k, v in dict(vae.config).items() if not k.startswith("_")}
    conf = {k: v for k, v in conf.items() if k not in _UNHASHED_KEYS}
    h.update(json.dumps(conf, sort_keys=True, default=str).encode())
    for name, t in sorted(vae.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def install_autoencoder(vae, run_dir: Path, ae_hash: str) -> None:
    """Save a copy into RUN/autoencoder/ (atomically); on resume check it is the same one."""
    dest = run_dir / AE_SUBDIR
    if dest.exists():
        copy = load_autoencoder(dest)
        if autoencoder_hash(copy) != ae_hash:
            raise ConfigError(
                f"latent.autoencoder differs from the one this run was trained with ({dest}); "
                "resume with the original autoencoder or start a new train.run_dir"
            )
        return
    tmp = run_dir / f".{AE_SUBDIR}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        vae.save_pretrained(tmp, safe_serialization=True)
        os.rename(tmp, dest)
    finally:
        if tmp.exists():  # ours: a failed save or a concurrent writer won the rename
            shutil.rmtree(tmp)


class Latents:
    """Maps between pixels in [-1, 1] and the denoiser's scaled latents."""

    def __init__(self, vae, scaling_factor: float, shift_factor: float = 0.0):
        self.vae, self.scale, self.shift = vae, scaling_factor, shift_factor

    @classmethod
    def for_config(cls, cfg: Config, vae) -> Latents:
        scale = cfg.latent.scaling_factor or vae.config.scaling_factor
        return cls(vae, float(scale), float(getattr(vae.config, "shift_factor", None) or 0.0))

    def to_model(self, z: torch.Tensor) -> torch.Tensor:
        """Autoencoder latents → the denoiser's x0."""
        return (z - self.shift) * self.scale

    @torch.no_grad()
    def encode(self, pixels: torch.Tensor, generator: torch.Generator | None = None):
        """(mean, logvar) of the posterior, or one draw of x0 when `generator` is given."""
        dev = next(self.vae.parameters()).device
        with torch.autocast(dev.type, enabled=False):  # the VAE stays float32 (fp16 overflows)
            dist = self.vae.encode(pixels.to(dev, torch.float32)).latent_dist
        if generator is None:
            return dist.mean, dist.logvar
        eps = torch.randn(dist.mean.shape, generator=generator).to(dev)
        return self.to_model(dist.mean + dist.std * eps)

    @torch.no_grad()
    def to_images(self, x: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
        """The denoiser's x0 → decoded pixels in [-1, 1] (float32, on x's device)."""
        dev = next(self.vae.parameters()).device
        out = []
        for i in range(0, len(x), batch_size):
            z = x[i : i + batch_size].to(dev, torch.float32) / self.scale + self.shift
            with torch.autocast(dev.type, enabled=False):  # float32 decode under mixed precision
                out.append(self.vae.decode(z).sample.clamp(-1, 1).to(x.device))
        return torch.cat(out) if out else x
