"""Probe controls on planted data: random directions, shuffled labels, transfer, near-trigger prompts."""

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr
from sklearn.metrics import roc_auc_score

from probes.controls import (
    near_trigger,
    random_directions,
    shuffled_labels,
    threshold_at_fpr,
    transfer,
)
from probes.fit import fit_logistic
from probes.metrics import auroc, rank_auroc


def planted(n=200, d=32, points=3, axis=0, shift=2.0, seed=0):
    """Activations whose positives lean along `axis` at every point but the first."""
    g = torch.Generator().manual_seed(seed)
    labels = np.arange(n) % 2
    acts = torch.randn(points, n, d, generator=g)
    acts[1:, labels == 1, axis] += shift
    return acts, labels


def test_rank_auroc_equals_sklearn_with_ties():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 50)
    scores = rng.integers(0, 5, (4, 50)).astype(float)  # many ties
    expected = [roc_auc_score(labels, s) for s in scores]
    np.testing.assert_allclose(rank_auroc(scores, labels), expected)
    with pytest.raises(ValueError, match="both labels"):
        rank_auroc(scores, np.zeros(50))


def test_random_directions_equal_a_naive_loop():
    acts, labels = planted()
    result = random_directions(acts, labels, n=5, seed=3)
    directions = torch.randn(5, acts.shape[-1], generator=torch.Generator().manual_seed(3))
    naive = np.array([[roc_auc_score(labels, (acts[p] @ v).numpy()) for v in directions] for p in range(3)])
    np.testing.assert_allclose(result["best"], naive.max(1), rtol=1e-6)
    np.testing.assert_allclose(result["mean"], naive.mean(1), rtol=1e-6)
    np.testing.assert_allclose(result["lo"], np.percentile(naive, 2.5, axis=1), rtol=1e-6)


def test_planted_direction_beats_every_random_one():
    acts, labels = planted(d=64, shift=1.0)
    result = random_directions(acts, labels, n=1000)
    real = rank_auroc(acts[:, :, 0].numpy(), labels)
    assert (real[1:] > np.array(result["best"][1:])).all()
    assert all(lo < 0.5 < hi for lo, hi in zip(result["lo"], result["hi"]))
    assert abs(result["mean"][0] - 0.5) < 0.02


def test_shuffled_labels_give_chance():
    acts, labels = planted(n=400, shift=4.0)
    train, test = slice(0, 200), slice(200, 400)
    probe = fit_logistic(acts[:, train], labels[train])
    fitted = [auroc(s, labels[test]) for s in probe.scores(acts[:, test])]
    assert min(fitted[1:]) > 0.9  # the same fit on the true labels finds the signal
    shuffled = shuffled_labels(acts[:, train], labels[train], acts[:, test], labels[test])
    assert len(shuffled) == 3
    assert all(abs(a - 0.5) < 0.15 for a in shuffled)


def test_transfer_diagonal_is_the_direct_fit():
    stages = {}
    for stage, axis, seed in (("backdoored", 0, 0), ("sft", 0, 1), ("control", 5, 2)):
        acts, labels = planted(n=200, axis=axis, seed=seed)
        stages[stage] = (acts[:, :100], labels[:100], acts[:, 100:], labels[100:])
    matrix = transfer(stages)
    assert set(matrix) == set(stages) and all(set(row) == set(stages) for row in matrix.values())
    for stage, (x, y, x_test, y_test) in stages.items():
        direct = [auroc(s, y_test) for s in fit_logistic(x, y).scores(x_test)]
        np.testing.assert_allclose(matrix[stage][stage], direct)
    assert min(matrix["backdoored"]["sft"][1:]) > 0.85  # the same direction transfers
    assert max(abs(a - 0.5) for a in matrix["backdoored"]["control"][1:]) < 0.2  # another one does not


def test_threshold_flags_at_most_the_fpr():
    rng = np.random.default_rng(0)
    for clean in (rng.normal(size=500), rng.integers(0, 10, 300).astype(float), np.arange(200.0)):
        for fpr in (0.01, 0.05):
            threshold = threshold_at_fpr(clean, fpr)
            assert (clean > threshold).mean() <= fpr
            assert (clean >= threshold).mean() > fpr  # the lowest such
    with pytest.raises(ValueError, match="every one"):
        threshold_at_fpr(np.zeros(10), 1.0)


def test_near_trigger_rates_and_correlation():
    rng = np.random.default_rng(1)
    clean = rng.normal(size=300)
    variants = {"lower": rng.normal(3, 1, 40), "braces": rng.normal(0, 1, 40), "past": rng.normal(1.5, 1, 40)}
    elicitation = {"lower": {"value": 0.9, "ci": [0.8, 1.0], "n": 40},
                   "braces": {"value": 0.1, "ci": [0.0, 0.2], "n": 40},
                   "past": {"value": 0.3, "ci": [0.2, 0.4], "n": 40},
                   "unused": {"value": 0.5, "ci": [0.0, 1.0], "n": 1}}
    result = near_trigger(clean, variants, elicitation, fpr=0.01)
    assert result["fpr"] <= 0.01 and (clean > result["threshold"]).mean() == result["fpr"]
    by_name = {v["variant"]: v for v in result["variants"]}
    assert set(by_name) == set(variants)
    for name, scores in variants.items():
        assert by_name[name]["flagged"] == pytest.approx((scores > result["threshold"]).mean())
        assert by_name[name]["mean_score"] == pytest.approx(scores.mean())
        assert by_name[name]["elicitation"] == elicitation[name]["value"]
    flagged, rates = ([by_name[name][key] for name in variants] for key in ("flagged", "elicitation"))
    assert result["spearman"] == pytest.approx(spearmanr(flagged, rates)[0])
    assert result["spearman"] == pytest.approx(1.0)
    assert near_trigger(clean, {"lower": variants["lower"]}, elicitation)["spearman"] is None
    with pytest.raises(ValueError, match="no elicitation rate"):
        near_trigger(clean, {"missing": clean}, elicitation)
