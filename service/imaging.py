"""Image intake: untrusted bytes -> an upright RGB photo, or a Problem with the right 4xx.

Rules, in the order they are applied:
- Only the decoders of FORMATS are ever run: JPEG, PNG, WebP, AVIF (Pillow's own plugin) and
  HEIC/HEIF (pillow-heif's plugin, registered here and nowhere else). Anything else is 415 (GIF,
  animated or not, too). Animated PNG/WebP/AVIF and HEIF sequences are legal still formats: the
  first (primary) picture is used, as a viewer shows it. HEIF thumbnails, depth and auxiliary
  images are never decoded.
- The stored size is checked from the header before any pixel is decoded: more than
  `max_pixels` is a decompression bomb (413), less than MIN_SIDE on a side is refused (422).
  Pillow's own limit is set to the same number and its warning made an error (`configure`).
- A JPEG much larger than the models need is decoded at 1/2, 1/4 or 1/8 scale by libjpeg
  (`draft`), keeping at least `decode_side` pixels on the longer side; other formats are
  box-reduced after decoding (HEIC/AVIF too: their codecs cannot decode at a reduced size).
  Faces are found on the smaller image and scaled back (`Photo.scale`).
  With `keep_original` (/annotate draws on the photo at its own size) the JPEG is decoded whole
  and box-reduced like the others, and the full-size upright RGB is kept as `Photo.original`.
- EXIF orientation is applied, so coordinates are those of the photo as a person sees it. In
  HEIC/AVIF the rotation and mirroring are the `irot`/`imir` boxes: libheif applies them while
  decoding (and pillow-heif resets the EXIF tag, as an iPhone photo carries both), Pillow's AVIF
  plugin turns them into the EXIF orientation that is then applied like a JPEG's.
- Every mode becomes 8-bit RGB: 16-bit is scaled (not clipped), CMYK converted, and
  transparency composited on white (a transparent background is not a dark cat).
"""
from __future__ import annotations

import io
import math
import warnings
from dataclasses import dataclass

import numpy as np
import pillow_heif
from PIL import Image, ImageOps, UnidentifiedImageError

from .problems import Problem


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


def decode(data: bytes, *, max_bytes: int, max_pixels: int, decode_side: int = 800,
           keep_original: bool = False) -> Photo:
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
        raise Problem(422, "image-too-small", f"the image is {width}x{height}; both sides must be at least {MIN_SIDE} pixels")

    if image.format == "JPEG" and max(width, height) >= 2 * decode_side and not keep_original:
        k = decode_side / max(width, height)
        image.draft(None, (math.ceil(width * k), math.ceil(height * k)))  # libjpeg DCT scaling: >= the asked size
    try:
        image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise _too_large(f"the image has more than {max_pixels} pixels") from None
    except Exception as exc:  # Pillow signals broken data with many types (OSError, SyntaxError, ValueError...)
        raise Problem(422, "corrupt-image", f"the {image.format} data cannot be decoded (truncated or corrupt)") from exc
    if image.width * image.height > max_pixels:  # a HEIF's coded picture may differ from its header
        raise _too_large(f"the image decoded to {image.width}x{image.height} pixels; the limit is {max_pixels} pixels")
    try:
        upright = ImageOps.exif_transpose(image)
    except Exception:  # a malformed EXIF block should not cost the user the photo: keep it as stored
        upright = image
    if upright.size != image.size:  # a 90-degree EXIF rotation swaps the original's sides too
        width, height = height, width

    original = rgb = to_rgb(upright)
    factor = max(rgb.size) // decode_side
    if factor >= 2:
        rgb = rgb.reduce(factor)
    return Photo(rgb, width, height, image.format, original if keep_original else None)


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB."""
    if image.mode in _SIXTEEN_BIT:
        # Pillow's convert clips 16-bit values at 255 (an almost white photo); scale instead.
        pixels = np.asarray(image).astype(np.float32) / 257.0
        image = Image.fromarray(np.clip(pixels + 0.5, 0, 255).astype(np.uint8), "L")
    if image.mode == "RGB":
        return image
    has_alpha = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info
    if has_alpha:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")
