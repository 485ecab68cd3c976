"""Model downloads: manifest listing, ETag/304, Range/206/416, HEAD, and nothing but manifest files."""
from __future__ import annotations

import asyncio
import hashlib
import json
import os
from urllib.parse import unquote

import pytest

from service.artifacts import parse_range
from service.runtime import ModelFileError

from .conftest import MODELS, LiveApp, make_settings

MANIFEST = json.loads((MODELS / "manifest.json").read_text())
ENTRY = next(e for e in MANIFEST["models"] if e["name"] == "catlandmarks")
FILE = ENTRY["file"]
BLOB = (MODELS / FILE).read_bytes()
ETAG = f'"{ENTRY["sha256"]}"'


def test_listing_is_the_manifest_with_urls(live):
    body = live.get("/models").json()
    assert [m["file"] for m in body["models"]] == [m["file"] for m in MANIFEST["models"]]
    for listed, entry in zip(body["models"], MANIFEST["models"]):
        assert {k: listed[k] for k in entry} == entry, "every manifest field passes through"
        assert listed["url"] == f"/models/{entry['file']}"  # relative: never from the Host header


def test_listing_uses_the_configured_public_url():
    app = LiveApp(make_settings(public_url="https://cats.example/api/"))
    try:
        urls = [m["url"] for m in app.get("/models").json()["models"]]
    finally:
        app.close()
    assert urls and all(u.startswith("https://cats.example/api/models/") for u in urls)


def test_every_listed_url_downloads_its_file_intact(live):
    for listed in live.get("/models").json()["models"]:
        response = live.get(listed["url"])
        assert response.status_code == 200
        assert hashlib.sha256(response.content).hexdigest() == listed["sha256"]
        assert int(response.headers["content-length"]) == listed["bytes"]
        assert response.headers["etag"] == f'"{listed["sha256"]}"'
        assert response.headers["content-type"] == "application/octet-stream"
        assert response.headers["content-disposition"] == f'attachment; filename="{listed["file"]}"'
        assert response.headers["accept-ranges"] == "bytes"


@pytest.mark.parametrize("header", [ETAG, f"W/{ETAG}", f'"other", {ETAG}', "*"])
def test_if_none_match_gives_304_without_a_body(live, header):
    response = live.get(f"/models/{FILE}", headers={"if-none-match": header})
    assert response.status_code == 304 and response.content == b""
    assert response.headers["etag"] == ETAG


def test_stale_etag_gets_the_file(live):
    response = live.get(f"/models/{FILE}", headers={"if-none-match": '"0123"'})
    assert response.status_code == 200 and len(response.content) == len(BLOB)


@pytest.mark.parametrize("header,start,stop", [
    ("bytes=0-99", 0, 100),
    ("bytes=100-", 100, len(BLOB)),
    ("bytes=-500", len(BLOB) - 500, len(BLOB)),
    (f"bytes=1000-{len(BLOB) + 5000}", 1000, len(BLOB)),  # the end is clamped to the file
])
def test_range_gives_206_with_exactly_those_bytes(live, header, start, stop):
    response = live.get(f"/models/{FILE}", headers={"range": header})
    assert response.status_code == 206
    assert response.content == BLOB[start:stop]
    assert response.headers["content-range"] == f"bytes {start}-{stop - 1}/{len(BLOB)}"
    assert int(response.headers["content-length"]) == stop - start
    assert response.headers["etag"] == ETAG


def test_resuming_a_download_rebuilds_the_file(live):
    first = live.get(f"/models/{FILE}", headers={"range": "bytes=0-65535"}).content
    rest = live.get(f"/models/{FILE}", headers={"range": f"bytes={len(first)}-", "if-range": ETAG}).content
    assert hashlib.sha256(first + rest).hexdigest() == ENTRY["sha256"]


def test_unsatisfiable_range_is_416(live):
    response = live.get(f"/models/{FILE}", headers={"range": f"bytes={len(BLOB)}-"})
    assert response.status_code == 416
    assert response.headers["content-range"] == f"bytes */{len(BLOB)}"
    assert response.headers["content-type"].startswith("application/problem+json")


@pytest.mark.parametrize("header", ["bytes=0-1,5-9", "items=0-5", "bytes=9-2", "bytes=abc"])
def test_ranges_we_do_not_serve_get_the_whole_file(live, header):
    response = live.get(f"/models/{FILE}", headers={"range": header})
    assert response.status_code == 200 and len(response.content) == len(BLOB)


