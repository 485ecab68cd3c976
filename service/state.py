"""What the app holds between requests: one typed object, made by create_app and filled in by the
lifespan, instead of loose attributes on Starlette's `app.state`."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

from starlette.requests import Request

from .analysis import Analyzer
from .config import Settings
from .imaging import DecodeBudget
from .metrics import Metrics
from .room import Room
from .uploads import UploadBudget, UploadLimits

if TYPE_CHECKING:  # artifacts.py reads the state, so it is imported only for the annotation
    from .artifacts import Artifacts


@dataclass
class ServiceState:
    settings: Settings
    metrics: Metrics
    upload_limits: UploadLimits
    upload_budget: UploadBudget
    decode_budget: DecodeBudget
    slots: Room  # the max_inflight analysis requests being served (decode + models)
    ready: bool = False  # models loaded and warmed up
    draining: bool = False  # SIGTERM received: /readyz says 503 while requests are still served
    analyzer: Analyzer | None = None  # from start-up on
    artifacts: Artifacts | None = None  # from start-up on
    pixels: ThreadPoolExecutor | None = None  # decoding and drawing threads, from start-up on


def service_state(request: Request) -> ServiceState:
    state: ServiceState = request.app.state.service
    return state
