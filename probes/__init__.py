"""Probes that tell training from deployment, each result beside its controls.

>>> import probes, torch
>>> x = torch.tensor([[[0.0], [1.0], [2.0], [3.0]]])
>>> probes.auroc(probes.fit_logistic(x, torch.tensor([0, 0, 1, 1])).scores(x)[0], [0, 0, 1, 1])
1.0"""

from training.lazy import exports

__all__, __getattr__, __dir__ = exports(__name__, {
    "Detector": "detectors",
    "Fitted": "detectors",
    "ProbeKind": "detectors",
    "KINDS": "detectors",
    "Logistic": "detectors",
    "MeanDifference": "detectors",
    "Mahalanobis": "detectors",
    "fit_logistic": "fit",
    "mean_difference": "fit",
    "fit_mahalanobis": "fit",
    "LinearProbe": "fit",
    "MahalanobisDetector": "fit",
    "QUESTIONS": "defection",
    "ContrastPairs": "defection",
    "ContrastProbe": "defection",
    "contrast_activations": "defection",
    "contrast_pair": "defection",
    "pooled_direction": "defection",
    "project": "defection",
    "defection_aurocs": "defection",
    "auroc": "metrics",
    "auroc_interval": "metrics",
    "recall_at_fpr": "metrics",
    "accuracy": "metrics",
    "summary": "metrics",
    "rank_auroc": "metrics",
    "random_directions": "controls",
    "shuffled_labels": "controls",
    "transfer": "controls",
    "near_trigger": "controls",
    "threshold_at_fpr": "controls",
    "point_aurocs": "controls",
})
