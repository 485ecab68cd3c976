"""The cat logic: a face is found, cropped, measured and named.

Stages are small functions on one photo (prepare an input, read an output) so that the same
steps serve both ways of running the models: `CatFace.detect` runs a list of photos
synchronously in batches (in-process use, evaluation, benchmarks), and the server runs the same
stages through its batching engine (service.analysis).
"""
from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from . import geometry
from .contract import BREED_CROP_SCALE
from .detection import around, from_tile, iou, nms, select_faces, small_look_size, tiles, zoom_grid
from .geometry import to_chw
from .runtime import DEFAULT_MODELS_DIR, SMALL_LOOK, ModelFileError, OnnxModel, load_models

ONE_LANDMARK_LOOK = {"scale": 1.0, "mirror": False}  # the landmarker's look at a face when its manifest names none


def model_row(image: Image.Image, size: tuple[int, int]) -> np.ndarray:
    """A model input row, kept uint8 until OnnxModel.run makes it float32: the rows of every
    photo in flight (a photo of 20 faces has 81: three landmark looks and a breed crop per face,
    and the photo) wait in the batchers' queues at a quarter of the memory."""
    return to_chw(image, size, np.uint8)


# CatFace.face_looks: yields detector rows, is sent their (scores, boxes), returns the faces
Looks = Generator[np.ndarray, tuple[np.ndarray, np.ndarray], "list[Face]"]
WHOLE_PHOTO = np.array([[0.0, 0.0, 1.0, 1.0]], np.float32)  # a look's window: the whole photo


@dataclass
class PhotoBreeds:
    cat: bool
    faces: int                           # cat faces the detector found
    breeds: list[tuple[str, float]]
    basis: str                           # "face_and_photo" (one face's crop and the photo) or "photo"
    cat_score: float                     # the classifier's highest cat probability over its views


@dataclass
class Face:
    box: np.ndarray  # x_min, y_min, x_max, y_max in photo pixels
    score: float
    landmarks: np.ndarray = field(default_factory=lambda: np.zeros((9, 2), np.float32))  # (9, 2) pixels
    breeds: list[tuple[str, float]] = field(default_factory=list)

    def scaled(self, sx: float, sy: float) -> Face:
        return Face(self.box * [sx, sy, sx, sy], self.score, self.landmarks * [sx, sy], self.breeds)


