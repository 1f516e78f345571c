"""report.html treats everything read from the run directory as untrusted text: every field from
eval.json, metrics.jsonl, environment.json, config.yaml and file names is HTML-escaped, and
malformed files give a note in the page, not a traceback."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image

from difftrain.config import dump_config, load_config
from difftrain.eval.report import write_report
from difftrain.eval.run_eval import read_evaluations, write_eval_json

from .conftest import TINY

EVIL = '<script>alert(1)</script><img src=x onerror="alert(2)">'
# The tags the report itself writes; anything else in the page came from the data.
OUR_TAGS = {
    "html", "head", "meta", "title", "style", "body", "h1", "h2", "h3", "p", "nav", "a",
    "section", "table", "tr", "th", "td", "code", "pre", "details", "summary", "div",
    "figure", "figcaption", "img",
}  # fmt: skip


class Tags(HTMLParser):
    """Every start tag and attribute of a page."""

    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, list]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, attrs))


def assert_inert(page: str) -> None:
    parser = Tags()
    parser.feed(page)
    for tag, attrs in parser.tags:
        assert tag in OUR_TAGS, tag
        for name, value in attrs:
            assert not name.startswith("on"), (tag, name)
            if name == "src":
                assert value.startswith("data:image/png;base64,"), value[:80]
    assert "<script" not in page


def evil_eval_entry(step) -> dict:
    return {
        "step": step,
        "checkpoint": EVIL,
        "weights": EVIL,
        "settings": {
            "num": EVIL,
            "sampler": EVIL,
            "steps": EVIL,
            "seed": EVIL,
            "features": EVIL,
            "guidance": EVIL,
        },
        "metrics": {EVIL: 1.0, "fid_domain": EVIL, "$\\frac{": 2.0},
    }


@pytest.fixture
def run_dir(tmp_path) -> Path:
    """A run directory with no checkpoint and hostile side files (no training needed)."""
    run = tmp_path / "run<b>x"
    run.mkdir()
    cfg = load_config(TINY, [f"train.run_dir={run}"])
    (run / "config.yaml").write_text(dump_config(cfg) + f"# {EVIL}\n")
    (run / "eval.json").write_text(json.dumps({"evaluations": [evil_eval_entry(10)]}))
    rows = [
        {"step": 1, "train/loss": 0.5, f"eval/{EVIL}": 3.0, "eval/$x^": 1.0},
        {"step": 2, "train/loss": 0.4},
        [1, 2],
        {"no_step": 1},
        {"step": EVIL, "train/loss": 0.3},
    ]
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\nnot json\n")
    (run / "environment.json").write_text(json.dumps({EVIL: EVIL, "torch": "2"}))
    (run / "samples").mkdir()
    for name in ("step-0000010.png", "step-<b>.png", "step-1x.png"):
        Image.new("L", (8, 8), 128).save(run / "samples" / name, format="PNG")
    return run


def test_every_field_from_the_run_directory_is_escaped(run_dir):
    page = write_report(run_dir, trajectory_samples=0).read_text()
    assert_inert(page)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page  # shown, as text
    assert "step 10" in page  # the one well-named sample grid
    assert page.count("<figure>") == 1  # the others are not step-N.png grids


@pytest.mark.parametrize(
    "eval_json",
    [
        b"\xff\xfe not utf-8",
        b"{not json",
        b"[]",
        b'{"evaluations": null}',
        b'{"evaluations": {"a": 1}}',
        b'{"evaluations": [1, "x", null, {"step": 1}, {"step": 2, "settings": []}]}',
    ],
)
def test_malformed_eval_json_gives_a_note_not_a_traceback(run_dir, eval_json):
    (run_dir / "eval.json").write_bytes(eval_json)
    page = write_report(run_dir, trajectory_samples=0).read_text()
    assert_inert(page)
    assert "eval.json" in page and "ignored" in page


@pytest.mark.parametrize("env", [b"[1, 2]", b"\xff", b"{bad", b"null"])
def test_malformed_environment_json_is_shown_as_missing(run_dir, env):
    (run_dir / "environment.json").write_bytes(env)
    page = write_report(run_dir, trajectory_samples=0).read_text()
    assert_inert(page)
    assert "environment.json" in page


def test_evaluate_keeps_good_entries_of_a_damaged_eval_json(tmp_path):
    """`difftrain evaluate` appends to eval.json: bad entries are dropped, not a crash."""
    path = tmp_path / "eval.json"
    good = evil_eval_entry(5)
    good["settings"].update(num=10, steps=3, seed=0, guidance=1.0, sampler="heun")
    path.write_text(json.dumps({"evaluations": [1, {"step": 1}, good]}))
    new = dict(good, step=7)
    doc = write_eval_json(path, new)
    assert [e["step"] for e in doc["evaluations"]] == [5, 7]
    assert [e["step"] for e in read_evaluations(path)[0]] == [5, 7]
