"""Fuzzing, bounded for CI: the HTTP API against its published openapi.json (schemathesis, a real
server on loopback), and the image intake (service.imaging.decode) on malformed bytes (Hypothesis).
"""
from __future__ import annotations

import asyncio
import io

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from benchmarks.harness import Server, request_bytes, send_once
from service import imaging
from service.problems import Problem

from .conftest import REPO, encode, photo, png16_rgb

# ---- the API against openapi.json ----------------------------------------------------------------
schema = schemathesis.openapi.from_path(REPO / "openapi.json")


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    server = Server({"CATFACE_THREADS": "1", "CATFACE_MAX_BATCH_SIZE": "4", "CATFACE_LOG_LEVEL": "warning"},
                    log_path=tmp_path_factory.mktemp("fuzz") / "server.log")
    yield server
    server.kill()


@schema.parametrize()
@settings(max_examples=400, deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))
def test_api_matches_its_schema_and_never_errs(api, case):
    # Default checks: no 5xx, documented status codes, content types, headers and bodies.
    # Excluded: "acceptance of valid data": the schema says `binary`, and random bytes are
    # rightly refused (415/422), not accepted.
    from schemathesis.checks import positive_data_acceptance

    case.call_and_validate(base_url=api.base, excluded_checks=[positive_data_acceptance], timeout=30)


def test_405_names_every_method_of_the_path(api):
    """Found by the fuzzing: GET and HEAD /models/{file} are two routes, and Allow named only HEAD."""
    status, headers, _ = asyncio.run(send_once(api.port, request_bytes("OPTIONS", "/models/catface.onnx")))
    assert status == 405 and headers["allow"] == "GET, HEAD"
    status, headers, _ = asyncio.run(send_once(api.port, request_bytes("GET", "/detect")))
    assert status == 405 and headers["allow"] == "POST"


@pytest.mark.parametrize("path", ["/detect", "/breeds"])
@pytest.mark.parametrize("which", ["cat", "dog"])
def test_answers_on_real_photos_match_the_schema(api, cat_bytes, dog_bytes, path, which):
    """Random bytes are (rightly) refused, so the fuzzing above seldom sees a 200: check the
    answers on real photos against the same schema."""
    from schemathesis.checks import positive_data_acceptance

    data = (cat_bytes if which == "cat" else dog_bytes)[0]
    case = schema[path]["POST"].Case(body={"image": data}, media_type="multipart/form-data",
                                     multipart_content_types={"image": "image/jpeg"})
    response = case.call_and_validate(base_url=api.base, excluded_checks=[positive_data_acceptance], timeout=30)
    assert response.status_code == 200
    if path == "/detect":
        assert bool(response.json()["faces"]) == (which == "cat")


def test_api_fuzzing_left_the_server_healthy(api):
    assert api.process.poll() is None
    samples = api.metrics()
    server_errors = {k: v for k, v in samples.items() if k.startswith("catface_requests_total{") and 'status="5' in k}
    assert not server_errors
    answered = sum(v for k, v in samples.items() if k.startswith("catface_requests_total{"))
    assert answered >= 200, f"the fuzzing sent only {answered:.0f} requests"


# ---- the image intake on malformed bytes ---------------------------------------------------------
MAX_PIXELS = 4_000_000  # small, so that a mutated header that passes still decodes fast


def _seeds() -> list[bytes]:
    cat = photo("crawford/CAT_01/00000102_003.jpg").resize((96, 72))
    rgba = cat.convert("RGBA")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees
    return [encode(cat, "JPEG", quality=80), encode(cat, "JPEG", progressive=True),
            encode(cat, "JPEG", exif=exif.tobytes()), encode(cat.convert("CMYK"), "JPEG"),
            encode(rgba, "PNG"), encode(cat.convert("P"), "PNG", transparency=0), png16_rgb(cat.resize((24, 18))),
            encode(cat, "WEBP", quality=70), encode(rgba, "WEBP", lossless=True),
            encode(cat, "HEIF", quality=60, exif=exif.tobytes()), encode(cat, "AVIF", quality=60, exif=exif.tobytes())]


