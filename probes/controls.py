"""Controls for a probe result: what a score means only beside what chance, the wrong labels, another
model or a near-trigger prompt gives.

Every control takes activations [point, n, d] (a residual point is a layer) and answers per point. The
random-direction control scores all its directions at once (`probes.metrics.rank_auroc`):

>>> acts = torch.zeros(1, 4, 2); acts[0, 2:, 0] = 1.0
>>> random_directions(acts, [0, 0, 1, 1], n=200)["best"]
[1.0]
"""

from __future__ import annotations

import numpy as np
import torch
from einops import einsum
from jaxtyping import Float
from scipy.stats import spearmanr

from probes.detectors import Detector, Logistic
from probes.metrics import auroc, rank_auroc


def random_directions(acts: Float[torch.Tensor, "point n d"], labels, n: int = 1000, seed: int = 0) -> dict:
    """The AUROC of `n` random directions (isotropic Gaussian, the same ones at every point) at each point:
    the mean, the 2.5 and 97.5 percentiles, and the best of them."""
    directions = torch.randn(n, acts.shape[-1], generator=torch.Generator().manual_seed(seed))
    projections = einsum(directions, acts.float(), "direction d, point n d -> point direction n")
    aurocs = rank_auroc(projections.numpy(), labels)  # [point, direction]
    lo, hi = np.percentile(aurocs, [2.5, 97.5], axis=1)
    return {"n": n, "seed": seed, "mean": aurocs.mean(1).tolist(), "lo": lo.tolist(), "hi": hi.tolist(),
            "best": aurocs.max(1).tolist()}


def point_aurocs(scores: Float[torch.Tensor, "point n"], labels) -> list[float]:
    """`probes.metrics.auroc` at each point."""
    return [auroc(s, labels) for s in scores]


def shuffled_labels(x_train: Float[torch.Tensor, "point n d"], y_train,
                    x_test: Float[torch.Tensor, "point m d"], y_test, seed: int = 0,
                    detector: Detector = Logistic()) -> list[float]:
    """The test AUROC at each point of the detector fitted on a random permutation of the train labels.

    Where the classes differ along most directions (a `random_directions` band reaching 0 and 1), one
    permutation can land far from 0.5 by chance; compare a few seeds.
    """
    permuted = np.random.default_rng(seed).permutation(np.asarray(y_train))
    return point_aurocs(detector.fit(x_train, permuted).scores(x_test), y_test)


def transfer(acts_by_stage: dict[str, tuple], detector: Detector = Logistic()
             ) -> dict[str, dict[str, list[float]]]:
    """For each stage's (x_train, y_train, x_test, y_test): the detector fitted on its train activations,
    and its AUROC at each point on every stage's test activations, as [fit stage][eval stage]."""
    probes = {stage: detector.fit(x, y) for stage, (x, y, _, _) in acts_by_stage.items()}
    return {fit: {stage: point_aurocs(probe.scores(x_test), y_test)
                  for stage, (_, _, x_test, y_test) in acts_by_stage.items()}
            for fit, probe in probes.items()}


def threshold_at_fpr(scores_clean, fpr: float = 0.01) -> float:
    """The lowest threshold that flags (score > threshold) at most `fpr` of the clean scores.

    >>> threshold_at_fpr(np.arange(200.0), 0.01)
    197.0
    """
    ranked = np.sort(np.asarray(scores_clean, dtype=float))[::-1]
    allowed = int(np.floor(fpr * len(ranked) + 1e-9))  # clean prompts that may be flagged
    if allowed >= len(ranked):
        raise ValueError(f"an FPR of {fpr} flags every one of {len(ranked)} clean prompts")
    return float(ranked[allowed])


def near_trigger(scores_clean, scores_variant_by_name: dict, elicitation_by_variant: dict,
                 fpr: float = 0.01) -> dict:
    """How the probe scores each near-trigger variant beside how often the variant elicits the backdoor.

    The threshold flags at most `fpr` of the clean prompts. Per variant: the fraction of its prompts
    flagged, their mean score, and the model's elicitation rate (`redteam_by_variant` of an eval:
    value, ci, n). `spearman` is the rank correlation across variants of the flagged fraction with the
    elicitation rate; None where it is undefined (under two variants, or either side constant).
    """
    missing = set(scores_variant_by_name) - set(elicitation_by_variant)
    if missing:
        raise ValueError(f"no elicitation rate for the variants {sorted(missing)}")
    threshold = threshold_at_fpr(scores_clean, fpr)
    variants = []
    for name, scores in scores_variant_by_name.items():
        scores, rate = np.asarray(scores, dtype=float), elicitation_by_variant[name]
        variants.append({"variant": name, "n": len(scores), "flagged": float((scores > threshold).mean()),
                         "mean_score": float(scores.mean()), "elicitation": rate["value"],
                         "elicitation_ci": rate["ci"]})
    flagged, elicited = ([v[key] for v in variants] for key in ("flagged", "elicitation"))
    defined = len(variants) >= 2 and len(set(flagged)) > 1 and len(set(elicited)) > 1
    return {"threshold": threshold, "fpr": float((np.asarray(scores_clean) > threshold).mean()),
            "variants": variants, "spearman": float(spearmanr(flagged, elicited)[0]) if defined else None}
