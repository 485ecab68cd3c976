"""Image intake: untrusted bytes -> an upright RGB photo, or a Problem with the right 4xx.

Rules, in the order they are applied:
- Only the decoders of FORMATS are ever run: JPEG, PNG, WebP, AVIF (Pillow's own plugin) and
  HEIC/HEIF (pillow-heif's plugin, registered here and nowhere else). Anything else is 415 (GIF,
  animated or not, too). Animated PNG/WebP/AVIF and HEIF sequences are legal still formats: the
  first (primary) picture is used, as a viewer shows it. HEIF thumbnails, depth and auxiliary
  images are never decoded.
- The decoding work is bounded from the header, before any pixel is decoded (413 otherwise):
  more than `max_pixels` is a decompression bomb; the memory the decoder would fill
  (`decode_bytes`: progressive JPEG keeps every coefficient of the full-size image, each colour
  plane at its sampling) is at most `max_decode_bytes`; a JPEG's scans x megapixels (each scan is
  a pass over the whole image: a 300 KB progressive JPEG repeating its last scan 1,500 times took
  a minute) at most `max_scan_work`. Less than MIN_SIDE on a side, or a longer side over
  MAX_ASPECT times the shorter, is refused (422). Pillow's own pixel limit is the same number and
  its warning an error (`configure`). So one decode costs at most ~0.7 s of CPU; the image thread
  pool bounds how many run at once, and a DecodeBudget the memory they fill together (the same
  max_decode_bytes: the estimates are decoders' measured peaks, WebP's 16 bytes a pixel among them).
- A JPEG much larger than the models need is decoded at 1/2, 1/4 or 1/8 scale by libjpeg
  (`draft`), keeping at least `decode_side` pixels on the longer side; other formats are
  box-reduced right after decoding, before conversion or rotation (HEIC/AVIF too: their codecs
  cannot decode at a reduced size). Faces are found on the smaller image and scaled back
  (`Photo.scale`). With `keep_original` (/annotate draws on the photo) `Photo.original` is the
  upright RGB photo reduced the same way to at most `original_side`.
- EXIF orientation is applied, so coordinates are those of the photo as a person sees it. In
  HEIC/AVIF the rotation and mirroring are the `irot`/`imir` boxes: libheif applies them while
  decoding (and pillow-heif resets the EXIF tag, as an iPhone photo carries both), Pillow's AVIF
  plugin turns them into the EXIF orientation that is then applied like a JPEG's.
- Every mode becomes 8-bit RGB: 16-bit is scaled (not clipped), CMYK converted, and
  transparency composited on white (a transparent background is not a dark cat).
"""
from __future__ import annotations

import asyncio
import io
import math
import warnings
from concurrent.futures import Executor
from dataclasses import dataclass
from functools import partial

import numpy as np
import pillow_heif
from PIL import Image, UnidentifiedImageError

from .problems import Problem
from .room import Room


@dataclass(frozen=True)
class Format:
    pillow: str                    # Pillow's format name (Image.open(formats=...), Image.format)
    name: str                      # as people call it
    media_types: tuple[str, ...]   # the first is the usual one
    extensions: tuple[str, ...]    # file names the command line picks up in a folder


# The one list of accepted formats: decoding, the 415 text, openapi.json, the demo page's file
# picker and the command line all read it. AVIF before HEIF: both use ISOBMFF `ftyp` files.
FORMATS = (
    Format("JPEG", "JPEG", ("image/jpeg",), (".jpg", ".jpeg", ".jpe", ".jfif")),
    Format("PNG", "PNG", ("image/png",), (".png",)),
    Format("WEBP", "WebP", ("image/webp",), (".webp",)),
    Format("AVIF", "AVIF", ("image/avif",), (".avif",)),
    Format("HEIF", "HEIC", ("image/heic", "image/heif"), (".heic", ".heif", ".hif")),
)
ALLOWED_FORMATS = tuple(f.pillow for f in FORMATS)
MEDIA_TYPES = tuple(t for f in FORMATS for t in f.media_types)
EXTENSIONS = tuple(e for f in FORMATS for e in f.extensions)
NAMES = ", ".join(f.name for f in FORMATS[:-1]) + " or " + FORMATS[-1].name  # "JPEG, PNG, ... or HEIC"

# HEIC through libheif (Pillow has no HEVC decoder). Only its opener: no thumbnails (a different
# picture could hide there), no depth or auxiliary images (work nobody asked for).
pillow_heif.register_heif_opener(thumbnails=False, depth_images=False, aux_images=False)

MIN_SIDE = 16  # below this no cat face can be told apart; such uploads are mistakes or probes
MAX_ASPECT = 20  # longer side / shorter side: wider than any panorama; beyond, a probe (16x3,000,000)

