"""`python -m service [--host H] [--port P]`: serve the bundled models (settings: CATFACE_*).

One process serves everything: batching only pays off when concurrent requests meet in the same
process, and each extra worker would hold its own copy of the models. Scale out with replicas.

SIGTERM (or Ctrl-C) drains: /readyz answers 503 at once, requests keep being served for
CATFACE_DRAIN_S seconds (time for a load balancer to notice), then the server stops taking
connections, finishes the requests it has and the model queues, and exits 0. A second signal
ends the drain delay; a third Ctrl-C stops without waiting.
"""
from __future__ import annotations

import argparse
import ctypes
import logging.config
import math
import os
import resource
import socket
import sys
import time

import uvicorn
from fastapi import FastAPI

from . import logs
from .app import create_app
from .config import Settings
from .http11 import ProblemH11Protocol

log = logging.getLogger("catface")


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, drain_s: float):
        super().__init__(config)
        self.drain_s = drain_s
        self.drain_from: float | None = None
        self.announced = False

    def handle_exit(self, sig, frame) -> None:
        if self.drain_from is None:
            # In a signal handler: only flip flags; on_tick does the rest on the event loop.
            self.drain_from = time.monotonic()
            app = self.config.app
            assert isinstance(app, FastAPI)  # main() hands uvicorn the app itself, not an import string
            app.state.service.draining = True
            return
        super().handle_exit(sig, frame)

    async def on_tick(self, counter: int) -> bool:
        if self.drain_from is not None and not self.should_exit:
            if not self.announced:
                self.announced = True
                log.info("draining", extra={"drain_s": self.drain_s})
            if time.monotonic() - self.drain_from >= self.drain_s:
                self.should_exit = True
        return await super().on_tick(counter)


def fixed_mmap_threshold() -> None:
    """glibc raises its mmap threshold after each large free, after which photo-sized buffers
    come from the heap, which does not shrink: RSS stayed ~15% up after a burst of load. A fixed
    threshold keeps them in mmap, given back to the system when freed. (Only on glibc; an
    explicit MALLOC_MMAP_THRESHOLD_ wins.)"""
    if "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return
    try:
        ctypes.CDLL("libc.so.6").mallopt(-3, 128 * 1024)  # M_MMAP_THRESHOLD, glibc's initial value
    except (OSError, AttributeError):
        pass


FILES_BESIDE_CONNECTIONS = 256  # descriptors the process needs besides its connections (models, pools, logs)


def connections_that_fit(wanted: int) -> int:
    """Raise the soft limit of open files to the hard one (containers often start at a soft 1024)
    and return how many of `wanted` connections fit under it: past that, accept() would fail with
    EMFILE and stall every client, instead of meeting max_connections (service/http11.py)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = wanted + FILES_BESIDE_CONNECTIONS if hard == resource.RLIM_INFINITY else hard
        soft = max(soft, target)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    return max(1, min(wanted, soft - FILES_BESIDE_CONNECTIONS))


def taken(host: str, port: int) -> str | None:
    """Why the address cannot be listened on, or None when it can."""
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((host, port))
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m service", description=__doc__.splitlines()[0])
    parser.add_argument("--host",
                        help="address to listen on (0.0.0.0 in a container); default CATFACE_HOST or 127.0.0.1")
    parser.add_argument("--port", type=int, help="default CATFACE_PORT or 8000")
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env(**{k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None})
    except ValueError as exc:
        parser.error(str(exc))
    port_taken = taken(settings.host, settings.port)
    if port_taken:  # say so now, not after loading the models
        parser.exit(3, f"cannot listen on {settings.host}:{settings.port}: {port_taken}\n")
    fixed_mmap_threshold()
    log_config = logs.config(settings.log_level)
    logging.config.dictConfig(log_config)
    logging.captureWarnings(True)  # library warnings (Pillow's on odd EXIF) as JSON lines, rate-limited
    max_connections = connections_that_fit(settings.max_connections)
    if max_connections < settings.max_connections:
        log.warning("open-file limit: at most %d connections, not CATFACE_MAX_CONNECTIONS=%d",
                    max_connections, settings.max_connections)
    app = create_app(settings)
    protocol = ProblemH11Protocol.limited(settings.head_timeout_s, max_connections, settings.retry_after_s,
                                          refused=app.state.service.metrics.refused)
    config = uvicorn.Config(
        app, host=settings.host, port=settings.port, lifespan="on", log_config=log_config, access_log=False,
        server_header=False, http=protocol,
        # X-Forwarded-* only from the configured proxies: a direct client could claim any address.
        proxy_headers=bool(settings.forwarded_allow_ips), forwarded_allow_ips=settings.forwarded_allow_ips or None,
        # A stuck request must not hold the shutdown forever: after its deadline it is abandoned anyway.
        timeout_graceful_shutdown=math.ceil(settings.request_timeout_s) + 5,
    )
    server = DrainingServer(config, settings.drain_s)
    server.run()
    return 0 if server.started else 3  # 3 = start-up failed (uvicorn's own code), e.g. a bad model file


if __name__ == "__main__":
    sys.exit(main())
