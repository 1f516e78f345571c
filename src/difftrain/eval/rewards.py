"""Rewards for reward fine-tuning: a score per generated image (higher is better).

A reward maps images in [-1, 1] (float N×C×H×W) and their requested classes (N, or None) to N
scores. Built in:

- ``class-prob``: the domain feature network's softmax probability of the requested class
  (`difftrain features train`); differentiable.
- ``jpeg-compressibility`` / ``jpeg-incompressibility``: minus / plus the JPEG size in kB
  (PIL, quality 95), the toy rewards of Black et al. 2023 (DDPO); not differentiable.
- ``mlp``: a user scorer over domain features, a safetensors file of linear layers
  ``layers.{i}.weight`` (out×in) and ``layers.{i}.bias`` (out), activation between them from the
  file's metadata ``activation`` (relu, silu, gelu or tanh; default relu), last layer 1 output.
  Read as tensors only: no code runs from it. Differentiable.
- ``python``: ``module.path:function``, called as ``function(images, labels) -> N scores``.
  This imports and runs the user's code with the user's rights: name only code you trust.
"""

from __future__ import annotations

import importlib
import io
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file

from difftrain.config import ConfigError
from difftrain.data import to_uint8

REWARDS = ("class-prob", "jpeg-compressibility", "jpeg-incompressibility", "mlp", "python")
ACTIVATIONS = {"relu": F.relu, "silu": F.silu, "gelu": F.gelu, "tanh": torch.tanh}
CALLABLE_RE = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*$")


class Reward:
    """A named score per image; `differentiable` says whether DRaFT can backpropagate it."""

    name = "reward"
    differentiable = False
    needs_labels = False

    def score(self, images: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, images: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        """N scores (float32) for N images in [-1, 1]; checked for shape and finiteness."""
        if self.needs_labels and labels is None:
            raise ConfigError(
                f"reward {self.name!r} scores the requested class: it needs a class-conditional "
                "model; use another reward"
            )
        out = self.score(images, labels)
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != (len(images),):
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ConfigError(
                f"reward {self.name!r} returned {got}, expected a tensor of shape "
                f"({len(images)},): one score per image"
            )
        if not torch.isfinite(out.detach()).all():
            raise ConfigError(f"reward {self.name!r} returned a non-finite score")
        return out.float()


class ClassProbability(Reward):
    """p(requested class | image) from the domain classifier."""

    name, differentiable, needs_labels = "class-prob", True, True

    def __init__(self, net, num_classes: int | None):
        if num_classes is None:
            raise ConfigError(
                "reward class-prob needs a class-conditional model (this run has no classes); "
                "use jpeg-compressibility, mlp or python"
            )
        if net.spec.num_classes != num_classes:
            raise ConfigError(
                f"the domain feature network knows {net.spec.num_classes} classes but the model "
                f"has {num_classes}; train one on this data with `difftrain features train`"
            )
        self.net = net.requires_grad_(False)

    def score(self, images, labels):
        self.net.to(images.device)
        logits = self.net.embed_and_classify(images.float().clamp(-1, 1))[1]
        return logits.softmax(1).gather(1, labels.view(-1, 1).long()).squeeze(1)


def jpeg_kb(images: torch.Tensor, quality: int = 95) -> torch.Tensor:
    """JPEG size in kB of each image in [-1, 1] (PIL, the given quality)."""
    sizes = []
    for img in to_uint8(images.detach().float().cpu()):
        arr = img.permute(1, 2, 0).numpy()
        pil = Image.fromarray(arr[..., 0] if arr.shape[2] == 1 else arr)
        buf = io.BytesIO()
        pil.save(buf, format="JPEG", quality=quality)
        sizes.append(buf.tell() / 1000.0)
    return torch.tensor(np.array(sizes, dtype=np.float32), device=images.device)


class JpegSize(Reward):
    """−kB (compressibility) or +kB (incompressibility) of the image saved as JPEG."""

    def __init__(self, sign: float, quality: int = 95):
        self.sign, self.quality = sign, quality
        self.name = "jpeg-compressibility" if sign < 0 else "jpeg-incompressibility"

    def score(self, images, labels):
        return self.sign * jpeg_kb(images, self.quality)


def save_reward_mlp(
    layers: list[tuple[torch.Tensor, torch.Tensor]], path: str | Path, activation: str = "relu"
) -> Path:
    """Write a scorer MLP (list of (weight out×in, bias out)) in the format `mlp` reads."""
    tensors = {}
    for i, (w, b) in enumerate(layers):
        tensors[f"layers.{i}.weight"] = w.detach().float().contiguous()
        tensors[f"layers.{i}.bias"] = b.detach().float().contiguous()
    save_file(tensors, str(path), metadata={"activation": activation})
    return Path(path)


def load_reward_mlp(path: Path, in_dim: int) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], str]:
    """(layers, activation) of a scorer file, validated: chained shapes, 1 output, finite."""
    hint = "write it with difftrain.eval.rewards.save_reward_mlp (layers.{i}.weight/bias)"
    if not Path(path).is_file():
        raise ConfigError(f"reward.scorer: no file at {path}; {hint}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise ConfigError(
            f"reward.scorer {path}: not a readable safetensors file ({err})"
        ) from None
    activation = meta.get("activation", "relu")
    if activation not in ACTIVATIONS:
        raise ConfigError(
            f"reward.scorer {path}: activation {activation!r}; allowed {', '.join(ACTIVATIONS)}"
        )
    n = len(tensors) // 2
    expected = {f"layers.{i}.{k}" for i in range(n) for k in ("weight", "bias")}
    if n == 0 or set(tensors) != expected:
        raise ConfigError(f"reward.scorer {path}: keys {sorted(tensors)[:6]}...; {hint}")
    layers, width = [], in_dim
    for i in range(n):
        w, b = tensors[f"layers.{i}.weight"].float(), tensors[f"layers.{i}.bias"].float()
        if w.ndim != 2 or w.shape[1] != width or b.shape != (w.shape[0],):
            raise ConfigError(
                f"reward.scorer {path}: layers.{i} has weight {tuple(w.shape)} and bias "
                f"{tuple(b.shape)}; expected weight (out, {width}) and bias (out,) — the first "
                f"layer takes the {in_dim} domain features"
            )
        if not (torch.isfinite(w).all() and torch.isfinite(b).all()):
            raise ConfigError(f"reward.scorer {path}: layers.{i} holds non-finite values")
        layers.append((w, b))
        width = w.shape[0]
    if width != 1:
        raise ConfigError(f"reward.scorer {path}: the last layer has {width} outputs, expected 1")
    return layers, activation


