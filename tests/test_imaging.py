"""Image intake without HTTP: formats, limits, EXIF orientation, reduced decoding, pixel modes."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from service.imaging import decode, sniff
from service.problems import Problem

from .conftest import (
    CATS,
    STORED_FROM_UPRIGHT,
    encode,
    heic_claiming,
    iphone_style,
    pattern,
    photo,
    png16_rgb,
    png_raw,
)

LIMITS = dict(max_bytes=10_000_000, max_pixels=40_000_000, decode_side=800)


def refused(data: bytes, **limits) -> Problem:
    with pytest.raises(Problem) as caught:
        decode(data, **{**LIMITS, **limits})
    return caught.value


# ---- refusals --------------------------------------------------------------------------------
def test_empty_upload_is_422():
    assert (refused(b"").status, refused(b"").slug) == (422, "empty-image")


def test_text_is_415():
    assert refused(b"hello, this is not a photo\n" * 20).status == 415


@pytest.mark.parametrize("fmt", ["GIF", "BMP", "TIFF"])
def test_formats_outside_the_allowed_three_are_415_and_named(fmt):
    problem = refused(encode(pattern(), fmt))
    assert problem.status == 415 and fmt in problem.detail


def test_animated_gif_is_415():
    frames = [pattern(), pattern().transpose(Image.ROTATE_180)]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    assert refused(data).status == 415


def test_truncated_jpeg_is_422():
    data = encode(photo(CATS[0]), "JPEG", quality=90)
    assert (refused(data[: len(data) // 2]).status, refused(data[: len(data) // 2]).slug) == (422, "corrupt-image")


def test_broken_jpeg_header_is_422_not_415():
    assert refused(b"\xff\xd8\xff\xe0" + b"\x00" * 50).status == 422


def test_one_pixel_image_is_422():
    assert refused(encode(Image.new("RGB", (1, 1)), "PNG")).slug == "image-too-small"


def test_decompression_bomb_is_refused_from_the_header():
    # 100000 x 100000 pixels announced by a 60-byte file: refused before any pixel is decoded.
    bomb = png_raw(100_000, 100_000, 1, 0, None)
    assert len(bomb) < 100
    problem = refused(bomb)
    assert (problem.status, problem.slug) == (413, "image-too-large")


def test_pixel_limit_is_a_setting():
    data = encode(pattern(400, 300), "PNG")
    problem = refused(data, max_pixels=100_000)
    assert problem.status == 413 and "400x300" in problem.detail
    assert decode(data, **{**LIMITS, "max_pixels": 120_000}).width == 400


def test_byte_limit():
    data = encode(pattern(), "PNG")
    assert refused(data, max_bytes=len(data) - 1).status == 413


# ---- orientation -----------------------------------------------------------------------------
# EXIF orientation -> the transpose that makes the stored pixels from the upright picture.
@pytest.mark.parametrize("orientation", sorted(STORED_FROM_UPRIGHT))
def test_exif_orientation_gives_the_upright_picture(orientation):
    upright = pattern()
    stored = upright.transpose(STORED_FROM_UPRIGHT[orientation])
    exif = Image.Exif()
    exif[0x0112] = orientation
    got = decode(encode(stored, "PNG", exif=exif.tobytes()), **LIMITS)
    assert (got.width, got.height) == upright.size
    assert np.array_equal(np.asarray(got.image), np.asarray(upright))


@pytest.mark.filterwarnings("ignore:Corrupt EXIF")
def test_malformed_exif_keeps_the_photo():
    data = encode(pattern(), "JPEG", exif=b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\xff\xff")
    assert decode(data, **LIMITS).image.size == (96, 64)


# ---- reduced decoding ------------------------------------------------------------------------
def test_large_jpeg_is_decoded_smaller_but_reports_the_original_size():
    big = photo(CATS[0]).resize((3584, 2000))
    got = decode(encode(big, "JPEG", quality=85), **LIMITS)
    assert (got.width, got.height) == (3584, 2000)
    assert 800 <= max(got.image.size) < 1800  # libjpeg decoded at 1/2 or 1/4, not full size
    assert got.scale[0] == pytest.approx(3584 / got.image.width)


def test_progressive_jpeg_memory_counts_each_colour_planes_sampling():
    """A 20 MP photo that an optimiser saved progressive keeps all its DCT coefficients while it
    decodes: 66 MiB at the usual 4:2:0 sampling (accepted under 100 MiB), 131 MiB at 4:4:4
    (refused from the header). Counting every plane at full size refused both."""
    big = photo(CATS[0]).resize((5000, 4000))
    limits = {**LIMITS, "max_bytes": 20_000_000, "max_decode_bytes": 100 * 2**20}
    got = decode(encode(big, "JPEG", quality=85, progressive=True, subsampling=2), **limits)
    assert (got.width, got.height) == (5000, 4000) and max(got.image.size) < 1800
    problem = refused(encode(big, "JPEG", quality=85, progressive=True, subsampling=0), **limits)
    assert problem.status == 413 and "MiB" in problem.detail


PEAK_PROBE = """
import sys
from service import imaging
def status(key):  # this process's memory (VmHWM: its peak; exec started it afresh, unlike ru_maxrss)
    return int(next(line.split()[1] for line in open("/proc/self/status") if line.startswith(key))) * 1024
