"""Sample an ONNX export with onnxruntime and numpy alone (no torch, no difftrain training code).

The same deterministic samplers as `difftrain sample`: Euler and Heun (Karras et al. 2022,
Algorithm 1) over Karras σ (Eq. 5), with classifier-free guidance through the null class or the
empty (negative) prompt. Latent exports decode with decoder.onnx; text exports tokenize with
tokenizer.json (the `tokenizers` library). Give `noise` (N×C×H×W standard normal, in the
denoiser's space) to reproduce `difftrain sample` exactly; with only a `seed` the noise comes
from numpy, so images differ from difftrain's torch-seeded ones.

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
    """D(x, σ, cond) → x0̂ from an export directory (denoiser.onnx, onnx_model.json, and
    decoder.onnx / tokenizer.json when the export has them)."""

    def __init__(self, export_dir: str | Path, threads: int | None = None):
        root = Path(export_dir)
        self.meta = json.loads((root / "onnx_model.json").read_text())
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads

        def session(name: str) -> ort.InferenceSession:
            return ort.InferenceSession(str(root / name), opts, providers=["CPUExecutionProvider"])

        self.session = session("denoiser.onnx")
        self.decoder = session(self.meta["decoder"]) if self.meta.get("decoder") else None
        self.tokenizer = None
        if self.meta.get("tokenizer"):
            from tokenizers import Tokenizer

            self.tokenizer = Tokenizer.from_file(str(root / self.meta["tokenizer"]))
        self.shape = tuple(self.meta["shape"])
        self.cond_input = self.meta.get("cond_input")
        self.num_classes = self.meta["num_classes"]

    def encode(self, prompts: list[str]) -> np.ndarray:
        """Token ids N×L, framed and padded by the exported tokenizer."""
        if self.tokenizer is None:
            raise ValueError("this export is not text-conditioned; drop the prompt")
        return np.array([e.ids for e in self.tokenizer.encode_batch(list(prompts))], np.int64)

    def null(self, negative_prompt: str | None = None) -> np.ndarray | int | None:
        """The guidance null: ids of the negative prompt or "" (1×L), or the null class."""
        if self.tokenizer is not None:
            return self.encode([negative_prompt or ""])
        return self.meta["null_class"]

    def __call__(self, x: np.ndarray, sigma: np.ndarray, cond: np.ndarray | None) -> np.ndarray:
        feed = {"x": x.astype(np.float32), "sigma": sigma.astype(np.float32)}
        if self.cond_input is not None:
            if cond is None:  # the unconditional branch: the null class or ""
                null = self.null()
                rows = isinstance(null, np.ndarray)
                cond = np.repeat(null, len(x), 0) if rows else np.full(len(x), null)
            feed[self.cond_input] = cond.astype(np.int64)
        return self.session.run(["x0"], feed)[0]

    def guided(self, x, sigma, cond, null, guidance: float) -> np.ndarray:
        """D_w = D(∅) + w·(D(c) − D(∅)) in one batched call (Ho & Salimans 2022)."""
        if cond is None or guidance == 1.0:
            return self(x, sigma, cond)
        if isinstance(null, np.ndarray):
            null_rows = np.repeat(null.reshape(1, -1), len(x), 0)
        else:
            null_rows = np.full_like(cond, null)
        out = self(
            np.concatenate([x, x]),
            np.concatenate([sigma, sigma]),
            np.concatenate([cond, null_rows]),
        )
        d_cond, d_null = np.split(out, 2)
        return d_null + guidance * (d_cond - d_null)

    def to_images(self, x: np.ndarray) -> np.ndarray:
        """Samples → pixels in [-1, 1]: decoded for latent exports, clipped otherwise."""
        if self.decoder is not None:
            return self.decoder.run(["images"], {"x0": x.astype(np.float32)})[0]
        return np.clip(x, -1, 1)


def sample(
    denoiser: OnnxDenoiser,
    noise: np.ndarray,
    sigmas: np.ndarray,
    sampler: str = "heun",
    cond: np.ndarray | None = None,
    guidance: float = 1.0,
    null: np.ndarray | int | None = None,
) -> np.ndarray:
    """Integrate dx/dσ = (x − D(x; σ))/σ from σ_0·noise to σ = 0 (the denoiser's space)."""
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler {sampler!r}: allowed {', '.join(SAMPLERS)}")
    if guidance != 1.0 and (cond is None or denoiser.cond_input is None):
        raise ValueError("guidance needs a conditional model and a condition")
    null = denoiser.null() if null is None else null
    x = noise.astype(np.float32) * sigmas[0]
    n = x.shape[0]
    for i in range(len(sigmas) - 1):
        s, s_next = sigmas[i], sigmas[i + 1]
        d = (x - denoiser.guided(x, np.full(n, s, np.float32), cond, null, guidance)) / s
        x_next = x + (s_next - s) * d
        if sampler == "heun" and s_next > 0:
            den_next = denoiser.guided(x_next, np.full(n, s_next, np.float32), cond, null, guidance)
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
    prompts: list[str] | None = None,
    negative_prompt: str | None = None,
    guidance: float = 1.0,
) -> np.ndarray:
    """`num` images (N×C×H×W float32 in [-1, 1]) with the export's default steps and sampler."""
    den = OnnxDenoiser(export_dir)
    m = den.meta
    if noise is None:
        noise = np.random.default_rng(seed).standard_normal((num, *den.shape)).astype(np.float32)
    cond = labels
    if prompts is not None:  # contiguous blocks, as difftrain's prompt rows
        cond = den.encode([prompts[i * len(prompts) // num] for i in range(num)])
    sigmas = karras_sigmas(steps or m["steps"], m["sigma_min"], m["sigma_max"], m["rho"])
    x = sample(
        den, noise, sigmas, sampler or m["sampler"], cond, guidance, den.null(negative_prompt)
    )
    return den.to_images(x)


def main(argv: list[str] | None = None) -> None:
    """Command-line entry: write generated images (uint8 N×H×W×C) to an .npz."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("export_dir")
    p.add_argument("--num", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int)
    p.add_argument("--sampler", choices=SAMPLERS)
    p.add_argument("--class-label", type=int)
    p.add_argument("--prompt", action="append", help="repeatable; images split into blocks")
    p.add_argument("--negative-prompt")
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
        prompts=a.prompt,
        negative_prompt=a.negative_prompt,
        guidance=a.guidance,
    )
    u8 = np.round((x + 1) * 127.5).clip(0, 255).astype(np.uint8).transpose(0, 2, 3, 1)
    np.savez(a.out, images=u8)
    print(f"wrote {a.num} images to {a.out}")


if __name__ == "__main__":
    main()
