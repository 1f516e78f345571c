"""The training loop. One function, read top to bottom; each stage has a comment header."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator
from tqdm.auto import tqdm

from difftrain.config import Config, ConfigError, dump_config
from difftrain.diffusion.loss import SlicedGenerator, drop_labels
from difftrain.errors import TrainingDiverged
from difftrain.eval.evaluate import TrainingEvaluator
from difftrain.pipeline.build import check_config
from difftrain.pipeline.checkpoint import (
    CheckpointError,
    clean_stale_tmp,
    flatten_state,
    latest_good_checkpoint,
    prune_checkpoints,
    read_checkpoint,
    resume_checkpoint,
    stop_if_disk_full,
    unflatten_state,
    write_checkpoint,
    write_text_atomic,
)
from difftrain.pipeline.pretrained import resolve_pretrained
from difftrain.train.batches import open_batches, per_rank_stream, validation_tensors
from difftrain.train.compile import compile_backbone
from difftrain.train.curriculum import Curriculum, check_config_curriculum
from difftrain.train.data_watch import WatchedBatches
from difftrain.train.device_guard import DeviceGuard, check_device_guard
from difftrain.train.ema import EMA, EMABank, ema_beta
from difftrain.train.faults import (
    announce,
    checkpoint_delay,
    inject_loss,
    install_activation_faults,
    parse_faults,
)
from difftrain.train.fsdp import (
    FullWeights,
    check_fsdp,
    full_model_state,
    full_optimizer_state,
    load_full_model_state,
    shard_model,
    shard_optimizer_state,
    whole,
)
from difftrain.train.guards import SpikeDetector, classify_step, first_nonfinite, skip_update
from difftrain.train.metrics import MetricsLogger
from difftrain.train.optim import build_optimizer, lr_at
from difftrain.train.posthoc_ema import PowerEMA, save_snapshots, snapshot_due, truncate_snapshots
from difftrain.train.setup import describe, environment, resolve_precision
from difftrain.train.stream import mix_seed
from difftrain.train.task import Task, build_task
from difftrain.train.time_budget import TimeBudget, agreed, agreed_plan, event_costs

__all__ = ["RunSummary", "TrainingDiverged", "train"]


@dataclass
class RunState:
    """Everything besides tensors that a checkpoint must hold to continue exactly (JSON-able)."""

    step: int = 0
    images_seen: int = 0
    skipped_steps: int = 0
    skip_reasons: dict[str, int] = field(default_factory=dict)
    lr_scale: float = 1.0
    stream: dict = field(default_factory=lambda: {"epoch": 0, "cursor": 0})
    loss_window: list[float] = field(default_factory=list)
    grad_window: list[float] = field(default_factory=list)
    best: list[list] = field(default_factory=list)  # [[val_loss, step], ...] ascending
    since_improvement: int = 0
    bad_streak: int = 0  # consecutive skipped steps: a restart mid-streak continues it
    rollbacks: int = 0  # so train.max_rollbacks counts over restarts too
    processes: int = 1  # that wrote the checkpoint: a tar-shard stream position is per rank
    scaler: dict = field(default_factory=dict)  # fp16 GradScaler: scale and growth tracker
    planned_steps: int | None = None  # train.time_limit: the run's length, fixed once measured
    curriculum: dict = field(default_factory=dict)  # the difficulty key of an easy-to-hard order

    @classmethod
    def load(cls, state: dict, path: Path) -> RunState:
        """From a checkpoint's state.json (validated: it is read from the run directory)."""
        try:
            return cls(**state["run"])
        except (KeyError, TypeError) as err:
            raise CheckpointError(f"{path}: state.json has no valid run state ({err})") from None


@dataclass
class RunSummary:
    run_dir: Path
    step: int
    images_seen: int
    final_loss: float
    skipped_steps: int
    rollbacks: int
    stopped_early: bool
    seconds: float


