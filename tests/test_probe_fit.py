import numpy as np
import pytest
import torch
from sklearn.covariance import EmpiricalCovariance, LedoitWolf
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from probes.detectors import KINDS, Logistic, Mahalanobis, MeanDifference
from probes.fit import fit_logistic, fit_mahalanobis, mean_difference
from probes.metrics import auroc


def activations(layers=4, n=600, d=32, seed=0):
    """Correlated Gaussian activations, imbalanced labels, a class signal growing with the layer, and
    one constant feature (which standardisation must leave alone)."""
    g = torch.Generator().manual_seed(seed)
    y = (torch.rand(n, generator=g) < 0.3).long()
    x = torch.randn(layers, n, d, generator=g) @ (torch.eye(d) + 0.3 * torch.randn(layers, d, d, generator=g))
    x += torch.arange(layers)[:, None, None] * 0.4 * y[None, :, None] * torch.randn(layers, 1, d, generator=g)
    x[:, :, -1] = 2.0
    return x, y


@pytest.mark.parametrize("C", [1.0, 0.05])
def test_logistic_matches_sklearn_pipeline(C):
    x, y = activations()
    train, test, n = x[:, :400], x[:, 400:], 400
    probe = fit_logistic(train, y[:n], l2=1 / C)
    ours = probe.scores(test)
    for layer in range(x.shape[0]):
        sk = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=2000))
        sk.fit(train[layer].double().numpy(), y[:n].numpy())
        theirs = sk.decision_function(test[layer].double().numpy())
        assert auroc(ours[layer], y[n:]) == pytest.approx(roc_auc_score(y[n:], theirs), abs=0.005)
        w, c = probe.weight[layer].numpy(), sk[-1].coef_[0]
        assert w @ c / np.linalg.norm(w) / np.linalg.norm(c) > 0.99


@pytest.mark.parametrize("newton", ["exact", "conjugate gradients"])
def test_logistic_solves_to_sklearn_tight_optimum(newton, monkeypatch):
    if newton == "conjugate gradients":  # the path of layers wider than EXACT_NEWTON_WIDTH
        monkeypatch.setattr("probes.fit.EXACT_NEWTON_WIDTH", 0)
    x, y = activations(layers=2, n=300, d=16, seed=1)
    probe = fit_logistic(x, y, l2=0.5)
    for layer in range(2):
        sk = LogisticRegression(C=2.0, tol=1e-10, max_iter=10000)
        sk.fit(StandardScaler().fit_transform(x[layer].double().numpy()), y.numpy())
        np.testing.assert_allclose(probe.weight[layer].numpy(), sk.coef_[0], atol=1e-5)
        assert probe.bias[layer].item() == pytest.approx(sk.intercept_[0], abs=1e-5)


def test_logistic_on_separable_and_constant_layers():
    # Layer 0 carries nothing (every activation equal), layer 1 separates the classes perfectly.
    y = torch.arange(100) % 2
    x = torch.ones(2, 100, 4)
    x[1, :, 0] = y * 2.0 - 1 + 0.1 * torch.randn(100)
    probe = fit_logistic(x, y)
    scores = probe.scores(x)
    assert torch.allclose(probe.weight[0], torch.zeros(4, dtype=torch.float64))
    assert auroc(scores[1], y) == 1.0 and torch.isfinite(scores).all()


def test_mean_difference_recovers_planted_direction():
    g = torch.Generator().manual_seed(0)
    direction = torch.nn.functional.normalize(torch.randn(64, generator=g), dim=0)
    y = torch.arange(2000) % 2
    x = torch.randn(3, 2000, 64, generator=g) + 5.0 + 2 * y[None, :, None] * direction
    probe = mean_difference(x, y)
    assert (probe.weight.float() @ direction > 0.95).all()
    assert probe.weight.norm(dim=-1).allclose(torch.ones(3, dtype=torch.float64))
    midpoint = (x[:, y == 1].mean(1) + x[:, y == 0].mean(1)) / 2
    assert probe.scores(midpoint[:, None]).abs().max() < 1e-4


@pytest.mark.parametrize("n, d", [(300, 20), (30, 50)])
def test_mahalanobis_matches_sklearn(n, d):
    g = torch.Generator().manual_seed(n)
    trusted = torch.randn(2, n, d, generator=g) @ torch.randn(2, d, d, generator=g) + 3.0
    queries = torch.randn(2, 40, d, generator=g) * 2
    ledoit_wolf = fit_mahalanobis(trusted)
    for layer in range(2):
        sk = LedoitWolf().fit(trusted[layer].double().numpy())
        assert ledoit_wolf.shrinkage[layer].item() == pytest.approx(sk.shrinkage_, rel=1e-6)
        np.testing.assert_allclose(ledoit_wolf.scores(queries)[layer].numpy(),
                                   sk.mahalanobis(queries[layer].double().numpy()), rtol=1e-6)
    if n > d:
        empirical = fit_mahalanobis(trusted, shrinkage=0.0)
        for layer in range(2):
            sk = EmpiricalCovariance().fit(trusted[layer].double().numpy())
            np.testing.assert_allclose(empirical.scores(queries)[layer].numpy(),
                                       sk.mahalanobis(queries[layer].double().numpy()), rtol=1e-6)
    else:
        with pytest.raises(ValueError, match="singular"):
            fit_mahalanobis(trusted, shrinkage=0.0)


def test_bad_inputs_are_refused():
    x, y = torch.randn(2, 10, 3), torch.arange(10) % 2
    with pytest.raises(ValueError, match="one label per example"):
        fit_logistic(x, y[:9])
    with pytest.raises(ValueError, match="0 or 1"):
        mean_difference(x, y * 2)
    with pytest.raises(ValueError, match="both classes"):
        fit_logistic(x, torch.ones(10, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[layer, n, d\]"):
        fit_logistic(x[0], y)
    with pytest.raises(ValueError, match="l2"):
        fit_logistic(x, y, l2=0.0)
    with pytest.raises(ValueError, match="do not fit"):
        fit_logistic(x, y).scores(torch.randn(2, 5, 4))
    with pytest.raises(ValueError, match="do not fit"):
        fit_mahalanobis(x).scores(torch.randn(3, 5, 3))
    with pytest.raises(ValueError, match="shrinkage"):
        fit_mahalanobis(x, shrinkage=2.0)


def test_registry_detectors_are_the_fits():
    x, y = activations(layers=2, n=200, d=8, seed=2)
    test = activations(layers=2, n=50, d=8, seed=3)[0]
    torch.testing.assert_close(Logistic(l2=2.0).fit(x, y).scores(test),
                               fit_logistic(x, y, l2=2.0).scores(test))
    torch.testing.assert_close(MeanDifference().fit(x, y).scores(test), mean_difference(x, y).scores(test))
    trusted = fit_mahalanobis(x[:, y == 0]).scores(test)
    torch.testing.assert_close(Mahalanobis().fit(x, y.numpy()).scores(test), trusted)
    moved = x.clone()
    moved[:, y == 1] += 100.0  # the positives never enter a detector fitted on trusted rows
    torch.testing.assert_close(KINDS["mahalanobis"].main.fit(moved, y).scores(test), trusted)
    assert KINDS["deployment"].main == Logistic()
