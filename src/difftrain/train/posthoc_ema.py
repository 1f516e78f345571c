"""Post-hoc EMA (Karras et al. 2024, "Analyzing and Improving the Training Dynamics of Diffusion
Models" — EDM2, Sec. 3 and Appendix C).

During training, a few *power-function* EMAs are tracked and snapshotted every N steps. The
average with exponent γ at time t weighs the training trajectory θ(τ) by the profile

    p_{t,γ}(τ) = (γ+1) τ^γ / t^(γ+1)   on 0 ≤ τ ≤ t,   θ̂_γ(t) = ∫ p_{t,γ}(τ) θ(τ) dτ,

whose width relative to its length is σ_rel = sqrt((γ+1) / ((γ+2)² (γ+3))) (EDM2 Sec. 3.1).
After training, the EMA of any other σ_rel (and any snapshot time) is the least-squares
combination of stored snapshots whose profiles best match the target profile (EDM2 App. C.2):
solve A x = b with A_ij = ⟨p_i, p_j⟩ and b_i = ⟨p_i, p_target⟩, then θ̂_target = Σ x_i θ̂_i.

Snapshots live in `run_dir/ema_snapshots/`: one safetensors file per (step, profile) plus
`index.json` listing (file, step, γ, σ_rel). Everything is safetensors or JSON; nothing pickled.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from difftrain.pipeline.checkpoint import member

SNAPSHOT_DIR = "ema_snapshots"
INDEX = "index.json"
# σ_rel of γ = 0 (a uniform average of the whole run): the longest profile with γ ≥ 0.
MAX_SIGMA_REL = math.sqrt(1 / 12)


# ---- The profile: σ_rel ↔ γ and inner products of profiles ----


def gamma_to_sigma_rel(gamma: float) -> float:
    """σ_rel = sqrt((γ+1) / ((γ+2)² (γ+3))): the std of p_{t,γ} divided by t (EDM2 Sec. 3.1)."""
    if not gamma >= 0:
        raise ValueError(f"gamma = {gamma}: must be >= 0")
    return math.sqrt((gamma + 1) / ((gamma + 2) ** 2 * (gamma + 3)))


def sigma_rel_to_gamma(sigma_rel: float) -> float:
    """Invert gamma_to_sigma_rel: the root γ ≥ 0 of γ³ + 7γ² + (16 − σ⁻²)γ + (12 − σ⁻²) = 0.

    The cubic is σ_rel⁻² = (γ+2)²(γ+3)/(γ+1) multiplied out; σ_rel decreases monotonically in
    γ ≥ 0, so for 0 < σ_rel < sqrt(1/12) there is exactly one root there (the largest real one).
    """
    if not 0 < sigma_rel < MAX_SIGMA_REL:
        raise ValueError(f"sigma_rel = {sigma_rel}: must lie in (0, {MAX_SIGMA_REL:.4f})")
    s = sigma_rel**-2
    roots = np.roots([1.0, 7.0, 16.0 - s, 12.0 - s])
    gamma = float(max(r.real for r in roots if abs(r.imag) < 1e-6 * max(1.0, abs(r.real))))
    # One Newton step on f(γ) = (γ+2)²(γ+3) − s(γ+1) polishes the root to full precision.
    f = (gamma + 2) ** 2 * (gamma + 3) - s * (gamma + 1)
    df = 2 * (gamma + 2) * (gamma + 3) + (gamma + 2) ** 2 - s
    return gamma - f / df if df else gamma


def profile_dot(t_a: float, gamma_a: float, t_b: float, gamma_b: float) -> float:
    """⟨p_{t_a,γ_a}, p_{t_b,γ_b}⟩ = ∫₀^min(t_a,t_b) p_a(τ) p_b(τ) dτ in closed form (EDM2 App. C.2).

    With t_a ≤ t_b the integral is (γ_a+1)(γ_b+1) / (γ_a+γ_b+1) · (t_a/t_b)^γ_b / t_b (and
    symmetrically); written with the ratio so that t^γ never overflows for large γ and t.
    """
    if t_a > t_b:
        t_a, gamma_a, t_b, gamma_b = t_b, gamma_b, t_a, gamma_a
    coef = (gamma_a + 1) * (gamma_b + 1) / (gamma_a + gamma_b + 1)
    return coef * (t_a / t_b) ** gamma_b / t_b


def solve_coefficients(
    sources: Sequence[tuple[float, float]], target: tuple[float, float]
) -> tuple[np.ndarray, float]:
    """Least-squares weights x for Σ x_i p_{source_i} ≈ p_target; sources/target are (t, γ).

    Returns (x, fit_error) where fit_error = ‖Σ x_i p_i − p_target‖ / ‖p_target‖ (L2 over τ),
    from ‖r‖² = xᵀAx − 2xᵀb + ⟨p_T, p_T⟩. Times are divided by the target time first (the
    system is invariant to the time unit, and this keeps its entries of order one).
    """
    t_ref = float(target[0])
    src = [(t / t_ref, g) for t, g in sources]
    tgt = (1.0, float(target[1]))
    a = np.array([[profile_dot(*p, *q) for q in src] for p in src], dtype=np.float64)
    b = np.array([profile_dot(*p, *tgt) for p in src], dtype=np.float64)
    x = np.linalg.lstsq(a, b, rcond=None)[0]
    tt = profile_dot(*tgt, *tgt)
    resid2 = max(float(x @ a @ x - 2 * x @ b + tt), 0.0)
    return x, math.sqrt(resid2 / tt)


# ---- Tracking during training ----


class PowerEMA:
    """Power-function EMAs of a module, one per σ_rel, kept in float32 on the module's device.

    `update(model, step)` after each optimizer step applies (EDM2 Sec. 3.1, exact for weights
    held constant between updates):  θ̂ ← β θ̂ + (1 − β) θ  with  β = (t_prev / t)^(γ+1),
    where t_prev is the step of the previous update (0 at the start, so the first update copies).
    With t_prev = t − 1 this is the paper's β_γ(t) = (1 − 1/t)^(γ+1).
    """

    def __init__(self, model: nn.Module, sigma_rels: Sequence[float]):
        self.sigma_rels = [float(s) for s in sigma_rels]
        self.gammas = [sigma_rel_to_gamma(s) for s in self.sigma_rels]
        self.step = 0
        sd = model.state_dict()
        self.averages = [
            {k: v.detach().clone().float() if v.is_floating_point() else v.detach().clone()
             for k, v in sd.items()}
            for _ in self.sigma_rels
        ]  # fmt: skip

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        """Fold in the weights after optimizer step `step` (from 1; any increasing count works)."""
        if step <= self.step:
            raise ValueError(
                f"PowerEMA.update: step {step} is not after the last one ({self.step})"
            )
        src = model.state_dict()
        for gamma, avg in zip(self.gammas, self.averages, strict=True):
            beta = (self.step / step) ** (gamma + 1)
            for name, p in avg.items():
                s = src[name].detach()
                if p.is_floating_point():
                    p.lerp_(s.to(p.dtype), 1 - beta)
                else:
                    p.copy_(s)
        self.step = step

    def to(self, device: torch.device | str) -> PowerEMA:
        """Move the averages (e.g. next to the model on the GPU)."""
        self.averages = [{k: v.to(device) for k, v in avg.items()} for avg in self.averages]
        return self

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Flat tensors only (one safetensors group): the averages plus step and σ_rels."""
        out = {
            "meta/step": torch.tensor(self.step, dtype=torch.int64),
            "meta/sigma_rels": torch.tensor(self.sigma_rels, dtype=torch.float64),
        }
        for i, avg in enumerate(self.averages):
            out.update({f"{i}/{k}": v for k, v in avg.items()})
        return out

    def load_state_dict(self, sd: dict[str, torch.Tensor]) -> None:
        """Restore from state_dict(); the σ_rels must be the ones this tracker was built with."""
        saved = [round(float(s), 6) for s in sd["meta/sigma_rels"].tolist()]
        if saved != [round(s, 6) for s in self.sigma_rels]:
            from difftrain.config import ConfigError

            raise ConfigError(
                f"train.posthoc_ema_sigma_rels = {self.sigma_rels} differs from the checkpoint's "
                f"{saved}; set it back to {saved} to continue this run"
            )
        for i, avg in enumerate(self.averages):
            for k, v in avg.items():
                v.copy_(sd[f"{i}/{k}"])
        self.step = int(sd["meta/step"])

    def snapshot(self) -> list[tuple[float, float, dict[str, torch.Tensor]]]:
        """(σ_rel, γ, CPU copy of the average) per profile: what save_snapshots writes."""
        return [
            (s, g, {k: v.detach().to("cpu", copy=True).contiguous() for k, v in avg.items()})
            for s, g, avg in zip(self.sigma_rels, self.gammas, self.averages, strict=True)
        ]


