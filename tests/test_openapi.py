"""The published API description and the settings."""
from __future__ import annotations

import json
import tomllib

import pytest

from service import __version__
from service.config import Settings
from service.openapi import document

from .conftest import REPO


def test_openapi_json_is_fresh():
    committed = (REPO / "openapi.json").read_text()
    assert committed == document(), "openapi.json is stale: run `python -m service.openapi > openapi.json`"


def test_openapi_describes_the_contract():
    doc = json.loads(document())
    assert {"/detect", "/breeds", "/models", "/models/{file}", "/livez", "/readyz", "/metrics"} <= set(doc["paths"])
    detect = doc["paths"]["/detect"]["post"]
    assert {"multipart/form-data", "image/jpeg", "image/heic", "image/avif"} <= set(detect["requestBody"]["content"])
    assert "application/problem+json" in detect["responses"]["503"]["content"]
    face = doc["components"]["schemas"]["Face"]["properties"]
    assert {"box", "score", "landmarks", "breeds"} <= set(face)


def test_version_matches_pyproject():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert __version__ == project["version"]


def test_settings_from_environment():
    s = Settings.from_env({"CATFACE_MAX_BATCH_SIZE": "4", "CATFACE_MAX_WAIT_MS": "7.5", "CATFACE_MODELS_DIR": "/m",
                           "CATFACE_LOG_LEVEL": "debug", "OTHER": "x"})
    assert (s.max_batch_size, s.max_wait_ms, str(s.models_dir), s.log_level) == (4, 7.5, "/m", "debug")
    assert Settings.from_env({}) == Settings()


@pytest.mark.parametrize("env", [{"CATFACE_MAX_BATCH_SIZE": "many"}, {"CATFACE_QUEUE_SIZE": "0"},
                                 {"CATFACE_MAX_WAIT_MS": "-1"}])
def test_bad_settings_are_refused_by_name(env):
    with pytest.raises(ValueError, match=next(iter(env))):
        Settings.from_env(env)
