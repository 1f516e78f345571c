"""The training loop. One function, read top to bottom; each stage has a comment header."""

from __future__ import annotations

import json
from contextlib import nullcontext
import math
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from tqdm.auto import tqdm

from difftrain.config import Config, ConfigError, dump_config
from difftrain.data import ImageData, load_data, random_hflip, to_model_range, to_uint8
from difftrain.eval.validation import sigma_grid, validation_loss
from difftrain.pipeline.build import build_denoiser, build_objective, check_config
from difftrain.pipeline.checkpoint import (
    flatten_state,
    latest_good_checkpoint,
    prune_checkpoints,
    read_checkpoint,
    unflatten_state,
    write_checkpoint,
)
from difftrain.pipeline.generate import default_labels, generate, make_grid, save_image
from difftrain.train.ema import EMA, ema_beta
from difftrain.train.metrics import MetricsLogger
from difftrain.train.optim import build_optimizer, lr_at
from difftrain.train.stream import BatchStream, mix_seed


@dataclass
class RunSummary:
    run_dir: Path
    step: int
    images_seen: int
    final_loss: float
    skipped_steps: int
    seconds: float


def resolve_precision(requested: str) -> str:
    """'auto' → bf16 on a GPU that has it, fp16 on other GPUs, full precision on the CPU."""
    if requested != "auto":
        return requested
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "no"


def describe(cfg: Config, data: ImageData, val: ImageData, n_params: int) -> dict:
    """What a dry run prints: sizes and step counts."""
    steps_per_epoch = len(data) / cfg.train.batch_size
    return {
        "train_images": len(data),
        "val_images": len(val),
        "num_classes": data.num_classes,
        "parameters": n_params,
        "steps_per_epoch": round(steps_per_epoch, 2),
        "total_steps": cfg.train.max_steps,
        "epochs": round(cfg.train.max_steps / steps_per_epoch, 2),
        "skipped_files": {k: len(v) for k, v in data.skipped.items()},
    }


def prepare_data(cfg: Config) -> tuple[ImageData, ImageData]:
    """Load the configured data and split off the validation set."""
    full = load_data(cfg.data)
    return full.split(cfg.data.val_fraction, cfg.train.seed)


def write_samples(denoiser, cfg: Config, data: ImageData, path: Path, device) -> None:
    """A grid of samples from fixed seeds (one row per class when class-conditional)."""
    num = cfg.sample.num
    k = data.num_classes
    if k:
        num = k * max(1, round(num / k))  # whole rows per class
    images = generate(
        denoiser,
        num=num,
        shape=(cfg.data.channels, cfg.data.resolution, cfg.data.resolution),
        seed=cfg.sample.seed,
        labels=default_labels(num, k),
        null_class=k,
        steps=cfg.sample.steps,
        guidance=cfg.sample.guidance,
        sigma_min=cfg.diffusion.sigma_min,
        sigma_max=cfg.diffusion.sigma_max,
        rho=cfg.sample.rho,
        device=device,
    )
    ncols = num // k if k else None
    save_image(make_grid(to_uint8(images), ncols), path, min_side=256)


