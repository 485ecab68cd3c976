"""Affine crops shared by the server and the training code, so both cut faces the same way."""
from __future__ import annotations

import numpy as np
from PIL import Image


def square_crop_matrix(box, out_size: int, scale: float) -> np.ndarray:
    """3x3 matrix from photo pixels to crop pixels: a square of side scale x the box's longer
    side, centred on the box, resized to out_size x out_size."""
    x0, y0, x1, y1 = (float(v) for v in box)
    k = out_size / (scale * max(x1 - x0, y1 - y0, 1.0))
    return np.array([[k, 0.0, out_size / 2 - k * (x0 + x1) / 2],
                     [0.0, k, out_size / 2 - k * (y0 + y1) / 2],
                     [0.0, 0.0, 1.0]])


def mirror_matrix(width: int) -> np.ndarray:
    """3x3 matrix that mirrors an image `width` pixels wide left to right."""
    return np.array([[-1.0, 0.0, width], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])


def warp(image: Image.Image, matrix: np.ndarray, size: tuple[int, int], fill=(0, 0, 0)) -> Image.Image:
    """Pixels of `image` moved by `matrix` (source -> output) into an image of `size`."""
    inverse = np.linalg.inv(matrix)
    return image.transform(size, Image.Transform.AFFINE, tuple(inverse[:2].flatten()),
                           Image.Resampling.BILINEAR, fillcolor=fill)


def centre_box(size: tuple[int, int], share: float) -> tuple[int, int, int, int]:
    """The middle `share` of each side of a (width, height) photo, as a PIL crop box."""
    w, h = size
    cw, ch = max(1, round(w * share)), max(1, round(h * share))
    return (w - cw) // 2, (h - ch) // 2, (w - cw) // 2 + cw, (h - ch) // 2 + ch


def move_points(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    return points @ matrix[:2, :2].T + matrix[:2, 2]


def to_chw(image: Image.Image, size: tuple[int, int] | None = None, dtype: type = np.float32) -> np.ndarray:
    """Stretch to (height, width) when a size is given, and lay out as CHW 0..255: a model input
    row. The one such helper, for the server and the training code. The service keeps its rows
    uint8 (exact: the pixels are whole numbers) until the model call makes them float32."""
    if size is not None and image.size != (size[1], size[0]):
        image = image.resize((size[1], size[0]), Image.Resampling.BILINEAR)
    return np.asarray(image, dtype).transpose(2, 0, 1)
