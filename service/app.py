"""The HTTP face of catface: routes, start-up and shutdown, admission, and errors.

Start-up (lifespan) loads and sha256-checks the models once, warms them up at the largest
batch, starts one batcher per model, and only then reports ready. A model file that is missing
or altered stops the start-up: the service never serves with a wrong model.

Every refusal is an RFC 9457 problem+json with a stable `type`. Overload is refused fast with
503 + Retry-After: too many requests in flight (`overloaded`), a model queue full
(`queue-full`), a deadline passed (`deadline-exceeded`). A client that disconnects while its
photo waits is dropped before its photo reaches a model.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from functools import partial
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, FastAPI, Query, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse, Response
from starlette.routing import Match

from . import __version__, annotate, artifacts, imaging, page, uploads
from .analysis import Analyzer
from .artifacts import Artifacts
from .batching import Batcher, Refused
from .config import Settings
from .imaging import Photo
from .metrics import Metrics
from .middleware import RequestContext
from .pipeline import CatFace
from .pipeline import load as load_pipeline
from .problems import PROBLEM_CONTENT, Problem, from_problem, problem_response
from .room import Room
from .runtime import ModelFileError
from .schemas import LANDMARK_NAMES, BreedsResponse, DetectResponse, Health, ProblemDetails, breeds_response, face_out
from .state import ServiceState, service_state
from .stickers import Sticker

log = logging.getLogger("catface")
T = TypeVar("T")

ANALYSIS_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"description": "malformed multipart body", "content": PROBLEM_CONTENT},
    408: {"description": "the upload was too slow (whole body within CATFACE_UPLOAD_TIMEOUT_S, and at least "
                         "CATFACE_MIN_UPLOAD_RATE bytes/s after the first seconds)", "content": PROBLEM_CONTENT},
    413: {"description": "body or image too large: bytes, pixels, decoding memory or (JPEG) scans x pixels",
          "content": PROBLEM_CONTENT},
    415: {"description": f"not {imaging.NAMES}, or a wrong content type", "content": PROBLEM_CONTENT},
    422: {"description": "empty, corrupt, tiny or absurdly elongated image, or no `image` field",
          "content": PROBLEM_CONTENT},
    503: {"description": "overloaded, queue full, deadline passed, or not ready; see Retry-After",
          "content": PROBLEM_CONTENT},
}


# ---- start-up and shutdown -------------------------------------------------------------------
def _load(settings: Settings) -> tuple[CatFace, Artifacts]:
    pipeline = load_pipeline(settings.models_dir, settings.threads or None, settings.cpu_arena)
    names = tuple(pipeline.landmarker.entry.get("landmark_names", ()))
    if names != LANDMARK_NAMES:
        raise ModelFileError(f"the landmark model names {names}, the API promises {LANDMARK_NAMES}")
    for model in pipeline.models.values():  # the first run at a new batch size allocates: do it now
        model.warm_up(settings.max_batch_size)
    return pipeline, Artifacts.load(settings.models_dir)


@asynccontextmanager
async def lifespan(app: FastAPI):
    state: ServiceState = app.state.service
    settings, metrics = state.settings, state.metrics
    imaging.configure(settings.max_pixels)
    try:
        pipeline, artifacts = await asyncio.to_thread(_load, settings)
    except ModelFileError as exc:  # one plain line, above the traceback uvicorn logs next
        log.error("cannot start: %s", exc)
        raise
    batchers = {name: Batcher(name, model.run, max_batch_size=model.rows_per_call(settings.max_batch_size),
                              max_wait_s=settings.max_wait_ms / 1000, queue_size=settings.queue_size,
                              observer=metrics.for_model(name))
                for name, model in pipeline.models.items()}
    for batcher in batchers.values():
        batcher.start()
    state.artifacts = artifacts
    for entry in artifacts.entries:
        metrics.model_info.labels(entry["name"] + "." + entry["format"], entry["version"], entry["sha256"]).set(1)
    state.pixels = pixels = ThreadPoolExecutor(settings.image_threads, thread_name_prefix="pixels")
    state.analyzer = Analyzer(pipeline, batchers, pixels)
    state.ready = True
    log.info("ready", extra={"models": sorted(pipeline.models), "max_batch_size": settings.max_batch_size,
                             "max_wait_ms": settings.max_wait_ms, "queue_size": settings.queue_size,
                             # which int8 kernels this CPU got (runtime.EXACT_INT8): both answer alike
                             "int8_kernels": {name: "exact u8 x u8" if model.exact_int8 else "default (VNNI)"
                                              for name, model in pipeline.models.items()
                                              if model.entry.get("weights") == "int8"}})
    try:
        yield
    finally:
        # The server has stopped taking requests and waited for running ones; whatever is
        # still queued finishes before the models go away.
        state.ready, state.draining = False, True
        await asyncio.gather(*(batcher.close() for batcher in batchers.values()))
        pixels.shutdown(wait=True)
        log.info("stopped")


# ---- the analysis routes ---------------------------------------------------------------------
router = APIRouter()


async def _analyze(request: Request, work: Callable[[Analyzer, Photo, float], Awaitable[T]],
                   keep_original: bool = False) -> tuple[Photo, T]:
    """Upload, admission, decoding and the analysis itself. The body is read first (bounded by
    uploads: bytes, time, rate, shared budget), so only requests with a whole photo take one of
    the max_inflight slots; the deadline of decode + analysis starts once the body is in.
    `keep_original` keeps the upright photo (Photo.original) for drawing on."""
    state = service_state(request)
    settings, metrics = state.settings, state.metrics
    loop = asyncio.get_running_loop()
    retry = {"Retry-After": str(settings.retry_after_s)}
    upload = uploads.Upload(request, state.upload_limits, state.upload_budget, settings.retry_after_s)
    try:
        analyzer = state.analyzer
        if analyzer is None or not state.ready:  # (still served while draining: the balancer may lag)
            raise Problem(503, "not-ready", "the models are not loaded yet", headers=retry)
        data = await uploads.read_image(upload)
        if not await _slot_frees(state.slots, settings.admission_wait_ms / 1000):
            raise Problem(503, "overloaded", f"{settings.max_inflight} requests are already in flight", headers=retry)
        metrics.inflight.inc()
        try:
            deadline = loop.time() + settings.request_timeout_s
            read_header = partial(imaging.read_header, data, **settings.decode_limits(keep_original))
            try:
                async with asyncio.timeout_at(deadline):
                    header = await loop.run_in_executor(state.pixels, read_header)
                    photo = await state.decode_budget.decode(header, state.pixels)
            except TimeoutError:  # the decode thread finishes on its own: its work is bounded by imaging
                raise Problem(503, "deadline-exceeded", "the photo was not decoded before the deadline",
                              headers=retry) from None
            del data, read_header, header  # (the header holds the full-size decoded image)
            upload.release()
            return photo, await _unless_gone(request, work(analyzer, photo, deadline), deadline, retry)
        finally:
            state.slots.leave(1)
            metrics.inflight.dec()
    except Refused as exc:
        metrics.rejections.labels(exc.slug).inc()
        raise Problem(503, exc.slug, str(exc), headers=retry) from None
    except Problem as exc:
        metrics.rejections.labels(exc.slug).inc()
        raise
    finally:
        upload.release()


async def _slot_frees(slots: Room, wait_s: float) -> bool:
    """Whether an in-flight slot is free now or within `wait_s` (taken if so): a burst of cheap
    requests (16 invalid uploads, refused in a few ms each) must not turn an honest one away with
    a 503."""
    try:
        async with asyncio.timeout(wait_s):
            await slots.enter(1)
    except TimeoutError:
        return False
    return True


async def _unless_gone(request: Request, work: Awaitable[T], deadline: float, retry: dict) -> T:
    """Run `work` until it ends, the client disconnects, or the deadline passes; in the last two
    cases it is cancelled, which takes its items out of the model queues."""
    task = asyncio.ensure_future(work)
    gone = asyncio.ensure_future(_disconnect(request))
    try:
        async with asyncio.timeout_at(deadline):
            await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
    except TimeoutError:
        raise Problem(503, "deadline-exceeded", "the request took longer than its deadline", headers=retry) from None
    finally:
        gone.cancel()
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    if task.cancelled():
        raise Problem(499, "client-closed-request", "the client disconnected before the answer",
                      title="Client Closed Request")
    return task.result()


async def _disconnect(request: Request) -> None:
    """Returns when the client goes away (the body is already read, so receive only reports that)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


