"""Post-processing of the detector's outputs (service/detection.py): the NMS and containment
rules that decide how many faces a photo has, and the tiles of the closer second look."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from service.contract import (
    CONTAINMENT_THRESHOLD,
    IOU_THRESHOLD,
    MAX_FACES,
    SCORE_THRESHOLD,
    ZOOM_BELOW,
    ZOOM_EDGE,
    ZOOM_GRID_NONE,
    ZOOM_GRID_SMALL,
    ZOOM_OVERLAP,
    ZOOM_SMALL_LOOK,
)
from service.detection import around, from_tile, select_faces, small_look_size, tiles, zoom_grid
from service.pipeline import CatFace
from service.runtime import SMALL_LOOK, read_manifest, small_look_entry

from .conftest import MODELS


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


def test_the_closer_look_comes_where_the_whole_photo_pass_found_no_face_or_a_small_one():
    grids = dict(below=ZOOM_BELOW, grid_none=ZOOM_GRID_NONE, grid_small=ZOOM_GRID_SMALL)
    assert zoom_grid(np.array([]), **grids) == ZOOM_GRID_NONE
    assert zoom_grid(np.array([120.0, ZOOM_BELOW - 1]), **grids) == ZOOM_GRID_SMALL
    assert zoom_grid(np.array([ZOOM_BELOW, 200.0]), **grids) == 0


@pytest.mark.parametrize("grid", [ZOOM_GRID_NONE, ZOOM_GRID_SMALL])
def test_tiles_cover_the_photo_and_neighbours_share_the_overlap(grid):
    windows = tiles(grid, ZOOM_OVERLAP)
    assert windows.shape == (grid * grid, 4)
    assert windows[:, :2].min() == 0 and np.isclose(windows[:, 2:].max(), 1)
    first, second = windows[0], windows[1]  # row-major: the second is the first's right neighbour
    assert np.isclose(first[2] - second[0], ZOOM_OVERLAP / (grid - 1))
    # any face up to the shared width lies whole inside some tile
    side = ZOOM_OVERLAP / (grid - 1)
    for x in np.linspace(0, 1 - side, 37):
        face = np.array([x, x, x + side, x + side])
        assert any(np.all(face[:2] >= w[:2] - 1e-6) and np.all(face[2:] <= w[2:] + 1e-6) for w in windows)


def test_a_tile_box_goes_back_to_the_photo_and_a_face_cut_by_a_shared_edge_goes():
    window = np.array([0.0, 0.4, 0.6, 1.0], np.float32)  # the bottom-left tile of 2x2
    edge = ZOOM_EDGE / 256
    inside = [0.5, 0.5, 0.75, 0.75]
    on_the_photo_edge = [0.0, 0.6, 0.2, 1.0]  # the photo's left and bottom edges: a real face
    cut_right, cut_top = [0.8, 0.5, 1.0, 0.7], [0.2, 0.0, 0.4, 0.3]  # edges shared with neighbours
    placed, whole = from_tile(window, np.array([inside, on_the_photo_edge, cut_right, cut_top], np.float32), edge)
    assert whole.tolist() == [True, True, False, False]
    assert np.allclose(placed[0], [0.3, 0.7, 0.45, 0.85])


def test_a_half_seen_box_gets_a_square_window_around_it_that_may_reach_past_the_photo():
    box = np.array([[10.0, 20.0, 30.0, 30.0]])  # 20 x 10 px, near the top-left corner of a 200 x 100 photo
    (window,) = around(box, 4, 200, 100)
    assert np.allclose(window * [200, 100, 200, 100], [-20, -15, 60, 65])  # 80 px square, same centre


def looks_of(outputs: list[tuple[list, list]]) -> tuple[list[int], list, list[int]]:
    """Run CatFace.face_looks on an 800x600 photo with the shipped post-processing, answering each
    look with the given (scores, boxes) of its windows; the rows each look asked for, the faces,
    and each look's input (height, width)."""
    entries = [e for e in read_manifest(MODELS)["models"] if e["format"] == "onnx"]
    entries += [look for e in entries if (look := small_look_entry(e))]
    models = {e["name"]: SimpleNamespace(entry=e, input_size=tuple(e["inputs"][0]["shape"][2:4]), name=e["name"])
              for e in entries}
    looks = CatFace(models).face_looks(Image.new("RGB", (800, 600)))
    rows = next(looks)
    asked, sides = [len(rows)], [rows.shape[2:4]]
    for scores, boxes in outputs:
        try:
            rows = looks.send((np.array(scores, np.float32), np.array(boxes, np.float32)))
            asked.append(len(rows))
            sides.append(rows.shape[2:4])
        except StopIteration as done:
            return asked, done.value, sides
    raise AssertionError("the looks wanted more")


