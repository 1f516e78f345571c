"""The web page in a real headless Chromium (Debian's, driven by Playwright's Python package):
load, enter the token, generate, see the images; untrusted names are shown as text."""

from __future__ import annotations

from pathlib import Path

import pytest

from difftrain.serve.app import ServeSettings
from tests.run_fixtures import make_run
from tests.serve_helpers import serving

CHROMIUM = "/usr/bin/chromium"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
EVIL = '<img src=x onerror="window.__xss=1">'
pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists(), reason="chromium not installed (make system-deps-test)"
)


def test_page_generates_images_in_headless_chromium(tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright not installed")
    names = [f"class {i}" for i in range(10)]
    names[2] = EVIL  # class names come from the run directory: untrusted
    run = make_run(tmp_path / "run", class_names=names)
    shot = tmp_path / "page.png"
    with serving(run, ServeSettings(token="page-token")) as (url, _app):
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
            try:
                page = browser.new_page(viewport={"width": 900, "height": 700})
                errors: list[str] = []
                page.on("pageerror", lambda e: errors.append(str(e)))
                page.goto(url + "/")
                # The token is needed: the page asks for it instead of failing silently.
                page.wait_for_selector("#token-row:not([hidden])", timeout=15_000)
                page.fill("#token", "page-token")
                page.fill("#seed", "7")
                page.fill("#num", "3")
                page.fill("#steps", "3")
                page.click("#generate")
                page.wait_for_function(
                    "() => document.querySelectorAll('#result img').length === 3 && "
                    "[...document.querySelectorAll('#result img')].every(i => i.complete)",
                    timeout=60_000,
                )
                widths = page.eval_on_selector_all(
                    "#result img", "imgs => imgs.map(i => i.naturalWidth)"
                )
                assert widths == [8, 8, 8]  # every image decoded (the model is 8x8)
                assert page.input_value("#steps") == "3"  # the user's value, not the default
                assert page.is_hidden("#prompt-row")  # not a text model
                status = page.text_content("#status")
                assert "3 image(s) in" in status and "run/step-0000001:ema" in status
                # after the token, the model list loaded: classes with the untrusted name as text
                options = page.eval_on_selector_all("#class option", "os => os.map(o => o.text)")
                assert f"2: {EVIL}" in options
                page.select_option("#class", "2")
                page.click("#generate")
                page.wait_for_function(
                    "() => document.querySelectorAll('#gallery img').length === 6", timeout=60_000
                )
                captions = page.eval_on_selector_all(
                    "#result figcaption", "cs => cs.map(c => c.textContent)"
                )
                assert all("class 2" in c for c in captions), captions
                assert page.evaluate("() => window.__xss") is None
                assert page.query_selector("img[src='x']") is None
                assert errors == []
                page.screenshot(path=str(shot), full_page=True)
            finally:
                browser.close()
    assert shot.stat().st_size > 0  # kept in pytest's tmp_path (basetemp) for a look
