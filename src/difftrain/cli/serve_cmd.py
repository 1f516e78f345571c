"""`difftrain serve`: the HTTP generation server and its web page (thin: parse, build, run)."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

import typer

from difftrain.cli.common import console, err_console, handle_errors
from difftrain.config import ConfigError

TOKEN_ENV = "DIFFTRAIN_SERVE_TOKEN"


def read_token(token_file: Path | None) -> str | None:
    """The bearer token from --token-file, else from $DIFFTRAIN_SERVE_TOKEN, else None."""
    if token_file is not None:
        try:
            token = token_file.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as err:
            raise ConfigError(f"--token-file {str(token_file)!r}: cannot read it ({err})") from None
        if not token:
            raise ConfigError(f"--token-file {str(token_file)!r}: is empty; put the token in it")
        return token
    token = os.environ.get(TOKEN_ENV, "").strip()
    return token or None


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def exposure_warning(host: str, token: str | None) -> str | None:
    """A warning when the server is reachable beyond this machine without a token."""
    if token is None and not _loopback(host):
        return (
            f"warning: serving on {host} without a token: anyone who can reach it can generate. "
            f"Use --token-file or ${TOKEN_ENV}."
        )
    return None


@handle_errors
def serve(
    model_dir: Path = typer.Argument(..., help="A run directory or a safetensors export."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind (loopback by default)."),
    port: int = typer.Option(8000, "--port", min=0, max=65535),
    token_file: Path | None = typer.Option(
        None, "--token-file", help=f"File holding the bearer token (else ${TOKEN_ENV})."
    ),
    watch: bool = typer.Option(
        False, "--watch", help="Follow the run directory; swap in a newer best checkpoint."
    ),
    watch_interval: float = typer.Option(2.0, "--watch-interval", min=0.1, help="Seconds."),
    weights: str = typer.Option("ema", "--weights", help="'ema' or 'model'."),
    max_num: int = typer.Option(16, "--max-num", min=1, max=4096, help="Images per request."),
    max_steps: int = typer.Option(200, "--max-steps", min=1, max=100_000),
    max_body: int = typer.Option(8 << 20, "--max-body", min=1024, help="Request body bytes."),
    max_queue: int = typer.Option(32, "--max-queue", min=1, help="Requests waiting or running."),
    max_batch: int = typer.Option(32, "--max-batch", min=1, help="Images per forward pass."),
    batch_window_ms: float = typer.Option(
        20.0, "--batch-window-ms", min=0.0, max=10_000.0, help="Wait for companions (ms)."
    ),
    no_batching: bool = typer.Option(False, "--no-batching", help="One request per pass."),
) -> None:
    """Serve a model over HTTP: POST /v1/generate, GET /v1/models, /health, /metrics, and /."""
    import torch
    import uvicorn

    from difftrain.pipeline.request import Limits
    from difftrain.serve.app import ServeSettings, create_app
    from difftrain.serve.models import ModelHolder

    if weights not in ("ema", "model"):
        raise ConfigError(f"--weights {weights!r}: allowed 'ema' or 'model'")
    if max_batch < max_num:
        raise ConfigError(f"--max-batch {max_batch} must be >= --max-num {max_num}")
    token = read_token(token_file)
    warning = exposure_warning(host, token)
    if warning:
        err_console.print(warning, markup=False, highlight=False)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    holder = ModelHolder(model_dir, weights=weights, device=device)
    settings = ServeSettings(
        token=token,
        limits=Limits(max_num=max_num, max_steps=max_steps, max_resample=10, max_prompt_chars=1000),
        max_body=max_body,
        max_queue=max_queue,
        window_s=batch_window_ms / 1000,
        max_batch=max_batch,
        batching=not no_batching,
    )
    app = create_app(holder, settings)
    if watch:
        holder.watch(watch_interval)
    console.print(
        f"serving {holder.current.name} on http://{host}:{port}/ "
        f"({'token required' if token else 'no token'}; {device}"
        f"{'; watching for newer best checkpoints' if watch else ''})",
        markup=False,
        highlight=False,
    )
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_level="warning",
        timeout_graceful_shutdown=5,
        limit_concurrency=max(64, 4 * max_queue),  # open connections beyond this get 503
    )
