"""Numerical guards: spot non-finite and spiking steps, and explain a divergence."""

from __future__ import annotations

import math
from collections import deque

import torch
from torch import nn


class SpikeDetector:
    """Flags a value far outside a rolling window of recent good values.

    A value is a spike when it exceeds `factor` × the window median *and* sits more than
    `z` robust standard deviations (1.4826·MAD) above it. Both conditions keep the ordinary
    step-to-step noise of a diffusion loss (σ is random per example) from tripping it.
    """

    def __init__(
        self, window: int = 200, factor: float = 10.0, z: float = 12.0, min_history: int = 20
    ):
        self.values: deque[float] = deque(maxlen=window)
        self.factor, self.z, self.min_history = factor, z, min_history

    def is_spike(self, value: float) -> bool:
        if len(self.values) < self.min_history:
            return False
        xs = sorted(self.values)
        med = xs[len(xs) // 2]
        mad = sorted(abs(x - med) for x in xs)[len(xs) // 2] * 1.4826
        return value > self.factor * med and value > med + self.z * max(mad, 1e-12)

    def add(self, value: float) -> None:
        self.values.append(value)

    def state(self) -> list[float]:
        return list(self.values)

    def load(self, values: list[float]) -> None:
        self.values.clear()
        self.values.extend(values)


def classify_step(
    loss: float, grad_norm: float, loss_spikes: SpikeDetector, grad_spikes: SpikeDetector
) -> str | None:
    """None for a good step, else the reason it must be skipped."""
    if not math.isfinite(loss):
        return "nonfinite_loss"
    if not math.isfinite(grad_norm):
        return "nonfinite_grad"
    if loss_spikes.is_spike(loss):
        return "loss_spike"
    if grad_spikes.is_spike(grad_norm):
        return "grad_spike"
    return None


def skip_update(scaler: torch.amp.GradScaler | None) -> None:
    """End a skipped step for an fp16 GradScaler as optimizer.step() would have: record it (the
    scale backs off after inf/NaN gradients) and reset its per-step state, so the next step may
    unscale again. The loop always unscales (gradient clipping) before deciding to skip."""
    if scaler is not None:
        scaler.update()


def first_nonfinite(model: nn.Module, run_forward_backward) -> dict:
    """Re-run one batch with hooks; name the first module whose output and the first parameter
    whose gradient is non-finite (in execution order), for the forensic report."""
    order: list[str] = []
    bad_act: list[str] = []

    def hook(name):
        def fn(_mod, _inp, out):
            order.append(name)
            tensors = out if isinstance(out, (tuple, list)) else [getattr(out, "sample", out)]
            for t in tensors:
                if (
                    isinstance(t, torch.Tensor)
                    and t.is_floating_point()
                    and not torch.isfinite(t).all()
                ):
                    bad_act.append(name)
                    break

        return fn

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules() if n]
    try:
        model.zero_grad(set_to_none=True)
        loss = run_forward_backward()
    finally:
        for h in handles:
            h.remove()
    bad_grads = [
        n
        for n, p in model.named_parameters()
        if p.grad is not None and not torch.isfinite(p.grad).all()
    ]
    model.zero_grad(set_to_none=True)
    return {
        "loss": float(loss),
        "first_nonfinite_activation": bad_act[0] if bad_act else None,
        "nonfinite_activations": bad_act[:20],
        "first_nonfinite_grad": bad_grads[0] if bad_grads else None,
        "nonfinite_grads": len(bad_grads),
    }
