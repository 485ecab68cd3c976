"""The HTML the service serves: the demo page (GET / and its files under /static: plain HTML, JS
and CSS in service/static/, no build step) and the API docs (GET /docs: Swagger UI from the
`swagger-ui-bundle-v2` package, served by this app, so it works offline and loads nothing from a
CDN). Every one of these answers carries the security headers; the demo page talks to the
public API only (/annotate, /detect, /models).
"""
from __future__ import annotations

import base64
import hashlib
import os
import re
from pathlib import Path

from fastapi import APIRouter, FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from starlette.responses import HTMLResponse, Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope
from swagger_ui_bundle import swagger_ui_path

from .imaging import EXTENSIONS, MEDIA_TYPES

STATIC = Path(__file__).resolve().parent / "static"
# Scripts and styles only from files of this app (no inline code); images also from blob: URLs.
CSP = ("default-src 'self'; img-src 'self' blob: data:; object-src 'none'; base-uri 'none'; "
       "form-action 'none'; frame-ancestors 'none'")
HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY"}
DOCS_ASSETS = "/docs/assets"

# The file picker offers the accepted formats (imaging.FORMATS); extensions too, as some systems
# know no media type for .heic.
ACCEPT = ",".join(MEDIA_TYPES + EXTENSIONS)
PAGE = (STATIC / "index.html").read_text(encoding="utf-8").replace("CATFACE_ACCEPT", ACCEPT)

router = APIRouter(include_in_schema=False)


class SecuredStaticFiles(StaticFiles):
    """StaticFiles whose every answer carries HEADERS."""

    def file_response(self, full_path: str | os.PathLike[str], stat_result: os.stat_result, scope: Scope,
                      status_code: int = 200) -> Response:
        response = super().file_response(full_path, stat_result, scope, status_code)
        response.headers.update(HEADERS)
        return response


@router.get("/")
@router.get("/static/index.html")  # the page's own file path gives the same page, not the template
async def index() -> HTMLResponse:
    return HTMLResponse(PAGE, headers=HEADERS)


def _inline_script_hashes(html: str) -> str:
    """CSP sources for the page's inline scripts: Swagger UI starts from one inline <script>."""
    scripts = re.findall(r"<script>(.*?)</script>", html, flags=re.S)
    digests = (base64.b64encode(hashlib.sha256(s.encode()).digest()).decode() for s in scripts)
    return " ".join(f"'sha256-{d}'" for d in digests)


@router.get("/docs")
async def docs(request: Request) -> HTMLResponse:
    page = get_swagger_ui_html(openapi_url=request.app.openapi_url, title=f"{request.app.title} API",
                               swagger_js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js",
                               swagger_css_url=f"{DOCS_ASSETS}/swagger-ui.css",
                               swagger_favicon_url=f"{DOCS_ASSETS}/favicon-32x32.png")
    html = bytes(page.body).decode()
    csp = CSP.replace("default-src 'self';", f"default-src 'self'; script-src 'self' {_inline_script_hashes(html)}; "
                                                 "style-src 'self' 'unsafe-inline';")
    return HTMLResponse(html, headers={**HEADERS, "Content-Security-Policy": csp})


def mount(app: FastAPI) -> None:
    """Add the demo page and the docs; the app must be created with docs_url=None."""
    app.include_router(router)
    app.mount("/static", SecuredStaticFiles(directory=STATIC), name="static")
    app.mount(DOCS_ASSETS, SecuredStaticFiles(directory=str(swagger_ui_path)), name="docs-assets")
