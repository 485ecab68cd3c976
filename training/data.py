"""Dataset readers in their public layouts, and the validation split.

Every reader yields plain records (path + labels in pixels of the file as stored). The split is
decided by a hash of a *group* key, so near-duplicates that share a group never straddle it:
Crawford photos are grouped by their file prefix (one prefix = one photo session), Oxford
photos by near-duplicate clusters (perceptual hash), dog photos by name.
"""
from __future__ import annotations

import hashlib
import json
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

VAL_PERCENT = 15
# Photos no model trains on, because a test judges the shipped models on them (paths relative to
# the data folder).
KITTENS_PHOTO = "cat-faces-voc/images/cat.217.jpg"  # three kittens side by side: the small-faces test
TEST_PHOTOS = {KITTENS_PHOTO}
LANDMARK_NAMES = [
    "left_eye", "right_eye", "mouth",
    "left_ear_1", "left_ear_2", "left_ear_3",
    "right_ear_1", "right_ear_2", "right_ear_3",
]
# Index each landmark takes after a horizontal flip (the image's left becomes its right).
FLIP_PERMUTATION = [1, 0, 2, 8, 7, 6, 5, 4, 3]
BREEDS = [
    "Abyssinian", "Bengal", "Birman", "Bombay", "British Shorthair", "Egyptian Mau",
    "Maine Coon", "Persian", "Ragdoll", "Russian Blue", "Siamese", "Sphynx",
]


def percentile(key: str) -> int:
    """A fixed pseudo-random 0..99 for a key: the one hash every split is cut from."""
    return int(hashlib.sha1(key.encode()).hexdigest(), 16) % 100


def split_of(group: str, val_percent: int = VAL_PERCENT) -> str:
    return "val" if percentile(group) < val_percent else "train"


# The selection part: training photos held out once more by `--select` runs, so that runs are
# compared on photos none of them trained on and the validation split never chooses. Fold 0 is
# the selection part; folds 1.. are the next, disjoint SELECT_PERCENT of the same hash, for a
# comparison too close to call on one fold.
SELECT_PERCENT = 15


def in_selection(group: str, fold: int = 0) -> bool:
    return percentile("select/" + group) // SELECT_PERCENT == fold


@dataclass
class CatPhoto:
    """A photo with zero or more cats, each as 9 landmarks (9, 2) in pixels."""

    path: Path
    group: str
    landmarks: list[np.ndarray] = field(default_factory=list)

    @property
    def split(self) -> str:
        return split_of(self.group)


def landmark_box(points: np.ndarray, width: float, height: float) -> np.ndarray:
    """Our box convention: the tight box around the 9 landmarks, clamped to the image."""
    lo = points.min(0).clip(0, None)
    hi = np.minimum(points.max(0), [width, height])
    return np.array([lo[0], lo[1], hi[0], hi[1]], dtype=np.float32)


def read_cat_file(path: Path) -> np.ndarray:
    values = [float(v) for v in path.read_text().split()]
    count = int(values[0])
    return np.array(values[1 : 1 + 2 * count], dtype=np.float32).reshape(count, 2)


def crawford(root: Path) -> list[CatPhoto]:
    """Crawford CAT dataset: CAT_xx/NAME.jpg + NAME.jpg.cat, cleaned with cleaning.json
    (photos on its `remove` list have unlabelled cats or are edited: left out)."""
    cleaning = json.loads((root / "cleaning.json").read_text()) if (root / "cleaning.json").exists() else {}
    removed = {(d, name) for d, names in cleaning.get("remove", {}).items() for name in names}
    relabel = {}  # image -> .cat file that truly belongs to it
    for fix in cleaning.get("replace", []):
        relabel[(fix["dir"], fix["filename_to"][: -len(".cat")])] = fix["filename_from"]
    photos = []
    for folder in sorted(p for p in root.glob("CAT_*") if p.is_dir()):
        for image in sorted(folder.glob("*.jpg")):
            if (folder.name, image.name) in removed:
                continue
            label = folder / relabel.get((folder.name, image.name), image.name + ".cat")
            if not label.exists():
                continue
            photos.append(CatPhoto(image, "crawford/" + image.name.split("_")[0], [read_cat_file(label)]))
    return photos


