"""The autoencoder as a task of the one loop: KL autoencoder + PatchGAN, PSNR validation, export."""

from __future__ import annotations

from pathlib import Path

import torch

from difftrain.config import Config
from difftrain.data import ImageData, to_model_range, to_uint8
from difftrain.models.autoencoder import (
    RUN_SUBDIR,
    KLAutoencoder,
    build_autoencoder,
    latent_scaling_factor,
    resolve_ae_preset,
    save_autoencoder,
)
from difftrain.models.discriminator import NLayerDiscriminator
from difftrain.models.lpips import load_lpips
from difftrain.pipeline.generate import make_grid, save_image
from difftrain.train.autoencoder import (
    AutoencoderLoss,
    DiscriminatorStep,
    kl_per_example,
    reconstruction_error,
)
from difftrain.train.task import Task

GRID_COLS = 8


def psnr(x: torch.Tensor, rec: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB of images in [-1, 1] (peak 1 on the [0, 1] scale)."""
    mse = ((rec.clamp(-1, 1) - x) / 2).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(1.0 / mse.clamp_min(1e-10))


class AutoencoderTask(Task):
    """Rombach et al. 2022's first stage: model, loss, discriminator step, PSNR, diffusers export."""

    aux_groups = ("disc", "disc_optimizer")

    def __init__(self, cfg: Config, scale_images: torch.Tensor, val: ImageData, device):
        a, d = cfg.autoencoder, cfg.data
        self.cfg = cfg
        preset = resolve_ae_preset(
            cfg.model.preset, cfg.model.block_out_channels, cfg.model.layers_per_block
        )
        self.model = KLAutoencoder(build_autoencoder(preset, d.channels, d.resolution))
        self.scale_images = scale_images
        # The grid shows the same validation images every time (training images if none held out).
        n = 2 * GRID_COLS
        self.grid_x = to_model_range(val.images[:n]) if len(val) else scale_images[:n]
        lpips = load_lpips(a.lpips_weights).to(device) if a.lpips_weight > 0 else None
        disc = None
        if a.disc_weight > 0:
            disc = NLayerDiscriminator(d.channels, a.disc_channels, a.disc_layers).to(device)
            disc.train()
        self.objective = AutoencoderLoss(
            a.recon_loss, a.kl_weight, a.sample_posterior, lpips, a.lpips_weight, disc,
            a.disc_weight, a.disc_start, a.adaptive_weight_max,
        )  # fmt: skip
        self.disc_step = None
        if disc is not None:
            # Adam with β = (0.5, 0.9) for the discriminator, as taming-transformers and LDM.
            opt = torch.optim.Adam(
                disc.parameters(), lr=a.disc_lr or cfg.optim.lr, betas=(0.5, 0.9)
            )
            self.disc_step = DiscriminatorStep(disc, opt, self.objective)
        else:
            self.aux_groups = ()

    def begin_step(self, step: int) -> None:
        self.objective.begin_step(step)

    def aux_step(self) -> dict[str, float]:
        return self.disc_step() if self.disc_step is not None else {}

    def log_metrics(self) -> dict[str, float]:
        stats = {k: float(v) for k, v in self.objective.stats.items()}
        if self.disc_step is not None:
            stats.update(self.disc_step.stats)
        return stats

    def aux_state(self):
        return self.disc_step.state() if self.disc_step is not None else ({}, {})

    def load_aux_state(self, groups, state) -> None:
        if self.disc_step is not None and "disc" in groups:
            self.disc_step.load(groups, state)

    @torch.no_grad()
    def validate(self, model, x, y, device, batch_size: int = 64) -> dict[str, float]:
        """val/psnr and val/loss (reconstruction + kl_weight·KL) from the posterior mean."""
        a, psnrs, losses = self.cfg.autoencoder, [], []
        for i in range(0, len(x), batch_size):
            xb = x[i : i + batch_size].to(device)
            rec, mean, logvar = model(xb)  # the posterior mean: deterministic
            kl = kl_per_example(mean.float(), logvar.float()) / xb[0].numel()
            losses.append(reconstruction_error(xb, rec, a.recon_loss) + a.kl_weight * kl)
            psnrs.append(psnr(xb, rec.float()))
        return {
            "val/loss": torch.cat(losses).mean().item(),
            "val/psnr": torch.cat(psnrs).mean().item(),
        }

    @torch.no_grad()
    def write_samples(self, model, path: Path, device) -> None:
        """Rows of originals, each followed by its row of reconstructions."""
        x = self.grid_x.to(device)
        rec = model(x)[0].float().clamp(-1, 1)
        cols = min(GRID_COLS, len(x))
        rows = []
        for i in range(0, len(x), cols):
            rows += [x[i : i + cols], rec[i : i + cols]]
        save_image(make_grid(to_uint8(torch.cat(rows).cpu()), cols), path, min_side=256)

    def export(self, ema_model, run_dir: Path) -> None:
        """RUN/autoencoder in diffusers format from the EMA weights, with the scaling factor."""
        vae = ema_model.vae
        save_autoencoder(vae, run_dir / RUN_SUBDIR, latent_scaling_factor(vae, self.scale_images))
