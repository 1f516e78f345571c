"""The sampler as a policy: trajectories with per-step Gaussian log-probs, DDPO and DRaFT-K losses.

The policy is the ancestral sampler in σ-space (DDIM with η; η = 1 is DDPM, Ho et al. 2020):
from x at σ to σ_next, x_next ~ N(μ, σ_up²·I) with μ = x + (σ_down − σ)·(x − D(x; σ))/σ and
(σ_down, σ_up) from `samplers.common.ancestral_sigmas`. Every step with σ_up > 0 has a Gaussian
log-prob, so the chain is a Markov decision process (Black et al. 2023, "Training Diffusion Models
with Reinforcement Learning", Sec. 4.2). The step to σ = 0 is deterministic and not a policy step.

- DDPO (Black et al. 2023, Sec. 4.3, the importance-sampled DDPO_IS): per-step ratio
  r = π_θ(x_next | x)/π_old(x_next | x) and the PPO-style clipped surrogate max(−A·r, −A·clip(r)).
- DRaFT-K (Clark et al. 2023, "Directly Fine-Tuning Diffusion Models on Differentiable Rewards",
  Sec. 4): sample without gradient until the last K steps, backpropagate −reward through those.

Log-probs are means over pixels (as DDPO's reference code), so the clip range does not depend on
the image size. Randomness comes from the loop's step generator (a function of (seed, step)).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from difftrain.diffusion.loss import randn_on
from difftrain.samplers.common import ancestral_sigmas


@dataclass
class Trajectory:
    """A batch of sampler chains from the policy that drew them (no gradient)."""

    xs: torch.Tensor  # (T+1)×B×C×H×W: x at σ_0 … x at σ_T = 0
    log_probs: torch.Tensor  # P×B: log π_old of each policy step (P = steps with σ_up > 0)
    advantages: torch.Tensor  # B
    rewards: torch.Tensor  # B
    cond: torch.Tensor | None  # B labels or None


def step_mean_std(denoiser, x, sigma, sigma_next, cond, eta: float):
    """(μ, σ_up) of the ancestral step σ → σ_next; μ carries the denoiser's gradient."""
    down, up = ancestral_sigmas(sigma, sigma_next, eta)
    d = denoiser(x, sigma.expand(x.shape[0]), cond).float()
    return x + (down - sigma) * (x - d) / sigma, up


def gaussian_log_prob(x_next: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """log N(x_next; mean, std²·I) per example, averaged over dimensions (B)."""
    lp = (
        -((x_next - mean) ** 2) / (2 * std**2)
        - torch.log(std)
        - 0.5 * torch.log(torch.tensor(2 * torch.pi, dtype=mean.dtype, device=mean.device))
    )
    return lp.flatten(1).mean(1)


def policy_steps(sigmas: torch.Tensor, eta: float) -> list[int]:
    """Indices i of the steps σ_i → σ_{i+1} that draw noise (σ_up > 0)."""
    return [
        i
        for i in range(len(sigmas) - 1)
        if float(ancestral_sigmas(sigmas[i], sigmas[i + 1], eta)[1]) > 0
    ]


def sample_chain(
    denoiser, shape, sigmas, cond, eta: float, generator, device, grad_from: int | None = None
) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    """Run the ancestral chain; return (x_0, states, log-probs of the policy steps).

    Steps with index ≥ `grad_from` keep the denoiser's gradient (DRaFT-K); None = no gradient.
    """
    sigmas = sigmas.to(device, torch.float32)
    x = randn_on(shape, generator, device) * sigmas[0]
    xs, logps = [x], []
    n = len(sigmas) - 1
    for i in range(n):
        with torch.set_grad_enabled(grad_from is not None and i >= grad_from):
            mean, up = step_mean_std(denoiser, x, sigmas[i], sigmas[i + 1], cond, eta)
            noise = randn_on(shape, generator, device)  # drawn every step: fixed stream layout
            x_next = mean + up * noise if up > 0 else mean
            if up > 0:
                logps.append(gaussian_log_prob(x_next.detach(), mean.detach(), up))
        x = x_next
        xs.append(x.detach())
    return x, xs, logps


def advantages(
    rewards: torch.Tensor, labels: torch.Tensor | None, clip: float, min_count: int = 2
) -> torch.Tensor:
    """Rewards normalised per class (per-prompt in DDPO): (r − mean_c)/std_c, clipped to ±clip.

    A class with fewer than `min_count` samples in the batch uses the batch's mean and std.
    """
    r = rewards.float()
    mean = torch.full_like(r, float(r.mean()))
    std = torch.full_like(r, float(r.std(unbiased=False)) if len(r) > 1 else 0.0)
    if labels is not None:
        for c in labels.unique():
            rows = labels == c
            if int(rows.sum()) >= min_count:
                mean[rows] = r[rows].mean()
                std[rows] = r[rows].std(unbiased=False)
    return ((r - mean) / (std + 1e-6)).clamp(-clip, clip)


def ddpo_loss(
    denoiser,
    traj: Trajectory,
    sigmas: torch.Tensor,
    steps: list[int],
    train_steps: list[int],
    eta: float,
    clip_range: float,
) -> tuple[torch.Tensor, float]:
    """Per-example clipped surrogate averaged over `train_steps` (indices into `steps`).

    Returns (loss B, fraction of (step, example) ratios outside the clip range).
    """
    sigmas = sigmas.to(traj.xs.device, torch.float32)
    adv = traj.advantages.to(traj.xs.device)
    total, clipped = 0.0, 0.0
    for p in train_steps:
        i = steps[p]
        x, x_next = traj.xs[i], traj.xs[i + 1]
        mean, up = step_mean_std(denoiser, x, sigmas[i], sigmas[i + 1], traj.cond, eta)
        ratio = torch.exp(gaussian_log_prob(x_next, mean, up) - traj.log_probs[p])
        unclipped = -adv * ratio
        bounded = -adv * ratio.clamp(1 - clip_range, 1 + clip_range)
        total = total + torch.maximum(unclipped, bounded)
        clipped += float(((ratio - 1).abs() > clip_range).float().mean())
    n = max(1, len(train_steps))
    return total / n, clipped / n
