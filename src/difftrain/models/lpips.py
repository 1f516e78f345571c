"""LPIPS perceptual distance (Zhang et al. 2018), VGG-16 variant, loaded from a local safetensors file.

The `lpips` package downloads its VGG backbone at construction, which cannot work offline, so the
network is defined here and its weights come from one file whose keys are those of
`lpips.LPIPS(net="vgg").state_dict()` (`net.slice1.0.weight`, ..., `lin0.model.1.weight`, ...).
Make it once on a machine with the package and internet:
`sd = lpips.LPIPS(net="vgg").state_dict()` then
`safetensors.torch.save_file({k: v.clone() for k, v in sd.items()}, "lpips_vgg.safetensors")`.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from difftrain.config import ConfigError

# VGG-16 `features` indices of each slice (conv at these indices, ReLU after each) and channels.
_SLICES = (
    ((0, 2), 64),
    ((5, 7), 128),
    ((10, 12, 14), 256),
    ((17, 19, 21), 512),
    ((24, 26, 28), 512),
)


def _slice(convs: tuple[int, ...], c_in: int, c_out: int, pool_first: bool) -> nn.Sequential:
    """One VGG slice, modules named by their index in torchvision's `vgg16().features`."""
    s = nn.Sequential()
    if pool_first:
        s.add_module(str(convs[0] - 1), nn.MaxPool2d(2, 2))
    for i, idx in enumerate(convs):
        s.add_module(str(idx), nn.Conv2d(c_in if i == 0 else c_out, c_out, 3, padding=1))
        s.add_module(str(idx + 1), nn.ReLU(inplace=False))
    return s


class _VGG(nn.Module):
    def __init__(self):
        super().__init__()
        c_in = 3
        for k, (convs, c) in enumerate(_SLICES):
            self.add_module(f"slice{k + 1}", _slice(convs, c_in, c, pool_first=k > 0))
            c_in = c

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for k in range(len(_SLICES)):
            x = getattr(self, f"slice{k + 1}")(x)
            feats.append(x)
        return feats


class _Lin(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.model = nn.Sequential(nn.Dropout(), nn.Conv2d(c, 1, 1, bias=False))


class LPIPS(nn.Module):
    """d(x, y) per example (B), inputs in [-1, 1]; frozen, for use as a loss term."""

    def __init__(self):
        super().__init__()
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188])[None, :, None, None])
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450])[None, :, None, None])
        self.net = _VGG()
        for k, (_, c) in enumerate(_SLICES):
            self.add_module(f"lin{k}", _Lin(c))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:  # grayscale: the network was trained on RGB
            x, y = x.expand(-1, 3, -1, -1), y.expand(-1, 3, -1, -1)
        fx = self.net((x - self.shift) / self.scale)
        fy = self.net((y - self.shift) / self.scale)
        total = 0.0
        for k, (a, b) in enumerate(zip(fx, fy, strict=True)):
            diff = (_unit(a) - _unit(b)) ** 2
            total = total + getattr(self, f"lin{k}").model(diff).mean(dim=(1, 2, 3))
        return total


def _unit(f: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """Normalise each spatial feature vector to unit length (lpips `normalize_tensor`)."""
    return f / (torch.sqrt((f**2).sum(dim=1, keepdim=True) + eps) + eps)


def load_lpips(path: Path) -> LPIPS:
    """LPIPS with weights from a safetensors file; ConfigError names the key and the fix."""
    path = Path(path)
    key = "autoencoder.lpips_weights"
    if not path.is_file():
        raise ConfigError(
            f"{key} = {str(path)!r}: no such file. LPIPS needs its VGG weights locally (the lpips "
            "package downloads them, which does not work offline); see difftrain.models.lpips for "
            "how to make the file, or set autoencoder.lpips_weight = 0"
        )
    try:
        sd = load_file(path)
    except (SafetensorError, OSError) as err:
        raise ConfigError(f"{key} = {str(path)!r}: not a safetensors file ({err})") from None
    model = LPIPS()
    sd = {k: v for k, v in sd.items() if not k.startswith("lins.")}  # lpips aliases lin0..lin4
    sd.setdefault("shift", model.shift)
    sd.setdefault("scale", model.scale)
    for old, new in (("scaling_layer.shift", "shift"), ("scaling_layer.scale", "scale")):
        if old in sd:
            sd[new] = sd.pop(old)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise ConfigError(
            f"{key} = {str(path)!r}: not LPIPS-VGG weights (missing {missing[:3]}, unexpected "
            f"{unexpected[:3]}); save lpips.LPIPS(net='vgg').state_dict() with safetensors"
        )
    return model.eval().requires_grad_(False)
