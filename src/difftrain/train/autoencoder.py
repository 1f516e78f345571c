"""Autoencoder training step pieces: the loss the loop reduces, and the discriminator update.

The recipe is LDM's `LPIPSWithDiscriminator` (Rombach et al. 2022, after Esser et al. 2021):
reconstruction (L1/L2, plus LPIPS when its weights are local) + kl_weight · KL, and after
`disc_start` steps a hinge GAN term whose weight is the ratio of the reconstruction and GAN
gradient norms at the decoder's last layer (clamped), times disc_weight.

Normalisation: the reconstruction term is a per-pixel mean and the KL a per-example sum divided
by the image's element count, so kl_weight means what it does in LDM configs (1e-6), where both
are sums.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from difftrain.diffusion.loss import randn_on
from difftrain.pipeline.checkpoint import flatten_state, unflatten_state


def kl_per_example(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, exp(logvar)) || N(0, I)) summed over each example's latent (B)."""
    return 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).flatten(1).sum(1)


def reconstruction_error(x: torch.Tensor, rec: torch.Tensor, kind: str) -> torch.Tensor:
    """Per-example mean |x - rec| (l1) or (x - rec)² (l2) (B)."""
    err = (rec - x).abs() if kind == "l1" else (rec - x).pow(2)
    return err.flatten(1).mean(1)


def adaptive_weight(
    nll: torch.Tensor, g_loss: torch.Tensor, last_layer: torch.Tensor, max_weight: float = 1e4
) -> torch.Tensor:
    """‖∇_L nll‖ / (‖∇_L g_loss‖ + 1e-4), clamped to [0, max_weight] (Esser et al. 2021, Eq. 7)."""
    g_nll = torch.autograd.grad(nll, last_layer, retain_graph=True)[0]
    g_adv = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    return (g_nll.norm() / (g_adv.norm() + 1e-4)).clamp(0.0, max_weight).detach()


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """Discriminator hinge loss: ½(E[relu(1 - D(x))] + E[relu(1 + D(x̂))])."""
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


class AutoencoderLoss:
    """loss(model, x, cond, generator) -> per-example loss (B), the objective contract.

    `model` is a `KLAutoencoder` (possibly DDP-wrapped). While the adversarial term is on, each
    call keeps its (input, reconstruction) pair for the discriminator step that follows.
    """

    def __init__(
        self,
        recon: str = "l1",
        kl_weight: float = 1e-6,
        sample_posterior: bool = True,
        lpips: nn.Module | None = None,
        lpips_weight: float = 0.0,
        disc: nn.Module | None = None,
        disc_weight: float = 0.0,
        disc_start: int = 0,
        max_adaptive_weight: float = 1e4,
    ):
        self.recon, self.kl_weight, self.sample_posterior = recon, kl_weight, sample_posterior
        self.lpips, self.lpips_weight = lpips, lpips_weight
        self.disc, self.disc_weight, self.disc_start = disc, disc_weight, disc_start
        self.max_adaptive_weight = max_adaptive_weight
        self.step = 0
        self.pairs: list[tuple[torch.Tensor, torch.Tensor]] = []  # for the discriminator step
        self.stats: dict[str, torch.Tensor] = {}

    @property
    def adversarial(self) -> bool:
        """Whether the GAN term is on at the current step (off before disc_start: `adopt_weight`)."""
        return self.disc is not None and self.disc_weight > 0 and self.step >= self.disc_start

    def begin_step(self, step: int) -> None:
        """Called by the loop before each step: its index, and pairs of a skipped step dropped."""
        self.step = step
        self.pairs.clear()

    def __call__(self, model, x: torch.Tensor, cond=None, generator=None) -> torch.Tensor:
        core = getattr(model, "module", model)  # DDP keeps the module inside
        # Posterior noise through randn_on: under DDP it is drawn for the global batch, sliced.
        noise = (
            randn_on(core.latent_shape(x), generator, x.device) if self.sample_posterior else None
        )
        rec, mean, logvar = model(x, noise)
        nll = reconstruction_error(x, rec, self.recon)
        if self.lpips is not None and self.lpips_weight > 0:
            nll = nll + self.lpips_weight * self.lpips(x.float(), rec.float())
        kl = kl_per_example(mean.float(), logvar.float()) / x[0].numel()
        loss = nll + self.kl_weight * kl
        # Detached tensors, read only when the loop logs (no device sync every step).
        self.stats = {"ae/rec": nll.mean().detach(), "ae/kl": kl.mean().detach()}
        if self.adversarial:
            self.pairs.append((x.detach(), rec.detach()))
            g = -self.disc(rec).flatten(1).mean(1)  # generator hinge term, per example
            w = self.disc_weight * adaptive_weight(
                nll.mean(), g.mean(), core.last_layer, self.max_adaptive_weight
            )
            loss = loss + w * g
            self.stats.update({"ae/g_loss": g.mean().detach(), "ae/adaptive_weight": w})
        return loss


class DiscriminatorStep:
    """The discriminator's own update, run by the loop after the autoencoder's optimizer step.

    It trains on the (input, reconstruction) pairs of that step's micro-batches, with its own
    optimizer; a non-finite loss or gradient skips it. Frozen (no grads) outside this step.
    """

    def __init__(self, disc: nn.Module, optimizer: torch.optim.Optimizer, loss: AutoencoderLoss):
        self.disc, self.optimizer, self.loss = disc, optimizer, loss
        self.disc.requires_grad_(False)
        self.stats: dict[str, float] = {}

    def __call__(self) -> dict[str, float]:
        pairs = self.loss.pairs
        if not pairs:
            return {}
        self.disc.requires_grad_(True)
        self.optimizer.zero_grad(set_to_none=True)
        total, real_sum, fake_sum = 0.0, 0.0, 0.0
        for x, rec in pairs:
            real, fake = self.disc(x), self.disc(rec)
            d = hinge_d_loss(real, fake) / len(pairs)
            d.backward()
            total += d.item()
            real_sum += real.mean().item() / len(pairs)
            fake_sum += fake.mean().item() / len(pairs)
        _all_reduce_grads(self.disc)
        params = [p for p in self.disc.parameters() if p.grad is not None]
        norm = torch.nn.utils.clip_grad_norm_(params, float("inf")).item() if params else 0.0
        ok = math.isfinite(total) and math.isfinite(norm)
        if ok:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.disc.requires_grad_(False)
        pairs.clear()
        self.stats = {
            "disc/loss": total,
            "disc/logits_real": real_sum,
            "disc/logits_fake": fake_sum,
            "disc/skipped": 0 if ok else 1,
        }
        return self.stats

    def state(self) -> tuple[dict[str, dict[str, torch.Tensor]], dict]:
        """(tensor groups, JSON skeleton) for the run's checkpoint."""
        opt_tensors, skeleton = flatten_state(self.optimizer.state_dict())
        return {"disc": self.disc.state_dict(), "disc_optimizer": opt_tensors}, {
            "disc_optimizer": skeleton
        }

    def load(self, groups: dict[str, dict[str, torch.Tensor]], state: dict) -> None:
        """Inverse of `state`."""
        self.disc.load_state_dict(groups["disc"])
        self.optimizer.load_state_dict(
            unflatten_state(state["disc_optimizer"], groups.get("disc_optimizer", {}))
        )


def _all_reduce_grads(module: nn.Module) -> None:
    """Average gradients over processes (the discriminator is not wrapped in DDP)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return
    world = torch.distributed.get_world_size()
    for p in module.parameters():
        if p.grad is not None:
            torch.distributed.all_reduce(p.grad)
            p.grad /= world
