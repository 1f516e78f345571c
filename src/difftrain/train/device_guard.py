"""The step guards decided on the device: no host synchronisation per step.

`guards.classify_step` needs the loss and the gradient norm as Python floats, so every step
waits for the device (`.item()`). With `train.guard_on_device` the same decision — non-finite
loss, non-finite gradient norm, loss spike, grad-norm spike, in that order — is computed with
tensor ops, and the fused Adam/AdamW kernel skips the update on the device through its
`found_inf` input (the mechanism torch's own GradScaler uses). The spike windows are ring buffers
in float64 on the device whose median and MAD equal `SpikeDetector`'s, so the decisions are the
same as on the host. The host reads the counters only when the loop logs or checkpoints; the
trade-off is that a rollback after a streak of bad steps waits until that read.
"""

from __future__ import annotations

import torch

from difftrain.config import Config, ConfigError

REASONS = ("nonfinite_loss", "nonfinite_grad", "loss_spike", "grad_spike")


def check_device_guard(cfg: Config, precision: str, has_aux_step: bool) -> None:
    """train.guard_on_device needs a fused Adam/AdamW, no fp16 scaler and no extra update."""
    if not cfg.train.guard_on_device:
        return
    why = None
    if not cfg.optim.fused or cfg.optim.name not in ("adam", "adamw"):
        why = "optim.fused = true with optim.name adam or adamw (the fused kernel skips on the device)"
    elif precision == "fp16":
        why = "bf16 or full precision, not fp16 (the GradScaler reads its overflow on the host)"
    elif has_aux_step:
        why = f"a model without an extra update per step (model.kind = {cfg.model.kind!r})"
    if why is not None:
        raise ConfigError(f"train.guard_on_device = true needs {why}; or set it to false")


class DeviceWindow:
    """`SpikeDetector` as a ring buffer on the device (float64, NaN = empty slot)."""

    def __init__(self, window: int, factor: float, device, z: float = 12.0, min_history: int = 20):
        self.buf = torch.full((window,), float("nan"), dtype=torch.float64, device=device)
        self.count = torch.zeros((), dtype=torch.long, device=device)  # values ever added
        self.factor, self.z, self.min_history = factor, z, min_history

    def is_spike(self, v: torch.Tensor) -> torch.Tensor:
        """Same rule as SpikeDetector.is_spike: > factor × median and > median + z·1.4826·MAD."""
        n = self.count.clamp(max=len(self.buf))
        mid = (n // 2).view(1)  # the host takes sorted(xs)[len // 2]; NaN sorts last
        med = torch.sort(self.buf).values.gather(0, mid)[0]
        mad = torch.sort((self.buf - med).abs()).values.gather(0, mid)[0] * 1.4826
        return (
            (n >= self.min_history)
            & (v > self.factor * med)
            & (v > med + self.z * mad.clamp(min=1e-12))
        )

    def add(self, v: torch.Tensor, keep: torch.Tensor) -> None:
        """Append v where `keep` (a good step); the oldest value drops out as in a deque."""
        slot = (self.count % len(self.buf)).view(1)
        self.buf.scatter_(0, slot, torch.where(keep, v, self.buf.gather(0, slot)[0]).view(1))
        self.count += keep.long()

    def state(self) -> list[float]:
        """Values oldest first (host read: at checkpoints only)."""
        n, w = int(self.count), len(self.buf)
        vals = self.buf.tolist()
        return vals[:n] if n <= w else vals[n % w :] + vals[: n % w]

    def load(self, values: list[float]) -> None:
        values = values[-len(self.buf) :]
        self.buf.fill_(float("nan"))
        self.buf[: len(values)] = torch.tensor(values, dtype=torch.float64)
        self.count.fill_(len(values))


class DeviceGuard:
    """Classify each step on the device; count skips by reason and the bad streak there too."""

    def __init__(self, window: int, factor: float, device):
        self.loss = DeviceWindow(window, factor, device)
        self.grad = DeviceWindow(window, factor, device)
        self.counts = torch.zeros(len(REASONS), dtype=torch.long, device=device)
        self.streak = torch.zeros((), dtype=torch.long, device=device)  # consecutive skips now
        self.longest = torch.zeros((), dtype=torch.long, device=device)  # since the last read

    @torch.no_grad()
    def check(self, loss: torch.Tensor, grad_norm: torch.Tensor) -> torch.Tensor:
        """A 0-d bool tensor: skip this step. Records it; never reads a value on the host."""
        loss, grad_norm = loss.detach().double(), grad_norm.detach().double()
        flags = torch.stack([~torch.isfinite(loss), ~torch.isfinite(grad_norm),
                             self.loss.is_spike(loss), self.grad.is_spike(grad_norm)])  # fmt: skip
        first = flags & (flags.cumsum(0) == 1)  # the first reason that applies, as on the host
        skip = flags.any()
        self.counts += first.long()
        self.loss.add(loss, ~skip)
        self.grad.add(grad_norm, ~skip)
        self.streak = (self.streak + 1) * skip.long()
        self.longest = torch.maximum(self.longest, self.streak)
        return skip

    @staticmethod
    def optimizer_step(optimizer, skip: torch.Tensor) -> None:
        """Step the fused optimizer; it leaves weights and moments untouched when `skip`."""
        inner = getattr(optimizer, "optimizer", optimizer)  # accelerate's wrapper
        inner.found_inf = skip.float()
        try:
            optimizer.step()
        finally:
            inner.found_inf = None

    def read(self, max_bad_steps: int) -> tuple[dict[str, int], int]:
        """One host read: skips by reason since the last read, and the streak to act on.

        The streak is the longest one since the last read when it reached max_bad_steps (the
        loop rolls back), else the current one (a checkpoint carries it over a restart).
        """
        values = torch.cat([self.counts, self.streak.view(1), self.longest.view(1)]).tolist()
        self.counts.zero_()
        self.longest.copy_(self.streak)
        skips = {r: c for r, c in zip(REASONS, values[: len(REASONS)], strict=True) if c}
        streak, longest = values[-2:]
        return skips, longest if longest >= max_bad_steps else streak

    def windows(self) -> tuple[list[float], list[float]]:
        return self.loss.state(), self.grad.state()

    def load(self, loss_window: list[float], grad_window: list[float], streak: int) -> None:
        """From a checkpoint's run state (resume and rollback)."""
        self.loss.load(loss_window)
        self.grad.load(grad_window)
        self.counts.zero_()
        self.streak.fill_(streak)
        self.longest.fill_(streak)
