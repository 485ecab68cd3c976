"""A tiny run of each training script and the exporter on a few real photos, so the
training code stays alive in CI (CI trains nothing that ships)."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from service import contract  # noqa: E402
from service.pipeline import Face, load  # noqa: E402

from .conftest import CATS, DATA, MODELS, ground_truth, photo  # noqa: E402


def test_flip_swaps_left_and_right_landmarks():
    from training.augment import affine, move_points

    points = np.array([[10, 20], [30, 20], [20, 30], [5, 5], [8, 0], [12, 6], [28, 6], [32, 0], [35, 5]], np.float32)
    m = affine(1.0, 0.0, True, (20, 20), (20, 20))
    moved = move_points(points, m, flipped=True)
    assert moved[0, 0] < moved[1, 0]  # still image-left first
    assert np.allclose(moved[0], [10, 20]) and np.allclose(moved[4], [8, 0])


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from training import train_breeds, train_detector, train_landmarks

    runs = tmp_path_factory.mktemp("runs")
    train_detector.main(["--data", str(DATA), "--out", str(runs / "detector"), "--epochs", "1", "--steps", "1",
                         "--limit", "4", "--threads", "1"])
    train_landmarks.main(["--data", str(DATA), "--out", str(runs / "landmarks"), "--epochs", "1", "--limit", "40",
                          "--threads", "1"])
    train_breeds.main(["--data", str(DATA), "--out", str(runs / "breeds"), "--epochs", "1", "--limit", "4",
                       "--threads", "1"])
    for kind in ("detector", "landmarks", "breeds"):
        log = [json.loads(line) for line in (runs / kind / "log.jsonl").read_text().splitlines()]
        assert np.isfinite(log[-1]["loss"])
        # a run read while it trains shows no validation number unless asked (--watch-validation)
        assert not [key for row in log for key in row if key.startswith("val")], kind
    return runs


def test_tiny_export_is_served_by_the_pipeline(runs, tmp_path):
    from training import export

    # The committed classifier beside the tiny detector and landmarker (its export is tested below).
    models = tmp_path / "models"
    models.mkdir()
    shutil.copy(MODELS / "catbreeds.onnx", models)
    committed = json.loads((MODELS / "manifest.json").read_text())["models"]
    breeds = [e for e in committed if e["name"] == "catbreeds" and e["format"] == "onnx"]
    (models / "manifest.json").write_text(json.dumps({"models": breeds}))
    export.main(["--runs", str(runs), "--out", str(models), "--only", "catface", "catlandmarks", "--data", str(DATA)])

    # The export is what the service loads: load it the service's way and run it on a photo.
    pipeline = load(models, threads=1)
    assert (pipeline.score_threshold, pipeline.iou_threshold, pipeline.max_faces) == (
        contract.SCORE_THRESHOLD, contract.IOU_THRESHOLD, contract.MAX_FACES)
    assert pipeline.crop_scale == contract.LANDMARK_CROP_SCALE
    assert pipeline.detector.input_size == (contract.DETECTOR_INPUT, contract.DETECTOR_INPUT)
    image = photo(CATS[0])
    (faces,) = pipeline.detect([image])
    assert len(faces) <= contract.MAX_FACES  # an untrained detector may find none, or many
    for face in faces:
        assert face.score >= contract.SCORE_THRESHOLD
        assert face.box.shape == (4,) and face.landmarks.shape == (9, 2) and np.isfinite(face.landmarks).all()
    # the landmarker on a crop around the whole photo, whatever the tiny detector found
    assert np.isfinite(pipeline.face_points(image, Face(np.array([0, 0, *image.size], np.float32), 1.0))).all()


def test_tiny_breeds_export_is_served_by_the_pipeline(runs, tmp_path):
    from training import export

    export.main(["--runs", str(runs), "--out", str(tmp_path / "models"), "--data", str(DATA)])
    pipeline = load(tmp_path / "models", threads=1)
    image = photo(CATS[0])
    probabilities, cat = pipeline.classifier.run(pipeline.breed_inputs(image, []))
    assert probabilities.shape == (1, len(pipeline.breed_labels)) and np.isclose(probabilities.sum(), 1, atol=1e-4)
    assert cat.shape == (1, 1) and 0 <= cat[0, 0] <= 1
    (answer,) = pipeline.classify([image])  # what POST /breeds answers
    assert answer.cat == (answer.cat_score >= contract.CAT_THRESHOLD) and answer.basis in ("face_and_photo", "photo")
    scores = [score for _, score in answer.breeds]
    assert scores == sorted(scores, reverse=True) and all(s >= pipeline.breed_threshold for s in scores)


def test_refit_cat_changes_the_cat_output_only(tmp_path):
    """training.refit_cat fits the cat unit again in a copy of the models: every breed probability
    stays, the copy loads the service's way (sha256 checked), and the table compares every kind of
    view of cats and dogs before and after."""
    from training import refit_cat

    refit_cat.main(["--data", str(DATA), "--models", str(MODELS), "--out", str(tmp_path), "--limit", "12",
                    "--threads", "1"])
    before, after = load(MODELS, threads=1), load(tmp_path / "models", threads=1)
    rows = np.stack([before.breed_input(photo(p)) for p in CATS[:3]])
    (p_before, c_before), (p_after, c_after) = before.classifier.run(rows), after.classifier.run(rows)
    assert np.allclose(p_before, p_after, atol=1e-6)
    assert not np.allclose(c_before, c_after, atol=1e-9) and ((0 <= c_after) & (c_after <= 1)).all()
    refit = json.loads((tmp_path / "cat_refit.json").read_text())
    assert {(v["photos"], v["view"]) for v in refit["views"]} == {
        (a, v) for a in ("cat", "dog") for v in refit_cat.KINDS}
    assert set(refit["served"]["before"]) == set(refit["served"]["after"])


def test_a_cat_photos_strip_without_a_face_holds_no_face():
    """train_detector's hard negatives of cats: the strip it cuts from a cat photo keeps clear of
    every face (grown by BODY_MARGIN), and a photo the face fills gives none."""
    from training import train_detector

    face = np.array([[40, 30], [80, 30], [60, 55], [30, 10], [35, 0], [45, 12], [75, 12], [85, 0], [90, 10]],
                    np.float32)  # ears at the top: the box is (30, 0)-(90, 55)
    strip = train_detector.strip_without_faces((120, 200), [face])
    assert strip == (0, 70, 120, 200)  # the whole width below 55 + 0.25 x 60: 120 x 130
    assert train_detector.strip_without_faces((100, 70), [face]) is None


def test_detector_rebuilt_from_onnx_fine_tunes_with_its_batch_norms_frozen(tmp_path):
    """training.from_onnx rebuilds the shipped detector from its float ONNX file (checked against
    onnxruntime inside), and train_detector --freeze-bn trains from it without touching the BN
    statistics that hold the folded biases."""
    from training import from_onnx, train_detector

    checkpoint = tmp_path / "rebuilt" / "checkpoint.pt"
    from_onnx.main(["--onnx", str(MODELS / "catface.onnx"), "--out", str(checkpoint)])
    train_detector.main(["--data", str(DATA), "--out", str(tmp_path / "tuned"), "--init", str(checkpoint),
                         "--freeze-bn", "--bodies", "0.5", "--epochs", "1", "--steps", "1", "--limit", "4",
                         "--threads", "1"])
    before = torch.load(checkpoint, map_location="cpu")["model"]
    after = torch.load(tmp_path / "tuned" / "checkpoint.pt", map_location="cpu")["model"]
    stats = [k for k in before if k.endswith(("running_mean", "running_var"))]
    assert stats and all(torch.equal(before[k], after[k]) for k in stats)
    assert not all(torch.equal(before[k], after[k]) for k in before)  # it did train


def test_landmarker_rebuilt_from_onnx_fine_tunes_with_its_batch_norms_frozen(tmp_path):
    """The same for catlandmarks, whose graph also runs the mirrored crop (each folded weight read
    twice): the rebuilt net matches onnxruntime (checked inside) and trains with frozen BN."""
    from training import from_onnx, train_landmarks

    checkpoint = tmp_path / "rebuilt" / "checkpoint.pt"
    from_onnx.main(["--model", "catlandmarks", "--onnx", str(MODELS / "catlandmarks.onnx"), "--out", str(checkpoint)])
    train_landmarks.main(["--data", str(DATA), "--out", str(tmp_path / "tuned"), "--init", str(checkpoint),
                          "--freeze-bn", "--epochs", "1", "--limit", "40", "--threads", "1"])
    before = torch.load(checkpoint, map_location="cpu")["model"]
    after = torch.load(tmp_path / "tuned" / "checkpoint.pt", map_location="cpu")["model"]
    stats = [k for k in before if k.endswith(("running_mean", "running_var"))]
    assert stats and all(torch.equal(before[k], after[k]) for k in stats)
    assert not all(torch.equal(before[k], after[k]) for k in before)  # it did train


def test_classifier_rebuilt_from_onnx_exports_as_the_shipped_file(catface, tmp_path):
    """catbreeds' training checkpoint is gone: training.from_onnx rebuilds it from the shipped ONNX
    file, and training.export writes from that a file that answers as the shipped one on real
    photos (the README's way to re-export it, mirror average or not as export.MIRROR says)."""
    import onnxruntime as ort

    from training import export, from_onnx

    runs, out = tmp_path / "runs", tmp_path / "models"
    from_onnx.main(["--model", "catbreeds", "--onnx", str(MODELS / "catbreeds.onnx"),
                    "--out", str(runs / "breeds" / "checkpoint.pt")])
    export.main(["--runs", str(runs), "--out", str(out), "--only", "catbreeds"])
    rows = np.concatenate([catface.breed_inputs(photo(name), []) for name in CATS]).astype(np.float32)
    shipped, rebuilt = (ort.InferenceSession(str(folder / "catbreeds.onnx"), providers=["CPUExecutionProvider"])
                        for folder in (MODELS, out))
    for got, want in zip(rebuilt.run(None, {"image": rows}), shipped.run(None, {"image": rows})):
        np.testing.assert_allclose(got, want, atol=1e-4)
    entry = json.loads((out / "manifest.json").read_text())["models"][0]
    assert entry["version"] == export.VERSIONS["catbreeds"] == catface.classifier.entry["version"]


def test_detector_select_holds_out_the_selection_part_breeds_use():
    """train_detector --select trains on none of the photos runs are then compared on: the Oxford
    photos train_breeds --select holds out, whole Crawford sessions, and a share of the dogs."""
    from training import data, train_breeds, train_detector

    crawford, dogs = train_detector.split_sources(DATA, "train")
    pets, extra, groups = train_breeds.labelled_photos(DATA)
    oxford_train, _, oxford_selection = train_breeds.splits(pets, extra, groups, select=0)
    labelled = [data.CatPhoto(p, "oxford/" + p.name) for p, _ in oxford_train + oxford_selection]
    kept, kept_dogs, held, held_dogs = train_detector.hold_out_selection(DATA, crawford + labelled, dogs)

    assert {c.path for c in held if c.group.startswith("oxford/")} == {p for p, _ in oxford_selection}
    assert not {c.path for c in kept} & {c.path for c in held} and not set(kept_dogs) & set(held_dogs)
    assert len(kept) + len(held) == len(crawford) + len(labelled) and len(kept_dogs) + len(held_dogs) == len(dogs)
    held_sessions = {c.group for c in held if c.group.startswith("crawford/")}
    assert held_sessions and not held_sessions & {c.group for c in kept}  # sessions never straddle
    assert 0.05 < len(held_dogs) / len(dogs) < 0.3


def test_detector_select_run_checks_each_epoch_on_the_selection_part_only(tmp_path):
    from training import train_detector

    train_detector.main(["--data", str(DATA), "--out", str(tmp_path / "detector"), "--select", "--epochs", "1",
                         "--steps", "1", "--limit", "60", "--threads", "1"])
    row = json.loads((tmp_path / "detector" / "log.jsonl").read_text().splitlines()[-1])
    assert {"select_recall", "select_false_per_dog"} <= set(row)
    assert not [key for key in row if key.startswith("val")]  # no look at the validation split while training


def test_breeds_mixup_loss_counts_both_photos_labels_and_is_the_plain_loss_unmixed():
    import torch.nn.functional as F

    from training.train_breeds import LABEL_SMOOTHING, mixed_loss

    torch.manual_seed(0)
    logits, cat = torch.randn(4, 12), torch.randn(4)
    y = torch.tensor([3, -1, 7, 3])  # -1: a dog or Crawford cat, no breed label
    w, is_cat = torch.tensor([1.0, 0.0, 0.7, 1.0]), torch.tensor([1.0, 0.0, 1.0, 1.0])
    plain = mixed_loss(logits, cat, y, w, is_cat)
    assert torch.isclose(mixed_loss(logits, cat, y, w, is_cat, torch.arange(4), 0.3), plain)
    # Mixed with a dog, a cat photo's cat target is lam, and its breed loss counts lam of the time.
    pairs = torch.tensor([1, 0, 3, 2])
    lam = 0.75
    mixed = mixed_loss(logits, cat, y, w, is_cat, pairs, lam)
    cat_target = torch.tensor([0.75, 0.25, 1.0, 1.0])
    def ce(target, weight, rows):
        per = F.cross_entropy(logits, target.clamp(min=0), label_smoothing=LABEL_SMOOTHING, reduction="none")
        return (per * weight)[rows].sum() / len(rows)

    ce_a, ce_b = ce(y, w, [0, 2, 3]), ce(y[pairs], w[pairs], [1, 2, 3])
    expected = lam * ce_a + (1 - lam) * ce_b + F.binary_cross_entropy_with_logits(cat, cat_target)
    assert torch.isclose(mixed, expected)


def test_selection_folds_are_disjoint_parts_of_one_size():
    """A second --select fold must hold out photos the first fold's runs trained on, and as many."""
    from training import data

    groups = [f"oxford/{i}" for i in range(4000)]
    folds = [{g for g in groups if data.in_selection(g, fold)} for fold in range(3)]
    assert not folds[0] & folds[1] and not folds[1] & folds[2]
    for part in folds:
        assert abs(len(part) / len(groups) - data.SELECT_PERCENT / 100) < 0.03
    assert folds[0] == {g for g in groups if data.in_selection(g)}  # fold 0 is the selection part


def test_soup_averages_two_runs_weights_into_one_network_that_loads(tmp_path):
    """A soup is one network of the runs' architecture: float weights and BN statistics averaged,
    BN's batch counter kept; checkpoints of different networks are refused."""
    from training import loop, soup

    nets = []
    for seed in (0, 1):
        torch.manual_seed(0)  # one start, then each run moves its own way
        net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Linear(2, 2))
        torch.manual_seed(seed)
        with torch.no_grad():
            for param in net.parameters():
                param.add_(0.02 * torch.randn_like(param))
            net[1].running_mean.add_(torch.randn(4))
        net[1].num_batches_tracked += 5 + seed
        nets.append(net)
        torch.save({"model": net.state_dict(), "input": 8}, tmp_path / f"{seed}.pt")
    soup.main([str(tmp_path / "0.pt"), str(tmp_path / "1.pt"), "--out", str(tmp_path / "soup.pt")])
    made = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Linear(2, 2))
    loop.initialised(made, tmp_path / "soup.pt")
    a, b = (n.state_dict() for n in nets)
    for key, value in made.state_dict().items():
        expected = (a[key] + b[key]) / 2 if a[key].is_floating_point() else a[key]
        assert torch.allclose(value, expected), key
    assert torch.load(tmp_path / "soup.pt")["input"] == 8
    with pytest.raises(ValueError):
        soup.soup([a, {k: v for k, v in b.items() if not k.startswith("2.")}])
    # where a checkpoint came from may differ (a fine-tune and the rebuilt file it started from); its input may not
    torch.save({"model": b, "input": 8, "folded_from": "x.onnx"}, tmp_path / "rebuilt.pt")
    torch.save({"model": a, "input": 8, "epoch": 3, "crop_scale": 1.4}, tmp_path / "tuned.pt")
    soup.main([str(tmp_path / "rebuilt.pt"), str(tmp_path / "tuned.pt"), "--out", str(tmp_path / "mid.pt")])
    assert torch.load(tmp_path / "mid.pt")["crop_scale"] == 1.4
    torch.save({"model": a, "input": 16}, tmp_path / "other.pt")
    with pytest.raises(ValueError):
        soup.main([str(tmp_path / "0.pt"), str(tmp_path / "other.pt"), "--out", str(tmp_path / "bad.pt")])
    # runs that did not start from the same weights (each its own seeded layers) make no network: refused
    torch.manual_seed(7)
    apart = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Linear(2, 2)).state_dict()
    with pytest.raises(ValueError, match="point apart"):
        soup.soup([a, apart])


