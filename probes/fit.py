"""Probes and detectors fitted on every layer at once: one batched torch computation, no loop over layers.

`fit_logistic` is scikit-learn's `make_pipeline(StandardScaler(), LogisticRegression(C=1 / l2))`: on the
standardised features it minimises  Σᵢ log(1 + exp(-sᵢ mᵢ)) + l2/2 ‖w‖²  (sᵢ = ±1, mᵢ the margin, the
intercept unpenalised). It runs Newton's method on all layers together. Up to `EXACT_NEWTON_WIDTH`
coefficients each step solves the [layer, d + 1, d + 1] Hessian; wider, each step is solved by conjugate
gradients preconditioned with Böhning's bound Zᵀ Z / 4 + l2 I on the Hessian, inverted once, so the
Hessian is never formed and a step costs a few passes over the activations. Memory is the [layer, n,
d + 1] standardised copy (float64) and the [layer, d + 1, d + 1] bound, so fit a very wide model (d of
many thousands) a slice of layers at a time. `mean_difference` is the difference of the class means;
`fit_mahalanobis` scores the distance from trusted activations.

>>> g = torch.Generator().manual_seed(0)
>>> x = torch.randn(2, 200, 8, generator=g); y = torch.arange(200) % 2; x[1, :, 0] += 3 * y
>>> probe = fit_logistic(x, y)
>>> probe.weight.shape, probe.scores(x).shape
(torch.Size([2, 8]), torch.Size([2, 200]))
>>> [round(float(v.argmax())) for v in mean_difference(x, y).weight.abs()][1]
0
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from einops import einsum
from jaxtyping import Float, Int
from torch import Tensor

# Up to this many coefficients (width + intercept) each Newton step forms and solves the Hessian.
EXACT_NEWTON_WIDTH = 256


@dataclass(frozen=True)
class LinearProbe:
    """A linear score per layer on standardised activations: ((x - mean) / scale) · weight + bias."""

    weight: Float[Tensor, "layer d"]
    bias: Float[Tensor, " layer"]
    mean: Float[Tensor, "layer d"]
    scale: Float[Tensor, "layer d"]

    def scores(self, x: Float[Tensor, "layer m d"]) -> Float[Tensor, "layer m"]:
        """The decision function (float64): above 0 predicts class 1."""
        _check_activations(x, self.weight.shape)
        weight = self.weight / self.scale  # folding the standardisation into the weights
        bias = self.bias - (self.mean * weight).sum(-1)
        return einsum(x.to(weight), weight, "layer m d, layer d -> layer m") + bias[:, None]


@dataclass(frozen=True)
class MahalanobisDetector:
    """The trusted activations' mean and the Cholesky factor of their (shrunk) covariance, per layer."""

    mean: Float[Tensor, "layer d"]
    cholesky: Float[Tensor, "layer d d"]
    shrinkage: Float[Tensor, " layer"]

    def scores(self, x: Float[Tensor, "layer m d"]) -> Float[Tensor, "layer m"]:
        """The squared Mahalanobis distance of each activation from the trusted mean (float64)."""
        _check_activations(x, self.mean.shape)
        centred = (x.to(self.mean) - self.mean[:, None]).mT
        return torch.linalg.solve_triangular(self.cholesky, centred, upper=False).square().sum(1)


def fit_logistic(x: Float[Tensor, "layer n d"], y: Int[Tensor, " n"], *, l2: float = 1.0, max_iter: int = 100,
                 tol: float = 1e-6) -> LinearProbe:
    """An L2 logistic-regression probe for every layer, equal to scikit-learn's pipeline with C = 1 / l2.

    Newton stops once every layer's step moves no coefficient by more than `tol` (relative to the
    largest coefficient, when that exceeds 1); it warns if `max_iter` steps were not enough. Below, layer
    0's single feature rises with the label and layer 1's does not (its weight is scikit-learn's, 0.944):

    >>> x = torch.tensor([[[0.0], [1.0], [2.0], [3.0]], [[1.0], [0.0], [1.0], [0.0]]])
    >>> probe = fit_logistic(x, torch.tensor([0, 0, 1, 1]))
    >>> [round(w, 3) for w in probe.weight[:, 0].tolist()], (probe.scores(x) > 0).int().tolist()
    ([0.944, 0.0], [[0, 0, 1, 1], [0, 0, 0, 0]])
    """
    _check_activations(x)
    target = _labels(y, x.shape[1]).to(torch.float64)
    if l2 <= 0:
        raise ValueError(f"l2 must be positive, not {l2}")
    layers, n, d = x.shape
    x = x.to(torch.float64)
    std, mean = torch.std_mean(x, 1, correction=0)
    scale = torch.where(std > 1e-12 * (1 + mean.abs()), std, torch.ones_like(std))  # constant: left as is
    rows = x.new_empty(layers, n, d + 1)  # standardised, then a column of ones for the intercept
    torch.addcmul((-mean / scale)[:, None], x, (1 / scale)[:, None], out=rows[..., :d])
    rows[..., d] = 1.0
    z = _Design(rows)
    penalty = torch.full((d + 1,), float(l2), dtype=torch.float64)
    penalty[-1] = 0.0  # the intercept
    # Böhning's bound: each Hessian Zᵀ diag(p(1-p)) Z + l2 is at most this; the Gram is float32 (a
    # preconditioner need not be exact). Narrow layers form and factor each Hessian instead.
    exact = d + 1 <= EXACT_NEWTON_WIDTH
    gram = None if exact else (lambda z32: z32 @ z32.mT)(z.columns.to(torch.float32)).to(torch.float64)
    bound = None if exact else torch.cholesky_inverse(torch.linalg.cholesky(gram / 4 + torch.diag(penalty)))
    beta = x.new_zeros(layers, d + 1)
    value, grad, curvature = _logistic(z, target, penalty, beta)
    first = grad.norm(dim=-1)
    for _ in range(max_iter):
        if exact:
            step = _solve_spd(z.columns @ (curvature[..., None] * z.rows) + torch.diag(penalty), grad)
        else:  # an inexact step, solved more exactly as the gradient shrinks
            forcing = (grad.norm(dim=-1) / first.clamp_min(1e-300)).sqrt().clamp(max=0.1)
            step = _newton_step(z, curvature, penalty, grad, bound, forcing, 1e-12 * first)
        beta, moved = _line_search(z, target, penalty, beta, value, grad, step)
        value, grad, curvature = _logistic(z, target, penalty, beta)
        if (moved <= tol * beta.abs().amax(-1).clamp_min(1)).all():
            break
    else:
        warnings.warn(f"fit_logistic: {max_iter} Newton steps did not converge to tol={tol}", RuntimeWarning,
                      stacklevel=2)
    return LinearProbe(beta[:, :-1], beta[:, -1], mean, scale)


