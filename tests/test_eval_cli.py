"""Through the CLI on a real (seconds-long) digits run: features train → evaluate → report.

Also the in-training evaluator the loop calls, and the report in a real browser when Chromium
is installed (`make system-deps-test` installs it).
"""

from __future__ import annotations

import base64
import json
import math
import re
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from difftrain.cli.main import app
from difftrain.config import load_config
from difftrain.data import load_data
from difftrain.eval.evaluate import TrainingEvaluator
from difftrain.eval.run_eval import evaluate_run
from difftrain.pipeline.run import load_run

from .conftest import TINY
from .eval_helpers import one_thread, single_thread  # noqa: F401 (autouse fixture)

runner = CliRunner()
CHROMIUM = "/usr/bin/chromium"
EVAL_ARGS = ["--num", "40", "--steps", "3", "--nll-num", "4", "--nll-steps", "3"]


def invoke(*args, code: int = 0):
    res = runner.invoke(app, [str(a) for a in args])
    assert res.exit_code == code, res.output + repr(res.exception)
    return res


def sets(**kv) -> list[str]:
    return [x for k, v in kv.items() for x in ("--set", f"{k.replace('__', '.')}={v}")]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A 30-step digits run with two checkpoints and sample grids, plus its feature network."""
    run = tmp_path_factory.mktemp("eval") / "run"
    common = sets(train__run_dir=run, logging__progress="false", logging__tensorboard="false")
    with one_thread():
        invoke(
            "train",
            TINY,
            *common,
            *sets(
                train__max_steps=30,
                train__checkpoint_every=15,
                train__sample_every=15,
                train__log_every=5,
                sample__num=20,
                sample__steps=4,
            ),
        )
        invoke(
            "features",
            "train",
            TINY,
            *common,
            *sets(
                features__width=8,
                features__feature_dim=16,
                features__epochs=2,
                features__batch_size=32,
            ),
        )
    return run


def test_features_train_saves_with_the_run(run_dir):
    info = json.loads((run_dir / "features" / "feature_net.json").read_text())
    assert (run_dir / "features" / "feature_net.safetensors").is_file()
    assert info["val_images"] == 180 and info["val_accuracy"] > 0.3  # 2 epochs of a tiny net


def test_evaluate_writes_eval_json_and_is_deterministic(run_dir):
    with one_thread():
        invoke("evaluate", run_dir, "--metrics", "fid,kid,pr,acc,nll", *EVAL_ARGS)
        first = json.loads((run_dir / "eval.json").read_text())
        invoke("evaluate", run_dir, "--metrics", "fid,kid,pr,acc,nll", *EVAL_ARGS)
    doc = json.loads((run_dir / "eval.json").read_text())
    assert len(doc["evaluations"]) == 1  # same step and settings: replaced, not appended
    m = doc["latest"]["metrics"]
    keys = {
        "fid_domain",
        "kid_domain",
        "kid_domain_std",
        "precision_domain",
        "recall_domain",
        "f1_domain",
        "acc",
        "nll_bpd",
        "nll_bpd_sem",
    }
    assert set(m) == keys and all(math.isfinite(v) for v in m.values())
    assert m == first["latest"]["metrics"]  # sample i depends only on (seed, i)
    assert doc["latest"]["step"] == 30 and doc["latest"]["settings"]["reference_split"] == "val"
    assert 0 < m["nll_bpd"] < 16 and 0 <= m["acc"] <= 1


def test_evaluate_out_dir_and_bad_input(run_dir, tmp_path, monkeypatch):
    with one_thread():
        invoke("evaluate", run_dir, "--metrics", "fid", "--out", tmp_path, *EVAL_ARGS)
    assert "fid_domain" in json.loads((tmp_path / "eval.json").read_text())["latest"]["metrics"]
    res = invoke("evaluate", run_dir, "--metrics", "fid,bogus", code=2)
    assert "allowed: fid,kid,pr,acc,nll" in res.output
    monkeypatch.delenv("DIFFTRAIN_INCEPTION_WEIGHTS", raising=False)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    res = invoke("evaluate", run_dir, "--features", "inception", *EVAL_ARGS, code=2)
    assert "weights-inception-2015-12-05-6726825d.pth" in res.output


def test_evaluate_guidance_interval_is_applied_and_recorded(run_dir, tmp_path):
    """--guidance-interval limits guidance to (LO, HI]: a changed result, kept as its own entry."""
    args = ["--metrics", "fid,acc", "--guidance", "3", "--out", tmp_path, *EVAL_ARGS]
    with one_thread():
        invoke("evaluate", run_dir, *args)
        invoke("evaluate", run_dir, *args, "--guidance-interval", "0.5,2")
        # An interval holding none of the sampler's σ: guidance is off, as at --guidance 1.
        invoke("evaluate", run_dir, *args, "--guidance-interval", "500,600")
        invoke("evaluate", run_dir, *args[:2], "--out", tmp_path, *EVAL_ARGS)
    doc = json.loads((tmp_path / "eval.json").read_text())
    by = {(e["settings"]["guidance"], str(e["settings"]["guidance_interval"])): e["metrics"]
          for e in doc["evaluations"]}  # fmt: skip
    assert set(by) == {(3.0, "None"), (3.0, "[0.5, 2.0]"), (3.0, "[500.0, 600.0]"), (1.0, "None")}
    assert by[(3.0, "[0.5, 2.0]")] != by[(3.0, "None")]
    assert by[(3.0, "[500.0, 600.0]")] == by[(1.0, "None")]
    res = invoke("evaluate", run_dir, *args, "--guidance-interval", "2,1", code=2)
    assert "needs 0 <= LO < HI" in res.output


def test_training_evaluator_returns_scalars_for_the_loop(run_dir):
    cfg = load_config(
        run_dir / "config.yaml",
        [
            "eval.every=10",
            "eval.num=40",
            "eval.steps=3",
            "eval.metrics=[fid,kid,pr,acc,nll]",
            "eval.nll_num=4",
            "eval.nll_steps=3",
        ],
    )
    train, val = load_data(cfg.data).split(cfg.data.val_fraction, cfg.train.seed)
    ev = TrainingEvaluator.from_config(cfg, train, val)
    assert ev.due(10) and ev.due(30) and not ev.due(15)
    den = load_run(run_dir).denoiser
    den.train()
    with one_thread():
        out = ev(den, step=30)
    assert den.training  # mode restored
    assert {
        "eval/fid_domain",
        "eval/kid_domain",
        "eval/acc",
        "eval/nll_bpd",
        "eval/seconds",
    } <= set(out)
    assert all(isinstance(v, float) and math.isfinite(v) for v in out.values())
    cfg_off = load_config(run_dir / "config.yaml")
    assert TrainingEvaluator.from_config(cfg_off, train, val) is None  # eval.every = 0: off


def test_training_evaluator_samples_with_the_configured_guidance(run_dir):
    """In-training evaluation scores the model as `sample.*` draws it: guidance included."""
    sets = ["eval.every=10", "eval.num=40", "eval.steps=3", "eval.metrics=[fid,acc]"]
    den = load_run(run_dir).denoiser
    out = {}
    for g in ("1.0", "3.0"):
        cfg = load_config(run_dir / "config.yaml", [*sets, f"sample.guidance={g}"])
        train, val = load_data(cfg.data).split(cfg.data.val_fraction, cfg.train.seed)
        with one_thread():
            out[g] = TrainingEvaluator.from_config(cfg, train, val)(den, step=30)
    with one_thread():
        plain = evaluate_run(run_dir, metrics=["fid", "acc"], num=40, sampler="dpmpp-2m", steps=3,
                             seed=1, guidance=3.0, out=run_dir / "g3")  # fmt: skip
    assert out["3.0"]["eval/fid_domain"] != out["1.0"]["eval/fid_domain"]
    assert out["3.0"]["eval/fid_domain"] == pytest.approx(plain["metrics"]["fid_domain"])


def test_report_is_one_self_contained_page(run_dir):
    with one_thread():
        invoke("report", run_dir, "--trajectory", "3")
    page = (run_dir / "report.html").read_text()
    for anchor in (
        "summary",
        "curves",
        "metrics",
        "samples",
        "trajectory",
        "data",
        "config",
        "environment",
    ):
        assert f'id="{anchor}"' in page
    srcs = re.findall(r'src="([^"]*)"', page)
    assert len(srcs) >= 6 and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert not re.search(r'(href|src)="(https?:|//|file:)', page)  # nothing to fetch
    for s in srcs:  # every embedded image decodes
        assert base64.b64decode(s.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert "step 15" in page and "step 30" in page  # sample grids over training


@pytest.mark.skipif(
    not Path(CHROMIUM).exists(), reason="chromium not installed (make system-deps-test)"
)
def test_report_renders_in_headless_chromium(run_dir, tmp_path):
    """Every image on the page decodes in a real browser (naturalWidth > 0), with no errors."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright not installed")
    if not (run_dir / "report.html").is_file():
        with one_thread():
            invoke("report", run_dir, "--trajectory", "3")
    page_src = (run_dir / "report.html").read_text()
    expected = len(re.findall(r"<img ", page_src))
    shot = tmp_path / "shot.png"
    flags = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run"]  # fmt: skip
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=flags, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 2000})
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))

            def undecoded(path: Path) -> tuple[int, list[str]]:
                page.goto(path.resolve().as_uri(), wait_until="load")
                page.wait_for_function(
                    "() => [...document.images].every(i => i.complete)", timeout=60_000
                )
                images = page.evaluate(
                    "() => [...document.images].map(i => [i.alt, i.naturalWidth > 0 && "
                    "i.naturalHeight > 0])"
                )
                return len(images), [alt for alt, ok in images if not ok]

            count, bad = undecoded(run_dir / "report.html")
            page.screenshot(path=str(shot), full_page=True)
            # The check can fail: the same page with one truncated PNG reports exactly that one.
            broken = tmp_path / "broken.html"
            broken.write_text(
                page_src.replace("<body>", '<body><img src="data:image/png;base64,iVBORw0KGgo=" '
                                 'alt="truncated">', 1)
            )  # fmt: skip
            control = undecoded(broken)
        finally:
            browser.close()
    assert count == expected >= 6, (count, expected)
    assert bad == [], f"images that did not decode: {bad}"
    assert control == (expected + 1, ["truncated"]), control
    assert errors == []
    shutil.copy(shot, run_dir / "report-screenshot.png")