@router.post("/detect", response_model=DetectResponse, responses=ANALYSIS_ERRORS, openapi_extra=uploads.OPENAPI_BODY,
             summary="Every cat face with its box, 9 landmarks and breeds", tags=["analysis"])
async def detect(request: Request) -> DetectResponse:
    photo, faces = await _analyze(request, lambda a, p, d: a.detect(p, d))
    # (start-up checked that the landmark model's names are these)
    return DetectResponse(width=photo.width, height=photo.height, faces=[face_out(f, LANDMARK_NAMES) for f in faces])


@router.post("/breeds", response_model=BreedsResponse, responses=ANALYSIS_ERRORS, openapi_extra=uploads.OPENAPI_BODY,
             summary="Whether the photo shows a cat, and its likely breeds", tags=["analysis"])
async def breeds(request: Request) -> BreedsResponse:
    _, result = await _analyze(request, lambda a, p, d: a.breeds(p, d))
    return breeds_response(result)


_IMAGE = {"schema": {"type": "string", "format": "binary"}}
ANNOTATE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "the upright photo (reduced to at most CATFACE_ANNOTATE_MAX_SIDE pixels, 2048 by "
                         "default, on its longer side) with the faces drawn (box, landmarks 0-8 in the "
                         "order of `Landmarks`, top breed) and the stickers; a photo without a cat face comes "
                         "back with only a note drawn on it",
          "content": {media_type: _IMAGE for media_type in annotate.MEDIA_TYPES},
          "headers": {
              "X-Catface-Faces": {"description": "how many cat faces were found", "schema": {"type": "integer"}},
              "X-Catface-Stickers": {
                  "description": "where each sticker was put, one item per face (RFC 8941 list): "
                                 "`glasses;x=..;y=..;angle=..;width=..` with the sticker's centre (pixels), its "
                                 "angle (degrees, clockwise on screen, 0 = eyes level) and width (pixels)",
                  "schema": {"type": "string"}}}},
    406: {"description": "the Accept header allows neither image/jpeg nor image/png", "content": PROBLEM_CONTENT},
    **ANALYSIS_ERRORS,
}


