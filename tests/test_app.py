"""The real app on the committed models, over in-process HTTP, with real photos. (Over 400 lines:
one test per promise of the public API, in the order of its routes.)"""
from __future__ import annotations

import asyncio
import io
import json
import logging
import threading

import numpy as np
import pytest
from PIL import Image

from service.logs import JsonFormatter
from service.schemas import LANDMARK_NAMES
from training.data import KITTENS_PHOTO
from training.evaluate import kittens_frame

from .conftest import (
    CATS,
    DATA,
    EARED_DOG,
    PROFILE_CAT,
    STORED_FROM_UPRIGHT,
    LiveApp,
    assert_problem,
    data_file,
    encode,
    ground_truth,
    heic_claiming,
    iphone_style,
    make_settings,
    photo,
    png16_rgb,
    png_raw,
    post_photo,
)


def points(face: dict, names=("left_eye", "right_eye", "mouth")) -> np.ndarray:
    return np.array([face["landmarks"][n] for n in names], float)


# ---- what users get --------------------------------------------------------------------------
@pytest.mark.parametrize("name", CATS)
def test_cat_photo_gives_a_face_with_sensible_landmarks_and_breeds(live, name):
    image = photo(name)
    response = post_photo(live, data_file(name).read_bytes())
    assert response.status_code == 200
    body = response.json()
    assert (body["width"], body["height"]) == image.size
    faces = body["faces"]
    assert len(faces) >= 1
    assert [f["score"] for f in faces] == sorted((f["score"] for f in faces), reverse=True)
    face = faces[0]
    assert set(face["landmarks"]) == set(LANDMARK_NAMES)
    left, right, mouth = points(face)
    assert left[0] < right[0], "left eye is left of the right eye"
    assert max(left[1], right[1]) < mouth[1], "eyes are above the mouth"
    truth = ground_truth(name)[:3]
    x0, y0, x1, y1 = face["box"]
    mx, my = 0.1 * (x1 - x0), 0.1 * (y1 - y0)  # the box is the tight box of the landmarks: allow a margin
    inside = (truth[:, 0] > x0 - mx) & (truth[:, 0] < x1 + mx) & (truth[:, 1] > y0 - my) & (truth[:, 1] < y1 + my)
    assert inside.all(), "the box holds the labelled eyes and mouth"
    eye_distance = np.linalg.norm(truth[0] - truth[1])
    assert np.linalg.norm(points(face) - truth, axis=1).mean() < 0.35 * eye_distance
    scores = [b["score"] for b in face["breeds"]]
    assert scores and scores == sorted(scores, reverse=True) and min(scores) >= 0.05
    labels = set(live.state.analyzer.pipeline.breed_labels)
    assert {b["breed"] for b in face["breeds"]} <= labels


def test_raw_image_body_gives_the_same_answer_as_multipart(live, cat_bytes):
    multipart = post_photo(live, cat_bytes[0]).json()
    raw = live.post("/detect", content=cat_bytes[0], headers={"content-type": "image/jpeg"}).json()
    assert raw == multipart


def test_dog_photos_give_no_face_and_no_breeds(live, dog_bytes):
    for data in dog_bytes:
        assert post_photo(live, data).json()["faces"] == []
        answer = post_photo(live, data, url="/breeds").json()
        assert (answer["cat"], answer["faces"], answer["breeds"]) == (False, 0, [])
        assert answer["cat_score"] < 0.5 and answer["based_on"] == "photo"


def test_a_dog_face_the_detector_takes_for_a_cat_gets_no_face(live):
    """An upright-eared dog (a validation photo): the detector alone boxes its face, the breed
    classifier calls the crop not-a-cat, so /detect answers no face, as /breeds answers no cat."""
    dog = photo(EARED_DOG)
    assert live.state.analyzer.pipeline.detect([dog], breeds=False)[0], "the detector alone finds a face"
    assert post_photo(live, encode(dog)).json()["faces"] == []
    assert post_photo(live, encode(dog), url="/breeds").json()["cat"] is False


