"""`python -m service.openapi > openapi.json`: the API description, generated from the app.

Uses the default settings (not the environment), so the document is the same on every machine;
tests/test_openapi.py fails when the committed openapi.json is stale.
"""
from __future__ import annotations

import json
import sys

from .app import create_app
from .config import Settings


def document() -> str:
    return json.dumps(create_app(Settings()).openapi(), indent=2) + "\n"


if __name__ == "__main__":
    sys.stdout.write(document())