class CatFace:
    # the closer looks (zoom_windows' why) made as the small-face look, not tiles (the no-face one
    # too was measured and not shipped: benchmarks/zoom_none_look.py)
    whole_looks = ("small",)

    def __init__(self, models: dict[str, OnnxModel]):
        self.models = models
        self.detector, self.landmarker, self.classifier = models["catface"], models["catlandmarks"], models["catbreeds"]
        post = self.detector.entry["postprocess"]
        self.score_threshold, self.iou_threshold = post["score_threshold"], post["iou_threshold"]
        self.containment = post["containment_threshold"]
        self.max_faces = post["max_faces"]
        self.zoom = post.get("zoom")  # a manifest without it (catface 1.0.0's): no second look
        # the small-face look: the whole photo at a larger side, in place of the small-face tiles
        self.small_look: OnnxModel | None = models.get(SMALL_LOOK)
        self.detectors = [m for m in (self.detector, self.small_look) if m is not None]  # every detector file
        crop = self.landmarker.entry["inputs"][0]["crop"]
        self.crop_scale = crop["scale"]
        # the looks whose points are averaged: (crop size x crop_scale, mirrored); a manifest
        # without them (catlandmarks 1.0.0's): the one crop
        self.landmark_looks = tuple((look["scale"], look["mirror"]) for look in crop.get("looks", [ONE_LANDMARK_LOOK]))
        self.mirror_order = self.landmarker.entry.get("mirror_permutation")  # each point's index in a mirror
        if any(mirror for _, mirror in self.landmark_looks) and sorted(self.mirror_order or ()) != list(range(9)):
            raise ModelFileError("catlandmarks: a mirrored look needs the entry's mirror_permutation of the 9 points")
        self.breed_labels = self.classifier.entry["labels"]
        self.breed_threshold = self.classifier.entry["report_threshold"]
        self.cat_threshold = self.classifier.entry["cat_threshold"]

    # ---- stages ------------------------------------------------------------------------------
    def detector_input(self, image: Image.Image) -> np.ndarray:
        return model_row(image, self.detector.input_size)

    def faces_from(self, scores: np.ndarray, boxes: np.ndarray, image: Image.Image) -> list[Face]:
        kept, kept_scores = select_faces(scores, boxes, self.score_threshold, self.iou_threshold, self.containment,
                                                self.max_faces)
        w, h = image.size
        return [Face((b * [w, h, w, h]).astype(np.float32), float(s)) for b, s in zip(kept, kept_scores)]

    # ---- the detector's looks at one photo ----------------------------------------------------
    def face_looks(self, image: Image.Image, zoom: bool = True) -> Looks:
        """The detector's looks at one photo, as a generator: it yields the detector rows of its
        next look, is sent their (scores, boxes) and returns the faces, best first. The in-process
        driver (CatFace.faces) and the server's (service.analysis) run these same looks:
        1. the whole photo;
        2. (zoom) where that kept no face, overlapping tiles (zoom_windows); where it kept a small
           one, the whole photo again at the small look's larger side (or, without that model, tiles);
        3. (zoom) a window of its own around each box a look of ZOOM_CANDIDATES_FROM half-saw
           (candidate_windows); a face found there on that box is kept.
        Without the manifest's postprocess.zoom (catface 1.0.0) or with zoom=False: look 1 only."""
        scores, boxes = yield self.detector_input(image)[None]
        if not (zoom and self.zoom):
            return self.faces_from(scores[0], boxes[0], image)
        z = self.zoom
        seen = self._seen(WHOLE_PHOTO, scores, boxes, z["candidate_score"], edge=0.0)
        faces, candidates = self._split(seen, "photo" in z["candidates_from"])
        windows, why = self.zoom_windows(faces, image)
        if len(windows):
            if why in self.whole_looks and self.small_look is not None:  # one look at the whole photo, not tiles
                windows, rows = WHOLE_PHOTO, self.small_look_row(image)
            else:
                rows = self.tile_inputs(image, windows)
            scores, boxes = yield rows
            edge = z["edge_px"] / self.detector.input_size[0]
            tiles_seen = self._seen(windows, scores, boxes, z["candidate_score"], edge)
            more, more_candidates = self._split(tiles_seen, why in z["candidates_from"])
            faces = self._best(np.concatenate([faces, more]), self.max_faces)
            candidates = self._best(np.concatenate([candidates, more_candidates]), None)
        windows, chosen = self.candidate_windows(candidates, faces, image)
        if len(windows):
            scores, boxes = yield self.tile_inputs(image, windows)
            found = self._seen(windows, scores, boxes, self.score_threshold, edge=0.0, one_each=True)
            on_candidate = [i for i, (box, window) in enumerate(zip(found[:, :4], found[:, 5].astype(int)))
                            if iou(box, chosen[window, None, :4])[0] > self.iou_threshold]
            faces = self._best(np.concatenate([faces, found[on_candidate, :5]]), self.max_faces)
        w, h = image.size  # (a window around a half-seen box may reach past the photo: clamp)
        return [Face((np.clip(row[:4], 0, 1) * [w, h, w, h]).astype(np.float32), float(row[4])) for row in faces]

    def zoom_windows(self, faces: np.ndarray, image: Image.Image) -> tuple[np.ndarray, str]:
        """The tiles (normalised windows) of the closer look after the whole photo's look kept
        `faces` (rows x0, y0, x1, y1 normalised, score), and why: "none" (no face) or "small";
        no tiles when it needs no closer look."""
        side = self.detector.input_size[0]
        sides = np.max(faces[:, 2:4] - faces[:, :2], axis=1) * side if len(faces) else np.zeros(0)
        grid = zoom_grid(sides, self.zoom["below_px"], self.zoom["grid_none"], self.zoom["grid_small"])
        return (tiles(grid, self.zoom["overlap"]) if grid else np.zeros((0, 4), np.float32)), (
            "small" if len(faces) else "none")

    def small_look_row(self, image: Image.Image) -> np.ndarray:
        """The small-face look's detector row: the whole photo, its longer side at the look's side,
        its aspect ratio kept (detection.small_look_size)."""
        look = self.zoom["small_look"]
        return model_row(image, small_look_size(*image.size, look["side"], look["multiple"]))[None]

    def candidate_windows(self, candidates: np.ndarray, faces: np.ndarray,
                          image: Image.Image) -> tuple[np.ndarray, np.ndarray]:
        """A window of its own (normalised) around each half-seen box that no face covers (the
        NMS of faces and boxes together: a face always scores higher), best first, at most
        max_candidates; and those boxes' rows, in the windows' order."""
        rows = self._best(np.concatenate([faces, candidates]), None)
        chosen = rows[rows[:, 4] < self.score_threshold][: self.zoom["max_candidates"]]
        w, h = image.size
        return around(chosen[:, :4] * [w, h, w, h], self.zoom["candidate_window"], w, h), chosen

    def detector_for(self, rows: np.ndarray) -> OnnxModel:
        """The detector file that runs these rows: the served side's, or else the small-face look's
        (any size: the photo's aspect ratio)."""
        if tuple(rows.shape[2:4]) == self.detector.input_size or self.small_look is None:
            return self.detector
        return self.small_look

    def tile_inputs(self, image: Image.Image, windows: np.ndarray) -> np.ndarray:
        """Detector rows of windows (normalised) of the photo; outside it is black."""
        w, h = image.size
        return np.stack([self.detector_input(image.crop(tuple(np.round(win * [w, h, w, h]).astype(int))))
                         for win in windows])

    def _seen(self, windows: np.ndarray, scores: np.ndarray, boxes: np.ndarray, threshold: float, edge: float,
              one_each: bool = False) -> np.ndarray:
        """Rows (x0, y0, x1, y1 normalised to the photo, score, window) of the boxes scored from
        `threshold` up in each window, after its NMS (one_each: its best box only); a box a tile
        cuts (within `edge` of an edge it shares with another) left out."""
        rows = []
        for n, (window, s, b) in enumerate(zip(windows, scores, boxes)):
            kept, kept_scores = select_faces(s, b, threshold, self.iou_threshold, self.containment, self.max_faces)
            placed, whole = from_tile(window, kept, edge)
            for box, score in list(zip(placed[whole], kept_scores[whole]))[: 1 if one_each else None]:
                rows.append([*box, score, n])
        return np.array(rows, np.float32).reshape(-1, 6)

    def _split(self, seen: np.ndarray, candidates_too: bool) -> tuple[np.ndarray, np.ndarray]:
        """Faces (score >= threshold) and half-seen boxes (if asked) as rows x0, y0, x1, y1, score."""
        face = seen[:, 4] >= self.score_threshold
        return seen[face, :5], seen[~face & candidates_too, :5]

    def _best(self, rows: np.ndarray, limit: int | None) -> np.ndarray:
        """Rows x0, y0, x1, y1, score of several looks through one NMS, best first."""
        keep = nms(rows[:, :4], rows[:, 4], self.iou_threshold, self.containment)[:limit]
        return rows[keep].reshape(-1, 5)

    def landmark_input(self, image: Image.Image, face: Face) -> tuple[np.ndarray, np.ndarray]:
        """A face's landmarker rows, one per look, and each row's crop matrix (a mirrored look's
        crop is the mirror image of its square)."""
        size = self.landmarker.input_size
        matrices = np.stack([(geometry.mirror_matrix(size[1]) if mirror else np.eye(3))
                             @ geometry.square_crop_matrix(face.box, size[0], self.crop_scale * scale)
                             for scale, mirror in self.landmark_looks])
        return np.stack([model_row(geometry.warp(image, m, (size[1], size[0])), size) for m in matrices]), matrices

    def landmarks_from(self, outputs: np.ndarray, matrices: np.ndarray) -> np.ndarray:
        """A face's 9 points in the photo: the mean of its looks' points (landmark_input's rows;
        a mirrored look names the cat's left what is its right: its points are put back in order)."""
        crop_points = outputs.reshape(-1, 9, 2) * [self.landmarker.input_size[1], self.landmarker.input_size[0]]
        photo_points = [geometry.move_points(p, np.linalg.inv(m))[self.mirror_order if mirror else slice(None)]
                        for p, m, (_, mirror) in zip(crop_points, matrices, self.landmark_looks)]
        return np.mean(photo_points, axis=0).astype(np.float32)

    def face_points(self, image: Image.Image, face: Face) -> np.ndarray:
        """One face's 9 points in the photo, its looks run as one call (detect runs many faces' together)."""
        rows, matrices = self.landmark_input(image, face)
        (outputs,) = self.landmarker.run(rows)
        return self.landmarks_from(outputs, matrices)

    def face_landmarks(self, faces: list[Face], matrices: list[np.ndarray], outputs: np.ndarray) -> None:
        """Sets each face's landmarks from the landmarker's outputs for all their rows, in order."""
        for face, matrix, out in zip(faces, matrices, outputs.reshape(len(faces), -1, outputs.shape[-1])):
            face.landmarks = self.landmarks_from(out, matrix)

    def breed_input(self, image: Image.Image, face: Face | None = None) -> np.ndarray:
        if face is None:
            return model_row(image, self.classifier.input_size)
        size = self.classifier.input_size
        matrix = geometry.square_crop_matrix(face.box, size[0], BREED_CROP_SCALE)
        return model_row(geometry.warp(image, matrix, (size[1], size[0])), size)

    def breeds_from(self, probabilities: np.ndarray) -> list[tuple[str, float]]:
        order = np.argsort(-probabilities, kind="stable")
        return [(self.breed_labels[i], float(probabilities[i])) for i in order
                if probabilities[i] >= self.breed_threshold]

    # The classifier sees each face's crop and the whole photo; with one cat in the photo both
    # views are averaged, the most accurate rule on validation (see models/MODEL_CARD.md).
    def breed_inputs(self, image: Image.Image, faces: list[Face]) -> np.ndarray:
        """Classifier rows: one crop per face, then the whole photo."""
        return np.stack([self.breed_input(image, face) for face in faces] + [self.breed_input(image)])

    def face_breeds(self, probabilities: np.ndarray) -> list[list[tuple[str, float]]]:
        """Breeds per face from the rows of breed_inputs."""
        crops, whole = probabilities[:-1], probabilities[-1]
        if len(crops) == 1:
            return [self.breeds_from((crops[0] + whole) / 2)]
        return [self.breeds_from(p) for p in crops]

    def cat_faces(self, faces: list[Face], probabilities: np.ndarray, cat_scores: np.ndarray) -> list[Face]:
        """The faces whose crop the classifier calls a cat (cat output >= cat_threshold), each with
        its breeds, from the rows of breed_inputs. A dog's face the detector took for a cat's
        goes, as /breeds already answers such a photo `cat: false`."""
        kept = [i for i in range(len(faces)) if cat_scores[i] >= self.cat_threshold]
        for i, breeds in zip(kept, self.face_breeds(probabilities[[*kept, len(faces)]])):
            faces[i].breeds = breeds
        return [faces[i] for i in kept]

    @staticmethod
    def photo_probabilities(probabilities: np.ndarray) -> np.ndarray:
        """Breed probabilities of the whole photo from the rows of breed_inputs."""
        crops, whole = probabilities[:-1], probabilities[-1]
        return (crops[0] + whole) / 2 if len(crops) == 1 else whole

    def photo_breeds(self, probabilities: np.ndarray, cat_scores: np.ndarray) -> PhotoBreeds:
        """The answer about a whole photo from the classifier's rows of breed_inputs (face crops,
        then the photo). It shows a cat when the classifier's cat output says so for the photo or
        for a detected face's crop (a dog's face the detector took for a cat's is no cat); its
        breeds are the product rule's (one face: crop and photo averaged, else the photo)."""
        cat_score = float(np.max(cat_scores))
        if cat_score < self.cat_threshold:
            return PhotoBreeds(False, len(probabilities) - 1, [], "photo", cat_score)
        basis = "face_and_photo" if len(probabilities) == 2 else "photo"
        return PhotoBreeds(True, len(probabilities) - 1, self.breeds_from(self.photo_probabilities(probabilities)),
                           basis, cat_score)

    # ---- synchronous batch API ---------------------------------------------------------------
    def faces(self, images: list[Image.Image], zoom: bool = True) -> list[list[Face]]:
        """The detector's faces in each photo, best first (face_looks), the photos' looks run
        together: each round, one call for the photos whose next looks share an input shape (at
        most the detector file's rows_per_call rows a call)."""
        looks = [self.face_looks(image, zoom) for image in images]
        found: list[list[Face]] = [[] for _ in images]
        outputs: dict[int, tuple[np.ndarray, np.ndarray] | None] = {n: None for n in range(len(images))}
        while outputs:
            rows: dict[int, np.ndarray] = {}
            for n, out in outputs.items():
                x, faces = advance(looks[n], out)
                if x is None:
                    found[n] = faces or []
                else:
                    rows[n] = x
            outputs = {}
            shapes: dict[tuple[int, ...], dict[int, np.ndarray]] = {}
            for n, x in rows.items():  # (the small-face look's rows differ in shape from photo to photo)
                shapes.setdefault(x.shape[1:], {})[n] = x
            for mine in shapes.values():
                batch = np.concatenate(list(mine.values()))
                detector = self.detector_for(batch)
                step = detector.rows_per_call(len(batch))
                parts = [detector.run(batch[i:i + step]) for i in range(0, len(batch), step)]
                scores, boxes = (np.concatenate([p[k] for p in parts]) for k in (0, 1))
                start = 0
                for n, x in mine.items():
                    outputs[n] = (scores[start:start + len(x)], boxes[start:start + len(x)])
                    start += len(x)
        return found

    def detect(self, images: list[Image.Image], breeds: bool = True, zoom: bool = True) -> list[list[Face]]:
        """Every cat face in each RGB photo, best first, with landmarks and breeds, as /detect
        answers (faces the classifier calls not-a-cat left out); breeds=False: the detector's
        faces, with landmarks; zoom=False too: the whole-photo pass alone (what the Core ML
        detector finds)."""
        if not images:
            return []
        found = self.faces(images, zoom)
        pairs = [(im, face) for im, faces in zip(images, found) for face in faces]
        if pairs:
            crops = [self.landmark_input(im, face) for im, face in pairs]
            (points,) = self.landmarker.run(np.concatenate([c for c, _ in crops]))
            self.face_landmarks([face for _, face in pairs], [m for _, m in crops], points)
            if breeds:
                rows = [self.breed_inputs(im, faces) if faces else None for im, faces in zip(images, found)]
                probs, cat = self.classifier.run(np.concatenate([r for r in rows if r is not None]))
                start = 0
                for n, r in enumerate(rows):
                    if r is not None:
                        part = slice(start, start + len(r))
                        found[n] = self.cat_faces(found[n], probs[part], cat[part, 0])
                        start += len(r)
        return found

    # /breeds makes the whole-photo pass only: on training dog photos the closer look doubled
    # the photos answered `cat` (4 -> 8 of 987), and a cat photo is a cat with or without a face.
    def classify(self, images: list[Image.Image]) -> list[PhotoBreeds]:
        """What POST /breeds answers for each photo: the detector's whole-photo pass, then the
        classifier on the faces' crops and the whole photo."""
        out = []
        for image in images:
            (faces,) = self.faces([image], zoom=False)
            probabilities, cat = self.classifier.run(self.breed_inputs(image, faces))
            out.append(self.photo_breeds(probabilities, cat[:, 0]))
        return out


def advance(looks: Looks, outputs: tuple[np.ndarray, np.ndarray] | None) -> tuple[np.ndarray | None, list[Face] | None]:
    """One step of CatFace.face_looks: (the next look's detector rows, None), or (None, the
    faces) once it is done. `outputs` are the last look's (None to start)."""
    try:
        return looks.send(outputs), None  # type: ignore[arg-type]  # (the first send must be None)
    except StopIteration as done:
        return None, done.value


def load(models_dir: Path = DEFAULT_MODELS_DIR, threads: int | None = None, arena: bool = True) -> CatFace:
    """The Python API: `load(models_dir).detect([PIL RGB images])` -> faces per photo."""
    return CatFace(load_models(models_dir, threads, arena))
