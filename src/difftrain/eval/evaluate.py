"""Evaluate a denoiser: generate seeded samples, embed them, compare with real images.

One code path serves `difftrain evaluate` (a run directory, writes eval.json) and the training
loop (`TrainingEvaluator`, EMA weights every `eval.every` steps, returns scalars to log).
Metric keys name the feature space: FID in domain features (`fid_domain`) is a different number
from Inception FID (`fid_inception`) and the two are never compared.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from difftrain.config import Config, ConfigError
from difftrain.data import ImageData, to_uint8
from difftrain.eval import metrics as M
from difftrain.eval.features import FeatureNet, load_feature_net, run_extractor
from difftrain.eval.likelihood import nll_bits_per_dim
from difftrain.pipeline.build import build_sigmas
from difftrain.pipeline.generate import default_labels, generate

METRICS = ("fid", "kid", "pr", "acc", "nll")


@dataclass
class Extractor:
    """A feature network with its name ('domain' or 'inception') and provenance."""

    kind: str
    net: Callable
    info: dict = field(default_factory=dict)


def parse_metrics(text: str | list[str]) -> list[str]:
    """'fid,kid' → ['fid', 'kid'], checked against METRICS."""
    items = [m.strip() for m in (text.split(",") if isinstance(text, str) else text) if m.strip()]
    bad = [m for m in items if m not in METRICS]
    if bad or not items:
        raise ConfigError(
            f"--metrics {text!r}: unknown {bad or 'empty'} (allowed: {','.join(METRICS)})"
        )
    return list(dict.fromkeys(items))


def default_feature_net_dir(cfg: Config) -> Path:
    """Where `difftrain features train` saves and evaluation looks by default."""
    return Path(cfg.eval.feature_net or cfg.features.out or Path(cfg.train.run_dir) / "features")


def load_extractors(
    cfg: Config,
    metrics: list[str],
    features: str,
    feature_net: Path | None = None,
    inception_weights: Path | None = None,
) -> tuple[Extractor | None, FeatureNet | None]:
    """(extractor for fid/kid/pr, domain classifier for acc); each None when not needed."""
    need_feats = any(m in metrics for m in ("fid", "kid", "pr"))
    classifier = None
    if "acc" in metrics or (need_feats and features == "domain"):
        net, info = load_feature_net(feature_net or default_feature_net_dir(cfg))
        if info["spec"]["channels"] != cfg.data.channels:
            raise ConfigError(
                f"feature network has {info['spec']['channels']} channels but data.channels = "
                f"{cfg.data.channels}; train one on this data with `difftrain features train`"
            )
        classifier = net
        domain = Extractor(
            "domain",
            net,
            {
                "path": str(feature_net or default_feature_net_dir(cfg)),
                "val_accuracy": info.get("val_accuracy"),
            },
        )
    if not need_feats:
        return None, classifier
    if features == "inception":
        from difftrain.eval.inception import load_inception

        net, prov = load_inception(inception_weights or cfg.eval.inception_weights)
        return Extractor("inception", net, prov), classifier
    return domain, classifier


def reference_images(
    train: ImageData, val: ImageData, num: int, seed: int
) -> tuple[ImageData, str]:
    """`num` real images: from the held-out validation split when it is large enough."""
    pool, name = (val, "val") if len(val) >= num else (train, "train")
    if len(pool) < num:
        raise ConfigError(f"--num {num}: only {len(pool)} real images to compare with; lower --num")
    idx = torch.randperm(len(pool), generator=torch.Generator().manual_seed(seed))[:num]
    return pool.subset(idx.sort().values), name


class SampleQuality:
    """Real-image features computed once; then metrics of any batch of generated images."""

    def __init__(
        self,
        reference: ImageData,
        extractor: Extractor | None,
        classifier: FeatureNet | None,
        metrics: list[str],
        device: str | torch.device = "cpu",
        batch_size: int = 256,
    ):
        self.metrics, self.extractor, self.classifier = metrics, extractor, classifier
        self.device, self.batch_size = device, batch_size
        self.real_feats = None
        if extractor is not None:
            extractor.net.to(device)
            self.real_feats, _ = run_extractor(extractor.net, reference.images, batch_size, device)
        if classifier is not None:
            classifier.to(device)

    def __call__(self, fake_u8: torch.Tensor, labels: torch.Tensor | None) -> dict[str, float]:
        out: dict[str, float] = {}
        logits = None
        if self.extractor is not None:
            fake_feats, logits = run_extractor(
                self.extractor.net, fake_u8, self.batch_size, self.device
            )
            k = self.extractor.kind
            if "fid" in self.metrics:
                out[f"fid_{k}"] = M.fid(self.real_feats, fake_feats)
            if "kid" in self.metrics:
                mean, std = M.kid(self.real_feats, fake_feats, num_subsets=100, subset_size=1000)
                out[f"kid_{k}"], out[f"kid_{k}_std"] = mean, std
            if "pr" in self.metrics:
                pr = M.precision_recall(self.real_feats, fake_feats, k=3)
                out.update({f"{name}_{k}": v for name, v in pr.items()})
        if "acc" in self.metrics and self.classifier is not None:
            if labels is None:
                raise ConfigError("--metrics acc needs a class-conditional model; drop 'acc'")
            if logits is None or self.extractor.net is not self.classifier:
                _, logits = run_extractor(self.classifier, fake_u8, self.batch_size, self.device)
            out["acc"] = float((logits.argmax(1) == labels).double().mean())
        return out


def generate_for_eval(
    denoiser,
    cfg: Config,
    num: int,
    num_classes: int | None,
    *,
    sampler: str,
    steps: int,
    seed: int,
    guidance: float = 1.0,
    guidance_interval: tuple[float, float] | None = None,
    batch_size: int = 250,
    device="cpu",
    callback=None,
    to_images=None,
    shape: tuple[int, int, int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`num` uint8 samples with balanced class labels; sample i depends only on (seed, i).

    `to_images` (a LoadedRun's) decodes a latent model's samples to pixels.
    """
    from difftrain.pipeline.latent import sample_shape

    labels = default_labels(num, num_classes)
    images = generate(
        denoiser,
        num=num,
        shape=shape or sample_shape(cfg),
        seed=seed,
        labels=labels,
        null_class=num_classes,
        sampler=sampler,
        steps=steps,
        guidance=guidance,
        guidance_interval=guidance_interval,
        sigmas=build_sigmas(cfg, steps),  # the configured sample.schedule
        batch_size=batch_size,
        device=device,
        callback=callback,
    )
    if to_images is not None:
        images = to_images(images)
    return to_uint8(images), labels