def test_breeds_small_view_is_the_face_crop_seen_from_far_away():
    """--small-faces: the framing of the server's face crop, with the detail a 16-60 px face has."""
    from PIL import Image

    from training.train_breeds import view

    image = photo(CATS[0])
    face = load().detect([image], breeds=False)[0][0]
    near = view(image, np.random.default_rng(0), "face", face.box).mean(0)
    far = view(image, np.random.default_rng(0), "small", face.box).mean(0)
    # the same face (the small view may be mirrored)
    similarity = [np.corrcoef(x.ravel(), far.ravel())[0, 1] for x in (near, near[:, ::-1])]
    assert max(similarity) > 0.8
    detail = [np.abs(np.diff(x[64:192, 64:192], axis=1)).mean() for x in (near, far)]  # in the face box
    assert detail[1] < 0.75 * detail[0]
    # a photo without a face (a dog's) gets a box drawn in its middle
    assert view(Image.new("RGB", (400, 300)), np.random.default_rng(0), "small").shape == (3, 256, 256)


def test_breeds_views_at_another_input_side_frame_the_same_picture():
    """train_breeds --input: a view cut at another side is the served view's picture at that side."""
    from training import data
    from training.train_breeds import INPUT, view

    image, points = photo(CATS[0]), ground_truth(CATS[0])
    box = data.landmark_box(points, image.width, image.height)
    for kind in ("full", "face"):
        served = view(image, np.random.default_rng(0), kind, box)
        half = view(image, np.random.default_rng(0), kind, box, size=INPUT // 2)
        assert half.shape == (3, INPUT // 2, INPUT // 2)
        shrunk = served.reshape(3, INPUT // 2, 2, INPUT // 2, 2).mean((2, 4))
        assert np.corrcoef(shrunk.ravel(), half.ravel())[0, 1] > 0.95, kind


def test_fold_product_rule_is_the_services_at_the_shipped_weight():
    """train_breeds --select and select_face_weight score the folds with the rule /breeds serves: at
    its weight, one face's crop and the photo averaged as CatFace.photo_probabilities does; no
    face, the photo alone."""
    from service.pipeline import CatFace
    from training.train_breeds import FACE_WEIGHT, product_rule

    rng = np.random.default_rng(0)
    whole, face = rng.dirichlet(np.ones(12), 2), rng.dirichlet(np.ones(12), 2)
    face[1] = np.nan  # the second photo: no face found
    assert FACE_WEIGHT == 0.5
    both = product_rule(whole, face)
    np.testing.assert_allclose(both[0], CatFace.photo_probabilities(np.stack([face[0], whole[0]])))
    np.testing.assert_allclose(both[1], whole[1])
    np.testing.assert_allclose(product_rule(whole, face, 0.0)[0], whole[0])


def test_landmark_selection_faces_are_in_no_split():
    """select_landmarks compares networks on Crawford faces outside the training and validation
    splits (the cleaning list's removed photos), each with its 9 points."""
    from training import data, select_landmarks

    faces = select_landmarks.held_out_faces(DATA / "crawford")
    assert faces and not {f.path for f in faces} & {p.path for p in data.crawford(DATA / "crawford")}
    assert all(f.landmarks[0].shape == (9, 2) for f in faces)
