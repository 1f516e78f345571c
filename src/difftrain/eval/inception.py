"""The FID Inception-v3 (TensorFlow graph of 2015-12-05) as a feature extractor, from a local file.

This is the network torchmetrics' FrechetInceptionDistance runs (through torch-fidelity's
FeatureExtractorInceptionV3), so FID values are comparable with published ones. It is ported here
because torch-fidelity imports torchvision at package import time, and difftrain does not depend
on torchvision. Architecture, TF-1.x-compatible bilinear resize and input scaling follow
torch-fidelity `feature_extractor_inceptionv3.py` and `interpolate_compat_tensorflow.py`
(Apache License 2.0, © Anton Obukhov), themselves adapted from pytorch-fid (© Maximilian Seitzer).
State-dict names are identical, so the published weight file loads strictly, with no download.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from difftrain.config import ConfigError

WEIGHTS_FILENAME = "weights-inception-2015-12-05-6726825d.pth"
WEIGHTS_URL = (
    "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/" + WEIGHTS_FILENAME
)
# pytorch-fid publishes the same network under this name; both load.
ALT_FILENAME = "pt_inception-2015-12-05-6726825d.pth"
WEIGHTS_BYTES = 95_628_359
WEIGHTS_SHA256 = "6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2"
ENV_VAR = "DIFFTRAIN_INCEPTION_WEIGHTS"


def _hub_dir() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def find_inception_weights(path: str | Path | None = None) -> Path:
    """The weight file: `path`, else $DIFFTRAIN_INCEPTION_WEIGHTS, else torch.hub's cache.

    Raises ConfigError naming the file, its URL, size and hash and where to put it.
    """
    tried = []
    for source, candidate in (
        ("--inception-weights / eval.inception_weights", path),
        (f"${ENV_VAR}", os.environ.get(ENV_VAR)),
    ):
        if candidate:
            p = Path(candidate).expanduser()
            if p.is_dir():
                p = next(
                    (p / n for n in (WEIGHTS_FILENAME, ALT_FILENAME) if (p / n).is_file()),
                    p / WEIGHTS_FILENAME,
                )
            if p.is_file():
                return p
            tried.append(f"{source} = {p} (no such file)")
        else:
            tried.append(f"{source} (not set)")
    for name in (WEIGHTS_FILENAME, ALT_FILENAME):
        if (_hub_dir() / name).is_file():
            return _hub_dir() / name
    tried.append(f"torch.hub cache {_hub_dir() / WEIGHTS_FILENAME} (absent)")
    raise ConfigError(
        "Inception-v3 FID weights not found; looked at:\n  - " + "\n  - ".join(tried) + "\n"
        f"Download {WEIGHTS_FILENAME} ({WEIGHTS_BYTES:,} bytes, SHA-256 {WEIGHTS_SHA256}) from\n"
        f"  {WEIGHTS_URL}\n"
        f"(pytorch-fid's {ALT_FILENAME} also works) on a machine with internet, then either copy "
        f"it to {_hub_dir() / WEIGHTS_FILENAME}, set {ENV_VAR}=/path/to/{WEIGHTS_FILENAME}, or "
        "pass --inception-weights PATH (config key eval.inception_weights). "
        "Or use --features domain, which needs no download."
    )


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def resize_like_tf1(x: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear resize as TensorFlow 1.x's resize_bilinear(align_corners=False) computes it."""
    scale_y, scale_x = x.shape[2] / size, x.shape[3] / size

    def grid(n_in: int, scale: float):
        pos = torch.arange(size, dtype=x.dtype) * torch.tensor(scale, dtype=torch.float32)
        lo = pos.long()
        return lo, (lo + 1).clamp_max(n_in - 1), (pos - lo.float())

    y_lo, y_hi, dy = grid(x.shape[2], scale_y)
    x_lo, x_hi, dx = grid(x.shape[3], scale_x)
    rows_lo, rows_hi = x[:, :, y_lo, :], x[:, :, y_hi, :]
    top = rows_lo[..., x_lo] + (rows_lo[..., x_hi] - rows_lo[..., x_lo]) * dx.view(1, 1, 1, -1)
    bot = rows_hi[..., x_lo] + (rows_hi[..., x_hi] - rows_hi[..., x_lo]) * dx.view(1, 1, 1, -1)
    return top + (bot - top) * dy.view(1, 1, -1, 1)


class BasicConv2d(nn.Module):
    def __init__(self, cin: int, cout: int, **kwargs):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, bias=False, **kwargs)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


