"""The OpenCV Haar cat-face cascade, the baseline every comparison uses, with one set of
settings (needs opencv-python-headless<5; no torch)."""
from __future__ import annotations

import numpy as np


def haar_cascade():
    import cv2

    return cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalcatface_extended.xml")


def haar_faces(cascade, rgb: np.ndarray) -> list[np.ndarray]:
    """Boxes (x_min, y_min, x_max, y_max) the cascade finds in an RGB photo."""
    import cv2

    gray = cv2.equalizeHist(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY))
    found = cascade.detectMultiScale(gray, scaleFactor=1.1, minNeighbors=3, minSize=(24, 24))
    return [np.array([x, y, x + w, y + h], np.float32) for x, y, w, h in found]
