"""Getting the photo's bytes out of a request: multipart field `image`, or a raw `image/*` (or
application/octet-stream) body. The size limit is enforced while the body streams in, so an
oversized upload costs at most `limit` bytes of memory, and a declared Content-Length over the
limit is refused before reading anything. The declared image type is not trusted: imaging
sniffs the bytes."""
from __future__ import annotations

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


def _too_large(limit: int) -> Problem:
    return Problem(413, "body-too-large", f"the request body exceeds {limit} bytes")


async def _bounded(request: Request, limit: int):
    received = 0
    async for chunk in request.stream():
        received += len(chunk)
        if received > limit:
            raise _too_large(limit)
        yield chunk


async def read_image(request: Request, limit: int) -> bytes:
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise _too_large(limit)
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    try:
        if media_type == "multipart/form-data":
            return await _from_multipart(request, limit)
        if media_type.startswith(RAW_TYPES):
            return b"".join([chunk async for chunk in _bounded(request, limit)])
    except ClientDisconnect:
        raise Problem(499, "client-closed-request", "the client left during the upload",
                      title="Client Closed Request") from None
    raise Problem(415, "unsupported-media-type",
                  f"send multipart/form-data with a field {FIELD!r}, or the raw photo with an image/* "
                  f"content type (got {media_type or 'no content type'})")


async def _from_multipart(request: Request, limit: int) -> bytes:
    parser = MultiPartParser(request.headers, _bounded(request, limit), max_files=1, max_fields=16)
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        raise Problem(400, "bad-multipart", f"the multipart body cannot be parsed: {exc.message}") from None
    try:
        upload = form.get(FIELD)
        if upload is None:
            fields = ", ".join(repr(k) for k in form.keys()) or "none"
            raise Problem(422, "missing-image-field", f"the multipart body has no field {FIELD!r} (fields: {fields})")
        if isinstance(upload, str):
            raise Problem(422, "image-field-not-a-file", f"the field {FIELD!r} must be a file upload")
        return await upload.read()
    finally:
        await form.close()