# ---- Snapshots on disk: ema_snapshots/step-NNNNNNN-sigma_rel-S.safetensors + index.json ----


@dataclass
class Snapshot:
    """One stored power EMA: its step (t), exponent γ and where its tensors are."""

    step: int
    gamma: float
    path: Path | None = None
    tensors: dict[str, torch.Tensor] | None = field(default=None, repr=False)

    @property
    def sigma_rel(self) -> float:
        return gamma_to_sigma_rel(self.gamma)

    def load(self) -> dict[str, torch.Tensor]:
        return self.tensors if self.tensors is not None else load_file(self.path)


def _read_index(snap_dir: Path) -> list[dict]:
    """index.json's entries, validated: it is read from a run directory, so untrusted."""
    from difftrain.config import ConfigError

    path = snap_dir / INDEX
    if not path.is_file():
        return []
    fix = f"restore it from a backup, or remove {path} and the snapshots it lists"
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConfigError(f"{path}: unreadable ({err}); {fix}") from None
    entries = data.get("snapshots") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise ConfigError(f"{path}: needs a 'snapshots' list; {fix}")
    for i, e in enumerate(entries):
        where = f"{path}: snapshot entry {i}"
        if not isinstance(e, dict):
            raise ConfigError(f"{where} is not an object; {fix}")
        try:
            member(snap_dir, e.get("file"), where)
        except ValueError as err:
            raise ConfigError(f"{err}; {fix}") from None
        step, gamma = e.get("step"), e.get("gamma")
        if type(step) is not int or step < 0:
            raise ConfigError(f"{where}: step {step!r} is not a non-negative integer; {fix}")
        if type(gamma) not in (int, float) or not 0 <= gamma < math.inf:
            raise ConfigError(f"{where}: gamma {gamma!r} is not a finite number >= 0; {fix}")
    return entries


