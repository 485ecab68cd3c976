"""Post-processing of the catface detector's outputs: score threshold, then non-maximum
suppression with a containment rule, and the geometry of the closer looks (contract.ZOOM_*: the
tiles, the small-face look's input size, the candidate windows). Shared by the server and by
training's evaluation so both count the same faces."""
from __future__ import annotations

import numpy as np


def intersection(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Area shared by one box (4,) and each of many (M, 4), all as x_min, y_min, x_max, y_max."""
    lo = np.maximum(box[:2], boxes[:, :2])
    hi = np.minimum(box[2:], boxes[:, 2:])
    return np.prod(np.clip(hi - lo, 0, None), axis=1)


def iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one box (4,) with many (M, 4)."""
    inter = intersection(box, boxes)
    area = np.prod(box[2:] - box[:2])
    areas = np.prod(boxes[:, 2:] - boxes[:, :2], axis=1)
    return inter / np.maximum(area + areas - inter, 1e-12)


def overlap_of_smaller(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Intersection over the smaller box's area: 1 when one box lies inside the other."""
    inter = intersection(box, boxes)
    smaller = np.minimum(np.prod(box[2:] - box[:2]), np.prod(boxes[:, 2:] - boxes[:, :2], axis=1))
    return inter / np.maximum(smaller, 1e-12)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float, containment: float) -> list[int]:
    """Greedy NMS; returns kept indices, best score first. A box is also dropped when most of it
    (`containment`) lies inside a better box or the better box inside it: a partial duplicate of
    one face (an eyes-only box inside a head box) has a low IoU but is still the same face."""
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size:
        best = order[0]
        keep.append(int(best))
        rest = order[1:]
        overlapping = iou(boxes[best], boxes[rest]) > iou_threshold
        inside = overlap_of_smaller(boxes[best], boxes[rest]) >= containment
        order = rest[~(overlapping | inside)]
    return keep


def select_faces(scores: np.ndarray, boxes: np.ndarray, score_threshold: float,
                 iou_threshold: float, containment: float, max_faces: int) -> tuple[np.ndarray, np.ndarray]:
    """One image's outputs (A,) and (A, 4) -> kept (K, 4) boxes (still normalised) and scores."""
    candidates = np.nonzero(scores >= score_threshold)[0]
    kept = candidates[nms(boxes[candidates], scores[candidates], iou_threshold, containment)][:max_faces]
    return np.clip(boxes[kept], 0.0, 1.0), scores[kept]


def zoom_grid(face_sides: np.ndarray, below: float, grid_none: int, grid_small: int) -> int:
    """How closely to look again, from the sides (px at the detector input) of the faces the
    whole-photo pass kept: grid_none tiles a side when it found none, grid_small when one is
    under `below` px, else 0 (no second look)."""
    if len(face_sides) == 0:
        return grid_none
    return grid_small if float(np.min(face_sides)) < below else 0


def small_look_size(width: int, height: int, side: int, multiple: int) -> tuple[int, int]:
    """(height, width) of the small-face look's input for a width x height photo: the longer side
    `side` px, the shorter at the photo's aspect ratio, rounded to a multiple of `multiple`."""
    short = max(multiple, round(side * min(width, height) / max(width, height) / multiple) * multiple)
    return (short, side) if width >= height else (side, short)


def tiles(grid: int, overlap: float) -> np.ndarray:
    """(grid * grid, 4) overlapping windows normalised to the photo, row-major: each
    (1 + overlap) / grid of the side, so neighbours share overlap / (grid - 1) of it."""
    side = (1 + overlap) / grid
    starts = np.linspace(0.0, 1.0 - side, grid)
    return np.array([(x, y, x + side, y + side) for y in starts for x in starts], np.float32)


def from_tile(window: np.ndarray, boxes: np.ndarray, edge: float) -> tuple[np.ndarray, np.ndarray]:
    """A tile's kept boxes (normalised to the tile) -> the same boxes normalised to the photo,
    and which to keep: a box within `edge` (normalised) of an edge the tile shares with a
    neighbour is a face the tile cuts (the neighbour holds it whole)."""
    inner = np.concatenate([window[:2] > 0, window[2:] < 1])  # left, top, right, bottom
    near = np.concatenate([boxes[:, :2] < edge, boxes[:, 2:] > 1 - edge], axis=1)
    whole = ~np.any(near & inner, axis=1)
    side = window[2:] - window[:2]
    return boxes * np.tile(side, 2) + np.tile(window[:2], 2), whole


def around(boxes: np.ndarray, scale: float, width: int, height: int) -> np.ndarray:
    """Square windows of `scale` x each box's longer side (boxes in photo pixels), centred on the
    boxes, normalised to the photo (they may reach past its edges)."""
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    half = scale * np.max(boxes[:, 2:] - boxes[:, :2], axis=1, keepdims=True) / 2
    windows = np.concatenate([centres - half, centres + half], axis=1)
    return (windows / [width, height, width, height]).astype(np.float32)
