"""--format diffusers: unmodified DiffusionPipeline.from_pretrained loads the export, and its
samples match difftrain's for the same initial noise (the same per-sample generators).

Tolerances (max |diffusers − difftrain| on images in [0, 1]): edm 1e-4 (EDMEulerScheduler starts
from √(σ_max²+1)·ε, difftrain from σ_max·ε); vp/iddpm 3e-3 (DDIMPipeline starts from ε in VP
space, difftrain from σ_T·ε in σ-space: a √(1−ᾱ_T) scale, amplified by an untrained ε-network);
flow 2e-3 (diffusers starts at t = 1, which σ-space cannot hold: difftrain starts at t = 1−1e-4).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from diffusers import DiffusionPipeline

from difftrain.export.diffusers_fmt import matching_sampler, matching_sigmas
from difftrain.export.run_export import export_run
from difftrain.pipeline.generate import generate
from difftrain.pipeline.run import load_run
from difftrain.samplers import sample_generators
from tests.export_helpers import make_run

CASES = [  # (objective, extra config, classes, pipeline, scheduler, tolerance)
    # EDM2 learned weighting: the log-variance head is training-only and is left out.
    (
        "edm",
        {"diffusion.weighting": "learned"},
        None,
        "ConsistencyModelPipeline",
        "EDMEulerScheduler",
        1e-4,
    ),
    ("edm", {}, 3, "ConsistencyModelPipeline", "EDMEulerScheduler", 1e-4),
    ("vp", {}, None, "DDIMPipeline", "DDIMScheduler", 3e-3),
    (
        "vp",
        {"diffusion.prediction": "v", "diffusion.beta_schedule": "cosine"},
        3,
        "ConsistencyModelPipeline",
        "DDIMScheduler",
        3e-3,
    ),
    ("iddpm", {}, None, "DDIMPipeline", "DDIMScheduler", 3e-3),
    (
        "vp",
        {"diffusion.prediction": "v", "diffusion.zero_terminal_snr": "true"},
        None,
        "DDIMPipeline",
        "DDIMScheduler",
        3e-3,
    ),
    ("flow", {}, None, "DDPMPipeline", "FlowMatchEulerDiscreteScheduler", 2e-3),
]


@pytest.mark.parametrize("objective,sets,k,pipeline,scheduler,tol", CASES)
def test_diffusers_pipeline_reproduces_difftrain(
    tmp_path, objective, sets, k, pipeline, scheduler, tol
):
    run_dir = make_run(tmp_path / "run", k, **{"diffusion.objective": objective, **sets})
    export_run(run_dir, "diffusers", tmp_path / "pipe")
    index = json.loads((tmp_path / "pipe/model_index.json").read_text())
    assert index["_class_name"] == pipeline and index["scheduler"] == ["diffusers", scheduler]
    card = (tmp_path / "pipe/README.md").read_text()
    assert pipeline in card and "num_inference_steps=" in card
    assert ("class_labels=[0]" in card) == (k is not None)
    pipe = DiffusionPipeline.from_pretrained(tmp_path / "pipe")
    pipe.set_progress_bar_config(disable=True)
    n, steps = 4, 5  # DDIM's trailing steps are consistent when steps divides T (1000)
    kw = {} if k is None else {"class_labels": [0, 1, 2, 1]}
    images = pipe(
        batch_size=n,
        generator=sample_generators(7, range(n)),
        num_inference_steps=steps,
        output_type="np",
        **kw,
    ).images
    run = load_run(run_dir)
    labels = None if k is None else torch.tensor(kw["class_labels"])
    ref = generate(
        run.denoiser,
        num=n,
        shape=(1, 8, 8),
        seed=7,
        labels=labels,
        sampler=matching_sampler(run.config),
        sigmas=matching_sigmas(run.config, steps),
    )
    ref = (ref / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    assert images.shape == ref.shape == (n, 8, 8, 1)
    assert ref.std() > 0.05  # not a trivial (constant) image
    err = np.abs(images - ref).max()
    print(f"diffusers parity {objective} k={k}: max |diffusers - difftrain| = {err:.1e}")
    assert err <= tol


def test_exported_unet_weights_are_the_runs(tmp_path):
    """iddpm: the variance channels are dropped; everything else is the run's own tensors."""
    run_dir = make_run(tmp_path / "run", None, **{"diffusion.objective": "iddpm"})
    export_run(run_dir, "diffusers", tmp_path / "pipe")
    pipe = DiffusionPipeline.from_pretrained(tmp_path / "pipe")
    ours = load_run(run_dir).denoiser.backbone.unet.state_dict()
    theirs = pipe.unet.state_dict()
    assert set(ours) == set(theirs)
    assert theirs["conv_out.weight"].shape[0] == 1 and ours["conv_out.weight"].shape[0] == 2
    torch.testing.assert_close(theirs["conv_out.weight"], ours["conv_out.weight"][:1])
    for name in ours:
        if not name.startswith("conv_out"):
            torch.testing.assert_close(theirs[name], ours[name], rtol=0, atol=0)
