"""Samplers: pure functions over the denoiser contract D(x, sigma, cond) -> x0. Torch only."""

from difftrain.samplers.guidance import CFGDenoiser
from difftrain.samplers.heun import sample_heun
from difftrain.samplers.noise import randn, sample_generators
from difftrain.samplers.schedules import karras_sigmas

SAMPLERS = {"heun": sample_heun}

__all__ = ["SAMPLERS", "CFGDenoiser", "karras_sigmas", "randn", "sample_generators", "sample_heun"]
