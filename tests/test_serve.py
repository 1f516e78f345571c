"""The generation server over real HTTP on loopback: routes, token, caps, queue, disconnects,
seeds equal to `difftrain sample`, micro-batching, --watch, and a fuzz of malformed bodies."""

from __future__ import annotations

import base64
import io
import json
import os
import random
import re
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from difftrain.cli.main import app as cli
from difftrain.pipeline.request import Limits
from difftrain.serve.app import ServeSettings
from tests.run_fixtures import add_checkpoint, make_run
from tests.serve_helpers import serving

TOKEN = "t0ken-for-tests"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
LIMITS = Limits(max_num=8, max_steps=60, max_resample=4, max_prompt_chars=100)


def settings(**kw) -> ServeSettings:
    base = dict(token=TOKEN, limits=LIMITS, max_body=64 << 10, window_s=0.05, poll_s=0.05)
    return ServeSettings(**{**base, **kw})


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("serve") / "run")


@pytest.fixture(scope="module")
def server(run_dir):
    with serving(run_dir, settings()) as (url, app):
        yield url, app


def client(url: str, **kw) -> httpx.Client:
    return httpx.Client(base_url=url, timeout=kw.pop("timeout", 60), **kw)


def decode(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))))


def metric(text: str, name: str, **labels) -> float:
    """The value of one sample in Prometheus text format (0 when absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        m = re.match(r"^(\w+)(?:\{(.*)\})? (\S+)$", line)
        if m and m.group(1) == name:
            got = ",".join(sorted((m.group(2) or "").split(","))) if m.group(2) else ""
            if got == want:
                return float(m.group(3))
    return 0.0


def test_every_route_answers(server):
    url, _ = server
    with client(url) as c:
        health = c.get("/health")
        assert health.status_code == 200 and health.json() == {"status": "ok"}
        models = c.get("/v1/models", headers=AUTH).json()["models"]
        m = models[0]
        assert m["id"] == "run/step-0000001:ema" and m["resolution"] == 8 and m["channels"] == 1
        assert m["num_classes"] == 10 and m["class_names"][3] == "digit 3"
        assert m["limits"]["max_num"] == 8 and "heun" in m["samplers"]
        assert m["text_conditioned"] is False
        res = c.post("/v1/generate", json={"num": 2, "seed": 4, "class_label": 3}, headers=AUTH)
        assert res.status_code == 200, res.text
        body = res.json()
        assert body["seeds"] == [4, 4] and body["indices"] == [0, 1] and body["labels"] == [3, 3]
        assert body["model"] == m["id"] and res.headers["x-model"] == m["id"]
        assert body["seconds"] > 0 and body["settings"]["steps"] == 4
        assert [decode(b).shape for b in body["images"]] == [(8, 8), (8, 8)]
        png = c.post(
            "/v1/generate",
            json={"seed": 4, "first_index": 1, "class_label": 3},
            headers={**AUTH, "Accept": "image/png"},
        )
        assert png.status_code == 200 and png.headers["content-type"] == "image/png"
        assert png.headers["x-model"] == m["id"] and png.headers["x-index"] == "1"
        # image #1 of the two-image request, asked for alone
        assert np.array_equal(
            np.asarray(Image.open(io.BytesIO(png.content))), decode(body["images"][1])
        )
        two = c.post("/v1/generate", json={"num": 2}, headers={**AUTH, "Accept": "image/png"})
        assert two.status_code == 406
        text = c.get("/metrics", headers=AUTH).text
        assert metric(text, "difftrain_requests_total", route="/v1/generate", status="200") >= 2
        assert metric(text, "difftrain_images_generated_total") >= 3
        assert metric(text, "difftrain_model_info", model=m["id"]) == 1
        assert "difftrain_queue_depth 0.0" in text
        assert "difftrain_request_seconds_bucket" in text
        page = c.get("/")
        assert page.status_code == 200 and "<title>difftrain</title>" in page.text
        assert "script-src 'self'" in page.headers["content-security-policy"]
        assert "textContent" in c.get("/page.js").text
        assert c.get("/nope", headers=AUTH).status_code == 404


def test_token_is_required_everywhere_but_health(server):
    url, app = server
    before = app.state.engine.forward_batches
    with client(url) as c:
        for method, path in [("GET", "/v1/models"), ("GET", "/metrics"), ("POST", "/v1/generate")]:
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
                res = c.request(method, path, headers=headers, json={"num": 1})
                assert res.status_code == 401, (path, headers)
                assert res.headers["www-authenticate"] == "Bearer"
        assert c.get("/health").status_code == 200
    assert app.state.engine.forward_batches == before  # nothing ran for a refused request


@pytest.mark.parametrize(
    "body, status, needle",
    [
        ({"steps": 61}, 422, "steps = 61: allowed 1..60"),
        ({"num": 9}, 422, "num = 9: allowed 1..8"),
        ({"size": 512}, 422, "8x8 images only"),
        ({"class_label": 10}, 422, "allowed 0..9"),
        ({"prompt": "a cat"}, 422, "not text-conditioned"),
        ({"resample": 5}, 422, "resample = 5"),
        ({"num": 1, "colour": "red"}, 422, "invalid request body"),
        ({"seed": -1}, 422, "invalid request body"),
        ({"init_image": "%%%"}, 422, "not valid base64"),
        ({"init_image": "aGVsbG8="}, 422, "unusable image"),
        ({"prompt": "x" * (70 << 10)}, 413, "request body over"),
    ],
)
def test_caps_answer_4xx_in_milliseconds(server, body, status, needle):
    url, app = server
    before = app.state.engine.forward_batches
    with client(url) as c:
        c.get("/health")  # connection warm
        t0 = time.perf_counter()
        res = c.post("/v1/generate", json=body, headers=AUTH)
        elapsed = time.perf_counter() - t0
    assert res.status_code == status and needle in res.text, res.text
    assert elapsed < 0.5, f"{elapsed:.3f} s"  # measured ~5 ms; the bound leaves room for load
    assert app.state.engine.forward_batches == before


def test_oversized_chunked_body_is_cut_off(server):
    url, _ = server

    def chunks():
        for _ in range(200):  # 200 x 1 KiB without a Content-Length
            yield b" " * 1024

    with client(url) as c:
        res = c.post("/v1/generate", content=chunks(), headers=AUTH)
        assert res.status_code == 413


def _malformed_bodies(n: int, seed: int = 0) -> list[bytes]:
    """Bodies that must each be refused: garbage bytes, broken JSON, and a valid body with one
    field made wrong (type, range, NaN, nesting, unknown key)."""
    rng = random.Random(seed)
    bad_values = {
        "num": [0, -1, 9, 10**30, "1", 1.5, None, [], {}, True],
        "seed": [-1, 2**70, "0", 0.5, [1], True],
        "steps": [0, 61, -3, "4", 4.2, {}, False],
        "class_label": [10, -1, 10**12, "3", 3.0, [3]],
        "sampler": ["nope", 7, "", "x" * 100, ["heun"]],
        "guidance": ["2", [], -1, 1e300],
        "guidance_interval": [[1], [2, 1], "0,1", [0, 1, 2], [None, 1]],
        "eta": [2, -0.1, "0"],
        "schedule": ["nope", 1],
        "strength": [0.5, 2],  # without init_image, or out of range
        "size": [0, 7, 64, "8"],
        "init_image": ["", "!!!", 5, "aGVsbG8=", "data:image/png;base64,AAAA"],
        "mask": ["AAAA", 3],
        "resample": [0, 5, "2"],
        "prompt": ["a cat", 5, ["a"]],
        "first_index": [-5, 2**70, "1"],
        "unknown_key": [1],
    }
    fields = list(bad_values)
    out = []
    for i in range(n):
        kind = i % 5
        if kind == 0:
            out.append(bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 64))))
        elif kind == 1:
            text = json.dumps({"num": 1, "seed": rng.randint(0, 9), "steps": 3})
            out.append(text[: rng.randint(0, len(text) - 1)].encode())
        elif kind == 2:
            depth = rng.choice([50, 1000, 20000])
            out.append(b"[" * depth + b"]" * depth if rng.random() < 0.5 else b'{"a":' * depth)
        elif kind == 3:
            body = {"num": 1, "steps": 2, "seed": rng.randint(0, 99)}
            key = rng.choice(fields)
            body[key] = rng.choice(bad_values[key])
            out.append(json.dumps(body).encode())
        else:
            out.append(
                rng.choice(
                    [
                        b'{"num": NaN}',
                        b'{"guidance": Infinity}',
                        b'{"num": 1e400}',
                        b"[]",
                        b"null",
                        b'"text"',
                        b"\xff\xfe{}",
                        b'{"num": 1, "num": "x"}',
                        '{"prompt": "\ud800"}'.encode("utf-8", "surrogatepass"),
                        b'{"steps": 1}' + b"\x00",
                    ]
                )
            )
    return out


def test_fuzz_1000_malformed_bodies_no_5xx_and_still_answering(server):
    url, app = server
    statuses: dict[int, int] = {}
    with client(url) as c:
        for body in _malformed_bodies(1000):
            ctype = random.choice(["application/json", "text/plain", "application/x-www-form"])
            res = c.post("/v1/generate", content=body, headers={**AUTH, "Content-Type": ctype})
            statuses[res.status_code] = statuses.get(res.status_code, 0) + 1
            assert res.status_code < 500, (body[:200], res.status_code, res.text[:300])
            assert res.status_code != 200, body[:200]
        assert c.get("/health").status_code == 200
        ok = c.post("/v1/generate", json={"num": 1, "steps": 2}, headers=AUTH)
        assert ok.status_code == 200
    assert sum(statuses.values()) == 1000 and set(statuses) <= {413, 422}, statuses


def test_same_seed_same_image_as_difftrain_sample(server, run_dir, tmp_path):
    url, _ = server
    out = tmp_path / "cli"
    args = ["sample", str(run_dir), "--num", "3", "--seed", "5", "--class-label", "2"]
    res = CliRunner().invoke(cli, [*args, "--out", str(out)])
    assert res.exit_code == 0, res.output
    with client(url) as c:
        body = c.post(
            "/v1/generate", json={"num": 3, "seed": 5, "class_label": 2}, headers=AUTH
        ).json()
        other = c.post(
            "/v1/generate", json={"num": 3, "seed": 6, "class_label": 2}, headers=AUTH
        ).json()
    for i in range(3):
        want = np.asarray(Image.open(out / f"{i:06d}.png"))
        assert np.array_equal(decode(body["images"][i]), want), i
        assert not np.array_equal(decode(other["images"][i]), want), i


def _count_forward(app) -> list[int]:
    """Count denoiser forward calls (each call is one batched network evaluation)."""
    calls = [0]
    app.state.holder.current.run.denoiser.register_forward_pre_hook(
        lambda *_: calls.__setitem__(0, calls[0] + 1)
    )
    return calls


def _concurrent(url: str, bodies: list[dict]) -> list[httpx.Response]:
    def one(body):
        with client(url) as c:
            return c.post("/v1/generate", json=body, headers=AUTH)

    with ThreadPoolExecutor(len(bodies)) as pool:
        return list(pool.map(one, bodies))


@pytest.mark.parametrize("batching", [True, False])
def test_micro_batching_shares_forward_passes(run_dir, batching):
    """Six requests sent together: with batching they share one or two forward batches (7 or
    14 network calls for 4 Heun steps), without it each runs alone (42 calls). Each image is
    the same either way: it depends only on (seed, index)."""
    bodies = [{"num": 1, "seed": s, "class_label": s % 10} for s in range(6)]
    with serving(run_dir, settings(window_s=0.5, batching=batching)) as (url, app):
        calls = _count_forward(app)
        results = _concurrent(url, bodies)
        batches, n_calls = app.state.engine.forward_batches, calls[0]
        with client(url) as c:
            alone = [c.post("/v1/generate", json=b, headers=AUTH).json() for b in bodies[:2]]
    assert all(r.status_code == 200 for r in results)
    if batching:
        assert batches <= 2 and n_calls <= 14, (batches, n_calls)
    else:
        assert batches == 6 and n_calls == 42, (batches, n_calls)
    for r, a in zip(results, alone, strict=False):
        assert r.json()["images"] == a["images"]


def test_queue_full_answers_429_and_a_disconnect_frees_its_slot(run_dir):
    """Queue of 2, no batching. A runs; B waits; C is refused with 429 + Retry-After. B's
    client disconnects: its slot is freed before A ends, so D is accepted; B never runs."""
    # A must still be running after B's client gives up, also on a fast idle machine: many steps.
    slow = {"num": 8, "steps": 1000, "sampler": "euler"}
    limits = Limits(max_num=8, max_steps=1000, max_resample=4, max_prompt_chars=100)
    with serving(run_dir, settings(max_queue=2, batching=False, limits=limits)) as (url, app):
        engine = app.state.engine
        pool = ThreadPoolExecutor(2)
        a = pool.submit(lambda: client(url).post("/v1/generate", json=slow, headers=AUTH))
        _wait_for(lambda: engine.slots == 1)
        b_client = client(url, timeout=httpx.Timeout(60, read=0.5))
        b = pool.submit(
            lambda: b_client.post("/v1/generate", json={**slow, "seed": 1}, headers=AUTH)
        )
        _wait_for(lambda: engine.slots == 2)
        with client(url) as c:
            t0 = time.perf_counter()
            full = c.post("/v1/generate", json={"num": 1}, headers=AUTH)
            assert full.status_code == 429 and time.perf_counter() - t0 < 0.5
            assert int(full.headers["retry-after"]) >= 1
            with pytest.raises(httpx.ReadTimeout):
                b.result()  # B's client gives up after 0.5 s and closes its connection
            b_client.close()
            _wait_for(lambda: engine.slots == 1, timeout=5)
            assert not a.done(), "A finished too early for the test to mean anything"
            d = c.post("/v1/generate", json={"num": 1, "steps": 2}, headers=AUTH)
            assert d.status_code == 200
            assert a.result().status_code == 200
            text = c.get("/metrics", headers=AUTH).text
        assert engine.forward_batches == 2  # A and D; B left before its turn
        assert metric(text, "difftrain_requests_total", route="/v1/generate", status="429") == 1
        assert metric(text, "difftrain_rejected_total", reason="queue_full") == 1
        pool.shutdown()


def _wait_for(cond, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.02)


def test_watch_swaps_in_a_newer_best_checkpoint_without_dropping_requests(tmp_path):
    run_dir = make_run(tmp_path / "run", step=1)
    slow = {"num": 1, "steps": 30, "sampler": "euler", "seed": 3, "class_label": 1}
    with serving(run_dir, settings(), watch=0.1) as (url, app):
        holder = app.state.holder
        with client(url) as c:
            before = c.post("/v1/generate", json={**slow, "steps": 2}, headers=AUTH).json()
            pool = ThreadPoolExecutor(1)
            inflight = pool.submit(
                lambda: client(url).post("/v1/generate", json=slow, headers=AUTH)
            )
            _wait_for(lambda: app.state.engine.slots == 1)
            # An untrusted best.json that points outside checkpoints/ is ignored.
            (run_dir / "checkpoints/best.json").write_text(
                json.dumps({"best": [{"checkpoint": "../../../etc", "step": 10**9}]})
            )
            time.sleep(0.3)
            assert holder.current.step == 1
            add_checkpoint(run_dir, 2, 10, init_seed=1)
            _wait_for(lambda: holder.current.step == 2)
            done = inflight.result()
            assert done.status_code == 200 and done.json()["model"] == "run/step-0000001:ema"
            after = c.post("/v1/generate", json={**slow, "steps": 2}, headers=AUTH).json()
            assert after["model"] == "run/step-0000002:ema"
            assert after["images"] != before["images"]  # other weights, same seed
            models = c.get("/v1/models", headers=AUTH).json()["models"]
            assert models[0]["id"] == "run/step-0000002:ema"
            text = c.get("/metrics", headers=AUTH).text
            assert metric(text, "difftrain_model_info", model="run/step-0000002:ema") == 1
            assert metric(text, "difftrain_model_info", model="run/step-0000001:ema") == 0
            assert metric(text, "difftrain_model_swaps_total") == 1
            pool.shutdown()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_cli_serve_binds_loopback_with_token_file(run_dir, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    port = _free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("DIFFTRAIN_SERVE_TOKEN", None)
    cmd = [sys.executable, "-m", "difftrain.cli.main", "serve", str(run_dir), "--port", str(port)]
    proc = subprocess.Popen(
        [*cmd, "--token-file", str(token_file)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, proc.stdout.read()
            assert time.monotonic() < deadline, "server did not come up"
            time.sleep(0.2)
        assert httpx.get(url + "/v1/models").status_code == 401
        res = httpx.post(url + "/v1/generate", json={"steps": 2}, headers=AUTH, timeout=60)
        assert res.status_code == 200 and res.json()["model"] == "run/step-0000001:ema"
        listening = subprocess.run(["ss", "-ltnH"], capture_output=True, text=True).stdout
        mine = [line for line in listening.splitlines() if f":{port} " in line]
        assert mine and all("127.0.0.1:" in line for line in mine), listening
    finally:
        proc.terminate()
        proc.wait(20)
    empty = tmp_path / "empty"
    empty.write_text("\n")
    res = CliRunner().invoke(cli, ["serve", str(run_dir), "--token-file", str(empty)])
    assert res.exit_code == 2 and "is empty" in res.output


def test_threaded_client_sanity(server):
    """Many small concurrent requests all answer 200 with their own seed's images."""
    url, _ = server
    bodies = [{"num": 1, "seed": s, "steps": 2} for s in range(8)]
    results = _concurrent(url, bodies)
    assert [r.status_code for r in results] == [200] * 8
    images = [r.json()["images"][0] for r in results]
    assert len(set(images)) == 8
    assert threading.active_count() < 100