def mean_difference(x: Float[Tensor, "layer n d"], y: Int[Tensor, " n"]) -> LinearProbe:
    """The unit direction from the negatives' mean to the positives', scoring 0 halfway between them."""
    _check_activations(x)
    positive = _labels(y, x.shape[1]).bool()
    x = x.to(torch.float64)
    high, low = x[:, positive].mean(1), x[:, ~positive].mean(1)
    weight = (high - low) / (high - low).norm(dim=-1, keepdim=True).clamp_min(1e-300)
    bias = -(weight * (high + low) / 2).sum(-1)
    return LinearProbe(weight, bias, torch.zeros_like(weight), torch.ones_like(weight))


def fit_mahalanobis(trusted: Float[Tensor, "layer n d"], *, shrinkage: float | None = None
                    ) -> MahalanobisDetector:
    """A Mahalanobis detector per layer, from the trusted activations' mean and covariance.

    The covariance is the maximum-likelihood one (divided by n) shrunk toward a multiple of the
    identity with the same trace: (1 - α) S + α tr(S)/d I. `shrinkage=None` takes α per layer by the
    Ledoit-Wolf formula (scikit-learn's `LedoitWolf`); a number fixes α (0: `EmpiricalCovariance`, which
    needs n > d). Any α > 0 keeps the covariance invertible when d ≥ n. A layer without any variance
    takes the identity.
    """
    _check_activations(trusted)
    if shrinkage is not None and not 0 <= shrinkage <= 1:
        raise ValueError(f"shrinkage must lie in [0, 1], not {shrinkage}")
    layers, n, d = trusted.shape
    if n < 2:
        raise ValueError("a covariance needs at least two trusted activations")
    x = trusted.to(torch.float64)
    mean = x.mean(1)
    x = x - mean[:, None]
    cov = x.mT @ x / n
    mu = cov.diagonal(dim1=1, dim2=2).mean(-1)  # tr(S) / d
    if shrinkage is None:
        # Ledoit & Wolf (2004): α = min(β, δ) / δ, δ = ‖S - μI‖² / d, β = Σₖ ‖xₖxₖᵀ - S‖² / (d n²).
        cov_sq = cov.square().sum((1, 2))
        delta = (cov_sq - d * mu.square()) / d
        beta = (x.square().sum(-1).square().sum(-1) / n - cov_sq) / (d * n)
        alpha = torch.where(delta > 0, torch.minimum(beta, delta) / delta.clamp_min(1e-300), 0.0)
    else:
        alpha = x.new_full((layers,), float(shrinkage))
    shrunk = (1 - alpha)[:, None, None] * cov + (alpha * mu)[:, None, None] * torch.eye(d, dtype=x.dtype)
    # A layer where every trusted activation is the same (the embedding of one shared last token) has no
    # covariance at all: the identity there, so that its distances are plain Euclidean ones.
    shrunk[mu == 0] = torch.eye(d, dtype=x.dtype)
    cholesky, info = torch.linalg.cholesky_ex(shrunk)
    if info.any():
        raise ValueError(f"the trusted covariance is singular at layers {info.nonzero().flatten().tolist()} "
                         f"({n} activations of width {d}); use shrinkage > 0")
    return MahalanobisDetector(mean, cholesky, alpha)