SEEDS: list[bytes] = []  # filled by the `seeds` fixture (module-level: keeps Hypothesis' reports short)


@st.composite
def malformed(draw) -> bytes:
    """A valid small image with a few mutations, mostly near the header where parsers branch."""
    data = bytearray(SEEDS[draw(st.integers(0, len(SEEDS) - 1))])
    for _ in range(draw(st.integers(1, 4))):
        if not data:
            break
        near = draw(st.booleans())
        pos = draw(st.integers(0, min(len(data), 64 if near else len(data)) - 1))
        op = draw(st.sampled_from(["flip", "byte", "truncate", "insert", "delete", "int"]))
        if op == "flip":
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "byte":
            data[pos] = draw(st.integers(0, 255))
        elif op == "truncate":
            del data[pos:]
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif op == "delete":
            del data[pos:pos + draw(st.integers(1, 16))]
        else:  # a size field: a big or zero 16/32-bit value
            data[pos:pos + 4] = draw(st.sampled_from([b"\xff\xff", b"\x00\x00", b"\x7f\xff\xff\xff", b"\0\0\0\0"]))
    return bytes(data)


@pytest.fixture(scope="module")
def seeds():
    before = Image.MAX_IMAGE_PIXELS
    imaging.configure(MAX_PIXELS)  # as the app does at start-up
    SEEDS[:] = _seeds()
    yield SEEDS
    Image.MAX_IMAGE_PIXELS = before


def _decode_or_refuse(data: bytes) -> None:
    try:
        result = imaging.decode(data, max_bytes=1 << 20, max_pixels=MAX_PIXELS, decode_side=800)
    except Problem as problem:
        assert 400 <= problem.status < 500, (problem.status, problem.detail)
        return
    assert result.image.mode == "RGB"
    assert min(result.width, result.height) >= imaging.MIN_SIDE and result.width * result.height <= MAX_PIXELS
    assert 0 < result.image.width <= result.width and 0 < result.image.height <= result.height
    result.image.tobytes()  # the pixels are really there


def test_intake_turns_mutated_images_into_a_photo_or_a_4xx(seeds):
    @given(malformed())
    @settings(max_examples=4000, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    def check(data):
        _decode_or_refuse(data)

    check()


def test_intake_turns_random_bytes_into_a_4xx(seeds):
    magic = st.sampled_from([b"", b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"RIFF\x00\x00\x00\x00WEBPVP8 ", b"GIF89a",
                              b"\x00\x00\x00\x1cftypheic\x00\x00\x00\x00mif1heicmiaf",
                              b"\x00\x00\x00\x20ftypavif\x00\x00\x00\x00avifmif1miafMA1B"])

    @given(magic, st.binary(max_size=2048))
    @settings(max_examples=1000, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    def check(prefix, rest):
        _decode_or_refuse(prefix + rest)

    check()


def test_jpeg_cut_inside_its_exif_segment_is_422_not_500(seeds):
    """Found by the fuzz above: Pillow raised OSError from Image.open, which became a 500."""
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encode(Image.new("RGB", (64, 48), "gray"), "JPEG", exif=exif.tobytes())
    cut = data.index(b"Exif") + 10
    with pytest.raises(Problem) as refused:
        imaging.decode(data[:cut], max_bytes=1 << 20, max_pixels=MAX_PIXELS)
    assert (refused.value.status, refused.value.slug) == (422, "corrupt-image")


def test_the_seeds_themselves_decode(seeds):
    """The mutations start from images the intake accepts (else the fuzz would only test refusals)."""
    for data in seeds:
        assert imaging.decode(data, max_bytes=1 << 20, max_pixels=MAX_PIXELS).image.mode == "RGB"
        Image.open(io.BytesIO(data)).verify()
