"""Would an int8 catbreeds pay? Quantizes models/catbreeds.onnx with onnxruntime (static QDQ,
per-channel, calibrated on 50 training photos; and dynamic), then prints validation top-1 on the
whole photo, size and per-image time at batch 1 and 8 for each, in one run.

    python benchmarks/bench_int8_breeds.py [--data ../shared/data]
"""
from __future__ import annotations

import argparse
import datetime
import json
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

SIDE = json.loads((ROOT / "models" / "manifest.json").read_text())
SIDE = next(m for m in SIDE["models"] if m["name"] == "catbreeds" and m["format"] == "onnx")["inputs"][0]["shape"][2]


def pixels(path) -> np.ndarray:
    image = Image.open(path).convert("RGB").resize((SIDE, SIDE), Image.Resampling.BILINEAR)
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
    rows = []
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
        row = {"model": name, "mb": round(path.stat().st_size / 1e6, 2), "whole_photo_top1": round(float(top1), 3),
               "batch1_ms": round(statistics.median(t1) * 1e3, 2),
               "batch8_ms_per_image": round(statistics.median(t8) * 1e3, 2)}
        rows.append(row)
        print(f"{name:<22}{row['mb']:>7.2f}{top1:>8.3f}{row['batch1_ms']:>9.2f}{row['batch8_ms_per_image']:>11.2f}")
    out = ROOT / "benchmarks" / "results" / f"int8-breeds-{datetime.date.today().isoformat()}.json"
    out.write_text(json.dumps({"date": datetime.date.today().isoformat(), "threads": args.threads, "rows": rows},
                              indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
