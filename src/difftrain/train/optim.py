"""Optimizers and the learning-rate schedule (a pure function of the step)."""

from __future__ import annotations

import math

import torch

from difftrain.config.schema import OptimConfig


def build_optimizer(params, cfg: OptimConfig) -> torch.optim.Optimizer:
    """AdamW, Adam, RMSprop, SGD with momentum or bitsandbytes' 8-bit AdamW, as configured."""
    if cfg.name == "adamw8bit":
        try:
            import bitsandbytes as bnb
        except ImportError:
            from difftrain.config import ConfigError

            raise ConfigError(
                "optim.name = 'adamw8bit' needs the bitsandbytes package (a CUDA GPU); "
                "pip install bitsandbytes, or use optim.name = 'adamw'"
            ) from None
        return bnb.optim.AdamW8bit(
            params, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay
        )
    fused = {"fused": True} if cfg.fused else {}  # one kernel for all tensors (torch ≥ 2.4)
    if cfg.fused and cfg.name not in ("adamw", "adam"):
        from difftrain.config import ConfigError

        raise ConfigError(f"optim.fused = true needs optim.name adamw or adam, not {cfg.name!r}")
    if cfg.name == "adamw":
        return torch.optim.AdamW(
            params,
            lr=cfg.lr,
            betas=cfg.betas,
            eps=cfg.eps,
            weight_decay=cfg.weight_decay,
            **fused,
        )
    if cfg.name == "adam":
        return torch.optim.Adam(
            params,
            lr=cfg.lr,
            betas=cfg.betas,
            eps=cfg.eps,
            weight_decay=cfg.weight_decay,
            **fused,
        )
    if cfg.name == "rmsprop":
        return torch.optim.RMSprop(
            params, lr=cfg.lr, eps=cfg.eps, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def lr_at(step: int, cfg: OptimConfig, max_steps: int) -> float:
    """Linear warm-up over warmup_steps, then constant or cosine decay to min_lr_ratio·lr."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return cfg.lr
    span = max(1, max_steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    floor = cfg.lr * cfg.min_lr_ratio
    return floor + (cfg.lr - floor) * 0.5 * (1 + math.cos(math.pi * progress))