def test_serves_a_safetensors_export_with_the_runs_images(server, run_dir, tmp_path):
    url, _ = server
    out = tmp_path / "st"
    res = CliRunner().invoke(
        cli, ["export", str(run_dir), "--format", "safetensors", "--out", str(out)]
    )
    assert res.exit_code == 0, res.output
    body = {"num": 2, "seed": 9, "class_label": 4}
    with serving(out, settings()) as (export_url, _app), client(export_url) as c:
        got = c.post("/v1/generate", json=body, headers=AUTH).json()
    with client(url) as c:
        want = c.post("/v1/generate", json=body, headers=AUTH).json()
    assert got["model"] == "st:export" and got["images"] == want["images"]


def test_best_checkpoint_follows_best_json_and_distrusts_it(tmp_path):
    from difftrain.serve.models import best_checkpoint

    run_dir = make_run(tmp_path / "run", step=1)
    add_checkpoint(run_dir, 2, 10, init_seed=1)
    best = run_dir / "checkpoints/best.json"
    best.write_text(json.dumps({"best": [{"checkpoint": "step-0000001", "step": 1}]}))
    assert best_checkpoint(run_dir).name == "step-0000001"  # the best, not the newest
    for bad in ['{"best": [{"checkpoint": "../../x"}]}', "{not json", '{"best": []}', "[]"]:
        best.write_text(bad)
        assert best_checkpoint(run_dir) is None  # keep serving what we have
    best.unlink()
    assert best_checkpoint(run_dir).name == "step-0000002"  # no best.json: the newest good


