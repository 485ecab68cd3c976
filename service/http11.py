"""uvicorn's h11 protocol, with its own error answers in the service's problem+json shape, and a
bound on the time a client may take to send a request's head.

uvicorn answers a request it cannot parse (bad request line, broken headers, ...) itself,
before any ASGI code runs, with a text/plain 400; clients of this API switch on problem+json.

uvicorn bounds only an idle keep-alive connection (`timeout_keep_alive`): a client that trickles
a request line and headers a byte at a time (slowloris) holds its connection, a file descriptor
and up to h11's 16 KiB buffer, for ever, and thousands of them starve the process of both. The
head must arrive within `head_timeout_s` of the connection's start or of the previous answer's end
(CATFACE_HEAD_TIMEOUT_S); the body has its own limits (service/uploads.py).

Within that deadline a flood of connections still costs ~21 KB each (a 15 KB partial head: 8000
of them took 170 MB), so at most `max_connections` stay open (CATFACE_MAX_CONNECTIONS). A new one
past it makes room: the connection that has waited longest for a request head (a flood's silent or
trickling socket, or an idle keep-alive one) is closed, with a 503 problem+json if part of a head
had come. An honest client sends its head at once, so a flood of held connections cannot starve it.
Only when every open connection has a request in flight is the new one answered 503 problem+json
at once and closed after a short linger, reading nothing.
"""
from __future__ import annotations

import asyncio
import json
from collections import OrderedDict
from collections.abc import Callable

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from .problems import MEDIA_TYPE, TYPE_PREFIX


def problem_body(status: int, title: str, slug: str, detail: str) -> bytes:
    return json.dumps({"type": TYPE_PREFIX + slug, "title": title, "status": status, "detail": detail}).encode()


LINGER_S = 1.0  # a refused connection stays open this long so that the client reads its answer before the close


def raw_problem(status: int, reason: str, slug: str, detail: str, headers: bytes = b"") -> bytes:
    """A whole problem+json answer written without h11 (which sends nothing before it has read a request)."""
    body = problem_body(status, reason, slug, detail)
    return (f"HTTP/1.1 {status} {reason}\r\ncontent-type: {MEDIA_TYPE}\r\ncontent-length: {len(body)}\r\n".encode()
            + headers + b"connection: close\r\n\r\n" + body)


class ProblemH11Protocol(H11Protocol):
    # Set by limited() from the settings.
    head_timeout_s: float
    max_connections: int
    retry_after_s: int
    refused: Callable[[str], None]  # counts a refusal by its problem slug (catface_rejections_total)
    # This server's connections waiting for a request head, and those lingering after a refusal,
    # longest first (set by limited()).
    waiting: OrderedDict[ProblemH11Protocol, None]
    lingering: OrderedDict[ProblemH11Protocol, None]
    _head_timer: asyncio.TimerHandle | None = None
    _head_started = False  # bytes of the awaited head have arrived

    @classmethod
    def limited(cls, head_timeout_s: float, max_connections: int, retry_after_s: int,
                refused: Callable[[str], None]) -> type[ProblemH11Protocol]:
        """This protocol with the service's limits (uvicorn builds one protocol per connection)."""
        return type(cls.__name__, (cls,), {"head_timeout_s": head_timeout_s, "max_connections": max_connections,
                                           "retry_after_s": retry_after_s, "refused": staticmethod(refused),
                                           "waiting": OrderedDict(), "lingering": OrderedDict()})

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
        if len(self.connections) > self.max_connections and not self._make_room():
            self._refuse()
        else:
            self._await_head()

    def _make_room(self) -> bool:
        """Close a connection that only lingers after its refusal (its linger cut short), or else the
        one that has waited longest for a request head, if there is one."""
        if self.lingering:
            oldest, _ = self.lingering.popitem(last=False)
            oldest.transport.close()
            return True
        if not self.waiting:
            return False
        oldest, _ = self.waiting.popitem(last=False)
        if not oldest.transport.is_closing():  # (one already closing is making room by itself)
            oldest._give_way()
        return True

    def _give_way(self) -> None:
        self._stop_awaiting_head()
        self.refused("too-many-connections")
        if self._head_started:  # a client mid-head hears why; an idle socket is just closed
            self.transport.write(raw_problem(
                503, "Service Unavailable", "too-many-connections",
                f"{self.max_connections} connections are open and this one had not sent its request; "
                "try again", f"retry-after: {self.retry_after_s}\r\n".encode()))
        self.transport.close()

    def _refuse(self) -> None:
        self.refused("too-many-connections")
        self.transport.write(raw_problem(
            503, "Service Unavailable", "too-many-connections",
            f"more than {self.max_connections} connections are open; try again shortly",
            f"retry-after: {self.retry_after_s}\r\n".encode()))
        self._linger()

    def _linger(self) -> None:
        """Half-close, and discard what the client still sends: a close with its request unread
        would reset the connection, and the client could lose the answer with it."""
        self.lingering[self] = None
        self.transport.write_eof()
        self.loop.call_later(LINGER_S, self.transport.close)

    def data_received(self, data: bytes) -> None:
        if self in self.lingering:  # refused: what it sends is discarded
            return
        super().data_received(data)
        if self.conn.their_state is h11.IDLE:
            self._head_started = self._head_started or bool(data)
        else:  # the head arrived (or the connection broke)
            self._stop_awaiting_head()

    def on_response_complete(self) -> None:
        super().on_response_complete()  # starts the next cycle, and any pipelined request in it
        if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
            self._await_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_awaiting_head()
        self.lingering.pop(self, None)
        super().connection_lost(exc)

    def _await_head(self) -> None:
        self._stop_awaiting_head()
        self._head_started = False
        self._head_timer = self.loop.call_later(self.head_timeout_s, self._head_timed_out)
        self.waiting[self] = None

    def _stop_awaiting_head(self) -> None:
        """The head came (or the connection went): no deadline, and no giving way to a newcomer."""
        self.waiting.pop(self, None)
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        self.waiting.pop(self, None)
        if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
            return
        self.refused("head-timeout")
        if self._head_started:  # a client mid-request hears why; an idle socket is just closed
            self.transport.write(raw_problem(
                408, "Request Timeout", "head-timeout",
                f"the request line and headers must arrive within {self.head_timeout_s:g} s"))
            return self._linger()  # (a trickling client sends on; a plain close could lose the 408)
        self.transport.close()
