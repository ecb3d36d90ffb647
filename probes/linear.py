"""Per-layer linear probes: fitted on one split's activations, scored on another's."""

from __future__ import annotations

import numpy as np
import torch
from jaxtyping import Float
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler


def layer_probe_auroc(train: Float[torch.Tensor, "layer n d"], train_labels,
                      test: Float[torch.Tensor, "layer m d"], test_labels, seed: int = 0, C: float = 1.0
                      ) -> list[float]:
    """AUROC on `test` of an L2 logistic-regression probe fitted on `train`, for each layer.

    >>> g = torch.Generator().manual_seed(0)
    >>> x = torch.randn(2, 40, 8, generator=g); y = np.arange(40) % 2; x[1, y == 1, 0] += 5
    >>> [round(a, 2) for a in layer_probe_auroc(x, y, x, y)][1]
    1.0
    """
    train_labels, test_labels = np.asarray(train_labels), np.asarray(test_labels)
    if len(set(train_labels)) < 2 or len(set(test_labels)) < 2:
        raise ValueError("a probe needs both labels in the training and the test set")
    aurocs = []
    for layer in range(train.shape[0]):
        probe = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=2000, random_state=seed))
        probe.fit(train[layer].numpy(), train_labels)
        scores = probe.decision_function(test[layer].numpy())
        aurocs.append(float(roc_auc_score(test_labels, scores)))
    return aurocs