def test_an_odd_run_directory_name_is_safe_in_headers(tmp_path):
    run_dir = make_run(tmp_path / "运行 run\u00e9")
    with serving(run_dir, settings()) as (url, _app), client(url) as c:
        res = c.post("/v1/generate", json={"steps": 2}, headers=AUTH)
        assert res.status_code == 200, res.text
        assert res.json()["model"] == "运行 runé/step-0000001:ema"  # JSON carries it as is
        assert res.headers["x-model"] == "%E8%BF%90%E8%A1%8C%20run%C3%A9/step-0000001:ema"
        assert c.get("/v1/models", headers=AUTH).status_code == 200


def _png_b64(img: Image.Image) -> str:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def test_init_image_and_mask_arrive_as_bytes_through_the_safe_decoder(server):
    url, _ = server
    init = _png_b64(Image.new("L", (16, 8), 100))
    with client(url) as c:
        res = c.post("/v1/generate", json={"init_image": init, "strength": 0.0}, headers=AUTH)
        assert res.status_code == 200, res.text
        assert (decode(res.json()["images"][0]) == 100).all()  # strength 0: the fitted input
        mask = _png_b64(Image.new("L", (9, 9), 255))
        res = c.post("/v1/generate", json={"init_image": init, "mask": mask}, headers=AUTH)
        assert res.status_code == 422 and "is 9x9 but the init image is 16x8" in res.text
        # a path is not an image: clients never name server files
        res = c.post("/v1/generate", json={"init_image": "/etc/passwd"}, headers=AUTH)
        assert res.status_code == 422


def test_exposure_warning_and_token_sources(tmp_path, monkeypatch):
    from difftrain.cli.serve_cmd import exposure_warning, read_token

    assert exposure_warning("127.0.0.1", None) is None
    assert exposure_warning("::1", None) is None and exposure_warning("localhost", None) is None
    assert "without a token" in exposure_warning("0.0.0.0", None)
    assert exposure_warning("0.0.0.0", "t") is None
    monkeypatch.setenv("DIFFTRAIN_SERVE_TOKEN", " from-env ")
    assert read_token(None) == "from-env"
    (tmp_path / "f").write_text("from-file\n")
    assert read_token(tmp_path / "f") == "from-file"  # the file wins over the environment
    monkeypatch.setenv("DIFFTRAIN_SERVE_TOKEN", "")
    assert read_token(None) is None
