"""The demo page: GET / and its files under /static (plain HTML, JS and CSS in service/static/,
no build step). The page talks to the public API only (/annotate, /detect, /models)."""
from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from starlette.responses import HTMLResponse
from starlette.staticfiles import StaticFiles

from .imaging import EXTENSIONS, MEDIA_TYPES

STATIC = Path(__file__).resolve().parent / "static"
# Scripts and styles only from files of this app (no inline code); images also from blob: URLs.
HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; object-src 'none'; "
                               "base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
}

# The file picker offers the accepted formats (imaging.FORMATS); extensions too, as some systems
# know no media type for .heic.
ACCEPT = ",".join(MEDIA_TYPES + EXTENSIONS)
PAGE = (STATIC / "index.html").read_text(encoding="utf-8").replace("CATFACE_ACCEPT", ACCEPT)

router = APIRouter()


@router.get("/", include_in_schema=False)
async def index() -> HTMLResponse:
    return HTMLResponse(PAGE, headers=HEADERS)


def mount(app: FastAPI) -> None:
    app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
