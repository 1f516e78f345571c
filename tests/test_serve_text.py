"""The server with a text-conditioned model: prompts, negative prompts and guidance give the
images `difftrain sample` gives, and requests with different prompts still share a batch."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from difftrain.cli.main import app as cli
from tests.run_fixtures import make_run
from tests.serve_helpers import serving
from tests.test_serve import AUTH, _concurrent, client, settings

TEXT = {
    "model.preset": "unet-cond-tiny",
    "text.encoder": "scratch",
    "text.tokenizer": "byte",
    "text.width": 32,
    "text.heads": 2,
    "text.layers": 1,
    "text.max_length": 8,
    "data.channels": 3,
    "data.resolution": 16,
}


@pytest.fixture(scope="module")
def text_run(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("text") / "run", num_classes=None, **TEXT)


def decode(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))))


def test_prompts_match_difftrain_sample_and_share_batches(text_run, tmp_path):
    out = tmp_path / "cli"
    args = ["sample", str(text_run), "--prompt", "red square", "--negative-prompt", "blue"]
    res = CliRunner().invoke(
        cli, [*args, "--num", "2", "--seed", "3", "--guidance", "2", "--out", str(out)]
    )
    assert res.exit_code == 0, res.output
    body = {"prompt": "red square", "negative_prompt": "blue", "num": 2, "seed": 3, "guidance": 2.0}
    with serving(text_run, settings(window_s=0.5)) as (url, app):
        with client(url) as c:
            model = c.get("/v1/models", headers=AUTH).json()["models"][0]
            assert model["text_conditioned"] is True and model["num_classes"] is None
            got = c.post("/v1/generate", json=body, headers=AUTH)
            assert got.status_code == 200, got.text
            bad = c.post("/v1/generate", json={"class_label": 1}, headers=AUTH)
            assert bad.status_code == 422 and "text-conditioned" in bad.json()["error"]
        for i in range(2):
            want = np.asarray(Image.open(out / f"{i:06d}.png"))
            assert np.array_equal(decode(got.json()["images"][i]), want), i
        before = app.state.engine.forward_batches
        bodies = [{**body, "prompt": p, "num": 1} for p in ("red square", "blue disc", "a cat")]
        together = _concurrent(url, bodies)
        merged_batches = app.state.engine.forward_batches - before
        with client(url) as c:
            alone = [c.post("/v1/generate", json=b, headers=AUTH).json() for b in bodies]
    assert merged_batches == 1
    assert [r.json()["images"] for r in together] == [a["images"] for a in alone]
    assert len({a["images"][0] for a in alone}) == 3  # the prompt changes the image
