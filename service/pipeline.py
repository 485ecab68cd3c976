"""The cat logic: a face is found, cropped, measured and named.

Stages are small functions on one photo (prepare an input, read an output) so that the same
steps serve both ways of running the models: `CatFace.detect` runs a list of photos
synchronously in batches (in-process use, evaluation, benchmarks), and the server runs the same
stages through its batching engine (service.analysis).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from . import geometry
from .contract import BREED_CROP_SCALE
from .detection import from_tile, nms, select_faces, tiles, zoom_grid
from .geometry import to_chw
from .runtime import DEFAULT_MODELS_DIR, OnnxModel, load_models


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
    def __init__(self, models: dict[str, OnnxModel]):
        self.models = models
        self.detector, self.landmarker, self.classifier = models["catface"], models["catlandmarks"], models["catbreeds"]
        post = self.detector.entry["postprocess"]
        self.score_threshold, self.iou_threshold = post["score_threshold"], post["iou_threshold"]
        self.containment = post["containment_threshold"]
        self.max_faces = post["max_faces"]
        self.zoom = post.get("zoom")  # a manifest without it (catface 1.0.0's): no second look
        self.crop_scale = self.landmarker.entry["inputs"][0]["crop"]["scale"]
        self.breed_labels = self.classifier.entry["labels"]
        self.breed_threshold = self.classifier.entry["report_threshold"]
        self.cat_threshold = self.classifier.entry["cat_threshold"]

    # ---- stages ------------------------------------------------------------------------------
    def detector_input(self, image: Image.Image) -> np.ndarray:
        return to_chw(image, self.detector.input_size)

    def faces_from(self, scores: np.ndarray, boxes: np.ndarray, image: Image.Image) -> list[Face]:
        kept, kept_scores = select_faces(scores, boxes, self.score_threshold, self.iou_threshold, self.containment,
                                                self.max_faces)
        w, h = image.size
        return [Face((b * [w, h, w, h]).astype(np.float32), float(s)) for b, s in zip(kept, kept_scores)]

    def zoom_windows(self, faces: list[Face], image: Image.Image) -> np.ndarray:
        """The tiles (normalised windows) of the closer second look after the whole-photo pass
        found `faces`; none when it needs no second look (the manifest's postprocess.zoom)."""
        if not self.zoom:
            return np.zeros((0, 4), np.float32)
        w, h = image.size
        sides = [max((f.box[2] - f.box[0]) / w, (f.box[3] - f.box[1]) / h) * self.detector.input_size[0] for f in faces]
        grid = zoom_grid(np.array(sides), self.zoom["below_px"], self.zoom["grid_none"], self.zoom["grid_small"])
        return tiles(grid, self.zoom["overlap"]) if grid else np.zeros((0, 4), np.float32)

    def tile_inputs(self, image: Image.Image, windows: np.ndarray) -> np.ndarray:
        w, h = image.size
        return np.stack([self.detector_input(image.crop(tuple(np.round(win * [w, h, w, h]).astype(int))))
                         for win in windows])

    def zoomed_faces(self, faces: list[Face], windows: np.ndarray, scores: np.ndarray, boxes: np.ndarray,
                     image: Image.Image) -> list[Face]:
        """The whole-photo pass's faces and the tiles' (detector outputs per window) in one NMS."""
        w, h = image.size
        found = [np.array([f.box / [w, h, w, h] for f in faces], np.float32).reshape(-1, 4)]
        confidence = [np.array([f.score for f in faces], np.float32)]
        edge = self.zoom["edge_px"] / self.detector.input_size[0]
        for window, s, b in zip(windows, scores, boxes):
            kept, kept_scores = select_faces(s, b, self.score_threshold, self.iou_threshold, self.containment,
                                             self.max_faces)
            placed, whole = from_tile(window, kept, edge)
            found.append(placed[whole])
            confidence.append(kept_scores[whole])
        all_boxes, all_scores = np.concatenate(found), np.concatenate(confidence)
        keep = nms(all_boxes, all_scores, self.iou_threshold, self.containment)[: self.max_faces]
        return [Face((all_boxes[i] * [w, h, w, h]).astype(np.float32), float(all_scores[i])) for i in keep]

    def landmark_input(self, image: Image.Image, face: Face) -> tuple[np.ndarray, np.ndarray]:
        size = self.landmarker.input_size
        matrix = geometry.square_crop_matrix(face.box, size[0], self.crop_scale)
        return to_chw(geometry.warp(image, matrix, (size[1], size[0])), size), matrix

    def landmarks_from(self, output: np.ndarray, matrix: np.ndarray) -> np.ndarray:
        crop_points = output.reshape(9, 2) * [self.landmarker.input_size[1], self.landmarker.input_size[0]]
        return geometry.move_points(crop_points, np.linalg.inv(matrix)).astype(np.float32)

    def breed_input(self, image: Image.Image, face: Face | None = None) -> np.ndarray:
        if face is None:
            return to_chw(image, self.classifier.input_size)
        size = self.classifier.input_size
        matrix = geometry.square_crop_matrix(face.box, size[0], BREED_CROP_SCALE)
        return to_chw(geometry.warp(image, matrix, (size[1], size[0])), size)

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
        """The detector's faces in each photo, best first: the whole-photo pass, then (zoom) the
        closer look over tiles where it found none or small ones."""
        scores, boxes = self.detector.run(np.stack([self.detector_input(im) for im in images]))
        found = [self.faces_from(s, b, im) for s, b, im in zip(scores, boxes, images)]
        if not zoom:
            return found
        windows = [self.zoom_windows(faces, im) for faces, im in zip(found, images)]
        looked = [n for n, win in enumerate(windows) if len(win)]
        if looked:
            scores, boxes = self.detector.run(np.concatenate([self.tile_inputs(images[n], windows[n]) for n in looked]))
            start = 0
            for n in looked:
                part = slice(start, start + len(windows[n]))
                found[n] = self.zoomed_faces(found[n], windows[n], scores[part], boxes[part], images[n])
                start += len(windows[n])
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
            (points,) = self.landmarker.run(np.stack([c for c, _ in crops]))
            for (_, face), (_, matrix), out in zip(pairs, crops, points):
                face.landmarks = self.landmarks_from(out, matrix)
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


def load(models_dir: Path = DEFAULT_MODELS_DIR, threads: int | None = None, arena: bool = True) -> CatFace:
    """The Python API: `load(models_dir).detect([PIL RGB images])` -> faces per photo."""
    return CatFace(load_models(models_dir, threads, arena))
