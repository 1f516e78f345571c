"""Sample an ONNX export with onnxruntime and numpy alone (no torch, no difftrain training code).

The same deterministic samplers as `difftrain sample`: Euler and Heun (Karras et al. 2022,
Algorithm 1) over Karras σ (Eq. 5), with classifier-free guidance through the null class.
Give `noise` (N×C×H×W standard normal) to reproduce `difftrain sample` exactly; with only a
`seed` the noise comes from numpy, so images differ from difftrain's torch-seeded ones.

    python -m difftrain.export.onnx_sampler EXPORT_DIR --num 16 --seed 0 --out images.npz
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort

SAMPLERS = ("euler", "heun")


def karras_sigmas(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> np.ndarray:
    """Eq. 5 of Karras et al. 2022 in float64, cast to float32, with a final 0 (n+1 values)."""
    ramp = np.arange(n, dtype=np.float64) / max(n - 1, 1)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    sig = (hi + ramp * (lo - hi)) ** rho
    return np.append(sig, 0.0).astype(np.float32)


class OnnxDenoiser:
    """D(x, σ, labels) → x0̂ from an export directory's denoiser.onnx and onnx_model.json."""

    def __init__(self, export_dir: str | Path, threads: int | None = None):
        root = Path(export_dir)
        self.meta = json.loads((root / "onnx_model.json").read_text())
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        self.session = ort.InferenceSession(
            str(root / "denoiser.onnx"), opts, providers=["CPUExecutionProvider"]
        )
        self.shape = tuple(self.meta["shape"])
        self.num_classes = self.meta["num_classes"]
        self.null_class = self.meta["null_class"]

    def __call__(self, x: np.ndarray, sigma: np.ndarray, labels: np.ndarray | None) -> np.ndarray:
        feed = {"x": x.astype(np.float32), "sigma": sigma.astype(np.float32)}
        if self.num_classes is not None:
            if labels is None:
                labels = np.full(x.shape[0], self.null_class)
            feed["class_labels"] = labels.astype(np.int64)
        return self.session.run(["x0"], feed)[0]

    def guided(self, x, sigma, labels, guidance: float) -> np.ndarray:
        """D_w = D(∅) + w·(D(c) − D(∅)) in one batched call (Ho & Salimans 2022)."""
        if labels is None or guidance == 1.0:
            return self(x, sigma, labels)
        null = np.full_like(labels, self.null_class)
        out = self(
            np.concatenate([x, x]), np.concatenate([sigma, sigma]), np.concatenate([labels, null])
        )
        d_cond, d_null = np.split(out, 2)
        return d_null + guidance * (d_cond - d_null)


def sample(
    denoiser: OnnxDenoiser,
    noise: np.ndarray,
    sigmas: np.ndarray,
    sampler: str = "heun",
    labels: np.ndarray | None = None,
    guidance: float = 1.0,
) -> np.ndarray:
    """Integrate dx/dσ = (x − D(x; σ))/σ from σ_0·noise to σ = 0; returns x0 in [-1, 1]-ish."""
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler {sampler!r}: allowed {', '.join(SAMPLERS)}")
    if guidance != 1.0 and (labels is None or denoiser.num_classes is None):
        raise ValueError("guidance needs a class-conditional model and labels")
    x = noise.astype(np.float32) * sigmas[0]
    n = x.shape[0]
    for i in range(len(sigmas) - 1):
        s, s_next = sigmas[i], sigmas[i + 1]
        d = (x - denoiser.guided(x, np.full(n, s, np.float32), labels, guidance)) / s
        x_next = x + (s_next - s) * d
        if sampler == "heun" and s_next > 0:
            den_next = denoiser.guided(x_next, np.full(n, s_next, np.float32), labels, guidance)
            x_next = x + (s_next - s) * (d + (x_next - den_next) / s_next) / 2
        x = x_next.astype(np.float32)
    return x


def generate(
    export_dir: str | Path,
    num: int,
    *,
    seed: int = 0,
    noise: np.ndarray | None = None,
    steps: int | None = None,
    sampler: str | None = None,
    labels: np.ndarray | None = None,
    guidance: float = 1.0,
) -> np.ndarray:
    """`num` images (N×C×H×W float32 in [-1, 1]) with the export's default steps and sampler."""
    den = OnnxDenoiser(export_dir)
    m = den.meta
    if noise is None:
        noise = np.random.default_rng(seed).standard_normal((num, *den.shape)).astype(np.float32)
    sigmas = karras_sigmas(steps or m["steps"], m["sigma_min"], m["sigma_max"], m["rho"])
    return np.clip(sample(den, noise, sigmas, sampler or m["sampler"], labels, guidance), -1, 1)


def main(argv: list[str] | None = None) -> None:
    """Command-line entry: write generated images (uint8 N×H×W×C) to an .npz."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("export_dir")
    p.add_argument("--num", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int)
    p.add_argument("--sampler", choices=SAMPLERS)
    p.add_argument("--class-label", type=int)
    p.add_argument("--guidance", type=float, default=1.0)
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    labels = None if a.class_label is None else np.full(a.num, a.class_label, np.int64)
    x = generate(
        a.export_dir,
        a.num,
        seed=a.seed,
        steps=a.steps,
        sampler=a.sampler,
        labels=labels,
        guidance=a.guidance,
    )
    u8 = np.round((x + 1) * 127.5).clip(0, 255).astype(np.uint8).transpose(0, 2, 3, 1)
    np.savez(a.out, images=u8)
    print(f"wrote {a.num} images to {a.out}")


if __name__ == "__main__":
    main()