@router.post("/annotate", response_class=Response, responses=ANNOTATE_RESPONSES, openapi_extra=uploads.OPENAPI_BODY,
             summary="The photo with its cat faces drawn, and a sticker if asked", tags=["analysis"])
async def annotate_photo(
    request: Request,
    sticker: Annotated[Sticker | None,
                       Query(description="put this sticker on every face, placed by its landmarks")] = None,
) -> Response:
    media_type = annotate.negotiate(request.headers.get("accept"))
    if media_type is None:  # refused before the upload is read
        raise Problem(406, "not-acceptable", "/annotate answers image/jpeg or image/png; the Accept header "
                                             "allows neither")
    # The same intake and analysis as /detect; only the drawing is extra.
    photo, faces = await _analyze(request, lambda a, p, d: a.detect(p, d), keep_original=True)
    drawing = partial(annotate.render_photo, photo, faces, sticker, media_type)
    body, placements = await asyncio.get_running_loop().run_in_executor(service_state(request).pixels, drawing)
    headers = {"X-Catface-Faces": str(len(faces)), "Vary": "Accept"}
    if placements:
        headers["X-Catface-Stickers"] = ", ".join(p.header() for p in placements)
    return Response(body, media_type=media_type, headers=headers)


# ---- health and metrics ----------------------------------------------------------------------
@router.get("/livez", response_model=Health, tags=["operations"], summary="The process is alive")
async def livez() -> Health:
    return Health(status="alive")