def _avg3(x):
    # TensorFlow's average pool leaves the zero padding out of the mean.
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):
    def __init__(self, cin: int, pool_features: int):
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 64, kernel_size=1)
        self.branch5x5_1 = BasicConv2d(cin, 48, kernel_size=1)
        self.branch5x5_2 = BasicConv2d(48, 64, kernel_size=5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, padding=1)
        self.branch_pool = BasicConv2d(cin, pool_features, kernel_size=1)

    def forward(self, x):
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch1x1(x), b5, b3, self.branch_pool(_avg3(x))], 1)


class InceptionB(nn.Module):
    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3 = BasicConv2d(cin, 384, kernel_size=3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, stride=2)

    def forward(self, x):
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch3x3(x), b3, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class InceptionC(nn.Module):
    def __init__(self, cin: int, c7: int):
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 192, kernel_size=1)
        self.branch7x7_1 = BasicConv2d(cin, c7, kernel_size=1)
        self.branch7x7_2 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(cin, c7, kernel_size=1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(cin, 192, kernel_size=1)

    def forward(self, x):
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        bd = x
        for i in range(1, 6):
            bd = getattr(self, f"branch7x7dbl_{i}")(bd)
        return torch.cat([self.branch1x1(x), b7, bd, self.branch_pool(_avg3(x))], 1)


class InceptionD(nn.Module):
    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3_1 = BasicConv2d(cin, 192, kernel_size=1)
        self.branch3x3_2 = BasicConv2d(192, 320, kernel_size=3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(cin, 192, kernel_size=1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, kernel_size=3, stride=2)

    def forward(self, x):
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = x
        for i in range(1, 5):
            b7 = getattr(self, f"branch7x7x3_{i}")(b7)
        return torch.cat([b3, b7, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class InceptionE(nn.Module):
    """`max_pool=True` is the second E block: the TF graph max-pools where the paper averages."""

    def __init__(self, cin: int, max_pool: bool):
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = BasicConv2d(cin, 320, kernel_size=1)
        self.branch3x3_1 = BasicConv2d(cin, 384, kernel_size=1)
        self.branch3x3_2a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(cin, 448, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, kernel_size=3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(cin, 192, kernel_size=1)

    def forward(self, x):
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
        bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        bd = torch.cat([self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd)], 1)
        pooled = F.max_pool2d(x, kernel_size=3, stride=1, padding=1) if self.max_pool else _avg3(x)
        return torch.cat([self.branch1x1(x), b3, bd, self.branch_pool(pooled)], 1)


class InceptionV3FID(nn.Module):
    """uint8 N×C×H×W (C = 1 or 3) → 2048-d pool3 features, as torch-fidelity's '2048' output."""

    INPUT_SIZE = 299
    feature_dim = 2048
    name = "inception-v3-2048"

    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, c7=128)
        self.Mixed_6c = InceptionC(768, c7=160)
        self.Mixed_6d = InceptionC(768, c7=160)
        self.Mixed_6e = InceptionC(768, c7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280, max_pool=False)
        self.Mixed_7c = InceptionE(2048, max_pool=True)
        self.fc = nn.Linear(2048, 1008)  # unused for FID; kept so the published file loads strictly
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> InceptionV3FID:
        return super().train(False)  # batch-norm statistics are frozen, always

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] not in (1, 3):
            raise ValueError(
                f"expected uint8 N×(1|3)×H×W images, got {images.dtype} {tuple(images.shape)}"
            )
        x = images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images  # gray → RGB
        x = resize_like_tf1(x.float(), self.INPUT_SIZE)
        x = (x - 128) / 128
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        for name in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c"):
            x = getattr(self, f"Mixed_{name}")(x)
        return F.adaptive_avg_pool2d(x, 1).flatten(1)  # N×2048


def load_inception(path: str | Path | None = None) -> tuple[InceptionV3FID, dict]:
    """Build the network and load the weight file found by `find_inception_weights(path)`.

    Loads with torch.load(weights_only=True): tensors only, no pickled code. Every parameter name
    and shape must match. Returns the network and provenance {path, sha256, sha256_ok}.
    """
    p = find_inception_weights(path)
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as err:  # any unreadable file gets the same fix
        raise ConfigError(
            f"{p}: not a readable PyTorch weight file ({err}); re-download {WEIGHTS_URL}"
        ) from None
    net = InceptionV3FID()
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ConfigError(
            f"{p}: not the FID Inception-v3 weights ({str(err)[:300]}); use {WEIGHTS_URL}"
        ) from None
    digest = sha256_of(p)
    return net, {"path": str(p), "sha256": digest, "sha256_ok": digest == WEIGHTS_SHA256}
