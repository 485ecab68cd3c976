"""Model downloads: GET /models (the manifest, with a URL per file) and GET|HEAD /models/{file}.

Only files named in the manifest are served: the path parameter is looked up as a key, never
joined to a directory, so `..`, encoded slashes or absolute paths cannot reach anything else.
Every file is sha256-checked at start-up, which makes the manifest's sha256 a truthful strong
ETag. Caching is `no-cache`: file names stay the same across model versions, so clients
revalidate (a cheap 304) rather than keep a stale model.
"""
from __future__ import annotations

import mimetypes
import re
from pathlib import Path
from typing import Any, Literal

import anyio
from fastapi import APIRouter, Request
from starlette.responses import Response, StreamingResponse

from .problems import PROBLEM_CONTENT, Problem
from .runtime import read_manifest, verified_path
from .schemas import ModelEntry, ModelsResponse
from .state import service_state

CHUNK = 256 * 1024
CONTENT_TYPES = {".onnx": "application/octet-stream", ".mlmodel": "application/octet-stream",
                 ".json": "application/json"}


class Artifacts:
    def __init__(self, entries: list[dict], paths: dict[str, Path]):
        self.entries = entries
        self.paths = paths  # manifest file name -> verified path
        self.by_file = {entry["file"]: entry for entry in entries}

    @classmethod
    def load(cls, models_dir: Path) -> Artifacts:
        """Check every file of the manifest (ModelFileError if one is missing or altered)."""
        entries = read_manifest(models_dir)["models"]
        return cls(entries, {entry["file"]: verified_path(models_dir, entry) for entry in entries})


router = APIRouter(tags=["models"])


def _artifacts(request: Request) -> Artifacts:
    artifacts = service_state(request).artifacts
    if artifacts is None:
        raise Problem(503, "not-ready", "the service is starting", headers={"Retry-After": "1"})
    return artifacts


@router.get("/models", response_model=ModelsResponse, summary="The model manifest, with download URLs")
async def list_models(request: Request) -> ModelsResponse:
    artifacts = _artifacts(request)
    # The path alone, or under the configured public URL: never built from the Host header,
    # which any client can set (a cache in front would hand the forged links to everyone).
    base = service_state(request).settings.public_url.rstrip("/")
    return ModelsResponse(models=[
        ModelEntry.model_validate({**entry, "url": base + request.app.url_path_for("model_file", file=entry["file"])})
        for entry in artifacts.entries])


_FILE_DOC = {
    "parameters": [{"name": "file", "in": "path", "required": True, "schema": {"type": "string"},
                    "description": "a `file` of GET /models; any other name is 404"}],
}
_FILE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"content": {"application/octet-stream": {}}, "description": "the file"},
    206: {"description": "the requested byte range"},
    304: {"description": "the client's copy is current (If-None-Match)"},
    404: {"description": "not a file of the manifest", "content": PROBLEM_CONTENT},
    416: {"description": "the range lies outside the file", "content": PROBLEM_CONTENT},
}


# The name is read from path_params, not declared as an argument: any text is a valid name to
# look up, so there is nothing to validate (and no 422 to document).
@router.get("/models/{file:path}", name="model_file", operation_id="get_model_file", response_class=Response,
            summary="Download a model file (ETag, If-None-Match, Range)", responses=_FILE_RESPONSES,
            openapi_extra=_FILE_DOC)
@router.head("/models/{file:path}", name="model_file_head", operation_id="head_model_file", response_class=Response,
             summary="A model file's headers", responses=_FILE_RESPONSES, openapi_extra=_FILE_DOC)
async def model_file(request: Request) -> Response:
    file = request.path_params["file"]
    artifacts = _artifacts(request)
    entry = artifacts.by_file.get(file)
    if entry is None:
        raise Problem(404, "no-such-model-file", f"{file!r} is not a file of the model manifest; see GET /models")
    size = entry["bytes"]
    etag = f'"{entry["sha256"]}"'
    headers = {"ETag": etag, "Cache-Control": "no-cache", "Accept-Ranges": "bytes"}

    if _matches(request.headers.get("if-none-match"), etag):
        return Response(status_code=304, headers=headers)

    start, stop = 0, size  # [start, stop)
    wanted = request.headers.get("range")
    if_range = request.headers.get("if-range")
    if wanted is not None and (if_range is None or if_range.strip() == etag):
        byte_range = parse_range(wanted, size)
        if byte_range == "unsatisfiable":
            raise Problem(416, "range-not-satisfiable", f"the file has {size} bytes",
                          headers={"Content-Range": f"bytes */{size}", **headers})
        if byte_range is not None:
            start, stop = byte_range
            headers["Content-Range"] = f"bytes {start}-{stop - 1}/{size}"

    name = Path(file).name
    headers.update({
        "Content-Length": str(stop - start),
        "Content-Disposition": f'attachment; filename="{name}"',
    })
    media_type = CONTENT_TYPES.get(Path(name).suffix, mimetypes.guess_type(name)[0] or "application/octet-stream")
    status = 206 if "Content-Range" in headers else 200
    if request.method == "HEAD":
        return Response(status_code=status, headers=headers, media_type=media_type)
    return StreamingResponse(_read(artifacts.paths[file], start, stop), status_code=status, headers=headers,
                             media_type=media_type)


def _matches(if_none_match: str | None, etag: str) -> bool:
    """If-None-Match uses the weak comparison (RFC 9110 13.1.2): W/ prefixes are ignored."""
    if if_none_match is None:
        return False
    tags = [t.strip() for t in if_none_match.split(",")]
    return "*" in tags or any(t.removeprefix("W/") == etag for t in tags)


def parse_range(header: str, size: int) -> tuple[int, int] | Literal["unsatisfiable"] | None:
    """A single `bytes=` range -> (start, stop) with stop exclusive; "unsatisfiable"; or None
    when the header is to be ignored (other units, bad syntax, several ranges: RFC 9110 14.2
    lets a server answer those with the whole file)."""
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    match = re.fullmatch(r"\s*([0-9]*)-([0-9]*)\s*", spec)
    if match is None:
        return None
    first, last = match.groups()
    if first == "":
        if last == "":
            return None
        suffix = int(last)  # the last N bytes
        if suffix == 0 or size == 0:
            return "unsatisfiable"
        return max(size - suffix, 0), size
    start = int(first)
    stop = size if last == "" else int(last) + 1
    if last != "" and stop <= start:
        return None  # "bytes=9-2" is invalid syntax, not an unsatisfiable range
    if start >= size:
        return "unsatisfiable"
    return start, min(stop, size)


async def _read(path: Path, start: int, stop: int):
    async with await anyio.open_file(path, "rb") as f:
        await f.seek(start)
        left = stop - start
        while left > 0:
            chunk = await f.read(min(CHUNK, left))
            if not chunk:
                break
            left -= len(chunk)
            yield chunk