HALF_SEEN = [0.7, 0.7, 0.75, 0.75]  # 40 x 30 px; its own window is 160 px square around it


def test_a_half_seen_box_becomes_a_face_when_its_own_window_finds_one_on_it():
    big_face = [0.1, 0.1, 0.5, 0.5]  # 102 px at the input: no tiles
    asked, faces, _ = looks_of([([[0.9, 0.4]], [[big_face, HALF_SEEN]]),
                             ([[0.8]], [[[0.375, 0.375, 0.625, 0.625]]])])  # the window's centre
    assert asked == [1, 1]
    assert len(faces) == 2 and faces[1].score == pytest.approx(0.8)
    assert np.allclose(faces[1].box, [560, 415, 600, 455])


def test_a_half_seen_box_stays_out_when_its_window_finds_no_face_on_it():
    asked, faces, _ = looks_of([([[0.9, 0.4]], [[[0.1, 0.1, 0.5, 0.5], HALF_SEEN]]),
                             ([[0.8]], [[[0.0, 0.0, 0.2, 0.2]]])])  # a face in the window's corner
    assert asked == [1, 1] and len(faces) == 1


def test_no_face_in_the_photo_brings_the_no_face_tiles_and_their_faces():
    tile_faces = [[[0.4, 0.4, 0.6, 0.6]]] + [[[0.0, 0.0, 0.1, 0.1]]] * 3
    asked, faces, _ = looks_of([([[0.1]], [[[0.0, 0.0, 0.1, 0.1]]]),
                             ([[0.9], [0.1], [0.1], [0.1]], tile_faces)])
    assert asked == [1, ZOOM_GRID_NONE ** 2] and len(faces) == 1
    assert np.allclose(faces[0].box, [0.24 * 800, 0.24 * 600, 0.36 * 800, 0.36 * 600])  # tile 0 is 0.6 wide


def test_a_small_face_brings_one_look_at_the_whole_photo_its_longer_side_at_the_small_looks_side():
    small_face = [0.1, 0.1, 0.2, 0.2]  # 26 px at the input: under ZOOM_BELOW
    asked, faces, sides = looks_of([([[0.9]], [[small_face]]),
                                    ([[0.9, 0.8]], [[small_face, [0.5, 0.5, 0.55, 0.55]]])])  # one more
    assert asked == [1, 1] and sides == [(256, 256), (480, ZOOM_SMALL_LOOK)]  # the 800x600 photo's 4:3 kept
    assert len(faces) == 2 and np.allclose(faces[1].box, [400, 300, 440, 330])


def test_the_small_look_keeps_the_photos_aspect_ratio_in_multiples_of_the_largest_stride():
    assert small_look_size(800, 600, 640, 32) == (480, 640)
    assert small_look_size(600, 800, 640, 32) == (640, 480)
    assert small_look_size(500, 500, 640, 32) == (640, 640)
    assert small_look_size(1920, 1080, 640, 32) == (352, 640)  # 360 rounded to a multiple of 32
    assert small_look_size(4000, 100, 640, 32) == (32, 640)  # never under one multiple


def test_the_small_look_is_its_own_model_that_the_drivers_pick_by_its_rows_side():
    models = {e["name"]: SimpleNamespace(entry=e, input_size=tuple(e["inputs"][0]["shape"][2:4]), name=e["name"])
              for e in read_manifest(MODELS)["models"] if e["format"] == "onnx"}
    look = small_look_entry(models["catface"].entry)
    models[SMALL_LOOK] = SimpleNamespace(entry=look, input_size=(ZOOM_SMALL_LOOK, ZOOM_SMALL_LOOK), name=SMALL_LOOK)
    catface = CatFace(models)
    assert catface.detector_for(np.zeros((1, 3, 256, 256))).name == "catface"
    assert catface.detector_for(np.zeros((1, 3, ZOOM_SMALL_LOOK, ZOOM_SMALL_LOOK))).name == SMALL_LOOK
    assert catface.detector_for(np.zeros((1, 3, 480, ZOOM_SMALL_LOOK))).name == SMALL_LOOK
    assert look["max_batch"] == 1 and look["weights"] == "int8"
    assert look["float_reference"]["file"] == "catface.640.onnx"
