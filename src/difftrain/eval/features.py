"""The domain feature extractor: a small CNN classifier trained on the run's own labelled data.

Inception-v3 features describe ImageNet photographs; on 28×28 grayscale clothing they are a poor
yardstick. This network is trained by `difftrain features train CONFIG` on the same data (and the
same seeded train/validation split) as the diffusion model. Its penultimate layer gives features
for FID-like metrics (written "FID_domain" — not comparable with Inception FID), and its logits
give the class accuracy of class-conditional samples. Saved as safetensors + JSON.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from difftrain.config import ConfigError
from difftrain.data import ImageData, to_model_range

FORMAT = "difftrain-feature-net/1"
# Training accuracy is a sanity check, measured on a fixed, evenly spaced subset of the training
# images: a forward pass over all 58,800 Fashion-MNIST images cost about a minute on 2 cores.
TRAIN_ACCURACY_IMAGES = 5000
WEIGHTS_NAME = "feature_net.safetensors"
INFO_NAME = "feature_net.json"


@dataclass(frozen=True)
class FeatureNetSpec:
    channels: int
    num_classes: int
    width: int = 32
    feature_dim: int = 128


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.GroupNorm(8, cout), nn.SiLU())


class FeatureNet(nn.Module):
    """conv×2 → pool → conv×2 → pool → conv → global mean → features (feature_dim) → logits.

    Any resolution ≥ 4 works (global pooling); inputs are uint8 N×C×H×W.
    """

    def __init__(self, spec: FeatureNetSpec):
        super().__init__()
        self.spec = spec
        w = spec.width
        self.body = nn.Sequential(
            _block(spec.channels, w),
            _block(w, w),
            nn.AvgPool2d(2),
            _block(w, 2 * w),
            _block(2 * w, 2 * w),
            nn.AvgPool2d(2),
            _block(2 * w, 4 * w),
        )
        self.embed = nn.Linear(4 * w, spec.feature_dim)
        self.head = nn.Linear(spec.feature_dim, spec.num_classes)

    @property
    def feature_dim(self) -> int:
        return self.spec.feature_dim

    def embed_and_classify(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 (or [-1, 1] float) N×C×H×W → (features N×feature_dim, logits N×classes)."""
        x = to_model_range(images) if images.dtype == torch.uint8 else images
        h = self.body(x).mean(dim=(2, 3))
        feats = F.silu(self.embed(h))
        return feats, self.head(feats)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.embed_and_classify(images)[0]


@torch.no_grad()
def run_extractor(
    net: Callable, images: torch.Tensor, batch_size: int = 256, device: str | torch.device = "cpu"
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Features (and logits when the net has a classifier) for uint8 images, batch by batch."""
    feats, logits = [], []
    for i in range(0, len(images), batch_size):
        x = images[i : i + batch_size].to(device)
        if isinstance(net, FeatureNet):
            f, lg = net.embed_and_classify(x)
            logits.append(lg.float().cpu())
        else:
            f = net(x)
        feats.append(f.float().cpu())
    return torch.cat(feats), (torch.cat(logits) if logits else None)


def _subset(data: ImageData, n: int) -> ImageData:
    """At most n images of `data`, evenly spaced (deterministic)."""
    if len(data) <= n:
        return data
    return data.subset(torch.linspace(0, len(data) - 1, n).long())


@torch.no_grad()
def accuracy(net: FeatureNet, data: ImageData, batch_size: int = 512) -> float:
    """Top-1 accuracy of the classifier on labelled data."""
    _, logits = run_extractor(net, data.images, batch_size)
    return float((logits.argmax(1) == data.labels).double().mean())


def train_feature_net(
    train: ImageData,
    val: ImageData | None,
    *,
    width: int = 32,
    feature_dim: int = 128,
    epochs: int = 3,
    batch_size: int = 128,
    lr: float = 2e-3,
    seed: int = 0,
    progress: Callable[[int, int, float], None] | None = None,
) -> tuple[FeatureNet, dict]:
    """Train the classifier with AdamW and a cosine learning rate; return it with its record."""
    if train.labels is None or train.class_names is None:
        raise ConfigError(
            "features train needs class labels: use a labelled source (idx, digits, npz with "
            "labels, or a folder with one sub-folder per class) and data.class_conditional=true"
        )
    t0 = time.time()
    torch.manual_seed(seed)
    spec = FeatureNetSpec(train.images.shape[1], len(train.class_names), width, feature_dim)
    net = FeatureNet(spec)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(seed)
    steps_per_epoch = math.ceil(len(train) / batch_size)
    total = epochs * steps_per_epoch
    step = 0
    net.train()
    for _ in range(epochs):
        perm = torch.randperm(len(train), generator=gen)
        for i in range(0, len(train), batch_size):
            idx = perm[i : i + batch_size]
            for g in opt.param_groups:
                g["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / total))
            _, logits = net.embed_and_classify(train.images[idx])
            loss = F.cross_entropy(logits, train.labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            if progress is not None:
                progress(step, total, loss.item())
    net.eval()
    info = {
        "format": FORMAT,
        "spec": asdict(spec),
        "class_names": list(train.class_names),
        "resolution": int(train.images.shape[-1]),
        "train": {
            "epochs": epochs,
            "batch_size": batch_size,
            "lr": lr,
            "seed": seed,
            "images": len(train),
            "steps": total,
            "seconds": round(time.time() - t0, 1),
        },
        "train_accuracy": accuracy(net, _subset(train, TRAIN_ACCURACY_IMAGES)),
        "train_accuracy_images": min(len(train), TRAIN_ACCURACY_IMAGES),
        "val_accuracy": accuracy(net, val) if val is not None and len(val) else None,
        "val_images": len(val) if val is not None else 0,
    }
    return net, info


def save_feature_net(net: FeatureNet, info: dict, out_dir: str | Path) -> Path:
    """Write feature_net.safetensors + feature_net.json into out_dir; return the JSON path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    save_file(state, str(out / WEIGHTS_NAME), metadata={"format": FORMAT})
    (out / INFO_NAME).write_text(json.dumps(info, indent=1))
    return out / INFO_NAME


def feature_net_path(location: str | Path) -> Path:
    """A directory holding feature_net.json, or the JSON itself."""
    p = Path(location)
    return p / INFO_NAME if p.is_dir() or p.suffix != ".json" else p


def load_feature_net(location: str | Path) -> tuple[FeatureNet, dict]:
    """Load a network saved by `save_feature_net` (directory or its feature_net.json)."""
    info_path = feature_net_path(location)
    weights = info_path.parent / WEIGHTS_NAME
    if not info_path.is_file() or not weights.is_file():
        raise ConfigError(
            f"no domain feature network at {info_path.parent} (needs {INFO_NAME} and "
            f"{WEIGHTS_NAME}); train one with `difftrain features train CONFIG` or pass "
            "--feature-net PATH (config key eval.feature_net)"
        )
    info = json.loads(info_path.read_text())
    if info.get("format") != FORMAT:
        raise ConfigError(f"{info_path}: format {info.get('format')!r}, expected {FORMAT!r}")
    net = FeatureNet(FeatureNetSpec(**info["spec"]))
    net.load_state_dict(load_file(str(weights)))
    net.eval()
    return net, info
