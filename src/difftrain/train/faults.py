"""Fault injection for testing the guards on real runs (never active unless asked for).

DIFFTRAIN_INJECT is a comma-separated list of `kind@steps[:arg]`:
  nan@5            the loss at step 5 becomes NaN (every time step 5 runs)
  nanonce@5-9      the loss at steps 5..9 becomes NaN the first time each runs (a transient fault
                   that a rollback gets past)
  spike@9:1e9      the loss at step 9 is multiplied by 1e9
  nanact@12-:NAME  from step 12 on, module NAME outputs NaN (a divergence to diagnose)
  slowckpt:SECS    sleep SECS between checkpoint files (to kill a run mid-write)
Steps are `N`, `N-M` or `N-` (open-ended).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import torch
from torch import nn

from difftrain.config import ConfigError


@dataclass
class Fault:
    kind: str
    first: int
    last: int | None
    arg: str | None
    fired: set[int] | None = None

    def active(self, step: int) -> bool:
        return step >= self.first and (self.last is None or step <= self.last)


KINDS = {
    "nan": "loss becomes NaN",
    "nanonce": "loss becomes NaN the first time each step runs",
    "spike": "loss multiplied by ARG (default 1e9)",
    "nanact": "module ARG outputs NaN",
    "slowckpt": "sleep ARG seconds between checkpoint files",
}


def _bad(item: str, why: str) -> ConfigError:
    return ConfigError(
        f"DIFFTRAIN_INJECT item {item!r}: {why}. Write kind@steps[:arg] with kind one of "
        f"{', '.join(KINDS)} (e.g. nan@5, spike@9:1e9), or unset DIFFTRAIN_INJECT"
    )


def parse_faults(text: str | None = None) -> list[Fault]:
    """Parse DIFFTRAIN_INJECT; an unknown kind or a malformed item is a ConfigError (exit 2)."""
    text = os.environ.get("DIFFTRAIN_INJECT", "") if text is None else text
    faults = []
    for item in filter(None, (t.strip() for t in text.split(","))):
        head, _, arg = item.partition(":")
        kind, _, steps = head.partition("@")
        if kind not in KINDS:
            raise _bad(item, f"unknown kind {kind!r}")
        if kind in ("spike", "slowckpt") and arg:
            try:
                float(arg)
            except ValueError:
                raise _bad(item, f"{arg!r} is not a number") from None
        if kind == "nanact" and not arg:
            raise _bad(item, "nanact needs a module name after ':'")
        if not steps:
            faults.append(Fault(kind, 0, None, arg or None))
            continue
        lo, dash, hi = steps.partition("-")
        try:
            first, last = int(lo), (int(hi) if hi else None) if dash else int(lo)
        except ValueError:
            raise _bad(item, f"steps {steps!r} are not N, N-M or N-") from None
        faults.append(Fault(kind, first, last, arg or None))
    return faults


def announce(faults: list[Fault]) -> None:
    """A loud line on stderr whenever faults are injected: a run with them is not a real run."""
    if faults:
        text = os.environ.get("DIFFTRAIN_INJECT", "")
        print(
            f"WARNING: DIFFTRAIN_INJECT={text!r} is set: fault injection is ACTIVE "
            f"({', '.join(f.kind for f in faults)}); this run is a test of the guards",
            file=sys.stderr,
            flush=True,
        )


def inject_loss(faults: list[Fault], step: int, loss: torch.Tensor) -> torch.Tensor:
    for f in faults:
        if f.kind == "nan" and f.active(step):
            loss = loss * float("nan")
        if f.kind == "nanonce" and f.active(step):
            f.fired = f.fired or set()
            if step not in f.fired:
                f.fired.add(step)
                loss = loss * float("nan")
        if f.kind == "spike" and f.active(step):
            loss = loss * float(f.arg or 1e9)
    return loss


def install_activation_faults(faults: list[Fault], model: nn.Module, get_step) -> None:
    """Forward hooks that turn a named module's output to NaN while its fault is active."""
    modules = dict(model.named_modules())
    for f in faults:
        if f.kind != "nanact":
            continue
        if f.arg not in modules:
            raise ConfigError(f"DIFFTRAIN_INJECT: the model has no module named {f.arg!r}")

        def hook(_m, _i, out, f=f):
            return out * float("nan") if f.active(get_step()) else out

        modules[f.arg].register_forward_hook(hook)


def checkpoint_delay(faults: list[Fault]) -> float:
    return sum(float(f.arg or 1.0) for f in faults if f.kind == "slowckpt")
