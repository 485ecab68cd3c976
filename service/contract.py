"""The serving contract: the numbers that training, export, the server and apps must agree on.

This is their one home. It is plain Python (no torch, no onnxruntime), so the exporters write
these numbers into models/manifest.json, and the server reads them back from the manifest at
run time (the manifest describes the artifacts actually shipped). tests/test_contract.py fails
when the manifest and this file disagree.
"""
from __future__ import annotations

# catface, the detector. The net is fully convolutional: version 2 is trained at
# DETECTOR_TRAIN_INPUT and DETECTOR_INPUT (one drawn per batch) and served at DETECTOR_INPUT, where
# its stride-8 level sees faces down to about 8 px. The score threshold (0.6) and NMS IoU (0.3) were
# chosen for version 1 on validation (false faces on dogs, shifted duplicates) and kept; the
# model card's threshold table measures the shipped detector under other values.
DETECTOR_TRAIN_INPUT = 192
DETECTOR_INPUT = 256  # served: the whole photo stretched to DETECTOR_INPUT x DETECTOR_INPUT
SCORE_THRESHOLD = 0.6
IOU_THRESHOLD = 0.3
# ...and a box that lies mostly inside a better one (or holds it) is the same face: at least this
# share of the smaller box inside the other. Set a priori for detector 2.0.0 (no split tuned it).
CONTAINMENT_THRESHOLD = 0.7
MAX_FACES = 20  # the best MAX_FACES faces after NMS are kept

# A second, closer look (the server's; the phone's Core ML pipeline makes the one pass). When the
# whole-photo pass finds no face (a far-away cat?) the detector runs again on ZOOM_GRID_NONE x
# ZOOM_GRID_NONE overlapping tiles; when it finds a face under ZOOM_BELOW px at DETECTOR_INPUT
# (the stride-8 level's range: where one small face is, more may sit unseen), on ZOOM_GRID_SMALL x
# ZOOM_GRID_SMALL. Each tile is stretched to DETECTOR_INPUT; neighbours share ZOOM_OVERLAP /
# (grid - 1) of the photo's side, so a face up to that size lies whole in one tile, and a tile's
# box within ZOOM_EDGE px of an inner edge is a cut face and goes. All faces then meet in one NMS.
# Then a box that the whole photo's look or the small-face tiles' half-saw (scored from
# ZOOM_CANDIDATE_SCORE up, under SCORE_THRESHOLD, away from every face) gets a window of its own: a
# square of ZOOM_CANDIDATE_WINDOW x its longer side around it, stretched to the input; a face the
# detector finds there overlapping it (IoU > IOU_THRESHOLD) is kept. At most ZOOM_MAX_CANDIDATES a
# photo, best first: a bound on the work one photo can ask for. The no-face tiles give no
# candidates: on training dog photos they raised the false faces.
# Chosen on training-split photos (the model card has the numbers), never on validation.
# The small-face look is served as ONE look at the whole photo instead of its tiles, its longer side
# ZOOM_SMALL_LOOK px: the magnification a tile had along that side (DETECTOR_INPUT / ((1 + ZOOM_OVERLAP)
# / ZOOM_GRID_SMALL)), in 6.25 rows' worth of pixels where the overlapping tiles took 9 (issue 12's
# cost; on training photos it found the same faces: benchmarks/results/zoom-one-look-2026-12-04.json).
# Its shorter side keeps the photo's aspect ratio, rounded to a multiple of ZOOM_SMALL_LOOK_MULTIPLE
# (the detector's largest stride): a 4:3 photo's look is 640 x 480, 0.75 of the square's work, and
# on training photos it lost no face (benchmarks/results/zoom-aspect-look-2026-12-04.json). One row
# held up to about 84 MiB of activations in float (int8 since 2026-12-04: less), so the server runs
# it one photo at a time (ZOOM_SMALL_LOOK_BATCH).
ZOOM_BELOW = 48
ZOOM_GRID_NONE = 2
ZOOM_GRID_SMALL = 3
ZOOM_SMALL_LOOK = 640
ZOOM_SMALL_LOOK_MULTIPLE = 32
ZOOM_SMALL_LOOK_BATCH = 1
ZOOM_OVERLAP = 0.2
ZOOM_EDGE = 2
ZOOM_CANDIDATE_SCORE = 0.2
ZOOM_CANDIDATE_WINDOW = 4
ZOOM_MAX_CANDIDATES = 8
ZOOM_CANDIDATES_FROM = ("photo", "small")  # the looks whose half-seen boxes get their own window

# catlandmarks: a square of LANDMARK_CROP_SCALE x the face box's longer side, centred on the
# box, resized to LANDMARK_INPUT x LANDMARK_INPUT.
LANDMARK_CROP_SCALE = 1.4
LANDMARK_INPUT = 192
# The looks at a face whose points are averaged: squares of scale x that side, the middle one
# mirrored (the service mirrors it and puts the points back in order). Test-time augmentation over
# the crop's size and the mirror, chosen on faces no run trained on and validation does not hold
# (benchmarks/landmarks_scales.py): three runs of the net per face, where 1.0.0's graph ran two
# (the crop and its mirror, inside the graph).
LANDMARK_LOOKS = ({"scale": 0.9, "mirror": False}, {"scale": 1.0, "mirror": True}, {"scale": 1.1, "mirror": False})

# catbreeds: a face is classified from a square of BREED_CROP_SCALE x the box's longer side
# (the head and a little of the body around it), beside the whole photo; every view is stretched
# to BREED_INPUT x BREED_INPUT (Lite2's 260 px rounded to a multiple of 32: static "same" padding).
# Breeds are reported from BREED_REPORT_THRESHOLD up.
BREED_CROP_SCALE = 2.0
BREED_INPUT = 256
BREED_REPORT_THRESHOLD = 0.05

# The classifier's cat output: a photo is a cat when it is at least this for the photo or for a
# detected face's crop. Even odds, set before any validation (never tuned on the split we report).
CAT_THRESHOLD = 0.5