# Magic numbers of the allowed formats (to tell "corrupt JPEG" from "not an image") and of
# formats people commonly send by mistake (to name them in the 415).
_ALLOWED_MAGIC = {b"\xff\xd8\xff": "JPEG", b"\x89PNG\r\n\x1a\n": "PNG"}
_OTHER_MAGIC = {b"GIF87a": "GIF", b"GIF89a": "GIF", b"BM": "BMP", b"II*\x00": "TIFF", b"MM\x00*": "TIFF",
                b"%PDF": "PDF", b"\x00\x00\x01\x00": "ICO"}
_SIXTEEN_BIT = {"I;16", "I;16L", "I;16B", "I;16N", "I"}  # "I" is how some Pillow versions open 16-bit PNG


@dataclass
class Photo:
    image: Image.Image  # upright 8-bit RGB, possibly smaller than the original
    width: int          # upright size of the original, the coordinates answers are given in
    height: int
    format: str
    original: Image.Image | None = None  # full-size upright RGB, only when asked for (keep_original)

    @property
    def scale(self) -> tuple[float, float]:
        """Factors from `image` pixels to original pixels."""
        return self.width / self.image.width, self.height / self.image.height


def configure(max_pixels: int) -> None:
    """Make Pillow itself refuse images over the limit (its default only warns up to 2x)."""
    Image.MAX_IMAGE_PIXELS = max_pixels
    warnings.simplefilter("error", Image.DecompressionBombWarning)


def sniff(data: bytes) -> str | None:
    """The format named by the first bytes, or None when unknown."""
    for magic, name in {**_ALLOWED_MAGIC, **_OTHER_MAGIC}.items():
        if data.startswith(magic):
            return name
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    if data[4:8] == b"ftyp":
        return _iso_brand(data)
    return None


_HEIF_BRANDS = {b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"hevm", b"hevs"}
_VIDEO_BRANDS = {b"qt  ": "QuickTime video", b"isom": "MP4 video", b"iso2": "MP4 video", b"mp41": "MP4 video",
                 b"mp42": "MP4 video", b"M4V ": "MP4 video", b"3gp4": "3GP video", b"3gp5": "3GP video"}


def _iso_brand(data: bytes) -> str | None:
    """What an ISOBMFF file (`ftyp` box first) holds, from its major and compatible brands."""
    size = int.from_bytes(data[:4], "big")
    brands = [data[8:12]] + [data[i:i + 4] for i in range(16, min(size, len(data), 256) - 3, 4)]
    if {b"avif", b"avis"} & set(brands):
        return "AVIF"
    if _HEIF_BRANDS & set(brands) or brands[0] in (b"mif1", b"msf1"):
        return "HEIF"
    return _VIDEO_BRANDS.get(brands[0])


def _too_large(detail: str) -> Problem:
    return Problem(413, "image-too-large", detail)


_BYTES_PER_BAND = {"I;16": 2, "I;16L": 2, "I;16B": 2, "I;16N": 2, "I": 4, "F": 4}
_REDUCIBLE = {"L", "LA", "RGB", "RGBA", "I", "F"}  # modes Image.reduce takes as they are
# EXIF orientation -> the transpose that makes the photo upright (as ImageOps.exif_transpose does).
_UPRIGHT = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
            5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
            8: Image.Transpose.ROTATE_90}


# Peak memory of Pillow's decoder (and the reduction after it) per pixel, measured on 12 MP photos
# in a fresh process (2026-12-04, Pillow 11): WebP 16.5 (its animation decoder keeps an RGBA canvas
# and copies), AVIF 9.7 (RGBA 12.3), HEIF 7.8 (RGBA 8.8), PNG up to twice what Pillow stores (L 1.3,
# RGB 4.2, RGBA 8.3, LA 8.6). tests/test_imaging.py checks each estimate against a measured decode.
PEAK_BYTES_PER_PIXEL = {"WEBP": 17.0, "AVIF": 13.0, "HEIF": 9.5}
PEAK_PER_STORED_BYTE = 2.4  # the other formats (PNG): per byte Pillow stores (4 a pixel for any multi-band mode)
PEAK_PER_COEFFICIENT_BYTE = 1.15  # progressive JPEG: libjpeg's buffers beside the coefficients (measured +10%)