def test_breeds_of_a_cat_photo(live, cat_bytes):
    body = post_photo(live, cat_bytes[1], url="/breeds").json()
    assert body["cat"] is True and body["faces"] == 1 and body["based_on"] == "face_and_photo"
    scores = [b["score"] for b in body["breeds"]]
    assert scores and scores == sorted(scores, reverse=True) and min(scores) >= 0.05


def test_breeds_of_a_cat_whose_face_is_not_seen(live):
    """A cat in profile (its face not found) is still a cat of some breed: /breeds
    answers from the whole photo when the detector finds no face."""
    cat = photo(PROFILE_CAT)
    assert post_photo(live, encode(cat)).json()["faces"] == []  # no face to find
    body = post_photo(live, encode(cat), url="/breeds").json()
    assert body["cat"] is True and body["faces"] == 0 and body["based_on"] == "photo" and body["breeds"]


def test_small_faces_found_by_the_closer_look_are_answered_as_in_process(live):
    """The kittens with ~48 px faces in an 800x450 photo: the server's closer look over tiles
    (through its batchers) answers the faces the in-process pipeline finds."""
    data_file(KITTENS_PHOTO)
    frame, _ = kittens_frame(DATA, 0.5)
    served = post_photo(live, encode(frame, "PNG")).json()["faces"]
    in_process = live.state.analyzer.pipeline.detect([frame])[0]
    assert len(served) == len(in_process) == 3
    for got, want in zip(served, in_process):
        assert np.abs(np.subtract(got["box"], want.box)).max() < 1.0
        assert got["breeds"][0]["breed"] == want.breeds[0][0]


def close(a: list[dict], b: list[dict], tolerance: float) -> bool:
    if len(a) != len(b):
        return False
    for fa, fb in zip(a, b):
        if np.abs(np.subtract(fa["box"], fb["box"])).max() > tolerance:
            return False
        if np.abs(points(fa) - points(fb)).max() > tolerance:
            return False
    return True


@pytest.mark.parametrize("orientation", [3, 6, 8, 5])
def test_exif_rotated_photo_gives_the_faces_of_its_upright_twin(live, orientation):
    upright = photo(CATS[2])
    exif = Image.Exif()
    exif[0x0112] = orientation
    stored = upright.transpose(STORED_FROM_UPRIGHT[orientation])
    twin = post_photo(live, encode(upright, "JPEG", quality=95)).json()
    rotated = post_photo(live, encode(stored, "JPEG", quality=95, exif=exif.tobytes())).json()
    assert (rotated["width"], rotated["height"]) == (twin["width"], twin["height"]) == upright.size
    assert twin["faces"], "the upright photo has a face"
    assert close(rotated["faces"], twin["faces"], tolerance=0.02 * max(upright.size))


@pytest.fixture(scope="module")
def phone_photo() -> Image.Image:
    """A shared cat photo at a phone camera's size (1792 x 1000)."""
    small = photo(CATS[0])
    return small.resize((small.width * 4, small.height * 4), Image.BICUBIC)


@pytest.mark.parametrize("fmt, media_type, params", [
    ("HEIF", "image/heic", dict(quality=90, grid_tile_size=512)),  # 512-pixel tiles, as an iPhone writes
    ("AVIF", "image/avif", dict(quality=90)),
], ids=["heic", "avif"])
def test_heic_and_avif_rotated_by_metadata_give_the_faces_of_the_jpeg(live, phone_photo, fmt, media_type, params):
    jpeg = post_photo(live, encode(phone_photo, "JPEG", quality=95)).json()
    data = iphone_style(phone_photo, fmt, 6, **params)  # stored on its side, turned upright by `irot`
    got = post_photo(live, data).json()
    assert (got["width"], got["height"]) == (jpeg["width"], jpeg["height"]) == phone_photo.size
    assert jpeg["faces"], "the JPEG has a face"
    assert close(got["faces"], jpeg["faces"], tolerance=6)  # pixels, on a 1792-pixel photo
    raw = live.post("/detect", content=data, headers={"content-type": media_type}).json()
    assert close(raw["faces"], got["faces"], tolerance=0.01)
    assert live.post("/breeds", content=data, headers={"content-type": media_type}).json()["cat"] is True
    drawn = live.post("/annotate", content=data, headers={"content-type": media_type})
    assert drawn.status_code == 200 and drawn.headers["x-catface-faces"] == str(len(jpeg["faces"]))
    assert Image.open(io.BytesIO(drawn.content)).size == phone_photo.size  # drawn on the upright photo


