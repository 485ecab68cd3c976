"""The public JSON of the service. Field names here are the API contract (issue 4): add fields
freely, never rename. Pixel coordinates are rounded to 0.01 px and scores to 1e-4, which is
finer than the models can tell and keeps answers short."""
from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from . import pipeline

Point = Annotated[tuple[float, float], Field(description="x, y in pixels of the upright photo")]

LANDMARK_NAMES = ("left_eye", "right_eye", "mouth", "left_ear_1", "left_ear_2", "left_ear_3",
                  "right_ear_1", "right_ear_2", "right_ear_3")


class Landmarks(BaseModel):
    """The 9 Crawford landmarks, named as seen in the image (left = image left). Ear points may
    lie outside the photo when the ear is cut off."""
    left_eye: Point
    right_eye: Point
    mouth: Point
    left_ear_1: Point = Field(description="outer base of the left ear")
    left_ear_2: Point = Field(description="tip of the left ear")
    left_ear_3: Point = Field(description="inner base of the left ear")
    right_ear_1: Point = Field(description="inner base of the right ear")
    right_ear_2: Point = Field(description="tip of the right ear")
    right_ear_3: Point = Field(description="outer base of the right ear")


class Breed(BaseModel):
    breed: str
    score: float = Field(ge=0, le=1)


class FaceJSON(BaseModel):
    # One face as the API answers it (pipeline.Face is the in-process one, with numpy arrays);
    # no docstring: it would become the schema's description.
    model_config = ConfigDict(title="Face")
    __qualname__ = "Face"  # the OpenAPI component keeps its public name
    box: tuple[float, float, float, float] = Field(description="x_min, y_min, x_max, y_max in pixels")
    score: float = Field(ge=0, le=1)
    landmarks: Landmarks
    breeds: list[Breed] = Field(description="breeds with score >= 5%, best first")


class DetectResponse(BaseModel):
    width: int = Field(description="width of the photo as a person sees it (EXIF orientation applied)")
    height: int
    faces: list[FaceJSON] = Field(description="every cat face, best score first; empty when there is no cat")


class BreedsResponse(BaseModel):
    cat: bool = Field(description="whether the photo shows a cat: the classifier's cat probability (of the "
                                  "whole photo or of a detected face's crop) is at least the manifest's "
                                  "cat_threshold. A cat seen from behind or in profile is a cat too")
    cat_score: float = Field(ge=0, le=1, description="the highest cat probability over the photo and its faces' crops")
    faces: int = Field(description="how many cat faces the detector found")
    based_on: Literal["face_and_photo", "photo"] = Field(
        description="what the breeds were read from: `face_and_photo` = the one face's crop and the whole photo "
                    "averaged; `photo` = the whole photo (no face found, or several faces: see POST /detect "
                    "for each face's breeds)")
    breeds: list[Breed] = Field(description="breeds of the cat in the photo with score >= 5%, best first; "
                                            "empty when there is no cat")


class ModelEntry(BaseModel):
    """One artifact of models/manifest.json, with every manifest field passed through."""
    model_config = ConfigDict(extra="allow")
    name: str
    file: str
    format: str = Field(description="onnx or coreml")
    version: str
    sha256: str
    bytes: int
    url: str = Field(description="where to download the file (GET /models/{file}): a path on this service, "
                                 "or a full URL under CATFACE_PUBLIC_URL when that is set")
    inputs: list[dict] = []
    outputs: list[dict] = []
    labels: list[str] | None = None


class ModelsResponse(BaseModel):
    models: list[ModelEntry]


class Health(BaseModel):
    status: str


class ProblemDetails(BaseModel):
    """RFC 9457 problem details (media type application/problem+json)."""
    model_config = ConfigDict(extra="allow", title="Problem")  # the OpenAPI component `Problem`
    type: str = Field(description="urn:catface:problem:<slug>, or about:blank for a plain HTTP error")
    title: str
    status: int
    detail: str | None = None
    instance: str | None = None
    request_id: str | None = None


def round_point(x: float, y: float) -> tuple[float, float]:
    return round(float(x), 2), round(float(y), 2)


def face_out(face: pipeline.Face, landmark_names: Sequence[str]) -> FaceJSON:
    """A pipeline.Face (numpy arrays) -> the public JSON shape."""
    x0, y0, x1, y1 = (round(float(v), 2) for v in face.box)
    return FaceJSON(
        box=(x0, y0, x1, y1),
        score=round(face.score, 4),
        landmarks=Landmarks(**{name: round_point(*xy) for name, xy in zip(landmark_names, face.landmarks)}),
        breeds=breeds_out(face.breeds),
    )


def breeds_out(breeds: list[tuple[str, float]]) -> list[Breed]:
    return [Breed(breed=name, score=round(score, 4)) for name, score in breeds]


def breeds_response(result) -> BreedsResponse:
    """A pipeline.PhotoBreeds as the public JSON."""
    return BreedsResponse(cat=result.cat, cat_score=round(result.cat_score, 4), faces=result.faces,
                          based_on=result.basis, breeds=breeds_out(result.breeds))
