"""The outer ring of every request: X-Request-ID (taken or made, and returned), one JSON access
log line, the request metrics, and the last-resort 500 (problem+json, never a stack trace in a
response; the trace goes to the log, still on one line).

Written as plain ASGI (not BaseHTTPMiddleware) so that it neither buffers bodies nor hides a
client's disconnect from the routes.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
import uuid

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import logs
from .metrics import Metrics
from .problems import problem_response

log = logging.getLogger("catface.access")
_VALID_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")  # anything else could forge log fields
QUIET_PATHS = {"/livez", "/readyz", "/metrics"}      # probed every few seconds: debug level


class RequestContext:
    def __init__(self, app: ASGIApp, metrics: Metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        given = headers.get(b"x-request-id", b"").decode("latin-1")
        rid = given if _VALID_ID.fullmatch(given) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = rid
        token = logs.request_id.set(rid)
        started = time.perf_counter()
        status = None

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableHeaders(scope=message)["X-Request-ID"] = rid
            await send(message)

        try:
            if b"content-length" in headers and b"transfer-encoding" in headers:
                # RFC 9112 6.3: a sign of request smuggling; refuse it and close the connection.
                response = problem_response(400, "the request has both Content-Length and Transfer-Encoding",
                                            slug="ambiguous-length", instance=scope["path"], request_id=rid,
                                            headers={"Connection": "close"})
                await response(scope, receive, send_with_id)
                return
            await self.app(scope, receive, send_with_id)
        except asyncio.CancelledError:
            # The server gave up on this request (shutdown past its grace time): answer in our own
            # shape if nothing was sent yet, rather than the server's text/plain 500.
            if status is None:
                response = problem_response(503, "the service is shutting down", slug="shutting-down",
                                            instance=scope["path"], request_id=rid,
                                            headers={"Retry-After": "1", "Connection": "close"})
                with contextlib.suppress(Exception):
                    await response(scope, receive, send_with_id)
            raise
        except Exception:
            log.exception("unhandled error in %s %s", scope["method"], scope["path"])
            if status is not None:
                raise  # the answer has begun; the server will cut the connection
            response = problem_response(500, "an unexpected error; it has been logged with this request id",
                                        slug="internal-error", instance=scope["path"], request_id=rid)
            await response(scope, receive, send_with_id)
        finally:
            seconds = time.perf_counter() - started
            route = scope.get("route")
            endpoint = getattr(route, "path", None) or "unmatched"  # templates only: bounded label values
            self.metrics.requests.labels(endpoint, scope["method"], str(status or 0)).inc()
            self.metrics.latency.labels(endpoint).observe(seconds)
            level = logging.DEBUG if scope["path"] in QUIET_PATHS and status == 200 else logging.INFO
            client = scope.get("client")
            log.log(level, "request", extra={
                "method": scope["method"], "path": scope["path"], "status": status,
                "ms": round(seconds * 1000, 1), "client": client[0] if client else None})
            logs.request_id.reset(token)
