"""FSDP with torch's `fully_shard` (FSDP2): weights, gradients and optimizer state sharded by rank.

accelerate's FSDP plugin only engages for GPU processes (its state keeps CPU processes on plain
data parallelism and would wrap the model in DDP), so the loop applies torch's `fully_shard`
itself: the same code on CPUs (gloo) and GPUs (NCCL). Checkpoints keep the usual format: the full
model and optimizer state are gathered (a collective: every rank calls) and written by rank 0, so
sample, export and a resume on any strategy or process count read them unchanged.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    set_model_state_dict,
)
from torch.distributed.fsdp import FSDPModule, fully_shard
from torch.distributed.tensor import DTensor, distribute_tensor

from difftrain.config import Config, ConfigError


def check_fsdp(cfg: Config, precision: str, has_aux_step: bool) -> None:
    """Refuse the combinations FSDP is not tested with here, naming the key to change."""
    tc = cfg.train
    if tc.distributed != "fsdp":
        return
    why = None
    if precision == "fp16":
        why = "train.mixed_precision = fp16 (its GradScaler is not sharded); use bf16"
    elif getattr(cfg.model, "pretrained", None) is not None:
        why = "model.pretrained fine-tuning (frozen base weights); use train.distributed = ddp"
    elif has_aux_step:
        why = f"model.kind = {cfg.model.kind!r} (its extra update is not sharded); use ddp"
    if why is not None:
        raise ConfigError(f"train.distributed = fsdp does not support {why}")


def shard_model(model: nn.Module, min_params: int) -> int:
    """fully_shard each submodule holding ≥ min_params weights not yet in a unit, then the root;
    returns the number of units.

    Bottom-up (reversed pre-order visits children first), like a size-based wrap policy: each
    unit's weights are all-gathered only while it runs, so peak memory is one unit, not the model.
    """
    done: set[int] = set()
    for _name, module in reversed(list(model.named_modules())):
        if module is model or isinstance(module, (nn.ModuleList, nn.ModuleDict)):
            continue  # containers never run forward, so they cannot be a unit
        own = sum(p.numel() for p in module.parameters() if id(p) not in done)
        if own >= min_params:
            fully_shard(module)
            done.update(id(p) for p in module.parameters())
    fully_shard(model)
    return sum(isinstance(m, FSDPModule) for m in model.modules())


def is_sharded(model: nn.Module) -> bool:
    """True when the module's weights are DTensor shards (fully_shard was applied)."""
    return any(isinstance(p, DTensor) for p in model.parameters())


class FullWeights:
    """The whole weights of a sharded module, gathered once on every rank, seen via state_dict().

    EMA, EMABank and PowerEMA read `model.state_dict()`; they get whole tensors from this.
    """

    def __init__(self, model: nn.Module):
        opts = StateDictOptions(full_state_dict=True)  # no cpu_offload: every rank gets them
        self._sd = get_model_state_dict(model, options=opts)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self._sd


def full_model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Whole weights on rank 0 (CPU), {} elsewhere. A collective: every rank must call it."""
    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_model_state_dict(model, options=opts)


def load_full_model_state(model: nn.Module, sd: dict[str, torch.Tensor]) -> None:
    """Load whole weights (every rank passes the same dict) into a sharded module."""
    set_model_state_dict(model, sd, options=StateDictOptions(full_state_dict=True, strict=True))


def full_optimizer_state(optimizer: torch.optim.Optimizer) -> dict:
    """torch's usual optimizer state_dict (int-keyed) with every shard gathered. Collective."""

    def gather(v):
        return v.full_tensor().cpu() if isinstance(v, DTensor) else v

    sd = optimizer.state_dict()
    return {
        "state": {i: {k: gather(v) for k, v in s.items()} for i, s in sd["state"].items()},
        "param_groups": sd["param_groups"],
    }


def shard_optimizer_state(optimizer: torch.optim.Optimizer, sd: dict) -> dict:
    """A whole (int-keyed) optimizer state cut into shards shaped like each sharded weight."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    state = {}
    for i, s in sd["state"].items():
        p = params[int(i)]
        state[i] = {
            k: distribute_tensor(v.to(p.device), p.device_mesh, p.placements)
            if isinstance(p, DTensor) and isinstance(v, torch.Tensor) and v.shape == p.shape
            else v  # scalars such as Adam's step count stay whole
            for k, v in s.items()
        }
    return {"state": state, "param_groups": sd["param_groups"]}


def whole(t: torch.Tensor) -> torch.Tensor:
    """A plain tensor: a (replicated) DTensor such as a sharded model's gradient norm, gathered."""
    return t.full_tensor() if isinstance(t, DTensor) else t