def decode_bytes(image: Image.Image, full_size: tuple[int, int]) -> int:
    """Memory the decoder fills for this (possibly drafted) image at its peak, estimated from its
    header. A JPEG decodes (drafted) into its stored size, plus, when progressive, every DCT
    coefficient of the full-size image (2 bytes each, and libjpeg's buffers) whatever the draft;
    the other formats decode whole, at their measured peak; modes that cannot be reduced as they
    are get converted at full size first (4 more bytes a pixel)."""
    w, h = image.size
    bands, band_bytes = len(image.getbands()), _BYTES_PER_BAND.get(image.mode, 1)
    if image.format == "JPEG":
        progressive = image.info.get("progressive")
        coefficients = int(2 * PEAK_PER_COEFFICIENT_BYTE * jpeg_coefficients(image, full_size)) if progressive else 0
        return w * h * bands * band_bytes + coefficients
    if image.format in PEAK_BYTES_PER_PIXEL:
        peak = int(w * h * PEAK_BYTES_PER_PIXEL[image.format])
    else:  # what Pillow stores: 4 bytes a pixel for any multi-band mode
        peak = int(w * h * (4 if bands > 1 else band_bytes) * PEAK_PER_STORED_BYTE)
    # 16-bit grey goes through numpy to be scaled (measured: 14 bytes a pixel in all)
    return peak + (0 if image.mode in _REDUCIBLE else w * h * (12 if image.mode in _SIXTEEN_BIT else 4))


def jpeg_coefficients(image: Image.Image, full_size: tuple[int, int]) -> int:
    """DCT coefficients of a whole JPEG, as libjpeg's whole-image arrays hold them: each component
    at its sampling (a 4:2:0 photo's two colour planes at a quarter of the pixels each, so 1.5
    coefficients a pixel, not 3), in 8x8 blocks rounded up to whole MCUs. (Measured for a 20 MP
    progressive JPEG decoded at 1/8: 62 MiB at 4:2:0, 119 MiB at 4:4:4.)"""
    w, h = full_size
    # (a corrupt header may claim factors outside libjpeg's 1..4, which its decoding then refuses: 422)
    sampling = ([(min(max(hs, 1), 4), min(max(vs, 1), 4)) for _, hs, vs, _ in getattr(image, "layer", [])]
                or [(1, 1)] * len(image.getbands()))
    h_max, v_max = max(hs for hs, _ in sampling), max(vs for _, vs in sampling)
    total = 0
    for hs, vs in sampling:
        blocks_wide = math.ceil(math.ceil(w * hs / h_max) / 8)
        blocks_high = math.ceil(math.ceil(h * vs / v_max) / 8)
        total += math.ceil(blocks_wide / hs) * hs * math.ceil(blocks_high / vs) * vs * 64
    return total


@dataclass
class Header:
    """An image whose header passed every check, its pixels not decoded yet (decode_pixels)."""
    image: Image.Image
    width: int
    height: int
    needed: int  # bytes its decoding fills at the peak (decode_bytes): what a DecodeBudget reserves
    decode_side: int
    keep_original: bool
    original_side: int
    max_pixels: int


class DecodeBudget(Room):
    """Bytes the decodes in progress may fill together (each its Header.needed), so that several
    large photos at once stay inside the container's memory: a decode waits for room (its
    request's deadline bounds the wait), and gives the bytes back when its thread is done, even
    after its request gave up, since until then the memory is in use. One decode larger than the
    whole budget was already refused (read_header's max_decode_bytes is the same number)."""

    async def decode(self, header: Header, pool: Executor | None) -> Photo:
        await self.enter(header.needed)
        try:
            running = asyncio.get_running_loop().run_in_executor(pool, decode_pixels, header)
        except BaseException:  # (a pool already shut down): nothing runs, nothing to wait for
            self.leave(header.needed)
            raise
        running.add_done_callback(partial(self._give, header.needed))
        return await asyncio.shield(running)

    def _give(self, n: int, done: asyncio.Future) -> None:
        self.leave(n)
        if not done.cancelled():
            done.exception()  # retrieved here: a request that gave up no longer awaits it


def decode(data: bytes, **limits) -> Photo:
    """Bytes -> Photo (read_header, then decode_pixels), refusing from the header whatever would
    cost too much to decode."""
    return decode_pixels(read_header(data, **limits))