class FeatureMLP(Reward):
    """A user MLP over the domain feature network's features."""

    name, differentiable = "mlp", True

    def __init__(self, net, path: Path):
        self.net = net.requires_grad_(False)
        self.layers, act = load_reward_mlp(path, net.feature_dim)
        self.act = ACTIVATIONS[act]

    def score(self, images, labels):
        self.net.to(images.device)
        h = self.net.embed_and_classify(images.float().clamp(-1, 1))[0]
        for i, (w, b) in enumerate(self.layers):
            h = F.linear(h, w.to(h.device), b.to(h.device))
            if i < len(self.layers) - 1:
                h = self.act(h)
        return h.squeeze(1)


class PythonReward(Reward):
    """A user function `module.path:function(images, labels) -> N scores` (trusted code)."""

    name, differentiable = "python", True  # DRaFT checks the returned tensor has a gradient

    def __init__(self, spec: str):
        self.fn = import_callable(spec)
        self.name = f"python:{spec}"

    def score(self, images, labels):
        return self.fn(images, labels)


def import_callable(spec: str) -> Callable:
    """Import `module.path:function` (runs that module's code: trusted input only)."""
    if not CALLABLE_RE.match(spec or ""):
        raise ConfigError(
            f"reward.callable = {spec!r}: expected 'module.path:function', e.g. "
            "'my_rewards:brightness'"
        )
    module_name, attr = spec.split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ConfigError(
            f"reward.callable = {spec!r}: cannot import {module_name!r} ({err}); put it on "
            "PYTHONPATH"
        ) from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ConfigError(f"reward.callable = {spec!r}: {module_name} has no function {attr!r}")
    return fn


def build_reward(
    name: str,
    *,
    num_classes: int | None,
    feature_net: Path | None = None,
    scorer: Path | None = None,
    callable_spec: str | None = None,
    jpeg_quality: int = 95,
) -> Reward:
    """The reward called `name` (one of REWARDS), with what it needs loaded and checked."""
    from difftrain.eval.features import load_feature_net

    if name not in REWARDS:
        raise ConfigError(f"reward.name = {name!r}: allowed {', '.join(REWARDS)}")
    if name.startswith("jpeg-"):
        return JpegSize(-1.0 if name == "jpeg-compressibility" else 1.0, jpeg_quality)
    if name == "python":
        if not callable_spec:
            raise ConfigError("reward python needs reward.callable = 'module.path:function'")
        return PythonReward(callable_spec)
    if feature_net is None:
        raise ConfigError(
            f"reward {name} needs the domain feature network: set eval.feature_net (train one "
            "with `difftrain features train CONFIG`)"
        )
    net, _info = load_feature_net(feature_net)
    if name == "class-prob":
        return ClassProbability(net, num_classes)
    if scorer is None:
        raise ConfigError("reward mlp needs reward.scorer = PATH to a safetensors MLP")
    return FeatureMLP(net, scorer)
