"""What POST /annotate draws: each face's box, numbered landmarks (0-8 in the order of
schemas.LANDMARK_NAMES) and top breed; optionally a sticker placed by the landmarks; a note when
no cat face was found. Plus the answer's format, chosen by the Accept header.

Placement is a pure function of the landmarks (`place`), so it can be checked without pixels:
the sticker is scaled by the eye distance, turned by the eye line (atan2 of right eye - left eye)
and lifted along the head's up (perpendicular to the eye line, on the side of the ears).
"""
from __future__ import annotations

import io
import math
import threading
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from . import stickers
from .pipeline import Face
from .stickers import Sticker

MEDIA_TYPES = {"image/jpeg": "JPEG", "image/png": "PNG"}  # the first is the default
NO_FACE_NOTE = "no cat face found"
PALETTE = [(255, 45, 120), (0, 190, 255), (255, 190, 0), (90, 220, 90), (170, 110, 255)]
MIN_EYE_DISTANCE = 2.0  # pixels; below this there is no size or direction to follow


@dataclass(frozen=True)
class Placement:
    sticker: str
    x: float      # where the sticker's centre goes, in photo pixels
    y: float
    angle: float  # degrees, clockwise on screen (y points down); 0 = an upright head
    width: float  # pixels, before rotation

    def header(self) -> str:
        """One item of the X-Catface-Stickers list (an RFC 8941 structured-field list)."""
        return f"{self.sticker};x={self.x:.2f};y={self.y:.2f};angle={self.angle:.2f};width={self.width:.2f}"


def place(sticker: Sticker, landmarks: np.ndarray) -> Placement | None:
    """Where a sticker goes on a face with these 9 landmarks (photo pixels); None when the eyes
    are (almost) on the same pixel."""
    points = np.asarray(landmarks, np.float64)
    left, right = points[0], points[1]
    eye_line = right - left
    distance = float(np.hypot(*eye_line))
    if distance < MIN_EYE_DISTANCE:
        return None
    angle = math.atan2(eye_line[1], eye_line[0])
    up = np.array([math.sin(angle), -math.cos(angle)])  # the eye line turned 90 degrees anticlockwise
    # The ears are on the head's top and the mouth below the eyes: should the eyes come out
    # swapped (a head upside down), turn the sticker round rather than put it under the chin.
    if np.dot(points[3:].mean(axis=0) - points[2], up) < 0:
        angle, up = angle + math.pi, -up
    art = stickers.ART[Sticker(sticker)]
    centre = (left + right) / 2 + up * art.lift * distance
    degrees = (math.degrees(angle) + 180) % 360 - 180
    return Placement(Sticker(sticker).value, float(centre[0]), float(centre[1]), degrees, art.width * distance)


def put_sticker(image: Image.Image, placement: Placement) -> None:
    """Composite the sticker onto the RGB photo, in place."""
    art = stickers.ART[Sticker(placement.sticker)]
    upright = stickers.render(Sticker(placement.sticker), placement.width / art.width)
    # Pillow turns anticlockwise; expand keeps the art whole and its centre at the new centre.
    turned = upright.rotate(-placement.angle, resample=Image.Resampling.BICUBIC, expand=True)
    corner = (round(placement.x - turned.width / 2), round(placement.y - turned.height / 2))
    image.paste(turned, corner, turned)


_fonts = threading.local()  # per drawing thread: a FreeType face is not safe to share between threads


def font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    cache = _fonts.__dict__.setdefault("by_size", {})
    if size not in cache:
        if len(cache) >= 64:  # sizes follow the photos: keep the cache bounded
            cache.clear()
        cache[size] = ImageFont.load_default(size)
    return cache[size]


def _text_box(draw: ImageDraw.ImageDraw, xy, text: str, size: int,
              pad: int) -> tuple[float, float, float, float]:
    x0, y0, x1, y1 = draw.textbbox(xy, text, font=font(size))
    return x0 - pad, y0 - pad, x1 + pad, y1 + pad


