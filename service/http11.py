"""uvicorn's h11 protocol, with its own error answers in the service's problem+json shape.

uvicorn answers a request it cannot parse (bad request line, broken headers, ...) itself,
before any ASGI code runs, with a text/plain 400; clients of this API switch on problem+json.
"""
from __future__ import annotations

import json

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from .problems import MEDIA_TYPE, TYPE_PREFIX


def problem_body(status: int, title: str, slug: str, detail: str) -> bytes:
    return json.dumps({"type": TYPE_PREFIX + slug, "title": title, "status": status, "detail": detail}).encode()


class ProblemH11Protocol(H11Protocol):
    def send_400_response(self, msg: str) -> None:
        body = problem_body(400, "Bad Request", "malformed-http", msg)
        headers = [(b"content-type", MEDIA_TYPE.encode()), (b"content-length", str(len(body)).encode()),
                   (b"connection", b"close")]
        for event in (h11.Response(status_code=400, headers=headers, reason=b"Bad Request"), h11.Data(data=body),
                      h11.EndOfMessage()):
            self.transport.write(self.conn.send(event))
        self.transport.close()