@router.get("/readyz", response_model=Health, tags=["operations"],
            summary="Models loaded and warmed up, and not draining",
            responses={503: {"description": "starting or draining", "content": PROBLEM_CONTENT}})
async def readyz(request: Request) -> Health:
    state = service_state(request)
    if state.draining:
        raise Problem(503, "draining", "the service is shutting down", headers={"Retry-After": "1"})
    if not state.ready:
        raise Problem(503, "not-ready", "the models are not loaded yet", headers={"Retry-After": "1"})
    return Health(status="ready")


@router.get("/metrics", tags=["operations"], summary="Prometheus metrics", response_class=Response,
            responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}})
async def metrics(request: Request) -> Response:
    m = service_state(request).metrics
    return Response(m.render(), media_type=m.content_type)


# ---- errors ----------------------------------------------------------------------------------
def _request_id(request: Request) -> str | None:
    return request.scope.get("state", {}).get("request_id")


async def _on_problem(request: Request, exc: Problem) -> JSONResponse:
    return from_problem(exc, instance=request.url.path, request_id=_request_id(request))


async def _on_http_error(request: Request, exc: StarletteHTTPException) -> Response:
    if exc.status_code == 304 or exc.status_code < 400:
        return Response(status_code=exc.status_code, headers=exc.headers)
    headers = exc.headers
    if exc.status_code == 405:
        # Starlette names only the methods of the first route on the path; GET and HEAD of
        # /models/{file} are two routes, so `Allow` missed GET. List every route's methods.
        routes = request.app.router.routes
        allowed = [m for m in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")
                   if any(r.matches({**request.scope, "method": m})[0] == Match.FULL for r in routes)]
        headers = {**(headers or {}), "Allow": ", ".join(allowed)} if allowed else headers
    return problem_response(exc.status_code, exc.detail, instance=request.url.path, headers=headers,
                            request_id=_request_id(request))


async def _on_validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    # Drop the echoed input: it may be large, and it is the client's own data anyway.
    errors = [{k: v for k, v in e.items() if k not in ("input", "ctx", "url")} for e in exc.errors()]
    return problem_response(422, "the request does not match the API", slug="invalid-request",
                            instance=request.url.path, request_id=_request_id(request),
                            errors=jsonable_encoder(errors))


# ---- the app ---------------------------------------------------------------------------------
def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings.from_env()
    app = FastAPI(
        title="catface", version=__version__, lifespan=lifespan, redoc_url=None, docs_url=None,
        summary="Finds cat faces in photos: box, 9 landmarks and breeds; serves the models for on-device use.",
    )
    state = ServiceState(
        settings=settings, metrics=Metrics(),
        upload_limits=uploads.UploadLimits(settings.max_body_bytes, settings.upload_timeout_s,
                                           settings.min_upload_rate, settings.upload_grace_s),
        upload_budget=uploads.UploadBudget(settings.max_upload_buffer_bytes),
        decode_budget=imaging.DecodeBudget(settings.max_decode_bytes), slots=Room(settings.max_inflight))
    app.state.service = state  # the one attribute on Starlette's state: read it with service_state()
    app.add_middleware(RequestContext, metrics=state.metrics)
    # Starlette types a handler as taking any Exception; it calls each one with its own class only.
    app.add_exception_handler(Problem, _on_problem)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, _on_http_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, _on_validation_error)  # type: ignore[arg-type]
    app.include_router(router)
    app.include_router(artifacts.router)
    page.mount(app)

    def openapi() -> dict:
        if app.openapi_schema is None:
            doc = get_openapi(title=app.title, version=app.version, summary=app.summary, routes=app.routes)
            schemas = doc.setdefault("components", {}).setdefault("schemas", {})
            schemas["Problem"] = ProblemDetails.model_json_schema(ref_template="#/components/schemas/{model}")
            app.openapi_schema = doc
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented way to extend the schema
    return app
