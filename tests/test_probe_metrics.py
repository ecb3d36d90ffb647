import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import accuracy_score, roc_auc_score, roc_curve

from probes.metrics import accuracy, auroc, auroc_interval, recall_at_fpr, summary


def scored(seed: int, n: int = 300, p_pos: float = 0.3, levels: int | None = None):
    """Random labels (imbalanced) and scores that lean toward them; with `levels`, scores are rounded
    to that many values so that many tie."""
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < p_pos).astype(int)
    labels[:2] = [0, 1]
    scores = rng.normal(size=n) + labels
    if levels:
        scores = np.round(scores * levels / 4) / levels
    return scores, labels


def sklearn_recall(scores, labels, fpr: float) -> float:
    false, true, _ = roc_curve(labels, scores, drop_intermediate=False)
    return float(true[false <= fpr].max())


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 10**6), st.integers(4, 200), st.floats(0.05, 0.95), st.sampled_from([None, 2, 5, 20]))
def test_auroc_recall_accuracy_match_sklearn(seed, n, p_pos, levels):
    scores, labels = scored(seed, n, p_pos, levels)
    assert auroc(scores, labels) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    for fpr in (0.0, 0.01, 0.1, 0.29, 0.5, 1.0):
        assert recall_at_fpr(scores, labels, fpr) == sklearn_recall(scores, labels, fpr)
    for threshold in (0.0, 0.5):
        assert accuracy(scores, labels, threshold) == pytest.approx(
            accuracy_score(labels, scores > threshold), abs=1e-12)


def test_torch_and_bool_inputs_agree_with_numpy():
    scores, labels = scored(0, levels=5)
    assert auroc(torch.tensor(scores), torch.tensor(labels).bool()) == auroc(scores.tolist(), labels.tolist())


def test_interval_contains_estimate_narrows_and_is_reproducible():
    widths = []
    for n in (100, 1000):
        scores, labels = scored(1, n)
        lo, hi = auroc_interval(scores, labels, n_boot=500, seed=3)
        assert lo <= auroc(scores, labels) <= hi
        assert (lo, hi) == auroc_interval(scores, labels, n_boot=500, seed=3)
        assert (lo, hi) != auroc_interval(scores, labels, n_boot=500, seed=4)
        widths.append(hi - lo)
    assert widths[1] < widths[0] / 2


def test_interval_resamples_each_class():
    # One positive: every stratified resample keeps it, so the interval stays on its AUROC.
    scores, labels = np.array([0.0, 1.0, 2.0, 3.0]), np.array([0, 0, 0, 1])
    assert auroc_interval(scores, labels, n_boot=50) == (1.0, 1.0)


def test_summary_is_json_ready():
    import json

    scores, labels = scored(2, levels=20)
    result = summary(torch.tensor(scores, dtype=torch.float32), torch.tensor(labels), n_boot=200)
    assert set(result) == {"auroc", "auroc_ci", "recall_at_1pct_fpr", "accuracy", "n_pos", "n_neg",
                           "degenerate"}
    assert result["degenerate"] is False
    assert result["n_pos"] + result["n_neg"] == len(labels)
    assert json.loads(json.dumps(result)) == result


@pytest.mark.parametrize("fn", [auroc, auroc_interval, recall_at_fpr, accuracy, summary])
def test_bad_labels_are_refused(fn):
    with pytest.raises(ValueError, match="both classes"):
        fn([0.1, 0.2, 0.3], [1, 1, 1])
    with pytest.raises(ValueError, match="0 or 1"):
        fn([0.1, 0.2, 0.3], [0, 1, 2])
    with pytest.raises(ValueError, match="one length"):
        fn([0.1, 0.2, 0.3], [0, 1])


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="finite"):
        auroc([0.1, float("nan")], [0, 1])
    with pytest.raises(ValueError, match="fpr"):
        recall_at_fpr([0.1, 0.2], [0, 1], fpr=1.5)
    with pytest.raises(ValueError, match="level"):
        auroc_interval([0.1, 0.2], [0, 1], level=1.0)