def _write_index(snap_dir: Path, entries: list[dict]) -> None:
    entries = sorted(entries, key=lambda e: (e["step"], -e["gamma"]))
    tmp = snap_dir / f".{INDEX}.tmp-{os.getpid()}"
    try:
        tmp.write_text(json.dumps({"snapshots": entries}, indent=1))
        os.replace(tmp, snap_dir / INDEX)  # readers never see a half-written index
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk leaves the old index and no partial file
        raise


def snapshot_due(step: int, every: int | None, max_steps: int) -> bool:
    """Snapshot every `every` steps (None: 20 over the run) and at the last step."""
    every = every or max(1, max_steps // 20)
    return step % every == 0 or step == max_steps


def save_snapshots(run_dir: Path, pema: PowerEMA) -> list[Path]:
    """Write each profile's current average at pema.step, then list them in index.json."""
    snap_dir = Path(run_dir) / SNAPSHOT_DIR
    snap_dir.mkdir(parents=True, exist_ok=True)
    listed = {e["file"]: e for e in _read_index(snap_dir)}
    entries = dict(listed)
    paths: list[Path] = []
    try:
        for sigma_rel, gamma, tensors in pema.snapshot():
            name = f"step-{pema.step:07d}-sigma_rel-{sigma_rel:.4f}.safetensors"
            meta = {"step": str(pema.step), "gamma": repr(gamma), "sigma_rel": repr(sigma_rel)}
            tmp = snap_dir / f".{name}.tmp-{os.getpid()}"
            try:
                save_file(tensors, tmp, metadata=meta)
                os.replace(tmp, snap_dir / name)
            finally:
                tmp.unlink(missing_ok=True)  # a failed write (full disk) leaves no partial file
            entry = {"file": name, "step": pema.step, "gamma": gamma, "sigma_rel": sigma_rel}
            entries[name] = entry
            paths.append(snap_dir / name)
        _write_index(snap_dir, list(entries.values()))
    except BaseException:
        for path in paths:  # written by this call but never listed: ours to remove
            if path.name not in listed:
                path.unlink(missing_ok=True)
        raise
    return paths


def truncate_snapshots(run_dir: Path, step: int) -> None:
    """Forget snapshots after `step` (call on resume/rollback: they belong to an abandoned path)."""
    snap_dir = Path(run_dir) / SNAPSHOT_DIR
    entries = _read_index(snap_dir)
    keep = [e for e in entries if e["step"] <= step]
    if len(keep) == len(entries):
        return
    _write_index(snap_dir, keep)
    for e in entries:
        if e["step"] > step:
            (snap_dir / e["file"]).unlink(missing_ok=True)


def list_snapshots(run_dir: Path) -> list[Snapshot]:
    """The snapshots of a run, by step then descending γ (empty if none were written)."""
    snap_dir = Path(run_dir) / SNAPSHOT_DIR
    return [Snapshot(e["step"], e["gamma"], snap_dir / e["file"]) for e in _read_index(snap_dir)]


# ---- Reconstruction ----


def posthoc_coefficients(
    snapshots: Sequence[Snapshot], target_sigma_rel: float, step: int | None = None
) -> tuple[list[Snapshot], np.ndarray, float]:
    """The snapshots used (those at or before `step`), their weights, and the profile fit error.

    `step` defaults to the last snapshot's step and must be a snapshot step: the target profile
    covers (0, step], and only snapshots ending there see the weights just before it.
    """
    if not snapshots:
        raise ValueError("no EMA snapshots to reconstruct from")
    steps = sorted({s.step for s in snapshots})
    step = steps[-1] if step is None else step
    if step not in steps:
        raise ValueError(f"step {step}: no snapshot there (snapshot steps: {steps})")
    used = sorted((s for s in snapshots if s.step <= step), key=lambda s: s.step)
    gamma = sigma_rel_to_gamma(target_sigma_rel)
    x, err = solve_coefficients([(s.step, s.gamma) for s in used], (step, gamma))
    return used, x, err


@torch.no_grad()
def reconstruct(
    snapshots: Sequence[Snapshot], target_sigma_rel: float, step: int | None = None
) -> dict[str, torch.Tensor]:
    """The EMA with `target_sigma_rel` at `step` (default: the last), as Σ x_i · snapshot_i.

    Snapshots are loaded one at a time; sums run in float64 because the weights x_i can be large
    with alternating signs. Non-float entries (counters) come from the latest snapshot.
    """
    used, x, _ = posthoc_coefficients(snapshots, target_sigma_rel, step)
    out: dict[str, torch.Tensor] = {}
    dtypes: dict[str, torch.dtype] = {}
    for snap, coef in zip(used, x.tolist(), strict=True):
        for k, v in snap.load().items():
            if not v.is_floating_point():
                out[k] = v.clone()  # `used` is sorted by step: the last one wins
                continue
            dtypes[k] = v.dtype
            acc = out.get(k)
            if acc is None:
                out[k] = v.double() * coef
            else:
                acc.add_(v.double(), alpha=coef)
    return {k: v.to(dtypes[k]) if k in dtypes else v for k, v in out.items()}