def voc_boxes(xml_path: Path, names: set[str]) -> list[np.ndarray]:
    root = ET.parse(xml_path).getroot()
    boxes = []
    for obj in root.iter("object"):
        if obj.findtext("name") in names:
            b = obj.find("bndbox")
            boxes.append(np.array([float(b.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax")], np.float32))
    return boxes


def cat_faces_voc(root: Path) -> list[tuple[Path, list[np.ndarray]]]:
    """cat-faces-voc: images/NAME.jpg + annotations/NAME.xml with `cat_face` boxes (drawn
    boxes: a different convention from ours, so used for checks, not for box training)."""
    out = []
    for xml in sorted((root / "annotations").glob("*.xml")):
        image = root / "images" / (xml.stem + ".jpg")
        if image.exists():
            out.append((image, voc_boxes(xml, {"cat_face"})))
    return out


@dataclass
class PetPhoto:
    path: Path
    name: str  # Oxford image name, e.g. "Abyssinian_34"
    species: str  # "cat" or "dog"
    breed: int | None  # index into BREEDS for cats
    head_box: np.ndarray | None  # Oxford head box (ears included) where annotated


def oxford_pets(root: Path, list_file: str = "trainval.txt") -> list[PetPhoto]:
    """Oxford-IIIT Pet in its official layout: images/, annotations/<list>, annotations/xmls/."""
    cat_names = sorted({line.split()[0].rsplit("_", 1)[0]
                        for line in (root / "annotations" / list_file).read_text().splitlines()
                        if line and not line.startswith("#") and line.split()[2] == "1"})
    breed_index = {name: BREEDS.index(name.replace("_", " ")) for name in cat_names}
    photos = []
    for line in (root / "annotations" / list_file).read_text().splitlines():
        if not line or line.startswith("#"):
            continue
        name, _class_id, species, _breed_id = line.split()
        image = root / "images" / (name + ".jpg")
        if not image.exists():
            continue
        xml = root / "annotations" / "xmls" / (name + ".xml")
        boxes = voc_boxes(xml, {"cat", "dog"}) if xml.exists() else []
        is_cat = species == "1"
        photos.append(PetPhoto(image, name, "cat" if is_cat else "dog",
                               breed_index[name.rsplit("_", 1)[0]] if is_cat else None,
                               boxes[0] if boxes else None))
    return photos


def folder_images(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in {".jpg", ".jpeg", ".png"})


def breed_folders(root: Path) -> list[tuple[Path, int]]:
    """cat-breeds-extra/<Breed>/*.jpg (folder names with _ for spaces). Noisy: training only."""
    out = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        breed = BREEDS.index(folder.name.replace("_", " "))
        out.extend((p, breed) for p in folder_images(folder))
    return out


def dhash(path: Path, size: int = 8) -> int:
    """Difference hash: near-duplicate photos differ in a few bits."""
    g = np.asarray(Image.open(path).convert("L").resize((size + 1, size), Image.BILINEAR), np.int16)
    bits = (g[:, 1:] > g[:, :-1]).flatten()
    return int("".join("1" if b else "0" for b in bits), 2)


def near_duplicate_groups(paths: list[Path], max_bits: int = 6) -> dict[Path, str]:
    """Union-find over photos whose dhash differ by <= max_bits; group = first member's stem."""
    hashes = np.array([dhash(p) for p in paths], dtype=np.uint64)
    parent = list(range(len(paths)))

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i in range(len(paths)):
        xor = hashes[i + 1 :] ^ hashes[i]
        dist = np.array([bin(int(v)).count("1") for v in xor])
        for j in np.nonzero(dist <= max_bits)[0]:
            parent[find(i + 1 + int(j))] = find(i)
    return {p: paths[find(i)].stem for i, p in enumerate(paths)}
