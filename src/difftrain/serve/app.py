"""The HTTP server: routes, bearer-token check, caps, metrics, and the web page.

Every route but /health (and the static page files, which hold no data) needs the bearer
token when one is set. Bad input answers 4xx before any model work; a full queue answers 429
with Retry-After; a client that disconnects gives its queue slot back.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import io
import logging
import time
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from importlib import resources
from urllib.parse import quote

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from PIL import Image
from pydantic import ValidationError
from starlette.datastructures import Headers, MutableHeaders

from difftrain.config import ConfigError
from difftrain.pipeline.request import Limits
from difftrain.samplers import SAMPLERS
from difftrain.serve.engine import Engine, QueueFull, Result
from difftrain.serve.metrics import Metrics
from difftrain.serve.models import ModelHolder
from difftrain.serve.schemas import GenerateBody

log = logging.getLogger("difftrain.serve")
PUBLIC = {"/health", "/", "/page.js", "/page.css", "/favicon.ico"}
STATIC = {"/": "index.html", "/page.js": "page.js", "/page.css": "page.css"}
MEDIA = {"html": "text/html; charset=utf-8", "js": "text/javascript", "css": "text/css"}
# The page loads only its own script and style; images come as data: URLs.
CSP = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"


@dataclass
class ServeSettings:
    """Caps and batching; the CLI fills these from its options."""

    token: str | None = None
    limits: Limits = field(
        default_factory=lambda: Limits(
            max_num=16, max_steps=200, max_resample=10, max_prompt_chars=1000
        )
    )
    max_body: int = 8 << 20  # bytes of a request body (room for a base64 init image and mask)
    max_queue: int = 32
    window_s: float = 0.02
    max_batch: int = 32
    batching: bool = True
    poll_s: float = 0.1  # how often a waiting request checks that its client is still there


def header_value(name: str) -> str:
    """A model name (from a directory name: untrusted) as a safe header: printable ASCII only."""
    return quote(name, safe="/:@-._~+!$&'()*,;=")


def _error(status: int, message: str, headers: dict | None = None, **extra) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=status, headers=headers)


class Guard:
    """ASGI middleware: token check, metrics by route and status, headers on every answer.

    Pure ASGI (not BaseHTTPMiddleware) so that the route still sees the client disconnect.
    """

    def __init__(self, app, token: str | None, metrics: Metrics, holder: ModelHolder):
        self.app, self.token, self.metrics, self.holder = app, token, metrics, holder

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0, path, status = time.perf_counter(), scope["path"], [500]

        async def send_with_headers(message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                headers = MutableHeaders(scope=message)
                headers["X-Content-Type-Options"] = "nosniff"
                headers["Cache-Control"] = "no-store"
                if path not in PUBLIC and "x-model" not in headers:
                    headers["X-Model"] = header_value(self.holder.current.name)
            await send(message)

        try:
            if self.token is not None and path not in PUBLIC and not _authorized(scope, self.token):
                refuse = _error(
                    401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"}
                )
                await refuse(scope, receive, send_with_headers)
            else:
                await self.app(scope, receive, send_with_headers)
        finally:
            self.metrics.observe(path, status[0], time.perf_counter() - t0)


def _png(arr: np.ndarray) -> bytes:
    """uint8 C×H×W → PNG bytes."""
    hwc = arr.transpose(1, 2, 0)
    img = Image.fromarray(hwc[..., 0] if hwc.shape[-1] == 1 else hwc)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def create_app(holder: ModelHolder, settings: ServeSettings | None = None) -> FastAPI:
    """The FastAPI app serving `holder`'s model with `settings`."""
    settings = settings or ServeSettings()
    metrics = Metrics()
    metrics.set_model(holder.current.name)
    holder.listeners.append(lambda served: (metrics.set_model(served.name), metrics.swaps.inc()))
    engine = Engine(
        holder,
        metrics,
        settings.limits,
        max_queue=settings.max_queue,
        window_s=settings.window_s,
        max_batch=settings.max_batch,
        batching=settings.batching,
    )

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        engine.start()
        yield
        await engine.stop()

    app = FastAPI(
        title="difftrain", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None
    )
    app.state.engine, app.state.metrics, app.state.holder = engine, metrics, holder

    app.add_middleware(Guard, token=settings.token, metrics=metrics, holder=holder)

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    @app.get("/metrics")
    async def metrics_route() -> Response:
        return Response(metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def models() -> dict:
        served = holder.current
        run, cfg = served.run, served.run.config
        return {
            "models": [
                {
                    "id": served.name,
                    "step": served.step,
                    "resolution": cfg.data.resolution,
                    "channels": cfg.data.channels,
                    "num_classes": run.num_classes,
                    "class_names": run.class_names,
                    "text_conditioned": getattr(run, "text", None) is not None,
                    "latent": getattr(run, "autoencoder", None) is not None,
                    "samplers": list(SAMPLERS),
                    "defaults": {
                        "sampler": cfg.sample.sampler,
                        "steps": cfg.sample.steps,
                        "guidance": cfg.sample.guidance,
                        "schedule": cfg.sample.schedule,
                    },
                    "limits": {**asdict(settings.limits), "max_body_bytes": settings.max_body},
                }
            ]
        }

    @app.post("/v1/generate")
    async def generate(request: Request) -> Response:
        t0 = time.perf_counter()
        body = await _read_body(request, settings.max_body)
        if isinstance(body, Response):
            return body
        try:
            req = GenerateBody.model_validate_json(body).to_request()
        except ValidationError as err:
            metrics.rejected.labels(reason="invalid").inc()
            errors = [
                {"field": ".".join(str(p) for p in e["loc"]), "message": e["msg"]}
                for e in err.errors(include_url=False, include_input=False)[:20]
            ]
            return _error(422, "invalid request body", errors=errors)
        except ConfigError as err:
            metrics.rejected.labels(reason="invalid").inc()
            return _error(422, str(err))
        want_png = "image/png" in request.headers.get("accept", "")
        if want_png and req.num != 1:
            return _error(406, "Accept: image/png answers one image; set num to 1 or accept JSON")
        try:
            job = await engine.submit(req)
        except QueueFull as err:
            return _error(429, str(err), headers={"Retry-After": str(err.retry_after)})
        except ConfigError as err:
            metrics.rejected.labels(reason="invalid").inc()
            return _error(422, str(err))
        result = await _wait(request, engine, job, settings.poll_s)
        if result is None:
            return Response(status_code=499)  # client closed the connection; nobody reads this
        if isinstance(result, Exception):
            if isinstance(result, ConfigError):  # the model changed under a queued request
                return _error(422, str(result))
            log.error("generation failed: %r", result)
            return _error(500, "generation failed; see the server log")
        seconds = round(time.perf_counter() - t0, 4)
        pngs = await asyncio.to_thread(lambda: [_png(a) for a in result.images.numpy()])
        headers = {"X-Model": header_value(result.model), "X-Seconds": str(seconds)}
        if want_png:
            headers.update({"X-Seed": str(req.seed), "X-Index": str(result.indices[0])})
            return Response(pngs[0], media_type="image/png", headers=headers)
        return JSONResponse(_answer(result, pngs, req.seed, seconds), headers=headers)

    @app.get("/")
    @app.get("/page.js")
    @app.get("/page.css")
    async def page(request: Request) -> Response:
        name = STATIC[request.url.path]
        text = resources.files("difftrain.serve").joinpath("static", name).read_bytes()
        headers = {"Content-Security-Policy": CSP, "X-Frame-Options": "DENY"}
        return Response(text, media_type=MEDIA[name.rsplit(".", 1)[1]], headers=headers)

    return app


def _authorized(scope, token: str) -> bool:
    got = Headers(scope=scope).get("authorization", "")
    scheme, _, value = got.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(
        value.strip().encode("utf-8", "replace"), token.encode()
    )


async def _read_body(request: Request, limit: int) -> bytes | Response:
    """The body, or 413 as soon as it is known to exceed `limit` (by header or while reading)."""
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        return _error(413, f"request body over {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return _error(413, f"request body over {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def _wait(request: Request, engine: Engine, job, poll_s: float) -> Result | Exception | None:
    """The job's result (or its exception); None if the client disconnected first."""
    while True:
        done, _ = await asyncio.wait({job.future}, timeout=poll_s)
        if done:
            if job.future.cancelled():
                return None
            return job.future.exception() or job.future.result()
        if await request.is_disconnected():
            engine.cancel(job)
            return None


def _answer(result: Result, pngs: list[bytes], seed: int, seconds: float) -> dict:
    return {
        "images": [base64.b64encode(p).decode("ascii") for p in pngs],
        "seeds": [seed] * len(pngs),
        "indices": result.indices,
        "labels": result.labels,
        "seconds": seconds,
        "model": result.model,
        "settings": result.plan.info(),
    }