data = open(sys.argv[1], "rb").read()
header = imaging.read_header(data, max_bytes=10**9, max_pixels=10**9, max_decode_bytes=10**12)
before = status("VmRSS:")
imaging.decode_pixels(header)
print(header.needed, status("VmHWM:") - before)
"""


@pytest.mark.parametrize("fmt,mode,params", [
    ("JPEG", "RGB", {"quality": 90, "progressive": True}), ("PNG", "RGB", {}), ("PNG", "RGBA", {}), ("PNG", "LA", {}),
    ("PNG", "P", {}), ("PNG", "I;16", {}), ("WEBP", "RGB", {"quality": 80}), ("WEBP", "RGBA", {"quality": 80}),
    ("AVIF", "RGB", {"quality": 60, "speed": 10}), ("AVIF", "RGBA", {"quality": 60, "speed": 10}),
    ("HEIF", "RGB", {"quality": 60}), ("HEIF", "RGBA", {"quality": 60})])
def test_the_decode_memory_estimate_covers_the_measured_peak(tmp_path, fmt, mode, params):
    """What a DecodeBudget reserves for a photo (read_header's estimate) is at least what decoding
    it takes, measured in a fresh process: the budget keeps several large photos at once inside
    the container's memory only if it is. (A 24 MP WebP took 378 MiB against an estimate of 70.)"""
    import subprocess
    import sys

    picture = photo(CATS[0]).resize((3000, 2000))
    if mode in ("RGBA", "LA"):
        picture.putalpha(200)
    if mode == "I;16":  # 16-bit grey, as scanners and some cameras write
        picture = Image.fromarray(np.asarray(picture.convert("L"), np.uint16) * 257)
    elif mode != "RGB":
        picture = picture.convert(mode)
    path = tmp_path / f"photo.{fmt.lower()}"
    path.write_bytes(encode(picture, fmt, **params))
    out = subprocess.run([sys.executable, "-c", PEAK_PROBE, str(path)], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parent.parent).stdout.split()
    needed, peak = int(out[0]), int(out[1])
    assert peak <= needed + 4 * 2**20, f"{fmt}: decoding took {peak >> 20} MiB, estimated {needed >> 20} MiB"


def test_large_png_is_reduced_after_decoding():
    got = decode(encode(pattern(2400, 1700), "PNG"), **LIMITS)
    assert (got.width, got.height) == (2400, 1700)
    assert 800 <= max(got.image.size) <= 1200


def test_small_photo_is_untouched():
    got = decode(encode(pattern(), "PNG"), **LIMITS)
    assert got.scale == (1.0, 1.0)
    assert np.array_equal(np.asarray(got.image), np.asarray(pattern()))


# ---- pixel modes -----------------------------------------------------------------------------
def test_sixteen_bit_grey_is_scaled_not_clipped():
    ramp = (np.arange(64 * 64, dtype=np.uint32).reshape(64, 64) * 16).astype(np.uint16)  # 0..65520
    got = np.asarray(decode(encode(Image.fromarray(ramp), "PNG"), **LIMITS).image)
    assert got.shape == (64, 64, 3)
    assert np.abs(got[..., 0].astype(int) - np.round(ramp / 257)).max() <= 1
    assert got[..., 0].min() == 0 and got[..., 0].max() == 255 and len(np.unique(got)) > 200


def test_sixteen_bit_rgb():
    got = np.asarray(decode(png16_rgb(pattern()), **LIMITS).image)
    assert np.abs(got.astype(int) - np.asarray(pattern(), int)).max() <= 1


def test_cmyk_jpeg_becomes_rgb():
    data = encode(pattern().convert("CMYK"), "JPEG", quality=95)
    got = np.asarray(decode(data, **LIMITS).image, int)
    assert np.abs(got - np.asarray(pattern(), int)).mean() < 8


def test_transparency_is_composited_on_white():
    rgba = pattern().convert("RGBA")
    alpha = np.full((64, 96), 255, np.uint8)
    alpha[:, 48:] = 0
    rgba.putalpha(Image.fromarray(alpha))
    got = np.asarray(decode(encode(rgba, "PNG"), **LIMITS).image)
    assert (got[:, 48:] == 255).all()
    assert np.array_equal(got[:, :48], np.asarray(pattern())[:, :48])


@pytest.mark.parametrize("mode", ["L", "LA", "P", "1", "RGBA"])
def test_other_modes_become_rgb(mode):
    got = decode(encode(pattern().convert(mode), "PNG"), **LIMITS)
    assert got.image.mode == "RGB" and got.image.size == (96, 64)


def test_palette_with_transparent_index():
    image = pattern().convert("P")
    data = encode(image, "PNG", transparency=image.getpixel((0, 0)))
    got = np.asarray(decode(data, **LIMITS).image)
    assert (got[0, 0] == 255).all()  # the red corner's palette entry is transparent


def test_webp_and_animated_webp_first_frame():
    still = decode(encode(pattern(), "WEBP", lossless=True), **LIMITS)
    assert np.array_equal(np.asarray(still.image), np.asarray(pattern()))
    frames = [pattern(), pattern().transpose(Image.ROTATE_180)]
    animated = decode(encode(frames[0], "WEBP", save_all=True, append_images=frames[1:], lossless=True), **LIMITS)
    assert np.array_equal(np.asarray(animated.image), np.asarray(pattern()))


# ---- HEIC and AVIF ---------------------------------------------------------------------------
@pytest.mark.parametrize("fmt, sniffed", [("HEIF", "HEIF"), ("AVIF", "AVIF")])
@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_heic_and_avif_rotated_by_metadata_give_the_upright_picture(fmt, sniffed, orientation):
    data = iphone_style(pattern(), fmt, orientation, quality=95)
    assert sniff(data) == sniffed and b"irot" in data  # the turn is in the file's metadata
    got = decode(data, **LIMITS)
    assert got.format == fmt and (got.width, got.height) == (96, 64)
    # lossy codecs: the pixels are close, and far from any other orientation of the picture
    error = np.abs(np.asarray(got.image, int) - np.asarray(pattern(), int)).mean()
    assert error < 6, error
    wrong = np.abs(np.asarray(got.image, int) - np.asarray(pattern().transpose(Image.ROTATE_180), int)).mean()
    assert wrong > 4 * error


def test_large_heic_is_reduced_after_decoding():
    big = photo(CATS[0]).resize((1800, 1000))
    got = decode(encode(big, "HEIF", quality=60), **LIMITS)
    assert (got.width, got.height) == (1800, 1000) and got.image.size == (900, 500)


@pytest.mark.parametrize("width, height", [(20_000, 20_000), (10_000, 8_000)])  # Pillow's own limit; ours
def test_heic_bomb_is_refused_from_the_header(width, height):
    problem = refused(heic_claiming(width, height))
    assert (problem.status, problem.slug) == (413, "image-too-large")


def test_heic_and_avif_follow_the_byte_limit_and_corruption_rules():
    for fmt in ("HEIF", "AVIF"):
        data = encode(pattern(), fmt, quality=50)
        assert refused(data, max_bytes=len(data) - 1).status == 413
        assert (refused(data[: len(data) // 2]).status, refused(data[: len(data) // 2]).slug) == (422, "corrupt-image")


def test_the_415_names_every_accepted_format_and_a_video_is_named():
    video = b"\x00\x00\x00\x18ftypqt  \x00\x00\x02\x00qt  " + b"\x00" * 64
    problem = refused(video)
    assert problem.status == 415 and "QuickTime video" in problem.detail
    assert all(name in problem.detail for name in ("JPEG", "PNG", "WebP", "AVIF", "HEIC"))


def test_decodes_that_do_not_fit_the_budget_together_run_one_after_the_other(monkeypatch):
    """The decode budget: two photos that each fit it alone but not together are decoded in turn,
    and their bytes come back once decoded, even when the request gave up while its decode ran."""
    import asyncio
    import time
    from concurrent.futures import ThreadPoolExecutor

    from service import imaging

    data = encode(pattern(2400, 1600), "PNG")
    needed = imaging.read_header(data, **LIMITS).needed
    budget, seen = imaging.DecodeBudget(int(needed * 1.5)), []
    decode_pixels = imaging.decode_pixels

    def slow_decode(header):
        seen.append(budget.used)
        time.sleep(0.2)
        return decode_pixels(header)

    monkeypatch.setattr(imaging, "decode_pixels", slow_decode)

    async def both():
        with ThreadPoolExecutor(2) as pool:
            photos = await asyncio.gather(*(budget.decode(imaging.read_header(data, **LIMITS), pool) for _ in range(2)))
            assert budget.used == 0 and all(p.width == 2400 for p in photos)
            with pytest.raises(TimeoutError):  # a request that gives up: its decode still holds the bytes
                async with asyncio.timeout(0.05):
                    await budget.decode(imaging.read_header(data, **LIMITS), pool)
            assert budget.used == needed
            await asyncio.sleep(0.3)
            assert budget.used == 0

    asyncio.run(both())
    assert seen == [needed] * 3  # never two at once


def test_progressive_jpeg_claiming_a_zero_sampling_factor_is_422():
    """Found by the fuzz test: the memory estimate divided by a corrupt header's sampling factor
    (a 500); libjpeg refuses such a file, and so does the answer."""
    data = bytearray(encode(pattern(), "JPEG", progressive=True))
    sof = data.find(b"\xff\xc2")
    data[sof + 2 + 2 + 1 + 2 + 2 + 1 + 1] = 0x00  # first component's H and V factors
    problem = refused(bytes(data))
    assert problem.status == 422
