"""Curriculum stages for the one loop: progressive resolution, a moving σ distribution, and an
easy-to-hard data order (`train.curriculum`).

Every stage is a pure function of the step, so a resumed or rolled-back run trains exactly as
an uninterrupted one: the loop asks for the step's σ distribution (`begin_step`) and batch
(`next_batch`); nothing here has state except the cached difficulty scores, whose key the
checkpoint records so a resume on changed data is refused instead of silently reordered.

- Resolution: while step < until_step of a stage, batches are area-downsampled to its
  resolution (pixels; a latent run's latents by the same factor — an approximation of encoding
  the smaller image). U-Nets and diffusers' DiT (sin-cos position embeddings recomputed for the
  input size) take any size divisible by their downsampling. Validation and grids stay at
  data.resolution.
- Noise: the objective's σ-distribution parameters (edm p_mean/p_std, flow
  logit_mean/logit_std) interpolated linearly between stage points, held outside them.
- Order (Hacohen & Weinshall 2019, linear pacing): step s draws its batch, without
  replacement, from the easiest ⌈f(s)·N⌉ training images, f(s) = start + (1 − start)·s/until
  (capped at 1); from until_step on, the ordinary seeded epochs. Difficulty = per-image loss of
  a short probe run (train/difficulty.py), cached in the run directory.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F

from difftrain.config import Config, ConfigError
from difftrain.data.order import mix_seed

NOISE_KEYS = {"edm": ("p_mean", "p_std"), "flow": ("logit_mean", "logit_std")}


def check_config_curriculum(cfg: Config) -> None:
    """Check train.curriculum against the other sections (run after pipeline's check_config)."""
    cur = cfg.train.curriculum
    if not (cur.resolution or cur.noise or cur.order):
        return
    factor = latent_side = None
    if cfg.model.kind == "diffusion" and cfg.data.source != "sequence" and cur.resolution:
        from difftrain.pipeline.backbone import model_preset
        from difftrain.pipeline.latent import sample_shape

        if cfg.model.pretrained is not None:
            from difftrain.pipeline.pretrained import check_pretrained

            factor = check_pretrained(cfg)
        else:
            factor = model_preset(cfg).downsample_factor
        if cfg.latent.autoencoder is not None:
            latent_side = sample_shape(cfg)[1]
    check_curriculum(cfg, factor, latent_side)


def check_curriculum(cfg: Config, factor: int | None, latent_side: int | None = None) -> None:
    """Cross-section checks of train.curriculum (ConfigError naming the key and the fix).

    `factor` is the backbone's downsampling; `latent_side` the side of a latent run's latents.
    """
    cur, d = cfg.train.curriculum, cfg.data
    used = bool(cur.resolution or cur.noise or cur.order)
    if used and cfg.model.kind != "diffusion":
        raise ConfigError(
            "train.curriculum applies to diffusion runs; remove it for model.kind = "
            f"{cfg.model.kind!r}"
        )
    if used and d.source == "sequence":
        raise ConfigError(
            "train.curriculum does not support data.source = sequence yet; remove train.curriculum"
        )
    for i, st in enumerate(cur.resolution):
        key = f"train.curriculum.resolution[{i}].resolution = {st.resolution}"
        if st.resolution >= d.resolution:
            raise ConfigError(
                f"{key}: a stage must be below data.resolution ({d.resolution}); the last "
                "stage is data.resolution itself"
            )
        side = st.resolution
        if latent_side is not None:
            if st.resolution * latent_side % d.resolution:
                raise ConfigError(
                    f"{key}: must be a multiple of the autoencoder's downsampling "
                    f"({d.resolution // latent_side}) so the latents shrink by a whole factor"
                )
            side = st.resolution * latent_side // d.resolution
        if factor and side % factor:
            raise ConfigError(
                f"{key}: the model input ({side} px) must be divisible by {factor}, the "
                f"downsampling of model.preset {cfg.model.preset!r}"
            )
    if cur.resolution and d.buckets.enabled:
        raise ConfigError(
            "train.curriculum.resolution does not combine with data.buckets.enabled (buckets fix "
            "each batch's shape); turn one off"
        )
    if cur.noise:
        keys = NOISE_KEYS.get(cfg.diffusion.objective)
        if keys is None:
            raise ConfigError(
                f"train.curriculum.noise needs diffusion.objective edm or flow (a log-normal or "
                f"logit-normal σ distribution); {cfg.diffusion.objective!r} draws timesteps "
                "uniformly. Remove train.curriculum.noise or change the objective"
            )
        for i, st in enumerate(cur.noise):
            wrong = [
                k for ks in NOISE_KEYS.values() for k in ks if k not in keys and getattr(st, k)
            ]
            if wrong:
                raise ConfigError(
                    f"train.curriculum.noise[{i}].{wrong[0]} is not used by diffusion.objective "
                    f"{cfg.diffusion.objective!r}; set {' / '.join(keys)} instead"
                )
            if all(getattr(st, k) is None for k in keys):
                raise ConfigError(
                    f"train.curriculum.noise[{i}] (step {st.step}) sets none of "
                    f"{' / '.join(keys)}; give at least one"
                )
    if cur.order is not None:
        why = (
            "data.loader = stream"
            if d.loader != "memory"
            else "latent.autoencoder"
            if cfg.latent.autoencoder is not None
            else "text.encoder"
            if cfg.text.encoder != "none"
            else "model.pretrained"
            if cfg.model.pretrained is not None
            else None
        )
        if why:
            raise ConfigError(
                f"train.curriculum.order needs in-memory pixel data with class or no "
                f"conditioning; it does not support {why} yet. Remove train.curriculum.order"
            )


def stage_resolution(cfg: Config, step: int) -> int:
    """The training resolution (pixels) at `step`."""
    for st in cfg.train.curriculum.resolution:
        if step < st.until_step:
            return st.resolution
    return cfg.data.resolution


def noise_params(cfg: Config, step: int) -> dict[str, float]:
    """The objective's σ-distribution parameters at `step` ({} without a noise curriculum)."""
    points, obj = cfg.train.curriculum.noise, cfg.diffusion.objective
    if not points:
        return {}
    out = {}
    for k in NOISE_KEYS[obj]:
        base = getattr(cfg.diffusion, k)
        xs = [p.step for p in points]
        ys = [base if getattr(p, k) is None else getattr(p, k) for p in points]
        if step <= xs[0]:
            out[k] = ys[0]
        elif step >= xs[-1]:
            out[k] = ys[-1]
        else:
            j = next(i for i in range(1, len(xs)) if step < xs[i])
            t = (step - xs[j - 1]) / (xs[j] - xs[j - 1])
            out[k] = ys[j - 1] + t * (ys[j] - ys[j - 1])
    return out


def pool_size(cfg: Config, step: int, n: int) -> int | None:
    """How many of the easiest images step `step` draws from (None: the whole set, epochs)."""
    order = cfg.train.curriculum.order
    if order is None or step >= order.until_step:
        return None
    f = order.start_fraction + (1 - order.start_fraction) * step / order.until_step
    return min(n, max(cfg.train.batch_size, math.ceil(f * n)))


def resize_batch(x: torch.Tensor, side: int) -> torch.Tensor:
    """Area (box-filter) downsampling of a B×C×H×W batch to side×side; unchanged if already so."""
    if x.shape[-1] == side and x.shape[-2] == side:
        return x
    return F.interpolate(x.float(), size=(side, side), mode="area").to(x.dtype)


class Curriculum:
    """What the loop asks each step; inert (plain batches, objective untouched) when unset."""

    def __init__(self, cfg: Config, easy_order: torch.Tensor | None = None, key: str = ""):
        self.cfg, self.easy_order, self.key = cfg, easy_order, key
        self.active = bool(cfg.train.curriculum.resolution or cfg.train.curriculum.noise)
        self.active |= easy_order is not None

    @classmethod
    def build(cls, cfg: Config, data, run_dir: Path, acc, log=print) -> Curriculum:
        """With an order stage: difficulty from the cache or a probe (main process writes it)."""
        if cfg.train.curriculum.order is None:
            return cls(cfg)
        from difftrain.train.difficulty import difficulty

        images = _memory(data).data  # the training split, decoded (ImageData)
        labels = images.labels if data.num_classes is not None else None
        args = (cfg, run_dir, images.images, labels, data.num_classes, acc.device)
        if acc.is_main_process:
            scores, key = difficulty(*args, write=True, log=log)
        acc.wait_for_everyone()
        if not acc.is_main_process:  # reads what the main process wrote: one order for all
            scores, key = difficulty(*args, write=False, log=lambda *_: None)
        # Easiest first; ties broken by index, so the order is a function of the scores only.
        order = torch.argsort(scores, stable=True)
        return cls(cfg, order, key)

    def state(self) -> dict:
        """What a checkpoint records (RunState.curriculum)."""
        return {"difficulty_key": self.key} if self.key else {}

    def check_resume(self, recorded: dict, where: Path) -> None:
        """Refuse to continue a run whose easy-to-hard order would now be different."""
        old = recorded.get("difficulty_key") if isinstance(recorded, dict) else None
        if self.key and old and old != self.key:
            raise ConfigError(
                f"{where} was trained with another easy-to-hard order (difficulty key "
                f"{str(old)[:12]}…, now {self.key[:12]}…): the data or train.curriculum.order "
                "changed. Restore them, or start a new train.run_dir"
            )

    def begin_step(self, objective, step: int) -> None:
        """Set the objective's σ distribution for `step` (noise stages)."""
        for k, v in noise_params(self.cfg, step).items():
            setattr(objective, k, v)

    def next_batch(self, data, step: int):
        """The batch of `step`: paced easy-to-hard rows, then the stage's resolution."""
        pool = None if self.easy_order is None else pool_size(self.cfg, step, len(data))
        if pool is None:
            batch = data.next()
        else:
            # Draws depend on (seed, step) only: no stream state to save, resume is exact.
            g = torch.Generator().manual_seed(mix_seed(self.cfg.train.seed, step, 0xC0))
            picks = self.easy_order[torch.randperm(pool, generator=g)[: self.cfg.train.batch_size]]
            aug = torch.Generator().manual_seed(mix_seed(self.cfg.train.seed, step, 0xC1))
            batch = _memory(data).batch_of(picks, aug)
        side = self.model_side(step, batch.x.shape[-1])
        if side is not None:
            batch.x = resize_batch(batch.x, side)
        return batch

    def model_side(self, step: int, full_side: int) -> int | None:
        """The side the model sees at `step`, for batches of `full_side` (pixels or latents)."""
        res = stage_resolution(self.cfg, step)
        if res == self.cfg.data.resolution:
            return None
        return res * full_side // self.cfg.data.resolution  # latents shrink by the same factor

    def log_metrics(self, step: int, n: int) -> dict[str, float]:
        """Scalars for the periodic log row: the stage of the step just trained."""
        if not self.active:
            return {}
        s = step - 1
        out = {f"curriculum/{k}": v for k, v in noise_params(self.cfg, s).items()}
        if self.cfg.train.curriculum.resolution:
            out["curriculum/resolution"] = stage_resolution(self.cfg, s)
        if self.easy_order is not None:
            out["curriculum/pool"] = pool_size(self.cfg, s, n) or n
        return out


def _memory(data):
    """The in-memory batches behind the loop's wrappers (WatchedBatches)."""
    inner = getattr(data, "inner", data)
    if not hasattr(inner, "batch_of"):
        raise ConfigError(
            "train.curriculum.order needs data.loader = memory (in-memory pixel batches)"
        )
    return inner
