"""onnxruntime sessions, created once from models/manifest.json after checking each file's
sha256, so a missing or corrupted model stops start-up instead of serving nonsense."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort

DEFAULT_MODELS_DIR = Path(__file__).resolve().parent.parent / "models"
# x86 CPUs without VNNI (AVX2 only) multiply int8 weights into a saturating int16: the int8
# detector lost validation faces there that it keeps on VNNI CPUs (2026-12-03). This session option
# has onnxruntime use exact u8 x u8 kernels instead. It is set only where the CPU lacks VNNI: with
# VNNI the default kernels already sum exactly in int32 (the same outputs, bit for bit), and the
# option slowed the detector's 256-px row from 3.9 to 6.5 ms there, slower than float
# (benchmarks/results/int8-cpu-cost-2026-12-04.json).
EXACT_INT8 = "session.x64quantprecision"
VNNI_FLAGS = ("avx512_vnni", "avx_vnni")  # /proc/cpuinfo's names for the u8 x s8 -> int32 dot product


def cpu_flags(cpuinfo: str | None = None) -> list[str]:
    """This CPU's flags (or those in the given /proc/cpuinfo text); none where unknown."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return []
    return next((line.split(":", 1)[1].split() for line in cpuinfo.splitlines() if line.startswith("flags")), [])


def has_vnni(cpuinfo: str | None = None) -> bool:
    """Whether this CPU (or the given /proc/cpuinfo text) lists a VNNI flag; False where unknown."""
    return any(flag in cpu_flags(cpuinfo) for flag in VNNI_FLAGS)


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


def new_session(path: Path, threads: int | None = None, arena: bool = True,
                exact_int8: bool = False) -> ort.InferenceSession:
    """An onnxruntime session as the server runs its models; exact_int8: onnxruntime's exact
    u8 x u8 int8 kernels (EXACT_INT8)."""
    options = ort.SessionOptions()
    # onnxruntime's CPU arena keeps the largest activations it ever held; without it, memory
    # goes back after each run (the server's choice, from benchmarks/memory.py).
    options.enable_cpu_mem_arena = arena
    # Memory patterns are planned and kept per input shape, so the arena grew with every new
    # batch size met in traffic (+40% RSS after start-up); without them, OnnxModel.warm_up
    # reaches the steady footprint before the service reports ready.
    options.enable_mem_pattern = False
    # The server runs the three models at once, each in its own thread: intra-op threads that
    # spin while waiting took the cores from the other models (-30% throughput on 2 cores).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if exact_int8:
        options.add_session_config_entry(EXACT_INT8, "1")
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class OnnxModel:
    """One ONNX graph: raw RGB NCHW float32 in, the manifest's named outputs out."""

    def __init__(self, entry: dict, path: Path, threads: int | None = None, arena: bool = True):
        self.entry = entry
        self.name = entry["name"]
        self.max_batch: int | None = entry.get("max_batch")  # rows per call, when the model bounds it
        self.input_size = tuple(entry["inputs"][0]["shape"][2:4])  # (height, width)
        self.output_names = [o["name"] for o in entry["outputs"]]
        self.exact_int8 = entry.get("weights") == "int8" and not has_vnni()
        self.session = new_session(path, threads, arena, self.exact_int8)
        self.input_name = self.session.get_inputs()[0].name
        if entry.get("weights") == "int8" and not self.exact_int8:
            # the default kernels must answer as the exact ones here (they do wherever VNNI sums in
            # int32); a CPU that lists VNNI and differs gets the exact kernels after all
            exact = new_session(path, threads, arena, exact_int8=True)
            probe = np.random.default_rng(0).uniform(0, 255, (1, 3, *self.input_size)).astype(np.float32)
            if not all(np.array_equal(a, b) for a, b in zip(self.run(probe), self._run(exact, probe))):
                self.session, self.exact_int8 = exact, True

    def rows_per_call(self, wanted: int) -> int:
        """`wanted` rows a call, or fewer where the model bounds it (a large input's activations)."""
        return min(wanted, self.max_batch or wanted)

    def run(self, batch: np.ndarray) -> list[np.ndarray]:
        return self._run(self.session, batch)

    def _run(self, session: ort.InferenceSession, batch: np.ndarray) -> list[np.ndarray]:
        return session.run(self.output_names, {self.input_name: np.ascontiguousarray(batch, np.float32)})

    def warm_up(self, max_batch: int = 1) -> None:
        """Run every batch size from `max_batch` down to 1 once: the first run at a size allocates."""
        for rows in range(self.rows_per_call(max_batch), 0, -1):
            self.run(np.zeros((rows, 3, *self.input_size), np.float32))


def entry_files(entry: dict) -> list[dict]:
    """The file parts (file, sha256, bytes, weights, float_reference) of a manifest entry: the
    entry itself, and for the detector its small-face look's."""
    look = entry.get("postprocess", {}).get("zoom", {}).get("small_look")
    return [entry, *([look] if look and "file" in look else [])]


def small_look_entry(entry: dict) -> dict | None:
    """The detector's small-face look (postprocess.zoom.small_look: the same weights at any input
    size, in a file of its own) as a model entry of its own, named SMALL_LOOK; None for other models.
    Its input shape is its largest, side x side (a square photo's): what warm-up runs."""
    files = entry_files(entry)
    if len(files) < 2:
        return None
    look = files[1]
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
