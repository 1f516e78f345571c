"""Diffusion math: preconditioning, objectives and loss weighting. Imports torch only."""

from difftrain.diffusion.betas import (
    BETA_SCHEDULES,
    beta_schedule,
    make_alphas_cumprod,
    rescale_zero_terminal_snr,
    vp_sigmas,
)
from difftrain.diffusion.edm import EDMLoss, EDMPrecond
from difftrain.diffusion.flow import FlowLoss, FlowPrecond
from difftrain.diffusion.iddpm import IDDPMLoss, IDDPMPrecond
from difftrain.diffusion.precond import Preconditioned
from difftrain.diffusion.vp import PREDICTIONS, VPLoss, VPPrecond
from difftrain.diffusion.weighting import WEIGHTINGS, Weighting, WithLogVar

__all__ = [
    "BETA_SCHEDULES",
    "PREDICTIONS",
    "WEIGHTINGS",
    "EDMLoss",
    "EDMPrecond",
    "FlowLoss",
    "FlowPrecond",
    "IDDPMLoss",
    "IDDPMPrecond",
    "Preconditioned",
    "VPLoss",
    "VPPrecond",
    "Weighting",
    "WithLogVar",
    "beta_schedule",
    "make_alphas_cumprod",
    "rescale_zero_terminal_snr",
    "vp_sigmas",
]
