"""One generation request, checked against the loaded model, run batch by batch.

`difftrain sample`, the server and its web page all build a `GenerationRequest` and call
`run_request` (or `run_merged` to share a forward pass between compatible requests), which call
`pipeline.generate.generate`: image i of a request is a function of (seed, first_index + i) and
the request's settings only, so one seed gives one image everywhere.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from difftrain.config import ConfigError
from difftrain.data.transforms import to_uint8
from difftrain.pipeline.build import build_sigmas, check_schedule, sampler_options
from difftrain.pipeline.generate import default_labels, generate
from difftrain.pipeline.inputs import ImageSource, load_init_image, load_mask
from difftrain.pipeline.run import LoadedRun
from difftrain.samplers import SAMPLERS


@dataclass(frozen=True)
class Limits:
    """Upper bounds a request must respect; the server passes tighter ones than the CLI."""

    max_num: int = 100_000  # one command; more images = another seed or first_index
    max_steps: int = 10_000
    max_resample: int = 100
    max_prompt_chars: int = 2_000
    max_index: int = 2**62  # seeds and first_index stay far inside the generators' 63 bits


@dataclass
class GenerationRequest:
    """What to generate; None means "the run's configured default" (its `sample:` section)."""

    num: int = 1
    seed: int = 0
    first_index: int = 0
    class_label: int | None = None
    prompt: str | None = None
    negative_prompt: str | None = None
    sampler: str | None = None
    steps: int | None = None
    schedule: str | None = None
    guidance: float | None = None
    guidance_interval: tuple[float, float] | None = None
    eta: float | None = None
    s_churn: float | None = None
    init_image: ImageSource | None = field(default=None, repr=False)
    mask: ImageSource | None = field(default=None, repr=False)
    strength: float | None = None
    resample: int = 1
    size: int | None = None  # the model's side in pixels; only that size is allowed


@dataclass
class Plan:
    """A request resolved against one model: everything `generate` needs, already checked."""

    request: GenerationRequest
    sampler: str
    steps: int
    schedule: str
    sigmas: torch.Tensor
    options: dict
    guidance: float
    interval: tuple[float, float] | None
    labels: torch.Tensor | None  # one condition row per image (class ids; token ids for text)
    null_cond: int | torch.Tensor | None  # null class, or token ids 1×L of "" / the negative
    shape: tuple[int, ...]
    init: torch.Tensor | None = None
    mask: torch.Tensor | None = None
    strength: float = 1.0

    @property
    def num(self) -> int:
        return self.request.num

    def batch_key(self) -> tuple | None:
        """Plans with equal keys can share one forward pass; None = this one runs alone."""
        if self.init is not None:
            return None  # img2img/inpainting carry per-request images and strength
        return (
            self.sampler,
            self.steps,
            self.schedule,
            tuple(sorted(self.options.items())),
            self.guidance,
            self.interval,
            self.labels is None,
            self.shape,
            # a text null row (the negative prompt) is shared by the whole merged batch
            tuple(self.null_cond.flatten().tolist())
            if isinstance(self.null_cond, torch.Tensor)
            else self.null_cond,
        )

    def info(self) -> dict:
        """The settings actually used (for sample.json and the server's answers)."""
        req = self.request
        return {
            "num": req.num,
            "seed": req.seed,
            "first_index": req.first_index,
            "sampler": self.sampler,
            "steps": self.steps,
            "schedule": self.schedule,
            "options": self.options,
            "guidance": self.guidance,
            "guidance_interval": list(self.interval) if self.interval else None,
            "class_label": req.class_label,
            "prompt": req.prompt,
            "strength": self.strength if self.init is not None else None,
            "resample": req.resample,
        }


@dataclass
class ImageBatch:
    """Consecutive images of one request: uint8 N×C×H×W on the CPU, with what made each."""

    images: torch.Tensor
    start: int  # position of the first image within the request (0-based)
    seed: int
    indices: list[int]  # the generator index of each image: first_index + position
    labels: list[int] | None


def _check_range(name: str, value: float | None, lo: float, hi: float) -> None:
    if value is not None and not lo <= value <= hi:
        raise ConfigError(f"{name} = {value}: allowed {lo}..{hi}")


def plan_request(run: LoadedRun, req: GenerationRequest, limits: Limits = Limits()) -> Plan:
    """Check `req` against the model and the limits (ConfigError naming the field and the fix)."""
    cfg, k = run.config, run.num_classes
    _check_range("num", req.num, 1, limits.max_num)
    _check_range("seed", req.seed, 0, limits.max_index)
    _check_range("first_index", req.first_index, 0, limits.max_index)
    _check_range("steps", req.steps, 1, limits.max_steps)
    _check_range("resample", req.resample, 1, limits.max_resample)
    _check_range("guidance", req.guidance, 0.0, 100.0)
    _check_range("strength", req.strength, 0.0, 1.0)
    _check_range("eta", req.eta, 0.0, 1.0)
    _check_range("s_churn", req.s_churn, 0.0, 1000.0)
    sampler = cfg.sample.sampler if req.sampler is None else req.sampler
    if sampler not in SAMPLERS:
        raise ConfigError(f"sampler {sampler!r}: unknown (allowed: {', '.join(SAMPLERS)})")
    steps = cfg.sample.steps if req.steps is None else req.steps
    schedule = cfg.sample.schedule if req.schedule is None else req.schedule
    eta = req.eta if req.eta is not None else (cfg.sample.eta if sampler == "ddim" else None)
    s_churn = req.s_churn
    if s_churn is None and sampler == "edm-stochastic":
        s_churn = cfg.sample.s_churn
    options = sampler_options(sampler, eta, s_churn)
    check_schedule(cfg.diffusion.objective, schedule)  # also "" (build_sigmas would default it)
    sigmas = build_sigmas(cfg, steps, schedule)
    interval = req.guidance_interval
    if interval is None:
        interval = cfg.sample.guidance_interval
    if interval is not None:
        interval = (float(interval[0]), float(interval[1]))
        if not 0 <= interval[0] < interval[1]:
            raise ConfigError(f"guidance_interval = {list(interval)}: needs 0 <= lo < hi")
    guidance = cfg.sample.guidance if req.guidance is None else float(req.guidance)

    shape = tuple(getattr(run, "sample_shape", None) or ())  # latent models: the latent shape
    res, ch = cfg.data.resolution, cfg.data.channels
    if not shape:
        shape = (ch, res, res)
    if req.size is not None and req.size != res:
        raise ConfigError(f"size = {req.size}: this model generates {res}x{res} images only")

    labels, null_cond = _condition(run, req, k, guidance, limits)
    if guidance != 1.0 and labels is None:
        raise ConfigError(
            f"guidance = {guidance}: needs a conditional model (class or prompt); "
            "this one is unconditional, leave guidance at 1"
        )

    plan = Plan(
        req, sampler, steps, schedule, sigmas, options, guidance, interval, labels, null_cond, shape
    )
    _plan_init_image(run, req, plan)
    return plan


def _condition(
    run: LoadedRun, req: GenerationRequest, k: int | None, guidance: float, limits: Limits
) -> tuple[torch.Tensor | None, int | None]:
    """Per-image condition rows and the null condition used by classifier-free guidance."""
    for name in ("prompt", "negative_prompt"):
        text = getattr(req, name)
        if text is not None and len(text) > limits.max_prompt_chars:
            raise ConfigError(f"{name}: {len(text)} characters; at most {limits.max_prompt_chars}")
    text_model = getattr(run, "text", None) is not None
    if req.prompt is not None or req.negative_prompt is not None or text_model:
        # Hook for text-conditioned models: a run that can encode prompts exposes
        # `encode_prompts(prompts, negative, num) -> (cond rows, null cond)`; no prompt is "".
        encode = getattr(run, "encode_prompts", None)
        if encode is None or getattr(run, "text", True) is None:
            raise ConfigError(
                "prompt: this model is not text-conditioned; drop the prompt"
                + (" or choose a class with class_label" if k is not None else "")
            )
        if req.class_label is not None:
            raise ConfigError("class_label: this model is text-conditioned; give a prompt instead")
        return encode([req.prompt or ""] * req.num, req.negative_prompt, req.num)
    if req.class_label is not None:
        if k is None:
            raise ConfigError("class_label: this model is unconditional; drop it")
        if not 0 <= req.class_label < k:
            names = run.class_names or []
            shown = ", ".join(f"{i}={n}" for i, n in enumerate(names[:20]))
            raise ConfigError(
                f"class_label = {req.class_label}: allowed 0..{k - 1}"
                + (f" ({shown}{', ...' if len(names) > 20 else ''})" if shown else "")
            )
        return torch.full((req.num,), req.class_label, dtype=torch.long), k
    # No class asked: contiguous blocks of every class (sample i has label i * k // num).
    return default_labels(req.num, k), k


def _plan_init_image(run: LoadedRun, req: GenerationRequest, plan: Plan) -> None:
    """img2img / inpainting inputs, decoded safely and fitted like training images."""
    if req.mask is not None and req.init_image is None:
        raise ConfigError("mask needs init_image (the image whose masked-out pixels are kept)")
    if req.strength is not None and req.init_image is None:
        raise ConfigError("strength needs init_image")
    if req.init_image is None:
        return
    latents = getattr(run, "latents", None)
    if latents is not None and req.mask is not None:
        raise ConfigError(
            "mask: inpainting keeps pixels exactly, which a latent model cannot; drop the mask "
            "(img2img with init_image alone works)"
        )
    d = run.config.data
    plan.init, size = load_init_image(
        req.init_image, d.channels, d.resolution, d.resize, d.max_pixels
    )
    if latents is not None:  # img2img (SDEdit) from the image's posterior mean, in latents
        plan.init = latents.to_model(latents.encode(plan.init[None])[0])[0].cpu()
    if req.mask is not None:
        plan.mask = load_mask(req.mask, size, d.resolution, d.resize, d.max_pixels)
    plan.strength = req.strength if req.strength is not None else (1.0 if req.mask else 0.8)


def _device(run: LoadedRun) -> torch.device:
    return next(iter(run.denoiser.parameters()), torch.empty(0)).device


def _to_uint8(run: LoadedRun, x: torch.Tensor) -> torch.Tensor:
    """Samples → uint8 images; latent models decode through `run.to_images` first."""
    decode = getattr(run, "to_images", None)
    if callable(decode):
        x = decode(x)
    return x.cpu() if x.dtype == torch.uint8 else to_uint8(x.cpu())


def _generate(run: LoadedRun, plan: Plan, n: int, **kw) -> torch.Tensor:
    return generate(
        run.denoiser,
        num=n,
        shape=plan.shape,
        null_class=plan.null_cond,
        sampler=plan.sampler,
        steps=plan.steps,
        guidance=plan.guidance,
        sigmas=plan.sigmas,
        sampler_options=plan.options,
        guidance_interval=plan.interval,
        init_images=plan.init,
        strength=plan.strength,
        mask=plan.mask,
        resample=plan.request.resample,
        device=_device(run),
        batch_size=n,
        **kw,
    )


def run_request(
    run: LoadedRun,
    req: GenerationRequest | Plan,
    *,
    batch_size: int = 64,
    limits: Limits = Limits(),
    callback: Callable[[int], None] | None = None,
) -> Iterator[ImageBatch]:
    """Generate the request's images, yielding each batch as soon as it is done (flat memory)."""
    plan = req if isinstance(req, Plan) else plan_request(run, req, limits)
    r = plan.request
    for start in range(0, r.num, batch_size):
        n = min(batch_size, r.num - start)
        labels = None if plan.labels is None else plan.labels[start : start + n]
        x = _generate(run, plan, n, seed=r.seed, first_index=r.first_index + start, labels=labels)
        yield _batch(run, plan, x, start, labels)
        if callback is not None:
            callback(n)


def run_request_tensors(
    run: LoadedRun, plan: Plan, *, batch_size: int = 64
) -> Iterator[torch.Tensor]:
    """As run_request, but the denoiser's float32 outputs (sequence windows, not images)."""
    r = plan.request
    for start in range(0, r.num, batch_size):
        n = min(batch_size, r.num - start)
        labels = None if plan.labels is None else plan.labels[start : start + n]
        yield _generate(run, plan, n, seed=r.seed, first_index=r.first_index + start, labels=labels)


def run_merged(run: LoadedRun, plans: list[Plan]) -> list[ImageBatch]:
    """Run plans with one batch_key in a single forward pass; one ImageBatch per plan.

    Every image keeps its own (seed, index) generator, so the result equals running each alone.
    """
    if len({p.batch_key() for p in plans}) != 1 or plans[0].batch_key() is None:
        raise ValueError("run_merged needs plans with one and the same (non-None) batch_key")
    first = plans[0]
    rows = [(p.request.seed, p.request.first_index + i) for p in plans for i in range(p.num)]
    labels = None if first.labels is None else torch.cat([p.labels for p in plans])
    x = _generate(run, first, len(rows), seed=0, labels=labels, rows=rows)
    out, start = [], 0
    for p in plans:
        out.append(_batch(run, p, x[start : start + p.num], 0, p.labels))
        start += p.num
    return out


def _batch(
    run: LoadedRun, plan: Plan, x: torch.Tensor, start: int, labels: torch.Tensor | None
) -> ImageBatch:
    r = plan.request
    first = r.first_index + start
    return ImageBatch(
        images=_to_uint8(run, x),
        start=start,
        seed=r.seed,
        indices=list(range(first, first + x.shape[0])),
        labels=None if labels is None or labels.dim() != 1 else labels.tolist(),
    )


def request_dict(req: GenerationRequest) -> dict:
    """The request as JSON-safe values (file inputs by name or size)."""
    d = asdict(req)
    for key in ("init_image", "mask"):
        v = d[key]
        d[key] = str(v) if isinstance(v, Path) else (f"<{len(v)} bytes>" if v else None)
    return d
