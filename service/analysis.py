"""The server's per-photo flow: the stages of pipeline.CatFace, with every model call going
through its batcher so that concurrent requests share onnxruntime calls.

It mirrors CatFace.detect (detect -> crop faces -> landmarks and breeds per face) but for one
photo at a time; the stage functions (inputs, decoding of outputs) are CatFace's own, so the
two paths cannot drift apart. Pixel work (resizing, cropping) runs on the image thread pool,
never on the event loop.
"""
from __future__ import annotations

import asyncio
from concurrent.futures import Executor

import numpy as np

from .batching import Batcher
from .imaging import Photo
from .pipeline import CatFace, Face, PhotoBreeds, advance


class Analyzer:
    def __init__(self, pipeline: CatFace, batchers: dict[str, Batcher], pixels: Executor):
        self.pipeline = pipeline
        self.batchers = batchers
        self._pixels = pixels

    async def _on_pixels(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self._pixels, fn, *args)

    async def _faces(self, photo: Photo, deadline: float | None, zoom: bool = True) -> list[Face]:
        """The detector's looks at the photo (CatFace.face_looks), each through the batcher; the
        looks' pixel work on the image pool."""
        looks = self.pipeline.face_looks(photo.image, zoom)
        rows, faces = await self._on_pixels(advance, looks, None)
        while rows is not None:
            detector = self.pipeline.detector_for(rows).name
            outputs = await self.batchers[detector].submit(rows, deadline)
            rows, faces = await self._on_pixels(advance, looks, tuple(outputs))
        return faces or []

    def _face_inputs(self, photo: Photo, faces: list[Face]):
        crops = [self.pipeline.landmark_input(photo.image, face) for face in faces]
        return (np.concatenate([c for c, _ in crops]), [m for _, m in crops],
                self.pipeline.breed_inputs(photo.image, faces))

    async def detect(self, photo: Photo, deadline: float | None = None) -> list[Face]:
        """Cat faces best first, with landmarks and breeds, in the original photo's pixels (faces
        the classifier calls not-a-cat left out: CatFace.cat_faces)."""
        faces = await self._faces(photo, deadline)
        if faces:
            crops, matrices, breed_inputs = await self._on_pixels(self._face_inputs, photo, faces)
            (points,), (probabilities, cat) = await _both(
                self.batchers["catlandmarks"].submit(crops, deadline),
                self.batchers["catbreeds"].submit(breed_inputs, deadline))
            self.pipeline.face_landmarks(faces, matrices, points)
            faces = self.pipeline.cat_faces(faces, probabilities, cat[:, 0])
        sx, sy = photo.scale
        return [face.scaled(sx, sy) for face in faces]

    async def breeds(self, photo: Photo, deadline: float | None = None) -> PhotoBreeds:
        """Whether the whole photo shows a cat, and its breeds: every photo gets an answer, with
        or without a face found (CatFace.photo_breeds says how); the whole-photo pass only, as
        CatFace.classify."""
        faces = await self._faces(photo, deadline, zoom=False)
        x = await self._on_pixels(self.pipeline.breed_inputs, photo.image, faces)
        probabilities, cat = await self.batchers["catbreeds"].submit(x, deadline)
        return self.pipeline.photo_breeds(probabilities, cat[:, 0])


async def _both(first, second):
    """Await two coroutines concurrently; if one fails, cancel the other (no orphan queue items)."""
    tasks = [asyncio.ensure_future(first), asyncio.ensure_future(second)]
    try:
        return await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)  # collect the sibling's outcome too
        raise