def _logistic(z, target, penalty, beta) -> tuple[Tensor, Tensor, Tensor]:
    """The objective, its gradient and the per-example curvature p(1-p), for each layer."""
    margin = z.times(beta)
    p = torch.sigmoid(margin)
    grad = z.transpose_times(p - target) + penalty * beta
    return _objective(margin, target, penalty, beta), grad, p * (1 - p)


def _objective(margin, target, penalty, beta) -> Tensor:
    """Σᵢ log(1 + exp(mᵢ)) - tᵢ mᵢ + Σⱼ penaltyⱼ βⱼ² / 2, for each layer."""
    return (torch.logaddexp(torch.zeros_like(margin), margin) - target * margin).sum(-1) \
        + (penalty * beta.square()).sum(-1) / 2


def _line_search(z, target, penalty, beta, value, grad, step, halvings: int = 30):
    """Backtrack each layer's step `beta - t step` from t = 1 until the objective drops enough (Armijo).

    Returns the new coefficients and how far each layer moved (max |t step|).
    """
    t = beta.new_ones(beta.shape[0])
    slope = (grad * step).sum(-1)
    flat = slope <= 1e-12 * (1 + value.abs())  # converged: no decrease left to find
    for _ in range(halvings):
        trial = beta - t[:, None] * step
        trial_value = _objective(z.times(trial), target, penalty, trial)
        done = flat | (trial_value <= value - 1e-4 * t * slope)
        if done.all():
            break
        t = torch.where(done, t, t / 2)
    keep = trial_value <= value  # a layer that cannot improve (it has converged) stays put
    beta = torch.where(keep[:, None], trial, beta)
    moved = torch.where(keep, t * step.abs().amax(-1), 0.0)
    return beta, moved


def _newton_step(z, curvature, penalty, b, inverse, rtol, floor) -> Tensor:
    """Solve (Zᵀ diag(curvature) Z + diag(penalty)) s = b for each layer by conjugate gradients
    preconditioned with `inverse` (a matrix-vector product: a triangular solve copies its factor each
    time), each layer until its residual is below `rtol` times |b| (or below `floor`)."""
    apply = lambda v: z.transpose_times(curvature * z.times(v)) + penalty * v  # noqa: E731
    precondition = lambda r: (r[:, None] @ inverse)[:, 0]  # noqa: E731 (the inverse is symmetric)
    s, r = torch.zeros_like(b), b.clone()
    u = precondition(r)
    p, rz = u.clone(), (r * u).sum(-1)
    target = torch.maximum(rtol * b.norm(dim=-1), floor)
    for _ in range(b.shape[-1]):
        active = r.norm(dim=-1) > target
        if not active.any():
            break
        ap = apply(p)
        alpha = torch.where(active, rz / (p * ap).sum(-1).clamp_min(1e-300), 0.0)
        s, r = s + alpha[:, None] * p, r - alpha[:, None] * ap
        u = precondition(r)
        rz_next = (r * u).sum(-1)
        p = u + torch.where(active, rz_next / rz.clamp_min(1e-300), 0.0)[:, None] * p
        rz = rz_next
    return s


def _solve_spd(matrix: Tensor, b: Tensor) -> Tensor:
    """Solve matrix s = b for each layer, the matrix symmetric positive definite."""
    return torch.cholesky_solve(b[..., None], torch.linalg.cholesky(matrix))[..., 0]


class _Design:
    """The [layer, n, k] design matrix, kept in both layouts: a batched row vector times a contiguous
    matrix is several times faster than a matrix (or its transposed view) times a column vector."""

    def __init__(self, rows: Tensor):
        self.rows, self.columns = rows, rows.mT.contiguous()

    def times(self, v: Float[Tensor, "layer k"]) -> Float[Tensor, "layer n"]:
        return (v[:, None] @ self.columns)[:, 0]

    def transpose_times(self, u: Float[Tensor, "layer n"]) -> Float[Tensor, "layer k"]:
        return (u[:, None] @ self.rows)[:, 0]


def _check_activations(x: Tensor, shape: torch.Size | None = None) -> None:
    """Activations are [layer, n, d]; with `shape` ([layer, d]) their layers and width must match it."""
    if not isinstance(x, Tensor) or x.ndim != 3 or not x.is_floating_point():
        raise ValueError(f"activations must be a float tensor [layer, n, d], not "
                         f"{getattr(x, 'shape', type(x))}")
    if shape is not None and (x.shape[0], x.shape[2]) != tuple(shape):
        raise ValueError(f"activations of shape {tuple(x.shape)} do not fit {shape[0]} layers of width "
                         f"{shape[1]}")
    if not torch.isfinite(x).all():
        raise ValueError("activations must be finite")


def _labels(y, n: int) -> Tensor:
    """0/1 labels, one per example, both classes present."""
    y = torch.as_tensor(y)
    if y.shape != (n,):
        raise ValueError(f"need one label per example ({n}), not shape {tuple(y.shape)}")
    if not ((y == 0) | (y == 1)).all():
        raise ValueError("labels must be 0 or 1")
    if y.bool().all() or not y.bool().any():
        raise ValueError("the labels need both classes")
    return y.long()
