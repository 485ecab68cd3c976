"""uvicorn's h11 protocol, with its own error answers in the service's problem+json shape, and a
bound on the time a client may take to send a request's head.

uvicorn answers a request it cannot parse (bad request line, broken headers, ...) itself,
before any ASGI code runs, with a text/plain 400; clients of this API switch on problem+json.

uvicorn bounds only an idle keep-alive connection (`timeout_keep_alive`): a client that trickles
a request line and headers a byte at a time (slowloris) holds its connection, a file descriptor
and up to h11's 16 KiB buffer, for ever, and thousands of them starve the process of both. The
head must arrive within `head_timeout_s` of the connection's start or of the previous answer's end
(CATFACE_HEAD_TIMEOUT_S); the body has its own limits (service/uploads.py).
"""
from __future__ import annotations

import asyncio
import json

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from .problems import MEDIA_TYPE, TYPE_PREFIX


def problem_body(status: int, title: str, slug: str, detail: str) -> bytes:
    return json.dumps({"type": TYPE_PREFIX + slug, "title": title, "status": status, "detail": detail}).encode()


class ProblemH11Protocol(H11Protocol):
    head_timeout_s: float  # set by with_head_timeout (from the settings)
    _head_timer: asyncio.TimerHandle | None = None
    _head_started = False  # bytes of the awaited head have arrived

    @classmethod
    def with_head_timeout(cls, seconds: float) -> type[ProblemH11Protocol]:
        """This protocol with another head timeout (uvicorn builds one protocol per connection)."""
        return type(cls.__name__, (cls,), {"head_timeout_s": seconds})

    def send_400_response(self, msg: str) -> None:
        body = problem_body(400, "Bad Request", "malformed-http", msg)
        headers = [(b"content-type", MEDIA_TYPE.encode()), (b"content-length", str(len(body)).encode()),
                   (b"connection", b"close")]
        for event in (h11.Response(status_code=400, headers=headers, reason=b"Bad Request"), h11.Data(data=body),
                      h11.EndOfMessage()):
            self.transport.write(self.conn.send(event))
        self.transport.close()

    # ---- the head's deadline ------------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._await_head()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state is h11.IDLE:
            self._head_started = self._head_started or bool(data)
        else:  # the head arrived (or the connection broke)
            self._stop_head_timer()

    def on_response_complete(self) -> None:
        super().on_response_complete()  # starts the next cycle, and any pipelined request in it
        if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
            self._await_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_head_timer()
        super().connection_lost(exc)

    def _await_head(self) -> None:
        self._stop_head_timer()
        self._head_started = False
        self._head_timer = self.loop.call_later(self.head_timeout_s, self._head_timed_out)

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
            return
        if self._head_started:  # a client mid-request hears why; an idle socket is just closed
            body = problem_body(408, "Request Timeout", "head-timeout",
                                f"the request line and headers must arrive within {self.head_timeout_s:g} s")
            # Written raw: h11 sends no response before it has read a request.
            self.transport.write(b"HTTP/1.1 408 Request Timeout\r\ncontent-type: " + MEDIA_TYPE.encode()
                                 + b"\r\ncontent-length: " + str(len(body)).encode()
                                 + b"\r\nconnection: close\r\n\r\n" + body)
        self.transport.close()