def test_large_photo_is_decoded_small_and_answered_in_original_pixels(live):
    small = photo(CATS[0])
    k = 6
    big = small.resize((small.width * k, small.height * k), Image.BICUBIC)
    expected = post_photo(live, encode(small, "JPEG", quality=95)).json()
    got = post_photo(live, encode(big, "JPEG", quality=90)).json()
    assert (got["width"], got["height"]) == big.size
    scaled = [{**f, "box": [v * k for v in f["box"]],
               "landmarks": {n: [x * k, y * k] for n, (x, y) in f["landmarks"].items()}} for f in expected["faces"]]
    assert close(got["faces"], scaled, tolerance=0.03 * max(big.size))


@pytest.mark.parametrize("make", [
    lambda im: encode(im.convert("CMYK"), "JPEG", quality=95),
    lambda im: png16_rgb(im),
    lambda im: encode(im.convert("RGBA"), "PNG"),
    lambda im: encode(im, "WEBP", quality=95),
], ids=["cmyk-jpeg", "16bit-png", "rgba-png", "webp"])
def test_other_encodings_of_a_cat_find_the_cat(live, make):
    body = post_photo(live, make(photo(CATS[0]))).json()
    assert len(body["faces"]) >= 1


@pytest.mark.parametrize("mode", ["L", "P", "I;16"])
def test_grey_palette_and_16bit_grey_are_answered(live, mode):
    image = photo(CATS[0])
    if mode == "I;16":
        image = Image.fromarray(np.asarray(image.convert("L"), np.uint16) * 257)
    else:
        image = image.convert(mode)
    response = post_photo(live, encode(image, "PNG"))
    assert response.status_code == 200 and response.json()["width"] == image.width


# ---- bad input -------------------------------------------------------------------------------
def _animated_gif() -> bytes:
    frames = [Image.new("RGB", (64, 64), c) for c in ("red", "blue")]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50)


BAD_UPLOADS = {
    "empty-raw": (dict(content=b"", headers={"content-type": "image/jpeg"}), 422, "empty-image"),
    "empty-file": (dict(files={"image": ("a.jpg", b"", "image/jpeg")}), 422, "empty-image"),
    "truncated": ("truncated", 422, "corrupt-image"),
    "text-file": (dict(files={"image": ("a.jpg", b"I am not a photo. " * 50, "image/jpeg")}), 415,
                  "unsupported-image-type"),
    "text-body": (dict(content=b"hello", headers={"content-type": "text/plain"}), 415, "unsupported-media-type"),
    "json-body": (dict(json={"image": "cat.jpg"}), 415, "unsupported-media-type"),
    "one-pixel": (dict(files={"image": ("a.png", encode(Image.new("RGB", (1, 1)), "PNG"), "image/png")}), 422,
                  "image-too-small"),
    "bomb": (dict(files={"image": ("a.png", png_raw(200_000, 200_000, 1, 0, None), "image/png")}), 413,
             "image-too-large"),
    "heic-bomb": (dict(files={"image": ("a.heic", heic_claiming(20_000, 20_000), "image/heic")}), 413,
                  "image-too-large"),
    "animated-gif": (dict(files={"image": ("a.gif", _animated_gif(), "image/gif")}), 415, "unsupported-image-type"),
    "wrong-field": ("wrong-field", 422, "missing-image-field"),
    "text-field": (dict(data={"image": "cat.jpg"}, files={"other": ("x", b"x")}), 422, "image-field-not-a-file"),
    "bad-multipart": (dict(content=b"--x\r\nnonsense", headers={"content-type": "multipart/form-data"}), 400,
                      "bad-multipart"),
    "cut-short-multipart": ("cut-short", 400, "bad-multipart"),
}