def likelihood(
    denoiser,
    cfg: Config,
    data: ImageData,
    num: int,
    steps: int,
    seed: int,
    device="cpu",
    vlb_timesteps: int | None = None,
) -> dict[str, float]:
    """NLL in bits/dim of `num` held-out images (conditional on their labels when present):
    the probability-flow ODE for every model, plus the variational bound for VP models
    (all T terms, or an unbiased estimate from `vlb_timesteps` of them)."""
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(data), generator=gen)[:num].sort().values
    part = data.subset(idx)
    d = cfg.diffusion
    res = nll_bits_per_dim(
        denoiser,
        part.images,
        part.labels,
        sigma_min=d.sigma_min,
        sigma_max=d.sigma_max,
        steps=steps,
        seed=seed,
        device=device,
    )
    out = {"nll_bpd": res["bpd"], "nll_bpd_sem": res["bpd_sem"]}
    if d.objective in ("vp", "iddpm"):
        from difftrain.eval.vp_bound import vp_bound_bpd
        from difftrain.pipeline.build import vp_alphas_cumprod

        vlb = vp_bound_bpd(
            denoiser,
            part.images,
            part.labels,
            vp_alphas_cumprod(cfg),
            learned_variance=d.objective == "iddpm",
            timesteps=vlb_timesteps,
            seed=seed,
            device=device,
        )
        out.update(vlb_bpd=vlb["bpd"], vlb_bpd_sem=vlb["bpd_sem"])
    return out


class TrainingEvaluator:
    """In-training evaluation from the EMA weights; real features are computed once, here.

    Build it once after the data split; call it on `ema.model` when `due(step)`; log what it
    returns (keys 'eval/…', plain floats). Costs one generation of `eval.num` images.
    """

    def __init__(self, cfg: Config, train: ImageData, val: ImageData, device="cpu", to_images=None):
        from difftrain.samplers import SAMPLERS

        e = cfg.eval
        if e.sampler not in SAMPLERS:
            raise ConfigError(f"eval.sampler = {e.sampler!r}: allowed {', '.join(SAMPLERS)}")
        self.cfg, self.device, self.num_classes = cfg, device, train.num_classes
        self.metrics = [m for m in e.metrics if not (m == "acc" and train.num_classes is None)]
        extractor, classifier = load_extractors(cfg, self.metrics, e.features)
        reference, self.reference_split = reference_images(train, val, e.num, e.seed)
        self.quality = SampleQuality(reference, extractor, classifier, self.metrics, device)
        self.nll_data = val if len(val) else train
        self.to_images = to_images  # latent runs: samples are decoded before their features

    @classmethod
    def from_config(
        cls, cfg: Config, train: ImageData, val: ImageData, device="cpu"
    ) -> TrainingEvaluator | None:
        """None when eval.every = 0 (in-training evaluation off).

        A latent run's validation set carries its codec (`val.latents`): the real images are
        then read in pixels, with the same split, and samples are decoded before comparing.
        """
        if cfg.eval.every <= 0:
            return None
        latents = getattr(val, "latents", None)
        if latents is not None:
            from difftrain.data import load_data

            train, val = load_data(cfg.data).split(cfg.data.val_fraction, cfg.train.seed)
            return cls(cfg, train, val, device, to_images=latents.to_images)
        return cls(cfg, train, val, device)

    def due(self, step: int) -> bool:
        return step % self.cfg.eval.every == 0 or step == self.cfg.train.max_steps

    @torch.no_grad()
    def __call__(self, denoiser, step: int | None = None) -> dict[str, float]:
        e, t0 = self.cfg.eval, time.time()
        was_training = getattr(denoiser, "training", False)
        if hasattr(denoiser, "eval"):
            denoiser.eval()
        try:
            fake, labels = generate_for_eval(
                denoiser,
                self.cfg,
                e.num,
                self.num_classes,
                sampler=e.sampler,
                steps=e.steps,
                seed=e.seed,
                guidance=self.cfg.sample.guidance,  # the model as it is sampled
                guidance_interval=self.cfg.sample.guidance_interval,
                device=self.device,
                to_images=self.to_images,
            )
            out = self.quality(fake, labels)
            if "nll" in self.metrics:
                out.update(
                    likelihood(
                        denoiser,
                        self.cfg,
                        self.nll_data,
                        e.nll_num,
                        e.nll_steps,
                        e.seed,
                        self.device,
                        vlb_timesteps=100,  # unbiased estimate; `difftrain evaluate` sums all T
                    )
                )
        finally:
            if was_training:
                denoiser.train()
        out["seconds"] = time.time() - t0
        return {f"eval/{k}": float(v) for k, v in out.items()}