def draw_face(image: Image.Image, face: Face, number: int) -> None:
    """Box, landmarks 0-8 and the top breed of one face, sized to the face and the photo."""
    draw = ImageDraw.Draw(image)
    colour = PALETTE[(number - 1) % len(PALETTE)]
    x0, y0, x1, y1 = (float(v) for v in face.box)
    face_side = max(x1 - x0, y1 - y0, 1.0)
    longest = max(image.size)
    line = max(2, round(longest / 300))
    draw.rectangle((x0, y0, x1, y1), outline=colour, width=line)

    radius = max(2.0, face_side / 45)
    number_size = max(10, round(face_side / 13))
    centre = np.array([(x0 + x1) / 2, (y0 + y1) / 2])
    for i, (px, py) in enumerate(face.landmarks):
        draw.ellipse((px - radius, py - radius, px + radius, py + radius), fill=colour, outline=(255, 255, 255),
                     width=max(1, round(radius / 3)))
        # The number goes outward from the face's centre, off the point and its neighbours.
        direction = np.array([px, py]) - centre
        direction = direction / max(float(np.hypot(*direction)), 1e-6)
        tx, ty = np.array([px, py]) + direction * (radius + 0.6 * number_size)
        bx0, by0, bx1, by1 = draw.textbbox((0, 0), str(i), font=font(number_size))
        draw.text((tx - (bx0 + bx1) / 2, ty - (by0 + by1) / 2), str(i), font=font(number_size), fill=(255, 255, 255),
                  stroke_width=max(1, number_size // 8), stroke_fill=(0, 0, 0))

    name, score = face.breeds[0] if face.breeds else ("cat", face.score)
    label = f"#{number} {name} {score:.0%}"
    size = max(12, round(min(longest / 30, face_side / 5)))
    pad = max(2, size // 5)
    bx0, by0, bx1, by1 = _text_box(draw, (0, 0), label, size, pad)
    width, height = bx1 - bx0, by1 - by0
    left = min(max(0.0, x0), max(0.0, image.width - width))
    top = y0 - height if y0 - height >= 0 else y0  # above the box, or inside it at the photo's top
    draw.rectangle((left, top, left + width, top + height), fill=colour)
    draw.text((left - bx0, top - by0), label, font=font(size), fill=(0, 0, 0))


def note_area(size: tuple[int, int]) -> tuple[int, int, int, int]:
    """The box (x0, y0, x1, y1; x1 and y1 excluded) the no-face note covers on a photo of `size`."""
    text_size, margin, pad = _note_metrics(size)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    x0, y0, x1, y1 = _text_box(probe, (margin + pad, margin + pad), NO_FACE_NOTE, text_size, pad)
    return (int(math.floor(x0)), int(math.floor(y0)),
            min(size[0], int(math.ceil(x1)) + 1), min(size[1], int(math.ceil(y1)) + 1))


def _note_metrics(size: tuple[int, int]) -> tuple[int, int, int]:
    text_size = max(11, round(max(size) / 45))
    return text_size, max(2, text_size // 2), max(2, text_size // 3)


def draw_note(image: Image.Image) -> None:
    text_size, margin, pad = _note_metrics(image.size)
    draw = ImageDraw.Draw(image)
    x0, y0, x1, y1 = _text_box(draw, (margin + pad, margin + pad), NO_FACE_NOTE, text_size, pad)
    draw.rectangle((x0, y0, x1, y1), fill=(255, 255, 255), outline=(60, 60, 60))
    draw.text((margin + pad, margin + pad), NO_FACE_NOTE, font=font(text_size), fill=(30, 30, 30))


def draw_on(image: Image.Image, faces: list[Face], sticker: Sticker | None = None) -> list[Placement]:
    """Draw on the RGB photo in place: stickers first, so the marks stay visible over them."""
    if not faces:
        draw_note(image)
        return []
    placements = [p for face in faces if sticker is not None and (p := place(sticker, face.landmarks))]
    for placement in placements:
        put_sticker(image, placement)
    for number, face in enumerate(faces, 1):
        draw_face(image, face, number)
    return placements


def negotiate(accept: str | None) -> str | None:
    """The media type to answer: the acceptable one with the highest q (JPEG on a tie or without
    Accept), or None when neither JPEG nor PNG is acceptable. The most specific matching range
    gives a type its q (RFC 9110 12.5.1)."""
    if accept is None or not accept.strip():
        return next(iter(MEDIA_TYPES))
    ranges: dict[str, float] = {}
    for part in accept.split(","):
        kind, *params = (p.strip() for p in part.split(";"))
        q = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    q = min(1.0, max(0.0, float(value)))
                except ValueError:
                    q = 0.0
        ranges[kind.lower()] = q

    def quality(media_type: str) -> float:
        for kind in (media_type, media_type.split("/")[0] + "/*", "*/*"):
            if kind in ranges:
                return ranges[kind]
        return 0.0

    best = max(MEDIA_TYPES, key=quality)  # max keeps the first (the default) on a tie
    return best if quality(best) > 0 else None


def encode(image: Image.Image, media_type: str) -> bytes:
    out = io.BytesIO()
    if MEDIA_TYPES[media_type] == "JPEG":
        image.save(out, "JPEG", quality=90)
    else:
        image.save(out, "PNG", compress_level=3)  # speed over size: the answer is shown once
    return out.getvalue()


def render(image: Image.Image, faces: list[Face], sticker: Sticker | None,
           media_type: str) -> tuple[bytes, list[Placement]]:
    """The annotated photo, encoded; draws on `image` itself (the caller's own copy)."""
    placements = draw_on(image, faces, sticker)
    return encode(image, media_type), placements


def render_photo(photo, faces: list[Face], sticker: Sticker | None, media_type: str) -> tuple[bytes, list[Placement]]:
    """Draw on an imaging.Photo decoded with keep_original: faces come in the original photo's
    pixels, the drawing is on Photo.original (reduced to at most annotate_max_side)."""
    sx, sy = photo.original.width / photo.width, photo.original.height / photo.height
    return render(photo.original, [face.scaled(sx, sy) for face in faces], sticker, media_type)
