"""Breed-classification scores, one definition for training's reports and evaluation's tables."""
from __future__ import annotations

import numpy as np

from . import data


def breed_metrics(pred: np.ndarray, labels: np.ndarray) -> dict:
    """Top-1 and macro scores; pred -1 = no answer (counts as wrong, in no confusion column)."""
    k = len(data.BREEDS)
    confusion = np.zeros((k, k), int)
    for t, p in zip(labels, pred):
        if p >= 0:
            confusion[t, p] += 1
    precision = np.diag(confusion) / np.maximum(confusion.sum(0), 1)
    recall = np.diag(confusion) / np.maximum(np.bincount(labels, minlength=k), 1)
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-9)
    return {"photos": int(len(labels)), "top1": float((pred == labels).mean()),
            "macro_precision": float(precision.mean()),
            "macro_recall": float(recall.mean()), "macro_f1": float(f1.mean()), "unanswered": int((pred < 0).sum()),
            "recall_per_breed": dict(zip(data.BREEDS, recall.round(3).tolist())), "confusion": confusion.tolist()}


def fold_summary(predicted: list[np.ndarray], labels: list[np.ndarray]) -> dict:
    """One rule's score on the selection folds (each fold's predicted and true breeds): photos right
    per fold and pooled, and the pooled macro F1, lowest breed and recall per breed."""
    right = [int((p == y).sum()) for p, y in zip(predicted, labels)]
    pooled = breed_metrics(np.concatenate(predicted), np.concatenate(labels))
    recall = pooled["recall_per_breed"]
    lowest = min(recall, key=recall.get)
    return {"right_per_fold": right, "right": sum(right), "photos": pooled["photos"],
            "macro_f1": round(pooled["macro_f1"], 4), "lowest_breed": f"{lowest} {recall[lowest]}",
            "recall_per_breed": recall}
