"""Diffusion math: preconditioning, objectives and loss weighting. Imports torch only."""

from difftrain.diffusion.edm import EDMLoss, EDMPrecond

__all__ = ["EDMLoss", "EDMPrecond"]
