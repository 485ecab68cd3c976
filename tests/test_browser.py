"""The demo page in a real browser: headless Chromium (Debian's package, driven by Playwright's
Python package; never `playwright install`) against `python -m service` on a free port.

Set CATFACE_SCREENSHOT=docs/screenshot.png to also save the page, as shown in the README.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import httpx
import pytest

from .conftest import CATS, REPO, data_file, photo, service_process

CHROMIUM = Path("/usr/bin/chromium")
# No sandbox: CI runs as root in a container. The rest keeps Chromium off the network and quiet.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]

if not CHROMIUM.exists():
    pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium chromium-driver): browser test skipped",
                allow_module_level=True)
try:
    from playwright.sync_api import sync_playwright
except ImportError:
    pytest.skip("the Python package playwright is missing (pip install -e '.[dev]'): browser test skipped",
                allow_module_level=True)

SHOWN = CATS[3]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    log_path = tmp_path_factory.mktemp("browser") / "server.log"
    with service_process(log_path, CATFACE_IMAGE_THREADS="1") as (_, url):
        yield url


def test_page_shows_the_annotated_photo_the_breeds_and_the_model_links(base, tmp_path):
    models = httpx.get(base + "/models", timeout=10).json()["models"]
    labels = next(m for m in models if m["name"] == "catbreeds" and m.get("labels"))["labels"]
    upright = photo(SHOWN)
    problems: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
            page.on("console", lambda m: problems.append(f"console: {m.text}") if m.type == "error" else None)
            page.goto(base + "/")

            # The download links are the manifest's, whichever files it holds.
            page.wait_for_selector("#onnx a")
            shown = page.eval_on_selector_all("#coreml a, #onnx a", "links => links.map(a => a.href)")
            # (the listing's URLs are paths on the service: the page resolves them against itself)
            assert sorted(shown) == sorted(base + m["url"] for m in models if m["format"] in ("coreml", "onnx"))

            page.check('input[name="sticker"][value="glasses"]')
            page.set_input_files("#file", str(data_file(SHOWN)))
            page.wait_for_selector("body[data-state=done]", timeout=60_000)
            page.wait_for_function("() => { const img = document.getElementById('result');"
                                   " return img.complete && img.naturalWidth > 0; }")
            size = page.eval_on_selector("#result", "img => [img.naturalWidth, img.naturalHeight]")
            assert tuple(size) == upright.size, "the annotated photo, at the photo's size"
            assert page.is_visible("#result")

            breeds = page.locator("#breeds li").all_inner_texts()
            assert breeds and breeds[0].startswith("#1: ")
            assert any(label in breeds[0] for label in labels), breeds
            detected = json.loads(page.inner_text("#json"))
            assert (detected["width"], detected["height"]) == upright.size and detected["faces"]
            assert "error" not in (page.get_attribute("#status", "class") or "")

            screenshot = tmp_path / "page.png"
            page.screenshot(path=str(screenshot), full_page=True)
            if os.environ.get("CATFACE_SCREENSHOT"):
                shutil.copyfile(screenshot, REPO / os.environ["CATFACE_SCREENSHOT"])
        finally:
            browser.close()
    assert not problems, problems
