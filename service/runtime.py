"""onnxruntime sessions, created once from models/manifest.json after checking each file's
sha256, so a missing or corrupted model stops start-up instead of serving nonsense."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort

DEFAULT_MODELS_DIR = Path(__file__).resolve().parent.parent / "models"
# x86 CPUs without VNNI (AVX2 only, e.g. AMD EPYC) multiply int8 weights into a saturating int16:
# the int8 detector lost validation faces there that it keeps on VNNI CPUs (2026-12-03). This
# session option has onnxruntime use exact u8 x u8 kernels on such CPUs only; they then answer
# exactly as the VNNI CPU the model card was measured on.
EXACT_INT8 = "session.x64quantprecision"


SMALL_LOOK = "catface.small_look"  # the models' key (and batcher's name) of the detector's small-face look


class ModelFileError(RuntimeError):
    """A model file is missing, altered, or does not match the manifest."""


def read_manifest(models_dir: Path) -> dict:
    path = Path(models_dir) / "manifest.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelFileError(f"cannot read the model manifest {path}: {exc}") from exc


def verified_path(models_dir: Path, entry: dict) -> Path:
    path = Path(models_dir) / entry["file"]
    try:
        blob = path.read_bytes()
    except OSError as exc:
        raise ModelFileError(f"model file {path} is missing or unreadable: {exc}") from exc
    digest = hashlib.sha256(blob).hexdigest()
    if digest != entry["sha256"] or len(blob) != entry["bytes"]:
        raise ModelFileError(f"model file {path} does not match the manifest "
                             f"(sha256 {digest[:12]}..., expected {entry['sha256'][:12]}...): corrupted or replaced")
    return path


class OnnxModel:
    """One ONNX graph: raw RGB NCHW float32 in, the manifest's named outputs out."""

    def __init__(self, entry: dict, path: Path, threads: int | None = None, arena: bool = True):
        options = ort.SessionOptions()
        # onnxruntime's CPU arena keeps the largest activations it ever held; without it, memory
        # goes back after each run (the server's choice, from benchmarks/memory.py).
        options.enable_cpu_mem_arena = arena
        # Memory patterns are planned and kept per input shape, so the arena grew with every new
        # batch size met in traffic (+40% RSS after start-up); without them, the warm-up below
        # reaches the steady footprint before the service reports ready.
        options.enable_mem_pattern = False
        # The server runs the three models at once, each in its own thread: intra-op threads that
        # spin while waiting took the cores from the other models (-30% throughput on 2 cores).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry(EXACT_INT8, "1")
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        self.entry = entry
        self.name = entry["name"]
        self.max_batch: int | None = entry.get("max_batch")  # rows per call, when the model bounds it
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.input_size = tuple(entry["inputs"][0]["shape"][2:4])  # (height, width)
        self.output_names = [o["name"] for o in entry["outputs"]]

    def rows_per_call(self, wanted: int) -> int:
        """`wanted` rows a call, or fewer where the model bounds it (a large input's activations)."""
        return min(wanted, self.max_batch or wanted)

    def run(self, batch: np.ndarray) -> list[np.ndarray]:
        return self.session.run(self.output_names, {self.input_name: np.ascontiguousarray(batch, np.float32)})

    def warm_up(self, max_batch: int = 1) -> None:
        """Run every batch size from `max_batch` down to 1 once: the first run at a size allocates."""
        for rows in range(self.rows_per_call(max_batch), 0, -1):
            self.run(np.zeros((rows, 3, *self.input_size), np.float32))


def small_look_entry(entry: dict) -> dict | None:
    """The detector's small-face look (postprocess.zoom.small_look: the same weights at any input
    size, in a file of its own) as a model entry of its own, named SMALL_LOOK; None for other models.
    Its input shape is its largest, side x side (a square photo's): what warm-up runs."""
    look = entry.get("postprocess", {}).get("zoom", {}).get("small_look")
    if not look or "file" not in look:
        return None
    side, same = look["side"], {k: v for k, v in entry.items() if k != "float_reference"}  # (the int8 file's)
    return {**same, **look, "name": SMALL_LOOK, "inputs": [{**entry["inputs"][0], "shape": ["batch", 3, side, side]}]}


def load_models(models_dir: Path = DEFAULT_MODELS_DIR, threads: int | None = None,
                arena: bool = True) -> dict[str, OnnxModel]:
    """All ONNX models of the manifest by name, each checked and warmed up once."""
    manifest = read_manifest(models_dir)
    models = {}
    for entry in manifest["models"]:
        if entry["format"] == "onnx":
            models[entry["name"]] = OnnxModel(entry, verified_path(models_dir, entry), threads, arena)
            models[entry["name"]].warm_up()
            if look := small_look_entry(entry):
                models[look["name"]] = OnnxModel(look, verified_path(models_dir, look), threads, arena)
                models[look["name"]].warm_up()
    missing = {"catface", "catlandmarks", "catbreeds"} - models.keys()
    if missing:
        raise ModelFileError(f"the manifest in {models_dir} lacks the models {sorted(missing)}")
    return models