def train(
    cfg: Config,
    resume: bool = False,
    dry_run: bool = False,
    on_validation: Callable[[int, dict], bool] | None = None,
) -> RunSummary | dict:
    """Train as configured. With dry_run, return the description without training.

    `on_validation(step, metrics)` is called on the main process after each validation (a
    sweep reports to its trial); returning True stops the run there, on every process.
    """
    # ---- Setup: check the config, open the run directory, start accelerate ----
    cfg = resolve_pretrained(cfg)  # model.pretrained: scheduler, vae/, text from the pipeline
    check_config(cfg)
    check_config_curriculum(cfg)  # train.curriculum against the other sections
    tc = cfg.train
    budget = TimeBudget(tc.time_limit)  # counts from here: setup is in the budget
    run_dir = Path(tc.run_dir)
    precision = resolve_precision(tc.mixed_precision)
    check_fsdp(cfg, precision, has_aux_step=False)  # before accelerate: no state for a bad config
    acc = Accelerator(mixed_precision=precision, cpu=not torch.cuda.is_available())
    world, rank = acc.num_processes, acc.process_index
    micro = tc.batch_size // tc.grad_accum
    if micro % world:
        raise ConfigError(
            f"train.batch_size / train.grad_accum = {micro} must be divisible by the "
            f"{world} processes; change train.batch_size"
        )
    per_proc = micro // world
    faults = parse_faults()
    announce(faults)  # loudly: a run with injected faults is a test, not a real run

    # ---- Data: in-memory tensors or a streaming loader, one interface; seeded validation split ----
    st = RunState()
    ckpt_root = run_dir / "checkpoints"
    if acc.is_main_process:
        clean_stale_tmp(ckpt_root)  # temporary dirs of killed saves (never a live process's)
    start_ckpt = resume_checkpoint(run_dir) if resume else None  # no good one: refuse, exit 2
    if start_ckpt is not None:
        st = RunState.load(read_checkpoint(start_ckpt, [])[1], start_ckpt)  # stream position first
    data, val = open_batches(cfg, rank, world, st.stream, run_dir if acc.is_main_process else None)
    data = WatchedBatches(data, run_dir if acc.is_main_process else None)  # wait time, bad files
    if start_ckpt is not None and st.processes != world and per_rank_stream(data):
        raise ConfigError(
            f"{start_ckpt} was written by {st.processes} processes and tar shards are read per "
            f"process: resume with {st.processes} processes (in-memory data and image folders "
            "resume on any process count)"
        )
    if len(data) < tc.batch_size:
        raise ConfigError(
            f"train.batch_size = {tc.batch_size} exceeds the {len(data)} training images; "
            "lower train.batch_size or data.val_fraction"
        )

    # ---- Model, objective, optimizer, EMA ----
    torch.manual_seed(tc.seed)  # weight init depends on the seed only
    # The task says what is trained: model, objective, validation, grid, any extra step.
    task = build_task(cfg, data, val, acc.device)
    denoiser = task.model
    if dry_run:
        params = list(denoiser.parameters())
        trainable = sum(p.numel() for p in params if p.requires_grad)
        return describe(cfg, data, val, sum(p.numel() for p in params), trainable)
    objective = task.objective
    aux = type(task).aux_step is not Task.aux_step  # an extra update per step (discriminator)
    check_fsdp(cfg, precision, aux)
    check_device_guard(cfg, precision, aux)
    ema = EMA(denoiser)  # a whole float32 copy, taken before any sharding
    sharded = tc.distributed == "fsdp" and world > 1  # one process: nothing to shard
    if sharded:  # before the optimizer, which must hold the sharded weights
        units = shard_model(denoiser.to(acc.device), tc.fsdp_min_params)
        acc.print(f"train.distributed = fsdp: the model is sharded in {units} units over {world}")
    elif tc.distributed == "fsdp":
        acc.print("train.distributed = fsdp with one process: nothing to shard; trains whole")
    # Only trainable weights: frozen ones (a LoRA run's base U-Net) get no optimizer state.
    optimizer = build_optimizer([p for p in denoiser.parameters() if p.requires_grad], cfg.optim)

    def restore(path: Path) -> None:
        """Load weights, EMA, optimizer and run state from a checkpoint (resume and rollback)."""
        nonlocal st
        tensors, state = read_checkpoint(
            path, ["model", "ema", "optimizer", "posthoc_ema", *bank.emas, *task.aux_groups]
        )
        opt_state = unflatten_state(state["optimizer"], tensors["optimizer"])
        if sharded:  # whole tensors in the checkpoint, cut into this rank's shards
            load_full_model_state(denoiser, tensors["model"])
            opt_state = shard_optimizer_state(optimizer, opt_state)
        else:
            acc.unwrap_model(denoiser).load_state_dict(tensors["model"])
        ema.load_state_dict(tensors["ema"])
        optimizer.load_state_dict(opt_state)
        st = RunState.load(state, path)
        bank.load_state_dicts(tensors)
        task.load_aux_state(tensors, state.get("aux", {}))
        if pema is not None and "posthoc_ema" in tensors:
            pema.load_state_dict(tensors["posthoc_ema"])
        if pema is not None and acc.is_main_process:
            truncate_snapshots(run_dir, st.step)  # later snapshots belong to an abandoned path

    # ---- Resume: weights, EMA, optimizer, counters and stream position ----
    if resume and start_ckpt is None:
        acc.print(f"--resume: no checkpoint in {ckpt_root}; starting from step 0")
    if not resume and any(ckpt_root.glob("step-*")):
        raise ConfigError(
            f"{run_dir} already holds checkpoints: pass --resume to continue it, or set "
            "train.run_dir to a new directory"
        )
    # Curriculum stages are functions of the step; an easy-to-hard order probes difficulty once.
    curriculum = Curriculum.build(cfg, data, run_dir, acc, log=acc.print)
    if tc.channels_last:  # NHWC: faster convolutions on tensor cores; the same model
        denoiser.to(memory_format=torch.channels_last)
    if sharded:  # accelerate would wrap the sharded model in DDP on CPU processes
        optimizer = acc.prepare(optimizer)
    else:
        denoiser, optimizer = acc.prepare(denoiser, optimizer)
    if tc.compile:  # in place: weight names and checkpoints unchanged
        compile_backbone(acc.unwrap_model(denoiser))
    ema.model.to(acc.device)
    # Extra classic EMAs and the power-function EMAs whose snapshots allow post-hoc EMA (EDM2).
    whole_model = ema.model if sharded else acc.unwrap_model(denoiser)  # still equal weights
    bank = EMABank(whole_model, tc.ema_halflives_kimg)
    pema = PowerEMA(whole_model, tc.posthoc_ema_sigma_rels) if tc.posthoc_ema_sigma_rels else None
    if start_ckpt is not None:
        restore(start_ckpt)
        if acc.scaler is not None and st.scaler:  # else a resumed fp16 run re-learns its scale
            acc.scaler.load_state_dict(st.scaler)
        curriculum.check_resume(st.curriculum, start_ckpt)
        acc.print(f"resumed from {start_ckpt} at step {st.step}")
    install_activation_faults(faults, acc.unwrap_model(denoiser), lambda: st.step)

    if acc.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        # Atomic: a full disk leaves a resumed run's config.yaml whole, never half-written.
        with stop_if_disk_full(f"config.yaml in {run_dir}", ckpt_root):
            write_text_atomic(run_dir / "config.yaml", dump_config(cfg))
        with stop_if_disk_full(f"environment.json in {run_dir}", ckpt_root):
            env_json = json.dumps(environment(precision, world), indent=1)
            write_text_atomic(run_dir / "environment.json", env_json)
    logger = MetricsLogger(run_dir, cfg.logging.tensorboard, enabled=acc.is_main_process)
    logger.truncate_after(st.step)
    loss_spikes = SpikeDetector(tc.spike_window, tc.spike_factor)
    grad_spikes = SpikeDetector(tc.spike_window, tc.spike_factor)
    loss_spikes.load(st.loss_window)
    grad_spikes.load(st.grad_window)
    dguard = None
    if tc.guard_on_device:  # the same windows and streak, kept on the device
        dguard = DeviceGuard(tc.spike_window, tc.spike_factor, acc.device)
        dguard.load(st.loss_window, st.grad_window, st.bad_streak)
    val_x, val_y = validation_tensors(val, tc.val_images)  # bounded cost; pixels or latents
    val_n = len(val_x)
    # Sample-quality evaluation during training (off unless eval.every > 0); main process only.
    evaluator = None
    if acc.is_main_process:
        evaluator = TrainingEvaluator.from_config(
            cfg, getattr(data, "data", val), val, device=acc.device
        )

    def save() -> None:
        # Checkpoint: model and EMA as safetensors; optimizer flattened; the rest JSON.
        # FSDP: every rank takes part in gathering the whole weights and optimizer state.
        model_sd = full_model_state(denoiser) if sharded else None
        opt_sd = full_optimizer_state(optimizer) if sharded else optimizer.state_dict()
        if not acc.is_main_process:
            return
        st.processes = world
        windows = (loss_spikes.state(), grad_spikes.state()) if dguard is None else dguard.windows()
        st.stream, (st.loss_window, st.grad_window) = data.state(), windows
        st.scaler = acc.scaler.state_dict() if acc.scaler is not None else {}
        st.curriculum = curriculum.state()
        opt_tensors, opt_skeleton = flatten_state(opt_sd)
        aux_tensors, aux_json = task.aux_state()  # e.g. the discriminator and its optimizer
        state = {
            "step": st.step,
            "run": asdict(st),
            "optimizer": opt_skeleton,
            **({"aux": aux_json} if aux_json else {}),
            "data": {"num_classes": data.num_classes, "class_names": data.class_names},
        }
        tensors = {
            "model": model_sd if sharded else acc.unwrap_model(denoiser).state_dict(),
            "ema": ema.state_dict(),
            "optimizer": opt_tensors,
        }
        tensors.update(
            bank.state_dicts(), **({"posthoc_ema": pema.state_dict()} if pema is not None else {})
        )
        tensors.update(aux_tensors)
        delay = checkpoint_delay(faults)
        write_checkpoint(
            ckpt_root, st.step, tensors, state, (lambda _p: time.sleep(delay)) if delay else None
        )
        best = {f"step-{s:07d}" for _v, s in st.best}
        prune_checkpoints(ckpt_root, tc.keep_checkpoints, protect=best)
        task.export(ema.model, run_dir)  # e.g. RUN/autoencoder in diffusers format
        best_json = {
            "metric": tc.best_metric,
            "best": [{"step": s, "value": v, "checkpoint": f"step-{s:07d}"} for v, s in st.best],
        }
        with stop_if_disk_full(str(ckpt_root / "best.json"), ckpt_root):  # old one stays whole
            write_text_atomic(ckpt_root / "best.json", json.dumps(best_json, indent=1))

    def micro_batch(batch, m: int, gen: torch.Generator):
        """Micro-batch m of this process's rows, on the device; labels dropped to null by `gen`."""
        rows = slice(m * per_proc, (m + 1) * per_proc)
        cond = task.condition(batch, rows, gen)  # text: caption ids, some dropped to ""
        if cond is None and batch.labels is not None:
            cond = drop_labels(batch.labels[rows], tc.label_dropout, data.num_classes, gen)
        return batch.x[rows].to(acc.device), None if cond is None else cond.to(acc.device)

    def step_generators(step: int) -> torch.Generator:
        # Randomness of a step is a function of (seed, step): resume needs no RNG state. Every
        # process draws σ, noise and label dropout for the whole micro-batch and keeps its rows,
        # so N processes × B rows train like 1 process × N·B rows (model dropout stays per rank).
        torch.manual_seed(mix_seed(tc.seed, step, rank, 1))  # dropout
        return SlicedGenerator(mix_seed(tc.seed, step, 0, 2), micro, rank * per_proc, per_proc)

    def forensics(step: int, batch) -> dict:
        """Replay the first micro-batch of a bad step with hooks; write forensics.json."""
        gen = step_generators(step)
        x, cond = micro_batch(batch, 0, gen)

        def forward_backward() -> float:
            with acc.autocast():
                loss = inject_loss(faults, step, objective(denoiser, x, cond, gen).mean())
            loss.backward()
            return loss.item()

        report = {
            "step": step + 1,
            "samples": batch.keys[:per_proc],  # file paths, or indices into the loaded set
            **first_nonfinite(acc.unwrap_model(denoiser), forward_backward),
            "lr_scale": st.lr_scale,
            "skip_reasons": st.skip_reasons,
        }
        if acc.is_main_process:
            (run_dir / "forensics.json").write_text(json.dumps(report, indent=1))
        return report

    def guard_read_due(step: int, max_steps: int) -> bool:
        """Device guard: read it where the loop logs, checkpoints, may stop for time, or ends."""
        return (
            step % tc.log_every == 0
            or step % tc.checkpoint_every == 0
            or step >= max_steps
            or budget.limit_s is not None
        )

    def read_guard(loss_t: torch.Tensor, grad_norm_t: torch.Tensor) -> tuple[float, float]:
        """Device guard: one host read; account for the updates skipped since the last one."""
        skips, st.bad_streak = dguard.read(tc.max_bad_steps)
        for why, n in skips.items():
            st.skipped_steps += n
            st.skip_reasons[why] = st.skip_reasons.get(why, 0) + n
        if skips:
            logger.log(st.step + 1, {"guard/skipped": sum(skips.values()),
                                     **{f"guard/{why}": n for why, n in skips.items()}})  # fmt: skip
            acc.print(f"steps up to {st.step + 1}: updates skipped on the device {skips}")
        return loss_t.item(), float(grad_norm_t)

    if st.step == 0 and start_ckpt is None:
        save()  # a step-0 checkpoint: a rollback target from the very first step

    # ---- The loop ----
    # The run's length: train.max_steps, or what train.time_limit fixed (kept across --resume).
    max_steps = st.planned_steps or tc.max_steps
    t_start = time.time()
    t_log, imgs_log = time.time(), 0
    events = event_costs(cfg, task, val_n, evaluator is not None) if budget.limit_s else None
    budget.start()
    bar = tqdm(
        total=max_steps,
        initial=st.step,
        disable=not (cfg.logging.progress and acc.is_main_process),
        desc="train",
        dynamic_ncols=True,
    )
    loss_value, grad_norm, stopped_early = float("nan"), float("nan"), False
    denoiser.train()
    while st.step < max_steps:
        gen = step_generators(st.step)
        task.begin_step(st.step)
        curriculum.begin_step(objective, st.step)  # σ distribution of this step
        lr = lr_at(st.step, cfg.optim, max_steps) * st.lr_scale
        for group in optimizer.param_groups:
            group["lr"] = lr

        # Forward/backward over micro-batches of this process's rows.
        batch = curriculum.next_batch(data, st.step)  # plain data.next() without a curriculum
        loss_sum = torch.zeros((), device=acc.device)
        for m in range(tc.grad_accum):
            x, cond = micro_batch(batch, m, gen)
            last = m == tc.grad_accum - 1
            with acc.autocast(), acc.no_sync(denoiser) if not last else nullcontext():
                loss = objective(denoiser, x, cond, gen).mean() / tc.grad_accum
                loss = inject_loss(faults, st.step, loss)
                acc.backward(loss)
            loss_sum += loss.detach()

        # Guards: clip; skip the update on a non-finite or spiking loss or gradient norm.
        grad_norm_t = whole(
            acc.clip_grad_norm_(denoiser.parameters(), cfg.optim.grad_clip or float("inf"))
        )
        loss_t = acc.reduce(loss_sum, reduction="mean")
        # train.guard_on_device: the same decision as a device tensor; no host read this step.
        skip = dguard.check(loss_t, grad_norm_t) if dguard is not None else None
        reason = None
        if skip is None:  # on the host: one sync per step
            grad_norm, loss_value = float(grad_norm_t), loss_t.item()
            reason = classify_step(loss_value, grad_norm, loss_spikes, grad_spikes)
        if reason == "nonfinite_grad" and acc.scaler is not None and acc.scaler.get_scale() >= 1:
            reason = "fp16_overflow"  # the scaler's routine skip-and-back-off, not a divergence
        if skip is not None:
            dguard.optimizer_step(optimizer, skip)  # the fused kernel skips when `skip`
        elif reason is None:
            optimizer.step()
            task.aux_step()  # e.g. the discriminator's update, on this step's reconstructions
            loss_spikes.add(loss_value)
            grad_spikes.add(grad_norm)
            st.bad_streak = 0
        else:
            skip_update(acc.scaler)  # fp16: the scaler must see this step end (and back off)
            st.skipped_steps += 1
            st.skip_reasons[reason] = st.skip_reasons.get(reason, 0) + 1
            st.bad_streak += int(reason != "fp16_overflow")  # overflows never cause rollbacks
            logger.log(
                st.step + 1,
                {
                    "guard/skipped": 1,
                    "guard/reason": reason,
                    "guard/loss": loss_value,
                    "guard/grad_norm": grad_norm,
                },
            )
            acc.print(
                f"step {st.step + 1}: {reason} (loss {loss_value:.4g}, grad norm {grad_norm:.4g}); update skipped"
            )
        optimizer.zero_grad(set_to_none=True)
        if skip is not None and guard_read_due(st.step + 1, max_steps):
            loss_value, grad_norm = read_guard(loss_t, grad_norm_t)  # sets st.bad_streak

        # Rollback after a streak of bad steps: last good checkpoint, lower LR; stop after too many.
        if st.bad_streak >= tc.max_bad_steps:
            bad_batch, bad_step = batch, st.step
            st.rollbacks += 1
            rollbacks = st.rollbacks
            good = latest_good_checkpoint(ckpt_root)
            if rollbacks > tc.max_rollbacks or good is None:
                report = forensics(bad_step, bad_batch)
                raise TrainingDiverged(
                    f"{st.bad_streak} bad steps in a row after {rollbacks - 1} rollbacks; first non-finite "
                    f"activation: {report['first_nonfinite_activation']}; see {run_dir / 'forensics.json'}"
                )
            scale = st.lr_scale * tc.rollback_lr_factor
            restore(good)
            st.lr_scale, st.rollbacks, st.bad_streak = scale, rollbacks, 0  # not the checkpoint's
            data.restore(st.stream)
            loss_spikes.load(st.loss_window)
            grad_spikes.load(st.grad_window)
            if dguard is not None:
                dguard.load(st.loss_window, st.grad_window, 0)
            logger.log(st.step, {"guard/rollback": rollbacks, "guard/lr_scale": scale})
            acc.print(
                f"rolled back to {good.name}; LR scale now {scale:g} (rollback {rollbacks}/{tc.max_rollbacks})"
            )
            bar.n = st.step
            continue

        # EMA: half-life in images, so it does not depend on the batch size.
        st.images_seen += tc.batch_size
        weights = FullWeights(denoiser) if sharded else acc.unwrap_model(denoiser)  # fsdp: gathered
        if reason is None:  # a device-guarded step passes `skip`: the EMAs hold where it is true
            ema.update(
                weights,
                ema_beta(tc.batch_size, tc.ema_halflife_kimg, st.images_seen, tc.ema_rampup),
                skip,
            )
            bank.update(weights, tc.batch_size, st.images_seen, tc.ema_rampup, skip)
        st.step += 1
        # Time budget: fix the run's length once from the measured step rate; stop at the limit.
        if budget.step_done() and st.planned_steps is None:
            st.planned_steps = max_steps = agreed_plan(
                acc, budget, st.step, tc.max_steps, events, tc.batch_size // world
            )
            bar.total = max_steps
            logger.log(st.step, {"train/planned_steps": max_steps})
            acc.print(f"train.time_limit = {tc.time_limit}: {max_steps} steps planned")
        time_stop = budget.limit_s is not None and st.step < max_steps and agreed(acc, budget)
        if pema is not None:  # every step, skipped ones too (the weights were held)
            pema.update(weights, st.step)
            if acc.is_main_process and (
                snapshot_due(st.step, tc.posthoc_snapshot_every, max_steps) or time_stop
            ):
                with stop_if_disk_full(f"post-hoc EMA snapshots in {run_dir}", ckpt_root):
                    save_snapshots(run_dir, pema)
        imgs_log += tc.batch_size
        bar.update(1)

        # Log: loss, grad norm, LR, throughput.
        if st.step % tc.log_every == 0 or st.step == max_steps or time_stop:
            now = time.time()
            logger.log(
                st.step,
                {
                    "train/loss": loss_value,
                    "train/grad_norm": grad_norm,
                    "train/lr": lr,
                    "train/img_per_s": imgs_log / max(now - t_log, 1e-9),
                    "train/data_wait": min(1.0, data.pop_wait() / max(now - t_log, 1e-9)),
                    "data/bad_files": len(data.bad),
                    "train/images_seen": st.images_seen,
                    "train/skipped_steps": st.skipped_steps,
                    "train/epoch": data.state()["epoch"],
                    **task.log_metrics(),
                    **curriculum.log_metrics(st.step, len(data)),
                },
            )
            bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr:.2e}")
            t_log, imgs_log = now, 0

        # Sample grid from the EMA weights, same seeds every time.
        at_end = st.step == max_steps or time_stop
        if acc.is_main_process and (st.step % tc.sample_every == 0 or at_end):
            grid = run_dir / "samples" / f"step-{st.step:07d}.png"
            with stop_if_disk_full(str(grid), ckpt_root):
                task.write_samples(ema.model, grid, acc.device)

        # Validation (and sample-quality evaluation when due): best-k and early stopping.
        if st.step % tc.checkpoint_every == 0 or at_end:
            halt = False
            if acc.is_main_process and (val_n or getattr(task, "validates_without_data", False)):
                metrics = task.validate(ema.model, val_x, val_y, acc.device)
                if evaluator is not None and (evaluator.due(st.step) or at_end):  # time_limit
                    metrics.update(evaluator(ema.model, st.step))
                logger.log(st.step, metrics)
                v = metrics.get(tc.best_metric)  # absent when no evaluation ran at this step
                if v is not None:
                    improved = not st.best or v < st.best[0][0] - tc.early_stopping_min_delta
                    st.since_improvement = 0 if improved else st.since_improvement + 1
                    if tc.keep_best:
                        st.best = sorted([*st.best, [v, st.step]])[: tc.keep_best]
                if on_validation is not None:
                    halt = bool(on_validation(st.step, metrics))
            stop = halt or (
                tc.early_stopping_patience is not None
                and st.since_improvement >= tc.early_stopping_patience
            )
            stop = bool(
                acc.reduce(torch.tensor(float(stop), device=acc.device), reduction="sum").item()
            )
            save()
            if stop:
                stopped_early = True
                if pema is not None and acc.is_main_process:
                    with stop_if_disk_full(f"post-hoc EMA snapshots in {run_dir}", ckpt_root):
                        save_snapshots(run_dir, pema)
                acc.print(
                    f"stopped at step {st.step} by the validation hook (a pruned sweep trial)"
                    if halt
                    else f"early stopping at step {st.step}: no val/loss improvement in "
                    f"{st.since_improvement} validations; best {st.best[0] if st.best else None}"
                )
                break
        acc.wait_for_everyone()
        if time_stop:  # the final grid, validation and checkpoint were written above
            logger.log(st.step, {"train/time_limit_stop": 1})
            acc.print(
                f"train.time_limit = {tc.time_limit} reached at step {st.step} of {max_steps}; "
                "stopped with a final checkpoint"
            )
            break

    bar.close()
    logger.close()
    data.close()
    return RunSummary(
        run_dir,
        st.step,
        st.images_seen,
        loss_value,
        st.skipped_steps,
        st.rollbacks,
        stopped_early,
        time.time() - t_start,
    )
