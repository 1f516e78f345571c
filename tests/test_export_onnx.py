"""--format onnx: the exported denoiser matches PyTorch under onnxruntime at any batch size, and
the numpy/onnxruntime sampler reproduces `difftrain sample` (Heun/Euler over Karras σ, CFG) for
the same noise. Tolerances: D within 1e-4 relative (checked at export time, recorded in
onnx_model.json); sampled images within 1e-3 absolute in [-1, 1]."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from difftrain.export.onnx_sampler import OnnxDenoiser, karras_sigmas, sample
from difftrain.export.run_export import export_run
from difftrain.pipeline.generate import generate
from difftrain.pipeline.run import load_run
from difftrain.samplers import karras_sigmas as torch_karras
from difftrain.samplers import randn, sample_generators
from tests.export_helpers import make_run, make_text_latent_run


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Each kind of run exported once per module (ONNX export dominates these tests' time)."""
    cache = {}

    def get(kind: str):
        if kind not in cache:
            root = tmp_path_factory.mktemp(kind)
            if kind.startswith("text-latent"):  # text-latent-pooled: text.pooled = true
                pooled = kind.endswith("pooled")
                run_dir = make_text_latent_run(root / "run", "bpe", **{"text.pooled": pooled})
            else:
                objective, k = {"edm-class": ("edm", 3), "vp": ("vp", None)}[kind]
                run_dir = make_run(root / "run", k, **{"diffusion.objective": objective})
            res = export_run(run_dir, "onnx", root / "onnx")
            cache[kind] = (run_dir, root / "onnx", res)
        return cache[kind]

    return get


@pytest.mark.parametrize(
    "kind,k,sampler,guidance", [("edm-class", 3, "heun", 2.0), ("vp", None, "euler", 1.0)]
)
def test_onnx_denoiser_and_sampler_match_pytorch(exported, kind, k, sampler, guidance):
    run_dir, onnx_dir, res = exported(kind)
    objective = kind
    assert "denoiser.onnx" in res.files
    meta = json.loads((onnx_dir / "onnx_model.json").read_text())
    assert meta["check"]["max_relative_error"] <= 1e-4 and meta["shape"] == [1, 8, 8]
    run = load_run(run_dir)
    den = OnnxDenoiser(onnx_dir)
    # D itself, at batch sizes the graph was not traced with, over the whole σ range.
    for n in (1, 3):
        x = torch.randn(n, 1, 8, 8) * 3
        sigma = torch.tensor([0.002, 1.0, 80.0][:n])
        labels = None if k is None else torch.arange(n) % (k + 1)  # includes the null class
        ref = run.denoiser(x, sigma, labels).detach().numpy()
        got = den(x.numpy(), sigma.numpy(), None if labels is None else labels.numpy())
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)
    # The sampler vs difftrain's generate, same noise, same schedule.
    num, steps = 4, 6
    labels = None if k is None else torch.tensor([0, 1, 2, 0])
    ref = generate(
        run.denoiser,
        num=num,
        shape=(1, 8, 8),
        seed=3,
        labels=labels,
        null_class=k,
        sampler=sampler,
        steps=steps,
        guidance=guidance,
        sigmas=torch_karras(steps, meta["sigma_min"], meta["sigma_max"], meta["rho"]),
    ).numpy()
    noise = randn((num, 1, 8, 8), sample_generators(3, range(num))).numpy()
    sigmas = karras_sigmas(steps, meta["sigma_min"], meta["sigma_max"], meta["rho"])
    np.testing.assert_array_equal(sigmas, torch_karras(steps, 0.002, 80.0, 7.0).numpy())
    got = sample(den, noise, sigmas, sampler, None if labels is None else labels.numpy(), guidance)
    assert np.abs(ref).max() > 0.1
    err = np.abs(got - ref).max()
    print(
        f"onnx sampler {objective} {sampler}: max |onnx - difftrain| = {err:.1e}, D check {meta['check']['max_relative_error']:.1e}"
    )
    assert err <= 1e-3


@pytest.mark.parametrize(
    "kind,args,shape",
    [
        ("edm-class", ["--class-label", "1"], (2, 8, 8, 1)),
        ("text-latent", ["--prompt", "red square", "--negative-prompt", "blue"], (2, 16, 16, 3)),
    ],
)
def test_onnx_sampler_runs_without_torch(exported, tmp_path, kind, args, shape):
    _, onnx_dir, _ = exported(kind)
    argv = [str(onnx_dir), "--num", "2", "--steps", "3", "--guidance", "1.5", *args]
    argv += ["--out", str(tmp_path / "x.npz")]
    code = (
        "import sys; sys.modules['torch'] = None\n"  # any torch import now fails
        "from difftrain.export.onnx_sampler import main\n"
        f"main({argv!r})\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    images = np.load(tmp_path / "x.npz")["images"]
    assert images.shape == shape and images.dtype == np.uint8


def test_a_failed_onnx_check_keeps_nothing(tmp_path, monkeypatch):
    """Exit 1 with the measured error; no --out, no staging directory left behind."""
    from difftrain.cli.main import app
    from difftrain.export import onnx_fmt

    make_run(tmp_path / "run")
    monkeypatch.setattr(onnx_fmt, "CHECK_RTOL", -1.0)  # any error fails
    res = CliRunner().invoke(
        app, ["export", str(tmp_path / "run"), "--format", "onnx", "--out", str(tmp_path / "o")]
    )
    assert res.exit_code == 1 and "ONNX check failed" in res.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


@pytest.mark.parametrize("kind", ["text-latent", "text-latent-pooled"])
def test_onnx_text_latent_export_matches_difftrain_with_prompts_and_guidance(exported, kind):
    """Text encoder inside the graph, decoder.onnx for the latents, tokenizer.json for prompts."""
    run_dir, onnx_dir, _ = exported(kind)
    meta = json.loads((onnx_dir / "onnx_model.json").read_text())
    assert meta["cond_input"] == "input_ids" and meta["decoder"] == "decoder.onnx"
    assert meta["check"]["decoder_max_relative_error"] <= 1e-4
    run, den = load_run(run_dir), OnnxDenoiser(onnx_dir)
    prompts = ["red square", "", "a much longer prompt that gets truncated"]
    np.testing.assert_array_equal(den.encode(prompts), run.text.ids(prompts).numpy())
    num, steps, shape = 2, 4, tuple(run.sample_shape)
    ids = run.text.ids(["red square", "blue disc"])
    neg = run.text.ids(["blue"])
    x = generate(
        run.denoiser,
        num=num,
        shape=shape,
        seed=2,
        labels=ids,
        null_class=neg,
        sampler="heun",
        guidance=2.0,
        sigmas=torch_karras(steps, meta["sigma_min"], meta["sigma_max"], meta["rho"]),
    )
    ref = run.to_images(x).numpy()
    noise = randn((num, *shape), sample_generators(2, range(num))).numpy()
    sigmas = karras_sigmas(steps, meta["sigma_min"], meta["sigma_max"], meta["rho"])
    got = den.to_images(sample(den, noise, sigmas, "heun", ids.numpy(), 2.0, den.null("blue")))
    err = np.abs(got - ref).max()
    print(f"onnx sampler text latent heun: max |onnx - difftrain| = {err:.1e} (pixels in [-1, 1])")
    assert got.shape == (num, 3, 16, 16) and err <= 1e-3
