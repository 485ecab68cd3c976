"""RFC 9457 problem details: the one shape every error of the service takes.

`Problem` is raised by any layer that knows an HTTP status for its refusal (image intake,
admission, artifacts); `problem_response` renders it. The app maps everything else (routing
404/405, validation, batching refusals, unexpected exceptions) onto the same shape.
"""
from __future__ import annotations

from collections.abc import Mapping
from http import HTTPStatus

from starlette.responses import JSONResponse

MEDIA_TYPE = "application/problem+json"
TYPE_PREFIX = "urn:catface:problem:"  # stable identifiers that clients can switch on
# OpenAPI content of an error response (the Problem schema is added to the components by the app).
PROBLEM_CONTENT = {MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}}


class Problem(Exception):
    def __init__(self, status: int, slug: str, detail: str, *, title: str | None = None,
                 headers: dict[str, str] | None = None, **extensions):
        super().__init__(detail)
        self.status = status
        self.slug = slug
        self.detail = detail
        self.title = title or HTTPStatus(status).phrase
        self.headers = headers or {}
        self.extensions = extensions


def problem_response(status: int, detail: str | None = None, *, slug: str | None = None,
                     title: str | None = None, instance: str | None = None,
                     headers: Mapping[str, str] | None = None, **extensions) -> JSONResponse:
    body = {
        # about:blank means "nothing more than the HTTP status", as RFC 9457 section 4.2.1 says.
        "type": TYPE_PREFIX + slug if slug else "about:blank",
        "title": title or HTTPStatus(status).phrase,
        "status": status,
    }
    if detail:
        body["detail"] = detail
    if instance:
        body["instance"] = instance
    body.update({k: v for k, v in extensions.items() if v is not None})
    return JSONResponse(body, status_code=status, headers=headers, media_type=MEDIA_TYPE)


def from_problem(exc: Problem, instance: str | None = None, request_id: str | None = None) -> JSONResponse:
    return problem_response(exc.status, exc.detail, slug=exc.slug, title=exc.title, instance=instance,
                            headers=exc.headers, request_id=request_id, **exc.extensions)
