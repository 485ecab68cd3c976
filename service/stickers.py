"""Sticker art, drawn by code with Pillow (our own art: no image files, nothing copied).

Each sticker is drawn in units of the cat's eye distance on a canvas whose centre is the point
that service.annotate places on the face, upright (as on a head with level eyes); annotate then
rotates it with the head. Drawing happens at up to 4x the final size and is scaled down, which
gives smooth edges (ImageDraw itself does not antialias).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

from PIL import Image, ImageDraw

MAX_CANVAS_SIDE = 2048  # supersampling stops here: a huge face needs no extra smoothing


class Sticker(str, Enum):
    glasses = "glasses"
    hat = "hat"


class Pen:
    """ImageDraw in eye-distance units, x to the right and y down from the canvas centre."""

    def __init__(self, image: Image.Image, unit: float):
        self.image, self.draw, self.unit = image, ImageDraw.Draw(image), unit
        self.cx, self.cy = image.width / 2, image.height / 2

    def xy(self, x: float, y: float) -> tuple[float, float]:
        return self.cx + x * self.unit, self.cy + y * self.unit

    def box(self, x0: float, y0: float, x1: float, y1: float) -> tuple[float, float, float, float]:
        return (*self.xy(x0, y0), *self.xy(x1, y1))

    def px(self, length: float) -> int:
        return max(1, round(length * self.unit))


@dataclass(frozen=True)
class Art:
    width: float   # canvas, in eye distances
    height: float
    lift: float    # canvas centre above the eyes' midpoint along the head's up, in eye distances
    paint: Callable[[Pen], None]


def _glasses(pen: Pen) -> None:
    frame, lens, glint = (22, 22, 26, 255), (18, 24, 40, 175), (255, 255, 255, 140)
    d = pen.draw
    for side in (-1, 1):  # a lens centred on each eye (eyes at x = -0.5 and +0.5)
        x0, x1 = sorted((side * 0.08, side * 0.93))
        d.rounded_rectangle(pen.box(x0, -0.33, x1, 0.37), radius=pen.px(0.2), fill=lens,
                            outline=frame, width=pen.px(0.075))
        gx = side * 0.5 - 0.22
        d.line([pen.xy(gx, -0.12), pen.xy(gx + 0.14, -0.24)], fill=glint, width=pen.px(0.05))
        d.line([pen.xy(side * 0.92, -0.16), pen.xy(side * 1.18, -0.23)], fill=frame, width=pen.px(0.06))
    d.arc(pen.box(-0.13, -0.24, 0.13, 0.02), 200, 340, fill=frame, width=pen.px(0.07))  # the bridge


def _hat(pen: Pen) -> None:
    # A party hat: striped cone from a fluffy band at y = 0.62 to a pompom at the top.
    d, size = pen.draw, pen.image.size
    cone = [pen.xy(-0.5, 0.62), pen.xy(0.5, 0.62), pen.xy(0.0, -0.7)]
    mask = Image.new("L", size, 0)
    ImageDraw.Draw(mask).polygon(cone, fill=255)
    stripes = Image.new("RGBA", size, (236, 64, 122, 255))
    sd = ImageDraw.Draw(stripes)
    for i in range(-6, 6, 2):  # yellow diagonal bands, every other 0.22 units
        y = 0.22 * i
        sd.polygon([pen.xy(-0.7, y), pen.xy(0.7, y - 0.35), pen.xy(0.7, y - 0.13), pen.xy(-0.7, y + 0.22)],
                   fill=(255, 203, 46, 255))
    pen.image.paste(stripes, (0, 0), mask)
    d.polygon(cone, outline=(120, 30, 60, 255), width=pen.px(0.04))
    d.ellipse(pen.box(-0.56, 0.52, 0.56, 0.74), fill=(250, 250, 250, 255), outline=(200, 200, 210, 255),
              width=pen.px(0.03))
    d.ellipse(pen.box(-0.14, -0.86, 0.14, -0.58), fill=(92, 200, 255, 255), outline=(40, 120, 180, 255),
              width=pen.px(0.03))


# Sizes from the Crawford labels (median, in eye distances from the eyes' midpoint): inner ear
# bases 0.96 up and 0.47 to the side, mouth 0.79 down. The hat's band sits at 0.85 up, between
# the ears (its canvas centre is 0.62 above the band).
ART = {
    Sticker.glasses: Art(width=2.5, height=1.0, lift=0.0, paint=_glasses),
    Sticker.hat: Art(width=1.3, height=1.8, lift=0.85 + 0.62, paint=_hat),
}


def render(sticker: Sticker, eye_distance: float) -> Image.Image:
    """The upright sticker as RGBA for a face with this eye distance (pixels); its centre is the
    point to place."""
    art = ART[Sticker(sticker)]
    side = max(art.width, art.height) * eye_distance
    scale = max(1.0, min(4.0, MAX_CANVAS_SIDE / max(side, 1.0)))
    final = (max(1, round(art.width * eye_distance)), max(1, round(art.height * eye_distance)))
    big = (max(1, round(final[0] * scale)), max(1, round(final[1] * scale)))
    canvas = Image.new("RGBA", big, (0, 0, 0, 0))
    art.paint(Pen(canvas, big[0] / art.width))
    return canvas.resize(final, Image.Resampling.LANCZOS) if big != final else canvas
