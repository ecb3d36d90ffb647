"""How well scores separate two classes: AUROC with a bootstrap interval, recall at a fixed false-positive
rate, accuracy. Scores and labels may be torch tensors, numpy arrays or lists; results are python floats.

A label is 0 or 1 (or a bool), 1 the class the score should rank high. A single AUROC and the recall
come from scikit-learn; `rank_auroc` ranks many score vectors at once (bootstrap resamples, random
directions) with ties counting half, as `roc_auc_score` does:

>>> auroc([0.1, 0.4, 0.4, 0.9], [0, 0, 1, 1])
0.875
>>> recall_at_fpr([0.1, 0.4, 0.4, 0.9], [0, 0, 1, 1], fpr=0.0), accuracy([-1.0, 2.0], [0, 1])
(0.5, 1.0)
"""

from __future__ import annotations

import numpy as np
import torch
from jaxtyping import Float
from scipy.stats import rankdata
from sklearn.metrics import roc_auc_score, roc_curve


def auroc(scores, labels) -> float:
    """The area under the ROC curve: the chance that a positive outscores a negative, ties counting half."""
    scores, labels = _check(scores, labels)
    return float(roc_auc_score(labels, scores))


def auroc_interval(scores, labels, *, n_boot: int = 1000, seed: int = 0, level: float = 0.95
                   ) -> tuple[float, float]:
    """A percentile-bootstrap interval for the AUROC at `level`.

    Positives and negatives are resampled separately (a stratified bootstrap), so every resample keeps
    each class's count. All `n_boot` resamples are ranked at once, as one [n_boot, n] matrix.
    """
    if n_boot < 1 or not 0 < level < 1:
        raise ValueError(f"need n_boot >= 1 and 0 < level < 1, not n_boot={n_boot}, level={level}")
    scores, labels = _check(scores, labels)
    pos, neg = scores[labels], scores[~labels]
    rng = np.random.default_rng(seed)
    resampled = np.concatenate([rng.choice(pos, (n_boot, len(pos))), rng.choice(neg, (n_boot, len(neg)))], 1)
    tail = (1 - level) / 2
    lo, hi = np.quantile(rank_auroc(resampled, np.arange(resampled.shape[1]) < len(pos)), [tail, 1 - tail])
    return float(lo), float(hi)


def recall_at_fpr(scores, labels, fpr: float = 0.01) -> float:
    """The largest recall of a threshold whose false-positive rate on the negatives is at most `fpr`.

    Thresholds are the scores themselves (scikit-learn's `roc_curve`), so no point between two of them
    is interpolated.
    """
    if not 0 <= fpr <= 1:
        raise ValueError(f"fpr must lie in [0, 1], not {fpr}")
    scores, labels = _check(scores, labels)
    false_positive_rate, recall, _ = roc_curve(labels, scores, drop_intermediate=False)
    return float(recall[false_positive_rate <= fpr].max())


def accuracy(scores, labels, threshold: float = 0.0) -> float:
    """The fraction of examples whose prediction (1 where the score exceeds `threshold`) is the label."""
    scores, labels = _check(scores, labels)
    return float(((scores > threshold) == labels).mean())


def summary(scores, labels, *, n_boot: int = 1000, seed: int = 0) -> dict:
    """Every metric above, JSON-ready: AUROC and its 95% interval, recall at 1% FPR, accuracy at 0; and
    whether the point is `degenerate`, every prompt scoring the same (its AUROC of 0.5 then says only
    that the activations there do not vary, as at a position every prompt shares).

    >>> labels = np.array([0, 0, 1, 1])
    >>> [summary(s, labels, n_boot=10)["degenerate"] for s in (np.ones(4), np.arange(4.0))]
    [True, False]
    """
    scores, labels = _check(scores, labels)
    return {"auroc": auroc(scores, labels), "degenerate": bool(np.all(scores == scores.flat[0])),
            "auroc_ci": list(auroc_interval(scores, labels, n_boot=n_boot, seed=seed)),
            "recall_at_1pct_fpr": recall_at_fpr(scores, labels, 0.01),
            "accuracy": accuracy(scores, labels),
            "n_pos": int(labels.sum()), "n_neg": int((~labels).sum())}


def rank_auroc(scores: Float[np.ndarray, "*batch n"], labels) -> Float[np.ndarray, "*batch"]:
    """The AUROC of each row of scores, for one set of labels (Mann-Whitney U over n_pos × n_neg; ties
    count a half): many score vectors (bootstrap resamples, random directions) at once.

    >>> rank_auroc(np.array([[0.1, 0.4, 0.35, 0.8], [1.0, 1.0, 0.0, 0.0]]), np.array([0, 0, 1, 1]))
    array([0.75, 0.  ])
    """
    labels = np.asarray(labels).astype(bool)
    n_pos, n_neg = labels.sum(), (~labels).sum()
    if n_pos == 0 or n_neg == 0:
        raise ValueError("an AUROC needs both labels")
    ranks = rankdata(scores, axis=-1)  # ties get their mean rank
    return (ranks[..., labels].sum(-1) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def _check(scores, labels) -> tuple[np.ndarray, np.ndarray]:
    """Scores as a float64 vector and labels as a bool vector of one length, both classes present."""
    scores, labels = (np.asarray(v.detach().cpu() if isinstance(v, torch.Tensor) else v)
                      for v in (scores, labels))
    if scores.ndim != 1 or labels.shape != scores.shape:
        raise ValueError(f"scores and labels must be vectors of one length, not shapes {scores.shape} and "
                         f"{labels.shape}")
    if not np.isin(labels, (0, 1)).all():
        raise ValueError("labels must be 0 or 1")
    scores, labels = scores.astype(np.float64), labels.astype(bool)
    if not np.isfinite(scores).all():
        raise ValueError("scores must be finite")
    if labels.all() or not labels.any():
        raise ValueError(f"the labels need both classes, not only {int(labels[0])}")
    return scores, labels