def read_header(data: bytes, *, max_bytes: int, max_pixels: int, decode_side: int = 800,
                keep_original: bool = False, original_side: int = 2048,
                max_decode_bytes: int = 224 * 1024 * 1024, max_scan_work: int = 250) -> Header:
    """The checks that need only the header: more pixels than max_pixels, more memory than
    max_decode_bytes, or (JPEG) more scans x megapixels than max_scan_work is a 413. With
    keep_original, the Photo will also hold the upright photo reduced to at most original_side on
    its longer side (what /annotate draws on)."""
    if not data:
        raise Problem(422, "empty-image", "the upload is empty")
    if len(data) > max_bytes:
        raise _too_large(f"the image is {len(data)} bytes; the limit is {max_bytes}")
    sniffed = sniff(data)
    try:
        image = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise _too_large(f"the image has more than {max_pixels} pixels") from None
    except UnidentifiedImageError:
        if sniffed in ALLOWED_FORMATS:
            raise Problem(422, "corrupt-image", f"the {sniffed} header cannot be read") from None
        found = f"a {sniffed} file" if sniffed else "not a recognised image"
        raise Problem(415, "unsupported-image-type", f"the upload is {found}; send {NAMES}") from None
    except Exception:  # a known format whose header breaks its parser (OSError, struct.error...): was a 500
        raise Problem(422, "corrupt-image", f"the {sniffed or 'image'} header cannot be read") from None

    width, height = image.size
    if width * height > max_pixels:
        raise _too_large(f"the image is {width}x{height} pixels; the limit is {max_pixels} pixels")
    if min(width, height) < MIN_SIDE:
        raise Problem(422, "image-too-small",
                      f"the image is {width}x{height}; both sides must be at least {MIN_SIDE} pixels")
    if max(width, height) > MAX_ASPECT * min(width, height):
        raise Problem(422, "image-shape", f"the image is {width}x{height}; the longer side may be at most "
                                          f"{MAX_ASPECT} times the shorter")

    scans = data.count(b"\xff\xda") if image.format == "JPEG" else 0  # 0xFFDA = start of scan (never inside coded data)
    if scans * width * height > max_scan_work * 1_000_000:
        raise _too_large(f"the JPEG has {scans} scans over {width}x{height} pixels: more decoding work than "
                         f"{max_scan_work} scan-megapixels")
    side = original_side if keep_original else decode_side
    if image.format == "JPEG" and max(width, height) >= 2 * side:
        k = side / max(width, height)
        image.draft(None, (math.ceil(width * k), math.ceil(height * k)))  # libjpeg DCT scaling: >= the asked size
    needed = decode_bytes(image, (width, height))
    if needed > max_decode_bytes:
        raise _too_large(f"decoding the {width}x{height} {image.format} would take {needed >> 20} MiB; "
                         f"the limit is {max_decode_bytes >> 20} MiB")
    return Header(image, width, height, needed, decode_side, keep_original, original_side, max_pixels)


def decode_pixels(header: Header) -> Photo:
    """The pixels of an image whose header passed (read_header): upright, RGB, reduced."""
    image, width, height, max_pixels = header.image, header.width, header.height, header.max_pixels
    decode_side, keep_original, original_side = header.decode_side, header.keep_original, header.original_side
    try:
        image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise _too_large(f"the image has more than {max_pixels} pixels") from None
    except Exception as exc:  # Pillow signals broken data with many types (OSError, SyntaxError, ValueError...)
        raise Problem(422, "corrupt-image",
                      f"the {image.format} data cannot be decoded (truncated or corrupt)") from exc
    if image.width * image.height > max_pixels:  # a HEIF's coded picture may differ from its header
        raise _too_large(f"the image decoded to {image.width}x{image.height} pixels; the limit is {max_pixels} pixels")
    try:
        turn = _UPRIGHT.get(image.getexif().get(0x0112, 1))  # 1 (or none): upright as stored
    except Exception:  # a malformed EXIF block should not cost the user the photo: keep it as stored
        turn = None
    if turn in (Image.Transpose.TRANSPOSE, Image.Transpose.TRANSVERSE, Image.Transpose.ROTATE_90,
                Image.Transpose.ROTATE_270):  # a 90-degree EXIF rotation swaps the original's sides too
        width, height = height, width

    # Reduce before anything else touches every pixel (conversion, rotation): the big image is
    # read once. `original` keeps up to original_side, `image` up to decode_side.
    fmt = image.format
    assert fmt is not None  # Image.open(formats=...) names the format it opened
    original = _upright_rgb(_reduced(image, original_side, at_most=True), turn) if keep_original else None
    rgb = _upright_rgb(_reduced(image, decode_side), turn) if original is None else _reduced(original, decode_side)
    return Photo(rgb, width, height, fmt, original)


def _reduced(image: Image.Image, side: int, at_most: bool = False) -> Image.Image:
    """Box-reduced by a whole factor so that the longer side stays >= side (at_most: <= side)."""
    factor = -(-max(image.size) // side) if at_most else max(image.size) // side
    if factor < 2:
        return image
    if image.mode not in _REDUCIBLE:
        image = to_rgb(image)
    return image.reduce(factor)


def _upright_rgb(image: Image.Image, turn) -> Image.Image:
    rgb = to_rgb(image)
    return rgb.transpose(turn) if turn is not None else rgb


def _has_alpha(image: Image.Image) -> bool:
    return image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB."""
    if image.mode in _SIXTEEN_BIT:
        # Pillow's convert clips 16-bit values at 255 (an almost white photo); scale instead.
        pixels = np.asarray(image).astype(np.float32) / 257.0
        image = Image.fromarray(np.clip(pixels + 0.5, 0, 255).astype(np.uint8), "L")
    if image.mode == "RGB":
        return image
    if _has_alpha(image):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")