def test_if_range_with_another_version_gets_the_whole_file(live):
    response = live.get(f"/models/{FILE}", headers={"range": "bytes=0-9", "if-range": '"old-version"'})
    assert response.status_code == 200 and len(response.content) == len(BLOB)


def test_head_gives_headers_only(live):
    response = live.head(f"/models/{FILE}")
    assert response.status_code == 200 and response.content == b""
    assert int(response.headers["content-length"]) == len(BLOB) and response.headers["etag"] == ETAG
    assert live.head(f"/models/{FILE}", headers={"range": "bytes=0-9"}).status_code == 206
    assert live.head("/models/nope.onnx").status_code == 404


@pytest.mark.parametrize("path", [
    "/models/manifest.json",            # in the folder, but not an artifact of the manifest
    "/models/../models/catface.onnx",
    "/models/..%2Fmodels%2Fcatface.onnx",
    "/models/%2e%2e/pyproject.toml",
    "/models/CATFACE.ONNX",
    "/models/catface.onnx%00.txt",
    "/models/catface.onnx/",
    "/models//etc/passwd",
    "/models/%2Fetc%2Fpasswd",
    "/models/",
])
def test_only_manifest_files_are_served(live, path):
    status, headers, body = live.call(raw_get(live.app, path))
    assert status == 404
    assert headers[b"content-type"].startswith(b"application/problem+json")
    assert len(body) < 1000


async def raw_get(app, raw_path: str):
    """GET with the path exactly as a client could put it on the wire (httpx would clean up
    dot segments first); the path is percent-decoded as servers do."""
    sent, requested, finished = [], [], asyncio.Event()

    async def receive():
        if not requested:
            requested.append(True)
            return {"type": "http.request", "body": b"", "more_body": False}
        await finished.wait()  # like a server: nothing more until the client goes
        return {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            finished.set()

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
             "path": unquote(raw_path), "raw_path": raw_path.encode(), "query_string": b"", "root_path": "",
             "headers": [(b"host", b"catface")], "client": ("127.0.0.1", 5000), "server": ("catface", 80)}
    await app(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], dict(start["headers"]), body


EXTRA = "catface-extra.mlmodel"  # a name no real artifact has: the copy must not write through a link


def _models_copy(tmp_path, extra: bytes) -> None:
    """The committed models linked into a new folder, plus one more artifact in its manifest."""
    for f in MODELS.iterdir():
        if f.name != "manifest.json":
            os.symlink(f, tmp_path / f.name)
    (tmp_path / EXTRA).write_bytes(extra)
    manifest = json.loads((MODELS / "manifest.json").read_text())
    manifest["models"].append({"name": "catface-extra", "format": "coreml", "version": "1.0.0", "file": EXTRA,
                               "sha256": hashlib.sha256(b"a different blob").hexdigest() if extra == b"altered"
                               else hashlib.sha256(extra).hexdigest(),
                               "bytes": len(extra), "inputs": [], "outputs": []})
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))


def test_new_manifest_entries_are_served_without_code_changes(tmp_path):
    # A stand-in for the CoreML file: the endpoint serves bytes, it never reads them as a model.
    blob = os.urandom(300_000)
    _models_copy(tmp_path, blob)
    live = LiveApp(make_settings(models_dir=tmp_path))
    try:
        listed = [m for m in live.get("/models").json()["models"] if m["file"] == EXTRA]
        assert [m["url"] for m in listed] == [f"/models/{EXTRA}"]
        assert live.get(f"/models/{EXTRA}").content == blob
        assert live.get(f"/models/{EXTRA}", headers={"range": "bytes=-10"}).content == blob[-10:]
    finally:
        live.close()


def test_an_altered_artifact_stops_start_up(tmp_path):
    _models_copy(tmp_path, b"altered")
    with pytest.raises(ModelFileError, match=EXTRA):
        LiveApp(make_settings(models_dir=tmp_path))


def test_parse_range_edges():
    assert parse_range("bytes=0-0", 10) == (0, 1)
    assert parse_range("bytes=-20", 10) == (0, 10)
    assert parse_range("bytes=-0", 10) == "unsatisfiable"
    assert parse_range("bytes=10-20", 10) == "unsatisfiable"
    assert parse_range("bytes=10-", 10) == "unsatisfiable"
    assert parse_range("bytes=²-3", 10) is None
    assert parse_range("bytes=-", 10) is None


def test_raw_paths_reach_the_route(live):
    """The control for the path tricks above: the same raw request for a real file works."""
    status, headers, body = live.call(raw_get(live.app, f"/models/{FILE}"))
    assert status == 200 and hashlib.sha256(body).hexdigest() == ENTRY["sha256"]
