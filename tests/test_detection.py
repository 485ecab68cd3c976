"""Post-processing of the detector's outputs (service/detection.py): the NMS and containment
rules that decide how many faces a photo has."""
from __future__ import annotations

import numpy as np

from service.contract import CONTAINMENT_THRESHOLD, IOU_THRESHOLD, MAX_FACES, SCORE_THRESHOLD
from service.detection import select_faces


def select(boxes, scores):
    return select_faces(np.array(scores, np.float32), np.array(boxes, np.float32), SCORE_THRESHOLD,
                        IOU_THRESHOLD, CONTAINMENT_THRESHOLD, MAX_FACES)


def test_a_partial_box_inside_a_face_box_is_the_same_face():
    head = [0.2, 0.2, 0.6, 0.6]
    eyes_only = [0.25, 0.3, 0.45, 0.42]  # IoU with the head box 0.15: NMS alone keeps both
    kept, scores = select([head, eyes_only], [0.9, 0.8])
    assert np.allclose(kept, [head]) and np.allclose(scores, [0.9])


def test_a_better_partial_box_replaces_the_box_around_it():
    head, eyes_only = [0.2, 0.2, 0.6, 0.6], [0.25, 0.3, 0.45, 0.42]
    kept, _ = select([head, eyes_only], [0.7, 0.9])
    assert np.allclose(kept, [eyes_only])


def test_faces_side_by_side_and_touching_are_all_kept():
    kittens = [[0.1, 0.4, 0.3, 0.6], [0.28, 0.4, 0.48, 0.6], [0.46, 0.42, 0.66, 0.62]]
    kept, _ = select(kittens, [0.9, 0.85, 0.8])
    assert len(kept) == 3


def test_boxes_below_the_score_threshold_and_beyond_max_faces_are_dropped():
    grid = [[i / 30, 0.0, i / 30 + 0.02, 0.02] for i in range(30)]
    kept, scores = select(grid, [0.99] * 25 + [SCORE_THRESHOLD - 0.01] * 5)
    assert len(kept) == MAX_FACES and (scores >= SCORE_THRESHOLD).all()