def train(cfg: Config, resume: bool = False, dry_run: bool = False) -> RunSummary | dict:
    """Train as configured. With dry_run, return the description without training."""
    # ---- Setup: check the config, open the run directory, start accelerate ----
    check_config(cfg)
    run_dir = Path(cfg.train.run_dir)
    precision = resolve_precision(cfg.train.mixed_precision)
    acc = Accelerator(mixed_precision=precision, cpu=not torch.cuda.is_available())
    world, rank = acc.num_processes, acc.process_index
    micro = cfg.train.batch_size // cfg.train.grad_accum
    if micro % world:
        raise ConfigError(
            f"train.batch_size / train.grad_accum = {micro} must be divisible by the "
            f"{world} processes; change train.batch_size"
        )
    per_proc = micro // world

    # ---- Data: in-memory images at the training resolution, seeded split ----
    data, val = prepare_data(cfg)
    if len(data) < cfg.train.batch_size:
        raise ConfigError(
            f"train.batch_size = {cfg.train.batch_size} exceeds the {len(data)} training images; "
            "lower train.batch_size or data.val_fraction"
        )

    # ---- Model, objective, optimizer, EMA ----
    torch.manual_seed(cfg.train.seed)  # weight init depends on the seed only
    denoiser = build_denoiser(cfg, data.num_classes)
    n_params = sum(p.numel() for p in denoiser.parameters())
    if dry_run:
        return describe(cfg, data, val, n_params)
    objective = build_objective(cfg)
    optimizer = build_optimizer(denoiser.parameters(), cfg.optim)
    ema = EMA(denoiser)

    # ---- Resume: weights, EMA, optimizer, counters and stream position ----
    step, images_seen, skipped = 0, 0, 0
    stream_state = {"epoch": 0, "cursor": 0}
    ckpt_root = run_dir / "checkpoints"
    start_ckpt = latest_good_checkpoint(ckpt_root) if resume else None
    if resume and start_ckpt is None:
        acc.print(f"--resume: no checkpoint in {ckpt_root}; starting from step 0")
    if start_ckpt is not None:
        tensors, state = read_checkpoint(start_ckpt, ["model", "ema", "optimizer"])
        denoiser.load_state_dict(tensors["model"])
        ema.load_state_dict(tensors["ema"])
        optimizer.load_state_dict(unflatten_state(state["optimizer"], tensors["optimizer"]))
        step, images_seen, skipped = state["step"], state["images_seen"], state["skipped_steps"]
        stream_state = state["stream"]
        acc.print(f"resumed from {start_ckpt} at step {step}")
    elif not resume and ckpt_root.exists() and any(ckpt_root.iterdir()):
        raise ConfigError(
            f"{run_dir} already holds checkpoints: pass --resume to continue it, or set "
            "train.run_dir to a new directory"
        )
    denoiser, optimizer = acc.prepare(denoiser, optimizer)
    ema.model.to(acc.device)

    if acc.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(dump_config(cfg))
        (run_dir / "environment.json").write_text(json.dumps(environment(precision, world), indent=1))
    logger = MetricsLogger(run_dir, cfg.logging.tensorboard, enabled=acc.is_main_process)
    logger.truncate_after(step)
    stream = BatchStream(len(data), cfg.train.seed, **stream_state)
    val_x = to_model_range(val.images)
    val_sigmas = sigma_grid(n=8)

    def save(step: int) -> None:
        # Checkpoint: model and EMA as safetensors; optimizer flattened; the rest JSON.
        if not acc.is_main_process:
            return
        opt_tensors, opt_skeleton = flatten_state(optimizer.state_dict())
        state = {
            "step": step,
            "images_seen": images_seen,
            "skipped_steps": skipped,
            "stream": stream.state(),
            "optimizer": opt_skeleton,
            "data": {"num_classes": data.num_classes, "class_names": data.class_names},
        }
        tensors = {
            "model": acc.unwrap_model(denoiser).state_dict(),
            "ema": ema.state_dict(),
            "optimizer": opt_tensors,
        }
        write_checkpoint(ckpt_root, step, tensors, state)
        prune_checkpoints(ckpt_root, cfg.train.keep_checkpoints)

    # ---- The loop ----
    t_start = time.time()
    t_log, imgs_log = time.time(), 0
    bar = tqdm(total=cfg.train.max_steps, initial=step, disable=not (cfg.logging.progress and acc.is_main_process),
               desc="train", dynamic_ncols=True)  # fmt: skip
    loss_value = float("nan")
    denoiser.train()
    while step < cfg.train.max_steps:
        # Randomness of this step is a function of (seed, step, rank): resume needs no RNG state.
        torch.manual_seed(mix_seed(cfg.train.seed, step, rank, 1))
        gen = torch.Generator(device="cpu").manual_seed(mix_seed(cfg.train.seed, step, rank, 2))
        lr = lr_at(step, cfg.optim, cfg.train.max_steps)
        for group in optimizer.param_groups:
            group["lr"] = lr

        # Forward/backward over micro-batches; this process takes its slice of each.
        batch_idx = stream.next(cfg.train.batch_size)
        loss_sum = torch.zeros((), device=acc.device)
        for m in range(cfg.train.grad_accum):
            idx = batch_idx[m * micro : (m + 1) * micro][rank * per_proc : (rank + 1) * per_proc]
            x = to_model_range(data.images[idx])
            if cfg.data.hflip:
                x = random_hflip(x, gen)
            cond = None
            if data.labels is not None:
                cond = data.labels[idx].clone()
                drop = torch.rand(len(idx), generator=gen) < cfg.train.label_dropout
                cond[drop] = data.num_classes  # the null class, for classifier-free guidance
                cond = cond.to(acc.device)
            x = x.to(acc.device)
            last = m == cfg.train.grad_accum - 1
            with acc.autocast(), (acc.no_sync(denoiser) if not last else nullcontext()):
                loss = objective(denoiser, x, cond, gen).mean() / cfg.train.grad_accum
                acc.backward(loss)
            loss_sum += loss.detach()

        # Guard: clip, then skip the update if loss or gradients are not finite.
        grad_norm = acc.clip_grad_norm_(denoiser.parameters(), cfg.optim.grad_clip or float("inf"))
        loss_value = acc.reduce(loss_sum, reduction="mean").item()
        finite = math.isfinite(loss_value) and bool(torch.isfinite(grad_norm))
        if finite:
            optimizer.step()
        else:
            skipped += 1
            acc.print(f"step {step}: non-finite loss/gradient ({loss_value}); update skipped")
        optimizer.zero_grad(set_to_none=True)

        # EMA: half-life in images, so it does not depend on the batch size.
        images_seen += cfg.train.batch_size
        if finite:
            beta = ema_beta(cfg.train.batch_size, cfg.train.ema_halflife_kimg, images_seen, cfg.train.ema_rampup)
            ema.update(acc.unwrap_model(denoiser), beta)
        step += 1
        imgs_log += cfg.train.batch_size
        bar.update(1)

        # Log: loss, grad norm, LR, throughput.
        if step % cfg.train.log_every == 0 or step == cfg.train.max_steps:
            now = time.time()
            logger.log(step, {
                "train/loss": loss_value, "train/grad_norm": float(grad_norm), "train/lr": lr,
                "train/img_per_s": imgs_log / max(now - t_log, 1e-9), "train/images_seen": images_seen,
                "train/skipped_steps": skipped, "train/epoch": stream.epoch,
            })  # fmt: skip
            bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr:.2e}")
            t_log, imgs_log = now, 0

        # Sample grid and validation loss from the EMA weights.
        at_end = step == cfg.train.max_steps
        if acc.is_main_process and (step % cfg.train.sample_every == 0 or at_end):
            write_samples(ema.model, cfg, data, run_dir / "samples" / f"step-{step:07d}.png", acc.device)
        if acc.is_main_process and len(val) and (step % cfg.train.checkpoint_every == 0 or at_end):
            logger.log(step, validation_loss(ema.model, val_x, val.labels, val_sigmas,
                                             cfg.diffusion.sigma_data, seed=cfg.train.seed, device=acc.device))  # fmt: skip

        # Checkpoint.
        if step % cfg.train.checkpoint_every == 0 or at_end:
            save(step)
        acc.wait_for_everyone()

    bar.close()
    logger.close()
    return RunSummary(run_dir, step, images_seen, loss_value, skipped, time.time() - t_start)


def environment(precision: str, world: int) -> dict:
    """Library versions and hardware, recorded in the run directory for reproducibility."""
    import accelerate
    import diffusers

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "accelerate": accelerate.__version__,
        "cuda": torch.cuda.is_available(),
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else platform.processor(),
        "mixed_precision": precision,
        "processes": world,
        "git_commit": _git_commit(),
    }


def _git_commit() -> str | None:
    import subprocess

    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.TimeoutExpired):
        return None
