"""Samplers: pure functions over the denoiser contract D(x, sigma, cond) -> x0. Torch only.

Every sampler has the signature `sample_xxx(denoiser, x_T, sigmas, *, cond=None, callback=None,
generator=None, **options) -> x0`; x_T is already scaled to sigmas[0] and sigmas end at 0.
"""

from difftrain.samplers.ddim import sample_ddim
from difftrain.samplers.ddpm import sample_ddpm
from difftrain.samplers.dpmpp_2m import sample_dpmpp_2m
from difftrain.samplers.dpmpp_3m import sample_dpmpp_3m, sample_dpmpp_3m_exact
from difftrain.samplers.edm_stochastic import sample_edm_stochastic
from difftrain.samplers.euler import sample_euler
from difftrain.samplers.guidance import CFGDenoiser
from difftrain.samplers.heun import sample_heun
from difftrain.samplers.img2img import img2img_sigmas, sample_img2img
from difftrain.samplers.inpaint import InpaintDenoiser, paste_known, sample_inpaint
from difftrain.samplers.noise import randn, sample_generators
from difftrain.samplers.schedules import (
    flow_sigmas,
    karras_sigmas,
    timestep_sigmas,
    training_sigmas,
    uniform_sigmas,
    uniform_timesteps,
)
from difftrain.samplers.unipc import sample_unipc

SAMPLERS = {
    "euler": sample_euler,
    "heun": sample_heun,
    "edm-stochastic": sample_edm_stochastic,
    "ddim": sample_ddim,
    "ddpm": sample_ddpm,
    "dpmpp-2m": sample_dpmpp_2m,
    "dpmpp-3m": sample_dpmpp_3m,  # as published and in diffusers (the default 3M)
    "dpmpp-3m-exact": sample_dpmpp_3m_exact,  # corrected D2 coefficient: third order in the limit
    "unipc": sample_unipc,
}

# Samplers whose result can depend on the generator (ddim only with eta > 0); the others
# accept it and ignore it.
STOCHASTIC = ("edm-stochastic", "ddim", "ddpm")


# D evaluations for n steps ending at σ = 0 (Heun-type samplers skip the correction at σ = 0).
def nfe(sampler: str, steps: int) -> int:
    """Network evaluations that `sampler` makes over `steps` steps."""
    return 2 * steps - 1 if sampler in ("heun", "edm-stochastic") else steps


__all__ = [
    "SAMPLERS",
    "STOCHASTIC",
    "CFGDenoiser",
    "InpaintDenoiser",
    "flow_sigmas",
    "img2img_sigmas",
    "karras_sigmas",
    "nfe",
    "paste_known",
    "randn",
    "sample_ddim",
    "sample_ddpm",
    "sample_dpmpp_2m",
    "sample_dpmpp_3m",
    "sample_dpmpp_3m_exact",
    "sample_edm_stochastic",
    "sample_euler",
    "sample_generators",
    "sample_heun",
    "sample_img2img",
    "sample_inpaint",
    "sample_unipc",
    "timestep_sigmas",
    "training_sigmas",
    "uniform_sigmas",
    "uniform_timesteps",
]
