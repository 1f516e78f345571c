"""A real uvicorn server on a loopback port, in a thread of the test process."""

from __future__ import annotations

import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import uvicorn

from difftrain.serve.app import ServeSettings, create_app
from difftrain.serve.models import ModelHolder


@contextmanager
def serving(run_dir: Path, settings: ServeSettings | None = None, watch: float | None = None):
    """Yield (base_url, app) while a uvicorn server answers on 127.0.0.1:<free port>."""
    holder = ModelHolder(run_dir)
    app = create_app(holder, settings or ServeSettings())
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Accepted sockets inherit this; without it each answer waits ~40 ms (Nagle + delayed ACK).
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=2))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    if watch is not None:
        holder.watch(watch)
    try:
        yield f"http://127.0.0.1:{port}", app
    finally:
        holder.stop()
        server.should_exit = True
        thread.join(10)
        sock.close()