@pytest.mark.parametrize("case", sorted(BAD_UPLOADS))
def test_bad_uploads_get_their_4xx_and_the_service_stays_up(live, cat_bytes, case):
    request, status, slug = BAD_UPLOADS[case]
    if request == "truncated":
        request = dict(files={"image": ("a.jpg", cat_bytes[0][: len(cat_bytes[0]) // 2], "image/jpeg")})
    elif request == "wrong-field":
        request = dict(files={"photo": ("a.jpg", cat_bytes[0], "image/jpeg")})
    elif request == "cut-short":  # the whole photo's part, but the body stops before the closing boundary
        request = dict(content=b'--b\r\nContent-Disposition: form-data; name="image"; filename="a.jpg"\r\n\r\n'
                       + cat_bytes[0] + b"\r\n", headers={"content-type": "multipart/form-data; boundary=b"})
    for url in ("/detect", "/breeds"):
        assert_problem(live.post(url, **request), status, slug)
    assert live.get("/livez").status_code == 200
    assert post_photo(live, cat_bytes[0]).json()["faces"]


def test_oversize_body_is_413_declared_or_streamed(cat_bytes):
    live = LiveApp(make_settings(max_body_bytes=20_000))
    try:
        big = cat_bytes[2] + b"\x00" * 20_000
        assert_problem(live.post("/detect", content=big, headers={"content-type": "image/jpeg"}), 413, "body-too-large")
        assert_problem(live.post("/detect", files={"image": ("a.jpg", big, "image/jpeg")}), 413, "body-too-large")

        async def chunks():  # no Content-Length: the limit must hold while streaming
            for i in range(0, len(big), 4096):
                yield big[i:i + 4096]
        streamed = live.post("/detect", content=chunks(), headers={"content-type": "image/jpeg"})
        assert "content-length" not in streamed.request.headers
        assert_problem(streamed, 413, "body-too-large")
        assert live.metric("catface_rejections_total", reason="body-too-large") == 3
        assert post_photo(live, cat_bytes[0]).status_code == 200
    finally:
        live.close()


# ---- the HTTP frame --------------------------------------------------------------------------
def test_request_id_is_taken_or_made_and_returned(live, cat_bytes):
    given = live.get("/livez", headers={"x-request-id": "abc-123"})
    assert given.headers["x-request-id"] == "abc-123"
    made = live.get("/livez", headers={"x-request-id": "bad id\nwith=newline"})
    assert made.headers["x-request-id"] not in ("", "bad id\nwith=newline") and len(made.headers["x-request-id"]) == 32
    problem = live.post("/detect", content=b"", headers={"content-type": "image/png", "x-request-id": "r-42"})
    assert problem.json()["request_id"] == "r-42"


def test_unknown_route_and_method_are_problems(live):
    assert_problem(live.get("/nothing-here"), 404)
    body = assert_problem(live.get("/detect"), 405)
    assert body["type"] == "about:blank"
    assert live.get("/detect").headers["allow"] == "POST"


def test_unexpected_error_is_a_500_problem_without_a_trace(caplog):
    live = LiveApp(make_settings())
    try:
        async def boom():
            raise RuntimeError("secret internals")
        live.app.add_api_route("/boom", boom)
        response = live.get("/boom")
        body = assert_problem(response, 500, "internal-error")
        assert "secret" not in response.text
        assert live.get("/livez").status_code == 200
        errors = [r for r in caplog.records if r.levelname == "ERROR" and r.name == "catface.access"]
        assert errors and errors[-1].exc_info and body["request_id"]
    finally:
        live.close()


def test_health_endpoints(live):
    assert live.get("/livez").json() == {"status": "alive"}
    assert live.get("/readyz").json() == {"status": "ready"}
    metrics = live.get("/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    assert "catface_queue_depth" in metrics.text and "catface_model_info" in metrics.text


def test_readyz_is_503_while_draining(live):
    live.state.draining = True
    try:
        response = live.get("/readyz")
        assert_problem(response, 503, "draining")
        assert response.headers["retry-after"]
    finally:
        live.state.draining = False
    assert live.get("/readyz").status_code == 200


def test_log_lines_are_json_with_the_request_id(live):
    handler = logging.StreamHandler(io.StringIO())
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("catface.access")
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    try:
        live.post("/detect", content=b"x", headers={"content-type": "text/plain", "x-request-id": "log-1"})
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    lines = handler.stream.getvalue().splitlines()
    records = [json.loads(line) for line in lines]
    mine = [r for r in records if r.get("request_id") == "log-1"]
    assert mine and mine[-1]["status"] == 415 and mine[-1]["path"] == "/detect" and mine[-1]["msg"] == "request"


# ---- batching under load ---------------------------------------------------------------------
def test_concurrent_requests_are_batched_and_each_gets_its_own_answer(cat_bytes, dog_bytes):
    live = LiveApp(make_settings(max_batch_size=8, max_wait_ms=300))
    try:
        uploads = (cat_bytes + dog_bytes) * 2
        start_rows = live.metric("catface_batch_size_sum", model="catface")
        alone = [post_photo(live, data).json() for data in uploads]  # one at a time
        before_rows = live.metric("catface_batch_size_sum", model="catface")
        before_batches = live.metric("catface_batch_size_count", model="catface")
        responses = live.post_many("/detect", [dict(files={"image": ("p", d, "image/jpeg")}) for d in uploads])
        together = [r.json() for r in responses]
        for a, b in zip(together, alone):
            assert close(a["faces"], b["faces"], tolerance=0.5)
            assert (a["width"], a["height"]) == (b["width"], b["height"])
        rows = live.metric("catface_batch_size_sum", model="catface") - before_rows
        batches = live.metric("catface_batch_size_count", model="catface") - before_batches
        # a photo's detector rows: the whole photo, plus the tiles of the closer look (the dogs')
        assert rows == before_rows - start_rows > len(uploads), "every photo ran exactly once, as alone"
        assert batches < len(uploads), "photos shared onnxruntime calls"
        single = live.metric("catface_batch_size_bucket", model="catface", le="1.0")
        total = live.metric("catface_batch_size_count", model="catface")
        assert single < total, "a batch larger than 1 is in the metrics"
    finally:
        live.close()


class Held:
    """A model whose inference thread is held, as by a long batch: `entered` is set once a batch
    is inside the model, which then waits for `release()` before running it for real."""

    def __init__(self, live, name: str):
        self.batcher = live.batchers[name]
        self.entered, self.gate = threading.Event(), threading.Event()
        run = self.batcher._run

        def held(batch):
            self.entered.set()
            self.gate.wait(60)
            return run(batch)

        self.batcher._run = held

    async def until_entered(self):
        for _ in range(2000):
            if self.entered.is_set():
                return
            await asyncio.sleep(0.01)
        raise AssertionError("no batch reached the model")

    def release(self):
        self.gate.set()


def detect_task(live, data: bytes) -> asyncio.Future:
    return asyncio.ensure_future(live.client.post("/detect", files={"image": ("p", data)}))


async def wait_for_metric(live, name: str, value: float, **labels) -> None:
    for _ in range(200):
        if live.state.metrics.registry.get_sample_value(name, labels) == value:
            return
        await asyncio.sleep(0.02)


def test_full_queue_answers_503_with_retry_after_not_a_pile_up(cat_bytes):
    live = LiveApp(make_settings(queue_size=2, max_batch_size=1, max_wait_ms=0))
    held = Held(live, "catface")
    try:
        async def scenario():
            first = detect_task(live, cat_bytes[0])
            await held.until_entered()  # one photo inside the model...
            rest = [detect_task(live, cat_bytes[0]) for _ in range(7)]
            for _ in range(2000):       # ...two fit in the queue, five are refused at once
                if sum(t.done() for t in rest) >= 5:
                    break
                await asyncio.sleep(0.01)
            early = [t.result() for t in rest if t.done()]
            held.release()
            return early, await asyncio.gather(first, *rest)

        early, responses = live.call(scenario())
        refused = [r for r in responses if r.status_code == 503]
        served = [r for r in responses if r.status_code == 200]
        assert (len(served), len(refused)) == (3, 5)
        assert len(early) == 5 and all(r.status_code == 503 for r in early), "refused while the model was busy"
        for r in refused:
            assert_problem(r, 503, "queue-full")
            assert r.headers["retry-after"] == "1"
        assert all(r.json()["faces"] for r in served)
        assert live.metric("catface_rejections_total", reason="queue-full") == 5
        assert post_photo(live, cat_bytes[0]).status_code == 200
    finally:
        held.release()
        live.close()


def test_deadline_passed_in_the_queue_is_503_and_never_reaches_the_model(cat_bytes):
    live = LiveApp(make_settings(request_timeout_s=1.0, max_batch_size=1, max_wait_ms=0))
    held = Held(live, "catface")
    try:
        async def scenario():
            first = detect_task(live, cat_bytes[0])
            await held.until_entered()
            second = detect_task(live, cat_bytes[1])  # waits in the queue past its deadline
            responses = await asyncio.gather(first, second)
            held.release()
            await wait_for_metric(live, "catface_dropped_total", 1.0, model="catface", reason="cancelled")
            return responses

        for r in live.call(scenario()):
            assert_problem(r, 503, "deadline-exceeded")
            assert r.headers["retry-after"]
        assert live.metric("catface_dropped_total", model="catface", reason="cancelled") == 1
        # Only the photo already inside the model ran; nothing went on to the landmarks.
        assert live.metric("catface_batch_size_count", model="catface") == 1
        assert live.metric("catface_batch_size_count", model="catlandmarks") == 0
    finally:
        held.release()
        live.close()


def test_client_that_disconnects_is_dropped_before_the_model(cat_bytes):
    live = LiveApp(make_settings(max_batch_size=1, max_wait_ms=0))
    held = Held(live, "catface")
    try:
        async def scenario():
            first = detect_task(live, cat_bytes[0])
            await held.until_entered()
            # A second client, spoken to in raw ASGI so that it can hang up.
            hang_up = asyncio.Event()
            sent = []
            messages = [{"type": "http.request", "body": cat_bytes[1], "more_body": False}]

            async def receive():
                if messages:
                    return messages.pop(0)
                await hang_up.wait()
                return {"type": "http.disconnect"}

            async def send(message):
                sent.append(message)

            scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
                     "scheme": "http", "path": "/detect", "raw_path": b"/detect", "query_string": b"",
                     "root_path": "", "headers": [(b"content-type", b"image/jpeg"), (b"host", b"catface")],
                     "client": ("127.0.0.1", 5000), "server": ("catface", 80), "state": {}}
            second = asyncio.ensure_future(live.app(scope, receive, send))
            await wait_for_metric(live, "catface_queue_depth", 1.0, model="catface")  # queued behind the model
            hang_up.set()
            await asyncio.wait_for(second, 10)
            held.release()
            response = await first
            await wait_for_metric(live, "catface_dropped_total", 1.0, model="catface", reason="cancelled")
            return response, sent

        first, sent = live.call(scenario())
        assert first.status_code == 200 and first.json()["faces"]
        assert sent[0]["status"] == 499
        assert live.metric("catface_dropped_total", model="catface", reason="cancelled") == 1
        assert live.metric("catface_batch_size_count", model="catface") == 1, "only the first photo ran"
        assert live.metric("catface_rejections_total", reason="client-closed-request") == 1
    finally:
        held.release()
        live.close()
