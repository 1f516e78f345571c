"""Sequence runs: their normalisation (sequence.json in the run directory), shape and outputs.

A sequence run's denoiser works on windows shaped C×1×L (an image one pixel high) in
normalised units; `sequence.json` holds the column names and per-channel mean/std so that
samples are written de-normalised, in the data's own units.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from difftrain.config import Config, ConfigError

INFO_FILE = "sequence.json"


def is_sequence(cfg: Config) -> bool:
    """Whether the run diffuses 1-D sequences (data.source = sequence)."""
    return cfg.data.source == "sequence"


@dataclass
class SequenceInfo:
    columns: list[str]
    mean: list[float]
    std: list[float]
    length: int

    @property
    def shape(self) -> tuple[int, int, int]:
        return (len(self.columns), 1, self.length)

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """Data units → model units, for N×C×1×L."""
        m, s = (torch.tensor(v, dtype=x.dtype).view(1, -1, 1, 1) for v in (self.mean, self.std))
        return (x - m) / s

    def denormalise(self, x: torch.Tensor) -> torch.Tensor:
        """Model units → data units, for N×C×1×L."""
        m, s = (torch.tensor(v, dtype=x.dtype).view(1, -1, 1, 1) for v in (self.mean, self.std))
        return x * s + m

    def save(self, run_dir: Path) -> None:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / INFO_FILE).write_text(json.dumps(asdict(self), indent=1))

    @classmethod
    def load(cls, run_dir: Path) -> SequenceInfo:
        """Read and validate RUN/sequence.json (untrusted: any defect is a ConfigError)."""
        path = Path(run_dir) / INFO_FILE
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
            info = cls(list(map(str, doc["columns"])), [float(v) for v in doc["mean"]],
                       [float(v) for v in doc["std"]], int(doc["length"]))  # fmt: skip
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise ConfigError(
                f"{path}: missing or malformed ({err}); train the run first"
            ) from None
        c = len(info.columns)
        if (
            not 0 < c <= 4096 or len(info.mean) != c or len(info.std) != c
            or not 0 < info.length <= 1_000_000
            or not all(math.isfinite(v) for v in info.mean + info.std)
            or not all(v > 0 for v in info.std)
        ):  # fmt: skip
            raise ConfigError(f"{path}: inconsistent columns/mean/std/length; not this run's")
        return info


def write_sequences(x: torch.Tensor, info: SequenceInfo, path: Path) -> Path:
    """De-normalised samples N×C×1×L → CSV (sample, t, one column per channel) or npz (N×L×C)."""
    data = info.denormalise(x.float().cpu())[:, :, 0, :].permute(0, 2, 1).numpy()  # N×L×C
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".npz":
        np.savez(path, samples=data, columns=np.array(info.columns))
        return path
    if path.suffix.lower() != ".csv":
        raise ConfigError(f"--out {path}: sequence samples are written as .csv or .npz")
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["sample", "t", *info.columns])
        for i, window in enumerate(data):
            for t, row in enumerate(window):
                w.writerow([i, t, *(f"{v:.6g}" for v in row)])
    return path


def plot_windows(real: np.ndarray | None, fake: np.ndarray, path: Path, columns: list[str],
                 n: int = 6) -> None:  # fmt: skip
    """PNG of the first channel of n real (top) and generated (bottom) windows, data units."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = 2 if real is not None else 1
    fig, axes = plt.subplots(rows, 1, figsize=(8, 2.4 * rows), squeeze=False)
    for ax, arr, title in zip(axes[:, 0], [a for a in (real, fake) if a is not None],
                              ["real windows", "generated windows"][-rows:], strict=True):  # fmt: skip
        for w in arr[:n]:
            ax.plot(w[:, 0], lw=1)
        ax.set_title(f"{title} ({columns[0]})", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def check_sequence_config(cfg: Config, preset) -> None:
    """What a sequence run needs: a 1-D preset, an objective the loss mask serves, no images."""
    from difftrain.models.presets import PRESETS, Seq1DPreset
    from difftrain.pipeline.build import check_schedule

    if cfg.data.path is None:
        raise ConfigError("data.source = sequence needs data.path (a .csv or .npz series)")
    if not isinstance(preset, Seq1DPreset):
        seq = [n for n, p in PRESETS.items() if isinstance(p, Seq1DPreset)]
        raise ConfigError(
            f"model.preset {cfg.model.preset!r} is an image network; data.source = sequence "
            f"needs one of {', '.join(seq)}"
        )
    d = cfg.diffusion
    if d.objective not in ("edm", "vp", "flow") or d.weighting == "learned":
        raise ConfigError(
            f"diffusion.objective = {d.objective!r} / weighting = {d.weighting!r}: the masked "
            "sequence loss serves edm, vp and flow with a fixed weighting; change them"
        )
    others = {
        "model.kind": cfg.model.kind != "diffusion",
        "model.pretrained": cfg.model.pretrained is not None,
        "latent.autoencoder": cfg.latent.autoencoder is not None,
        "text.encoder": cfg.text.encoder != "none",
        "eval.every": cfg.eval.every != 0,
        "data.loader": cfg.data.loader != "memory",
        "diffusion.offset_noise": d.offset_noise != 0,
        "sample.guidance": cfg.sample.guidance != 1.0,
    }
    bad = [k for k, v in others.items() if v]
    if bad:
        raise ConfigError(
            f"{', '.join(bad)}: not available for data.source = sequence (unconditional 1-D "
            "windows in memory); leave them at their defaults"
        )
    check_schedule(d.objective, cfg.sample.schedule)


def write_run_samples(run, plan, run_dir: Path, out: Path, npz: Path | None,
                      batch_size: int = 64) -> list[Path]:  # fmt: skip
    """Generate a sequence run's request; write OUT/samples.csv (and --npz) de-normalised."""
    from difftrain.pipeline.request import run_request_tensors

    info = SequenceInfo.load(Path(run_dir))
    x = torch.cat(list(run_request_tensors(run, plan, batch_size=batch_size)))
    paths = [write_sequences(x, info, Path(out) / "samples.csv")]
    if npz is not None:
        paths.append(write_sequences(x, info, npz))
    return paths
