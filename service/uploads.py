"""Getting the photo's bytes out of a request: multipart field `image`, or a raw `image/*` (or
application/octet-stream) body. The declared image type is not trusted: imaging sniffs the bytes.

What bounds an upload (a body is read before the request is admitted, so a slow client holds
no in-flight slot and these limits alone keep uploads in check):
- bytes: enforced while the body streams in (413), so an oversized upload costs at most `limit`
  bytes; a declared Content-Length over the limit is refused before reading anything;
- time: the whole body within `timeout_s`, and after `grace_s` at least `min_rate` bytes/s on
  average (408: a client trickling bytes is cut off within seconds, not minutes);
- memory of all uploads together: an `UploadBudget` of bytes being received at once (503);
- where: bodies stay in memory (never spooled to /tmp, which is a small tmpfs in the container).
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass

from fastapi import Request
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect

from .imaging import MEDIA_TYPES, NAMES
from .problems import Problem

FIELD = "image"
RAW_TYPES = ("image/", "application/octet-stream")

# OpenAPI description of the request body (the routes read the request themselves).
OPENAPI_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {"type": "object", "required": [FIELD],
                           "properties": {FIELD: {"type": "string", "format": "binary",
                                                  "description": f"a {NAMES} photo"}}}},
            **{media_type: {"schema": {"type": "string", "format": "binary"}} for media_type in MEDIA_TYPES},
        },
    }
}


@dataclass(frozen=True)
class UploadLimits:
    max_bytes: int
    timeout_s: float
    min_rate: float  # bytes/s, averaged from the start, checked after grace_s
    grace_s: float


class UploadBudget:
    """Bytes of all bodies being received at once. Taken chunk by chunk as they arrive and given
    back when the request's bytes are released; a chunk that does not fit is a 503 (the server
    is full of uploads), not a wait."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.used = 0

    def take(self, n: int, retry_after_s: int) -> None:
        if self.used + n > self.capacity:
            raise Problem(503, "overloaded", "too many uploads are being received at once",
                          headers={"Retry-After": str(retry_after_s)})
        self.used += n

    def give(self, n: int) -> None:
        self.used -= n


class Upload:
    """One request's body being read: counts its bytes against the limits and the budget."""

    def __init__(self, request: Request, limits: UploadLimits, budget: UploadBudget, retry_after_s: int):
        self.request, self.limits, self.budget, self.retry_after_s = request, limits, budget, retry_after_s
        self.received = 0

    def release(self) -> None:
        """The body's bytes have been handed on (decoded or refused): free the budget."""
        self.budget.give(self.received)
        self.received = 0

    async def chunks(self):
        """The body's chunks; the wait for each one is bounded by the limits (408 when too slow)."""
        limits, loop = self.limits, asyncio.get_running_loop()
        started = loop.time()
        stream = aiter(self.request.stream())
        while True:
            # The slowest acceptable arrival of the next byte: the whole body within timeout_s, and
            # after grace_s at least min_rate bytes/s on average.
            deadline = started + limits.timeout_s
            if limits.min_rate:
                deadline = min(deadline, started + limits.grace_s + (self.received + 1) / limits.min_rate)
            try:
                async with asyncio.timeout_at(deadline):
                    chunk = await anext(stream)
            except StopAsyncIteration:
                return
            except TimeoutError:
                raise Problem(408, "upload-timeout",
                              f"the upload was too slow: the body must arrive within {limits.timeout_s:g} s, and "
                              f"at {limits.min_rate / 1024:g} KiB/s or faster after the first {limits.grace_s:g} s",
                              headers={"Connection": "close"}) from None
            if self.received + len(chunk) > limits.max_bytes:
                raise _too_large(limits.max_bytes)
            self.budget.take(len(chunk), self.retry_after_s)
            self.received += len(chunk)
            yield chunk


def _too_large(limit: int) -> Problem:
    return Problem(413, "body-too-large", f"the request body exceeds {limit} bytes", headers={"Connection": "close"})


async def read_image(upload: Upload) -> bytes:
    """The photo's bytes. Call upload.release() once they are no longer needed."""
    request, limit = upload.request, upload.limits.max_bytes
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise _too_large(limit)
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    try:
        if media_type == "multipart/form-data":
            return await _from_multipart(request, upload)
        if media_type.startswith(RAW_TYPES):
            return b"".join([chunk async for chunk in upload.chunks()])
    except ClientDisconnect:
        raise Problem(499, "client-closed-request", "the client left during the upload",
                      title="Client Closed Request") from None
    raise Problem(415, "unsupported-media-type",
                  f"send multipart/form-data with a field {FIELD!r}, or the raw photo with an image/* "
                  f"content type (got {media_type or 'no content type'})")


class _InMemoryParser(MultiPartParser):
    # Starlette spools file parts over 1 MB to /tmp; the body limit already bounds them, and
    # /tmp is a 64 MiB tmpfs in the container (4 uploads of 19 MB filled it: 500s).
    spool_max_size = 1 << 62
    # python-multipart calls on_end at the closing boundary and nowhere else; a body without it
    # was cut short, and Starlette would parse it as a form missing its unfinished part.
    ended = False

    def on_end(self) -> None:
        self.ended = True


async def _from_multipart(request: Request, upload: Upload) -> bytes:
    parser = _InMemoryParser(request.headers, upload.chunks(), max_files=1, max_fields=16)
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        raise Problem(400, "bad-multipart", f"the multipart body cannot be parsed: {exc.message}") from None
    try:
        if not parser.ended:
            raise Problem(400, "bad-multipart", "the multipart body ends before its closing boundary (cut short?)")
        part = form.get(FIELD)
        if part is None:
            fields = ", ".join(repr(k) for k in form.keys()) or "none"
            raise Problem(422, "missing-image-field", f"the multipart body has no field {FIELD!r} (fields: {fields})")
        if isinstance(part, str):
            raise Problem(422, "image-field-not-a-file", f"the field {FIELD!r} must be a file upload")
        return await part.read()
    finally:
        await form.close()
