"""train.compile: the backbone is compiled in place by torch.compile (inductor; needs a C++ compiler).

A whole compiled tiny U-Net run is not in the suite: compiling its forward and backward took
132 s on this busy 2-core machine (3 steps, losses within 3e-7 of the eager run). Here a tiny
module is compiled for real, and the loop's check is exercised with a compiler that is missing.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from difftrain.config import ConfigError, load_config
from difftrain.train import train
from difftrain.train.compile import check_compiler, compile_backbone
from tests.conftest import TINY


class Wrapped(nn.Module):
    """A stand-in for a preconditioner: the backbone is an attribute, as in diffusion/precond.py."""

    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(8, 16), nn.SiLU(), nn.Linear(16, 8))

    def forward(self, x):
        return x + self.backbone(x)


def test_compile_backbone_compiles_in_place_and_matches_eager():
    if not has_compiler():
        pytest.skip("no C++ compiler on this machine")
    torch.manual_seed(0)
    model = Wrapped()
    x = torch.randn(4, 8)
    eager = model(x)
    keys = list(model.state_dict())
    compile_backbone(model)
    assert model.backbone._compiled_call_impl is not None  # nn.Module.compile took effect
    out = model(x)
    out.sum().backward()  # the backward graph compiles too
    assert torch.allclose(out, eager, atol=1e-6)
    assert list(model.state_dict()) == keys  # no `_orig_mod.` prefix: checkpoints unchanged
    assert model.backbone[0].weight.grad is not None


def has_compiler() -> bool:
    try:
        check_compiler()
        return True
    except ConfigError:
        return False


def test_missing_compiler_is_a_config_error_naming_it(tmp_path, monkeypatch):
    from torch._inductor import config as inductor_config

    monkeypatch.setattr(inductor_config.cpp, "cxx", (None, str(tmp_path / "no-such-g++")))
    cfg = load_config(TINY, [f"train.run_dir={tmp_path / 'run'}", "train.compile=true",
                             "train.max_steps=2", "logging.progress=false"])  # fmt: skip
    with pytest.raises(ConfigError, match="train.compile.*C\\+\\+ compiler.*no-such-g\\+\\+"):
        train(cfg)
    assert not (tmp_path / "run" / "checkpoints").exists()  # refused before any training
