"""One JSON object per log line, carrying the request id of the request being served."""
from __future__ import annotations

import contextvars
import json
import logging
import time

request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)

# Record attributes that are not extra fields (uvicorn's color_message repeats msg with ANSI codes).
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "color_message", "taskName"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        rid = getattr(record, "request_id", None) or request_id.get()
        if rid:
            line["request_id"] = rid
        # Fields passed with `extra=` become top-level keys.
        line.update({k: v for k, v in vars(record).items() if k not in _STANDARD and k not in line})
        if record.exc_info:
            line["error"] = self.formatException(record.exc_info)  # escaped by json: still one line
        return json.dumps(line, default=str)


class RateLimit(logging.Filter):
    """At most `burst` records per `period_s` seconds; then one line saying how many were dropped.
    For library warnings: one odd photo (a malformed EXIF block) made Pillow warn 2,000 times."""

    def __init__(self, burst: int = 20, period_s: float = 60.0):
        super().__init__()
        self.burst, self.period_s = burst, period_s
        self.window_start, self.count, self.dropped = 0.0, 0, 0

    def filter(self, record: logging.LogRecord) -> bool:
        now = time.monotonic()
        if now - self.window_start >= self.period_s:
            if self.dropped:
                record.dropped_before = self.dropped  # said on the first line of the next window
            self.window_start, self.count, self.dropped = now, 0, 0
        self.count += 1
        if self.count > self.burst:
            self.dropped += 1
            return False
        return True


def config(level: str = "info") -> dict:
    """A logging dictConfig for our loggers and uvicorn's (its access log is replaced by ours)."""
    handler = {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": JsonFormatter}},
        "filters": {"rate_limit": {"()": RateLimit}},
        "handlers": {"default": handler, "warnings": {**handler, "filters": ["rate_limit"]}},
        "root": {"handlers": ["default"], "level": level.upper()},
        "loggers": {
            "py.warnings": {"handlers": ["warnings"], "propagate": False},
            "uvicorn": {"handlers": [], "propagate": True},
            "uvicorn.error": {"handlers": [], "propagate": True},
            "uvicorn.access": {"handlers": [], "propagate": False, "level": "WARNING"},
        },
    }
