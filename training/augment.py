"""Augmentation with numpy and Pillow. Geometry is one affine matrix per sample, applied to the
pixels (Pillow warps with its inverse) and to the points with the very same matrix, so boxes
and landmarks always move with the pixels. Flips also swap left/right landmark names."""
from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

from service import geometry

from .data import FLIP_PERMUTATION


def affine(scale: float = 1.0, angle_deg: float = 0.0, flip: bool = False,
           centre_from=(0.0, 0.0), centre_to=(0.0, 0.0)) -> np.ndarray:
    """3x3 matrix taking source pixels to output pixels: the point `centre_from` lands on
    `centre_to`, scaled, rotated counter-clockwise by angle (as seen), mirrored if flip."""
    a = math.radians(angle_deg)
    c, s = math.cos(a) * scale, math.sin(a) * scale
    m = np.array([[c, s, 0.0], [-s, c, 0.0], [0.0, 0.0, 1.0]])
    if flip:
        m = m @ np.diag([-1.0, 1.0, 1.0])
    m[:2, 2] = np.asarray(centre_to) - m[:2, :2] @ np.asarray(centre_from)
    return m


warp = geometry.warp


def move_points(points: np.ndarray, matrix: np.ndarray, flipped: bool = False) -> np.ndarray:
    moved = geometry.move_points(points, matrix)
    return moved[FLIP_PERMUTATION] if flipped and len(moved) == 9 else moved


def jitter_colour(image: Image.Image, rng: np.random.Generator, strength: float = 0.3) -> Image.Image:
    for enhancer in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
        image = enhancer(image).enhance(float(rng.uniform(1 - strength, 1 + strength)))
    if rng.random() < 0.05:
        image = image.convert("L").convert("RGB")
    return image


crop_around_box = geometry.square_crop_matrix


def user_photo_noise(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """What users' photos do that curated ones rarely do: too dark or overexposed, odd or no
    colour (hairless and unusual coats, grey photos), soft focus, heavy JPEG compression."""
    if rng.random() < 0.3:  # exposure: gamma 0.4 (bright) .. 2.5 (dark)
        gamma = float(np.exp(rng.uniform(np.log(0.4), np.log(2.5))))
        image = image.point([round(255 * (v / 255) ** gamma) for v in range(256)] * 3)
    if rng.random() < 0.25:  # hue rotation and saturation
        h, s, v = image.convert("HSV").split()
        shift = int(rng.integers(-40, 41))
        h = h.point(lambda x: (x + shift) % 256)
        s = s.point(lambda x, k=float(rng.uniform(0.3, 1.6)): min(255, round(x * k)))
        image = Image.merge("HSV", (h, s, v)).convert("RGB")
    if rng.random() < 0.1:
        image = image.convert("L").convert("RGB")
    if rng.random() < 0.2:
        image = image.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.5, 1.8))))
    if rng.random() < 0.3:
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=int(rng.integers(15, 70)))
        image = Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")
    return image
