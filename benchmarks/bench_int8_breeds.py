"""Would an int8 catbreeds pay? Quantizes models/catbreeds.onnx with onnxruntime (static QDQ,
per-channel, calibrated on 50 training photos; and dynamic), then prints validation top-1 on the
whole photo, size and per-image time at batch 1 and 8 for each, in one run.

    python benchmarks/bench_int8_breeds.py [--data ../shared/data]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_dynamic, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from training.train_breeds import datasets  # noqa: E402


def pixels(path) -> np.ndarray:
    image = Image.open(path).convert("RGB").resize((224, 224), Image.BILINEAR)
    return np.asarray(image, np.float32).transpose(2, 0, 1)[None]


class Calibration(CalibrationDataReader):
    def __init__(self, paths):
        self.rows = iter([{"image": pixels(p)} for p in paths])

    def get_next(self):
        return next(self.rows, None)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    train, _, val = datasets(args.data)
    work = Path(tempfile.mkdtemp())
    quant_pre_process(str(ROOT / "models" / "catbreeds.onnx"), str(work / "pre.onnx"))
    quantize_static(str(work / "pre.onnx"), str(work / "static.onnx"), Calibration([p for p, _ in train[::20]]),
                    quant_format=QuantFormat.QDQ, per_channel=True, weight_type=QuantType.QInt8,
                    activation_type=QuantType.QUInt8)
    quantize_dynamic(str(work / "pre.onnx"), str(work / "dynamic.onnx"), weight_type=QuantType.QUInt8)
    labels = np.array([b for _, b in val])
    images = [pixels(p) for p, _ in val]
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    print(f"{'model':<22}{'MB':>7}{'top-1':>8}{'b1 ms':>9}{'b8 ms/img':>11}")
    for name, path in [("fp32 (shipped)", ROOT / "models" / "catbreeds.onnx"),
                       ("int8 static QDQ", work / "static.onnx"),
                       ("int8 dynamic", work / "dynamic.onnx")]:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        top1 = np.mean([session.run(None, {"image": x})[0][0].argmax() == y for x, y in zip(images, labels)])
        one, eight = images[0], np.concatenate(images[:8])
        t1, t8 = [], []
        for _ in range(15):
            t0 = time.perf_counter()
            session.run(None, {"image": one})
            t1.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            session.run(None, {"image": eight})
            t8.append((time.perf_counter() - t0) / 8)
        print(f"{name:<22}{path.stat().st_size / 1e6:>7.2f}{top1:>8.3f}{statistics.median(t1) * 1e3:>9.2f}"
              f"{statistics.median(t8) * 1e3:>11.2f}")


if __name__ == "__main__":
    main()
