"""Macro-F1 and expected calibration error for single- and multi-label predictions (numpy only).

Decisions follow the dataset: single-label takes the argmax of the softmax over the dataset's labels, multi-label
keeps every label whose sigmoid score is >= the threshold (0.5).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

ECE_BINS = 15


def indicator(labels: Sequence[Sequence[str]], label_names: Sequence[str]) -> np.ndarray:
    """[N, C] 0/1 matrix of the true labels."""
    index = {name: j for j, name in enumerate(label_names)}
    out = np.zeros((len(labels), len(label_names)), dtype=bool)
    for i, row in enumerate(labels):
        for label in row:
            out[i, index[label]] = True
    return out


def decide(scores: np.ndarray, multi_label: bool, threshold: float = 0.5) -> np.ndarray:
    """[N, C] scores -> [N, C] bool decisions (one-hot argmax for single-label)."""
    scores = np.asarray(scores)
    if multi_label:
        return scores >= threshold
    out = np.zeros(scores.shape, dtype=bool)
    out[np.arange(len(scores)), scores.argmax(axis=1)] = True
    return out


def macro_f1(truth: np.ndarray, pred: np.ndarray) -> float:
    """Mean per-label F1 over the labels that occur in the truth or the predictions (sklearn's default label set).

    Single-label F1 is this on one-hot matrices. A label never true and never predicted is skipped, so a --limit
    sample that misses a rare label does not score it 0.
    """
    truth, pred = np.asarray(truth, dtype=bool), np.asarray(pred, dtype=bool)
    tp = (truth & pred).sum(0)
    fp = (~truth & pred).sum(0)
    fn = (truth & ~pred).sum(0)
    present = (tp + fp + fn) > 0
    if not present.any():
        return 0.0
    f1 = 2 * tp[present] / (2 * tp[present] + fp[present] + fn[present])
    return float(f1.mean())


def _binned_gap(confidence: np.ndarray, target: np.ndarray, bins: int) -> float:
    """sum_b |B_b|/N * |mean(confidence in b) - mean(target in b)| over equal-width bins of [0, 1]."""
    if confidence.size == 0:
        return 0.0
    # bin b holds (b/bins, (b+1)/bins]; a confidence of exactly 0 goes to the first bin
    edges = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)
    total = 0.0
    for b in range(bins):
        members = edges == b
        if members.any():
            total += members.sum() / confidence.size * abs(confidence[members].mean() - target[members].mean())
    return float(total)


def expected_calibration_error(scores: np.ndarray, truth: np.ndarray, multi_label: bool, bins: int = ECE_BINS) -> float:
    """Single-label: top-label ECE (confidence = max softmax prob, target = argmax correct).

    Multi-label: marginal ECE over every (text, label) score (confidence = score, target = label is true), so a
    well-calibrated 0.3 means the label is true 30% of the time.
    """
    scores, truth = np.asarray(scores, dtype=float), np.asarray(truth, dtype=bool)
    if multi_label:
        return _binned_gap(scores.ravel(), truth.ravel().astype(float), bins)
    top = scores.argmax(axis=1)
    correct = truth[np.arange(len(scores)), top].astype(float)
    return _binned_gap(scores.max(axis=1), correct, bins)


@dataclass
class Metrics:
    macro_f1: float
    ece: float
    accuracy: float
    n: int

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def evaluate_scores(
    scores: np.ndarray, labels: Sequence[Sequence[str]], label_names: Sequence[str], multi_label: bool
) -> Metrics:
    """Macro-F1, ECE and accuracy (exact match for multi-label) of [N, C] scores against the true labels."""
    truth = indicator(labels, label_names)
    pred = decide(scores, multi_label)
    accuracy = float((pred == truth).all(axis=1).mean()) if len(truth) else 0.0
    return Metrics(
        macro_f1=macro_f1(truth, pred),
        ece=expected_calibration_error(scores, truth, multi_label),
        accuracy=accuracy,
        n=len(truth),
    )
