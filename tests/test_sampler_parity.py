"""Step-by-step parity of our σ-space samplers with diffusers' schedulers on the same network
and the same timesteps.

The network is `NearIdealNet`: the ε/v-prediction of the ideal denoiser for Gaussian data plus a
fixed random nonlinear perturbation, wrapped by diffusers' scheduler directly and by our
`VPPrecond` for us. Diffusers' VP-space states x_t equal our σ-space states divided by √(1+σ²).

Tolerance: |ours − theirs| ≤ 1e-5·max(1, max|theirs|) at every step. Both sides run in float32
(ε = 1.2e-7) with different association of the same operations (σ-space vs VP-space updates,
our σ → t interpolation returning t ± 1e-5), which costs a few ulp per step; 1e-5 is ~80 ulp of
the largest state entry, and an error in any coefficient of the update shows up as 1e-3 or more.
"""

from __future__ import annotations

import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    UniPCMultistepScheduler,
)

from difftrain.diffusion import VPPrecond, vp_sigmas
from difftrain.samplers import (
    sample_ddim,
    sample_ddpm,
    sample_dpmpp_2m,
    sample_dpmpp_3m,
    sample_dpmpp_3m_exact,
    sample_euler,
    sample_heun,
    sample_unipc,
    timestep_sigmas,
)
from tests.parity_nets import NearIdealNet

# diffusers converts float32 tensors through numpy arrays in set_timesteps (harmless).
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

PREDS = {"epsilon": "eps", "v_prediction": "v"}


def run_both(
    sched, ours, pred, steps, *, sigma_space=False, step_kw=None, ours_kw=None, noisy=False
):
    """(our states, diffusers' states, our σ's): the state after each of our steps."""
    sched.set_timesteps(steps)
    ac = sched.alphas_cumprod
    net = NearIdealNet(ac, pred)
    timesteps = sched.timesteps.unique_consecutive()  # Heun repeats each timestep
    sigmas = timestep_sigmas(vp_sigmas(ac), timesteps.round().long())
    eps = torch.randn(4, 2, 3, 3, generator=torch.Generator().manual_seed(1))

    x = eps * sigmas[0] if sigma_space else eps  # diffusers' x_T in its own space
    gen = torch.Generator().manual_seed(5)
    theirs = []
    for t in sched.timesteps:
        out = net(sched.scale_model_input(x, t), t)
        x = sched.step(
            out, t, x, **(step_kw or {}), **({"generator": gen} if noisy else {})
        ).prev_sample
        theirs.append(x)
    if isinstance(sched, HeunDiscreteScheduler):
        theirs = theirs[1::2] + theirs[-1:]  # states after each full (2-evaluation) step

    mine = []
    x_T = eps * sigmas[0] if sigma_space else eps * (1 + sigmas[0] ** 2).sqrt()
    ours(
        VPPrecond(net, ac, PREDS[pred]),
        x_T,
        sigmas,
        callback=lambda d: mine.append(d["x"]),
        generator=torch.Generator().manual_seed(5),
        **(ours_kw or {}),
    )
    if not sigma_space:
        mine = [m / (1 + s**2).sqrt() for m, s in zip(mine, sigmas[1:], strict=True)]
    assert len(mine) == len(theirs) == steps
    return mine, theirs


def assert_steps_close(mine, theirs):
    for i, (a, b) in enumerate(zip(mine, theirs, strict=True)):
        tol = 1e-5 * max(1.0, b.abs().max().item())
        err = (a - b).abs().max().item()
        assert err <= tol, f"step {i}: max error {err:.2e} > {tol:.2e}"


def vp(cls, **kw):
    return cls(beta_schedule="linear", beta_start=1e-4, beta_end=0.02, **kw)


@pytest.mark.parametrize("pred", list(PREDS))
@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim(pred, eta):
    sched = vp(DDIMScheduler, prediction_type=pred, clip_sample=False, set_alpha_to_one=True)
    mine, theirs = run_both(
        sched, sample_ddim, pred, 10, step_kw={"eta": eta}, ours_kw={"eta": eta}, noisy=eta > 0
    )
    assert_steps_close(mine, theirs)


@pytest.mark.parametrize("pred", list(PREDS))
def test_ddpm_ancestral(pred):
    sched = vp(DDPMScheduler, prediction_type=pred, clip_sample=False)  # variance "fixed_small"
    assert_steps_close(*run_both(sched, sample_ddpm, pred, 50, noisy=True))


@pytest.mark.parametrize("pred", list(PREDS))
def test_euler(pred):
    sched = vp(EulerDiscreteScheduler, prediction_type=pred, timestep_spacing="trailing")
    assert_steps_close(*run_both(sched, sample_euler, pred, 10, sigma_space=True))


@pytest.mark.parametrize("pred", list(PREDS))
def test_heun(pred):
    sched = vp(HeunDiscreteScheduler, prediction_type=pred, timestep_spacing="trailing")
    assert_steps_close(*run_both(sched, sample_heun, pred, 10, sigma_space=True))


@pytest.mark.parametrize("pred", list(PREDS))
@pytest.mark.parametrize("order,steps", [(2, 10), (3, 10), (3, 20)])
def test_dpm_solver_pp(pred, order, steps):
    """2M and 3M match with their default options: the default 3M is the published update
    (D2 weighted by φ₃, as diffusers); warm-up, the lower-order final steps and the r0/r1
    bookkeeping are checked here. dpmpp-3m-exact (2φ₃) must differ."""
    sched = vp(
        DPMSolverMultistepScheduler,
        prediction_type=pred,
        solver_order=order,
        algorithm_type="dpmsolver++",
        solver_type="midpoint",
    )
    fn = sample_dpmpp_2m if order == 2 else sample_dpmpp_3m
    assert_steps_close(*run_both(sched, fn, pred, steps))
    if order == 3:
        exact, theirs = run_both(sched, sample_dpmpp_3m_exact, pred, steps)
        err = max((a - b).abs().max().item() for a, b in zip(exact, theirs, strict=True))
        assert err > 1e-3, err


@pytest.mark.parametrize("pred", list(PREDS))
@pytest.mark.parametrize("order", [2, 3])
def test_unipc(pred, order):
    sched = vp(UniPCMultistepScheduler, prediction_type=pred, solver_order=order, solver_type="bh2")
    assert_steps_close(*run_both(sched, sample_unipc, pred, 10, ours_kw={"order": order}))


def test_unipc_bh1():
    """bh1 matches on every step but the last: there diffusers computes B(h)·0 with B(h) = −∞
    (h = ∞ at σ = 0) and returns NaN; we return x0̂ like every other sampler."""
    sched = vp(UniPCMultistepScheduler, prediction_type="epsilon", solver_type="bh1")
    mine, theirs = run_both(sched, sample_unipc, "epsilon", 10, ours_kw={"variant": "bh1"})
    assert_steps_close(mine[:-1], theirs[:-1])
    assert torch.isnan(theirs[-1]).any() and torch.isfinite(mine[-1]).all()
