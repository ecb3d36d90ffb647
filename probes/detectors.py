"""Every kind of probe behind one small protocol: a `Detector` is fitted on activations and labels, and what
it returns `scores` other activations, one score per point and prompt, higher meaning more like the
positives (the trigger present). What it is fitted on differs by kind: labelled train prompts (the
logistic and mean-difference probes), only their untriggered rows (Mahalanobis, a detector fitted on
trusted data alone), or contrast pairs of the defection questions, which no trigger enters.

`KINDS` holds the project's kinds by name, each with its detectors (the first is the one its controls
score) and the controls that apply to it:

>>> from probes.metrics import auroc
>>> list(KINDS)
['deployment', 'defection', 'mahalanobis']
>>> g = torch.Generator().manual_seed(0)
>>> x = torch.randn(2, 100, 4, generator=g); y = torch.arange(100) % 2; x[1, :, 0] += 3 * y
>>> deployment = KINDS["deployment"]
>>> fitted = {name: detector.fit(x, y) for name, detector in deployment.detectors.items()}
>>> {name: [round(auroc(s, y), 2) for s in probe.scores(x)] for name, probe in fitted.items()}
{'logistic': [0.66, 1.0], 'mean_difference': [0.65, 1.0]}
>>> KINDS["mahalanobis"].main.fit(x, y).scores(x).shape  # fitted on the 50 rows labelled 0
torch.Size([2, 100])
>>> KINDS["defection"].fitted_on, KINDS["defection"].supervised
('contrast_pairs', False)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from probes.defection import ContrastPairs, defection_aurocs
from probes.fit import LinearProbe, MahalanobisDetector, fit_logistic, fit_mahalanobis, mean_difference
from probes.metrics import summary


class Fitted(Protocol):
    """A fitted detector."""

    def scores(self, x: Float[Tensor, "point n d"]) -> Float[Tensor, "point n"]: ...


class Detector(Protocol):
    """What a kind of probe fits: `fit(activations, labels)` (1 the class to score high) -> `Fitted`."""

    def fit(self, x: Float[Tensor, "point n d"], y) -> Fitted: ...


@dataclass(frozen=True)
class Logistic:
    """`probes.fit.fit_logistic`: L2 logistic regression on standardised activations."""

    l2: float = 1.0

    def fit(self, x: Float[Tensor, "point n d"], y) -> LinearProbe:
        return fit_logistic(x, y, l2=self.l2)


@dataclass(frozen=True)
class MeanDifference:
    """`probes.fit.mean_difference`: the direction between the class means."""

    def fit(self, x: Float[Tensor, "point n d"], y) -> LinearProbe:
        return mean_difference(x, y)


@dataclass(frozen=True)
class Mahalanobis:
    """`probes.fit.fit_mahalanobis` on the rows labelled 0 alone (the trusted ones); it never sees a
    positive."""

    shrinkage: float | None = None

    def fit(self, x: Float[Tensor, "point n d"], y) -> MahalanobisDetector:
        return fit_mahalanobis(x[:, torch.as_tensor(np.asarray(y)) == 0], shrinkage=self.shrinkage)


def by_point(fitted: Mapping[str, Fitted], x: Float[Tensor, "point n d"], y) -> dict[str, list[dict]]:
    """`probes.metrics.summary` of each fitted detector's scores at each point, by the detector's name."""
    return {name: [summary(s.numpy(), y) for s in probe.scores(x)] for name, probe in fitted.items()}


def by_question(fitted: Mapping[str, Fitted], x: Float[Tensor, "point n d"], y) -> dict:
    """`probes.defection.defection_aurocs` of the (one) fitted contrast-pair probe: pooled and by question."""
    (probe,) = fitted.values()
    return defection_aurocs(probe, x, y)


@dataclass(frozen=True)
class ProbeKind:
    """One kind of probe: its detectors by the name their scores go under (the first is the one that
    the near-trigger and transfer controls score), what it is fitted on (`labelled` train prompts or the
    defection questions' `contrast_pairs`), which controls apply, and how its scores are summarised."""

    detectors: Mapping[str, Detector]
    fitted_on: Literal["labelled", "contrast_pairs"] = "labelled"
    directional: bool = True  # a direction: random directions are its control
    supervised: bool = False  # fitted on labels: shuffled labels are its control
    summarise: Callable[[Mapping[str, Fitted], Tensor, object], dict] = by_point

    @property
    def main(self) -> Detector:
        return next(iter(self.detectors.values()))


KINDS: dict[str, ProbeKind] = {
    "deployment": ProbeKind({"logistic": Logistic(), "mean_difference": MeanDifference()}, supervised=True),
    "defection": ProbeKind({"pooled": ContrastPairs()}, fitted_on="contrast_pairs", summarise=by_question),
    "mahalanobis": ProbeKind({"distance": Mahalanobis()}, directional=False),
}
