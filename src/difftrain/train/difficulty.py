"""Per-sample difficulty for an easy-to-hard data order: the loss of a short probe run, cached.

The probe is a fresh denoiser of the run's own architecture and objective, trained for
`train.curriculum.order.probe_steps` steps on the training images (no augmentation), then
scored per image: the λ(σ)-weighted denoising error averaged over a fixed log-spaced σ grid with
one fixed noise draw (the validation loss of eval/validation.py, kept per image). Low = easy.

The scores are cached in the run directory as `curriculum/difficulty-<key>.safetensors`; the key
hashes the training images, labels and every setting the probe depends on, so a cache made for
other data or settings is never read. The file is untrusted: it must resolve inside the run
directory, carry the full key, and hold one finite float per training image, else it is rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from difftrain.config import Config, ConfigError
from difftrain.data import to_model_range
from difftrain.data.order import mix_seed
from difftrain.eval.validation import sigma_grid
from difftrain.pipeline.build import build_denoiser, build_objective

CACHE_DIR = "curriculum"
MAX_CACHE_BYTES = 64 * 2**20  # one float per image: far above any in-memory dataset


def difficulty_key(cfg: Config, images: torch.Tensor, labels: torch.Tensor | None) -> str:
    """SHA-256 over the training data and every setting the probe's scores depend on."""
    h = hashlib.sha256()
    settings = {
        "version": 1,
        "order": cfg.train.curriculum.order.model_dump(include={"probe_steps", "probe_batch_size"}),
        "model": cfg.model.model_dump(mode="json"),
        "diffusion": cfg.diffusion.model_dump(mode="json"),
        "lr": cfg.optim.lr,
        "seed": cfg.train.seed,
    }
    h.update(json.dumps(settings, sort_keys=True).encode())
    h.update(str(tuple(images.shape)).encode())
    h.update(images.contiguous().numpy().tobytes())
    if labels is not None:
        h.update(labels.to(torch.int64).contiguous().numpy().tobytes())
    return h.hexdigest()


def probe_losses(
    cfg: Config,
    images: torch.Tensor,
    labels: torch.Tensor | None,
    num_classes: int | None,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Per-image loss [N] of a briefly trained probe denoiser (uint8 images N×C×H×W)."""
    # The probe must not move the global RNG: a resumed run reads the cache and skips it.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(mix_seed(cfg.train.seed, 0xD1FF))  # the probe's own init
        return _probe(cfg, images, labels, num_classes, device)


def _probe(cfg: Config, images, labels, num_classes, device) -> torch.Tensor:
    order, seed = cfg.train.curriculum.order, cfg.train.seed
    model = build_denoiser(cfg, num_classes).to(device)
    objective = build_objective(cfg)  # the run's σ distribution, not a curriculum's
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.optim.lr)
    x_all = to_model_range(images)
    gen = torch.Generator().manual_seed(mix_seed(seed, 0x9B0BE))
    n, b = len(x_all), min(order.probe_batch_size, len(x_all))
    model.train()
    for _ in range(order.probe_steps):
        idx = torch.randint(n, (b,), generator=gen)
        cond = None if labels is None else labels[idx].to(device)
        loss = objective(model, x_all[idx].to(device), cond, gen).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.optim.grad_clip:
            torch.nn.utils.clip_grad_norm_(params, cfg.optim.grad_clip)
        opt.step()
    return _score(model.eval(), x_all, labels, cfg.diffusion.sigma_data, seed, device)


@torch.no_grad()
def _score(model, x_all, labels, sigma_data: float, seed: int, device, batch: int = 256):
    """λ(σ)-weighted x0 error per image, averaged over 8 log-spaced σ (fixed noise)."""
    noise = torch.randn(x_all.shape, generator=torch.Generator().manual_seed(mix_seed(seed, 0x5C)))
    out = torch.zeros(len(x_all))
    sigmas = sigma_grid(n=8)
    for s in sigmas:
        w = (s**2 + sigma_data**2) / (s * sigma_data) ** 2
        for i in range(0, len(x_all), batch):
            x0 = x_all[i : i + batch].to(device)
            cond = None if labels is None else labels[i : i + batch].to(device)
            sig = torch.full((len(x0),), s, device=device)
            d = model(x0 + s * noise[i : i + batch].to(device), sig, cond)
            out[i : i + batch] += (w * (d.float() - x0) ** 2).flatten(1).mean(1).cpu()
    return out / len(sigmas)


def cache_path(run_dir: Path, key: str) -> Path:
    """Where the scores for `key` live; refuses a path that leaves the run directory."""
    root = Path(run_dir).resolve()
    path = Path(run_dir) / CACHE_DIR / f"difficulty-{key[:32]}.safetensors"
    if not path.resolve().is_relative_to(root):  # a symlink planted in the run directory
        raise ConfigError(
            f"{path} resolves outside the run directory {root}; remove that link (difftrain "
            "never follows names out of a run directory)"
        )
    return path


def read_cache(path: Path, key: str, n: int) -> tuple[torch.Tensor | None, str]:
    """(scores, '') from a valid cache file, else (None, why it was not used)."""
    if not path.is_file():
        return None, "no cache yet"
    if path.stat().st_size > MAX_CACHE_BYTES:
        return None, f"{path} is too large to be a difficulty cache"
    try:
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        return None, f"{path} is unreadable ({err})"
    loss = tensors.get("loss")
    if meta.get("key") != key:
        return None, f"{path} was made for other data or settings"
    if loss is None or loss.dtype != torch.float32 or tuple(loss.shape) != (n,):
        return None, f"{path} does not hold {n} float32 scores"
    if not torch.isfinite(loss).all():
        return None, f"{path} holds non-finite scores"
    return loss, ""


def write_cache(path: Path, key: str, loss: torch.Tensor) -> None:
    """Atomically: a killed write leaves no half-written cache under the real name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    save_file({"loss": loss.float().contiguous()}, str(tmp), metadata={"key": key})
    os.replace(tmp, path)


def difficulty(
    cfg: Config,
    run_dir: Path,
    images: torch.Tensor,
    labels: torch.Tensor | None,
    num_classes: int | None,
    device: torch.device | str = "cpu",
    write: bool = True,
    log=print,
) -> tuple[torch.Tensor, str]:
    """(per-image scores, key): from the run directory's cache, else from a probe run."""
    key = difficulty_key(cfg, images, labels)
    path = cache_path(run_dir, key)
    loss, why = read_cache(path, key, len(images))
    if loss is not None:
        log(f"curriculum: difficulty from {path}")
        return loss, key
    log(f"curriculum: probe run of {cfg.train.curriculum.order.probe_steps} steps ({why})")
    loss = probe_losses(cfg, images, labels, num_classes, device)
    if write:
        write_cache(path, key, loss)
    return loss, key
