"""Training objectives (losses) with exact gradients of the batch-mean loss, PyTorch definitions.

`pred` and `target` are float (N, K) arrays (classification targets one-hot or soft). Fused
softmax/sigmoid paths take logits for numerical stability. No layers or optimisation here.
"""

from __future__ import annotations

import abc
from typing import ClassVar

import numpy as np

# Probability floor used by cross_entropy and kld only to keep log() and 1/p finite at p = 0.
EPS = 1e-12
# torch.nn.BCELoss clamps each log term at -100 and the gradient denominator p(1-p) at 1e-12.
_BCE_LOG_MIN = -100.0
_BCE_GRAD_EPS = 1e-12


def _check(owner: str, pred: np.ndarray, target: np.ndarray) -> tuple[int, int]:
    """Validate shapes (N, K) with N, K >= 1 and float dtypes; return (N, K)."""
    for what, a in (("pred", pred), ("target", target)):
        if not isinstance(a, np.ndarray) or not np.issubdtype(a.dtype, np.floating):
            raise TypeError(f"{owner}: {what} must be a float ndarray, got {type(a).__name__}")
    if pred.ndim != 2 or pred.shape != target.shape or pred.size == 0:
        raise ValueError(
            f"{owner}: pred and target must both be non-empty (N, K) arrays, "
            f"got pred {pred.shape} and target {target.shape}"
        )
    return pred.shape


def _clamped_log(x: np.ndarray, lo: float) -> np.ndarray:
    """max(log(x), lo) without floating-point warnings at x <= 0."""
    out = np.full_like(x, lo)
    np.log(x, out=out, where=x > 0)
    return np.maximum(out, lo, out=out)


def _log_softmax(z: np.ndarray) -> np.ndarray:
    s = z - z.max(axis=1, keepdims=True)
    return s - np.log(np.exp(s).sum(axis=1, keepdims=True))


def _sigmoid(z: np.ndarray) -> np.ndarray:
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1 / (1 + e), e / (1 + e))


def softmax_cross_entropy_logits_per_sample(z: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(N,) -sum_k y log softmax(z) (log-sum-exp; torch cross_entropy with probability targets)."""
    _check("softmax_cross_entropy_logits", z, y)
    return -(y * _log_softmax(z)).sum(axis=1)


def softmax_cross_entropy_logits(z: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
    """(batch-mean loss, dz) with dz = (softmax(z) * sum_k y - y) / N."""
    n, _ = _check("softmax_cross_entropy_logits", z, y)
    logsm = _log_softmax(z)
    loss = float(-(y * logsm).sum(axis=1).mean())
    dz = (np.exp(logsm) * y.sum(axis=1, keepdims=True) - y) / n
    return loss, dz


def sigmoid_bce_logits_per_sample(z: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(N,) mean over K of torch BCEWithLogits: max(z, 0) - z y + log(1 + exp(-|z|))."""
    _check("sigmoid_bce_logits", z, y)
    return (np.maximum(z, 0) - z * y + np.log1p(np.exp(-np.abs(z)))).mean(axis=1)


def sigmoid_bce_logits(z: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
    """(batch-mean loss, dz) with dz = (sigmoid(z) - y) / (N K)."""
    n, k = _check("sigmoid_bce_logits", z, y)
    loss = float(sigmoid_bce_logits_per_sample(z, y).mean())
    return loss, (_sigmoid(z) - y) / (n * k)


class Objective(abc.ABC):
    """Base: `per_sample(pred, target) -> (N,)`, `loss_grad(pred, target) -> (mean, dpred)`.

    dpred is the gradient of the batch-MEAN loss (it carries the 1/N). Objectives with
    `fused_activation` set also take logits in `per_sample_logits` / `loss_grad_logits`.
    """

    name: ClassVar[str] = ""
    fused_activation: ClassVar[str | None] = None

    @abc.abstractmethod
    def per_sample(self, pred: np.ndarray, target: np.ndarray) -> np.ndarray:
        """(N,) loss of each sample."""

    @abc.abstractmethod
    def loss_grad(self, pred: np.ndarray, target: np.ndarray) -> tuple[float, np.ndarray]:
        """(batch-mean loss, gradient of it w.r.t. pred)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class AE(Objective):
    """Per-sample sum_k |p - y|."""

    name = "ae"

    def per_sample(self, pred: np.ndarray, target: np.ndarray) -> np.ndarray:
        _check(self.name, pred, target)
        return np.abs(pred - target).sum(axis=1)

    def loss_grad(self, pred: np.ndarray, target: np.ndarray) -> tuple[float, np.ndarray]:
        n, _ = _check(self.name, pred, target)
        d = pred - target
        return float(np.abs(d).sum(axis=1).mean()), np.sign(d) / n


class MAE(Objective):
    """Per-sample mean_k |p - y| (torch L1Loss)."""

    name = "mae"

    def per_sample(self, pred: np.ndarray, target: np.ndarray) -> np.ndarray:
        _check(self.name, pred, target)
        return np.abs(pred - target).mean(axis=1)

    def loss_grad(self, pred: np.ndarray, target: np.ndarray) -> tuple[float, np.ndarray]:
        n, k = _check(self.name, pred, target)
        d = pred - target
        return float(np.abs(d).mean(axis=1).mean()), np.sign(d) / (n * k)


class MSE(Objective):
    """Per-sample mean_k (p - y)^2 (torch MSELoss)."""

    name = "mse"

    def per_sample(self, pred: np.ndarray, target: np.ndarray) -> np.ndarray:
        _check(self.name, pred, target)
        d = pred - target
        return (d * d).mean(axis=1)

    def loss_grad(self, pred: np.ndarray, target: np.ndarray) -> tuple[float, np.ndarray]:
        n, k = _check(self.name, pred, target)
        d = pred - target
        return float((d * d).mean(axis=1).mean()), d * (2 / (n * k))


class RMSE(Objective):
    """Per-sample sqrt(mean_k (p - y)^2), averaged over the batch; gradient 0 where it is 0."""

    name = "rmse"

    def per_sample(self, pred: np.ndarray, target: np.ndarray) -> np.ndarray:
        _check(self.name, pred, target)
        d = pred - target
        return np.sqrt((d * d).mean(axis=1))

    def loss_grad(self, pred: np.ndarray, target: np.ndarray) -> tuple[float, np.ndarray]:
        n, k = _check(self.name, pred, target)
        d = pred - target
        r = np.sqrt((d * d).mean(axis=1, keepdims=True))
        grad = np.zeros_like(d)
        np.divide(d, (k * n) * r, out=grad, where=r > 0)
        return float(r.mean()), grad


class CrossEntropy(Objective):
    """Per-sample -sum_k y log p on probabilities (p floored at EPS); fused path takes logits."""

    name = "cross_entropy"
    fused_activation = "softmax"

    def per_sample(self, pred: np.ndarray, target: np.ndarray) -> np.ndarray:
        _check(self.name, pred, target)
        return -(target * np.log(np.maximum(pred, EPS))).sum(axis=1)

    def loss_grad(self, pred: np.ndarray, target: np.ndarray) -> tuple[float, np.ndarray]:
        n, _ = _check(self.name, pred, target)
        p = np.maximum(pred, EPS)
        loss = float(-(target * np.log(p)).sum(axis=1).mean())
        return loss, -target / (p * n)

    def per_sample_logits(self, z: np.ndarray, target: np.ndarray) -> np.ndarray:
        return softmax_cross_entropy_logits_per_sample(z, target)

    def loss_grad_logits(self, z: np.ndarray, target: np.ndarray) -> tuple[float, np.ndarray]:
        return softmax_cross_entropy_logits(z, target)


class BCE(Objective):
    """Per-sample mean_k -[y log p + (1 - y) log(1 - p)] (torch BCELoss, incl. its clamps)."""

    name = "bce"
    fused_activation = "sigmoid"

    def per_sample(self, pred: np.ndarray, target: np.ndarray) -> np.ndarray:
        _check(self.name, pred, target)
        log_p = _clamped_log(pred, _BCE_LOG_MIN)
        log_q = _clamped_log(1 - pred, _BCE_LOG_MIN)
        return -(target * log_p + (1 - target) * log_q).mean(axis=1)

    def loss_grad(self, pred: np.ndarray, target: np.ndarray) -> tuple[float, np.ndarray]:
        n, k = _check(self.name, pred, target)
        loss = float(self.per_sample(pred, target).mean())
        denom = np.maximum((1 - pred) * pred, _BCE_GRAD_EPS)
        return loss, (pred - target) / (denom * (n * k))

    def per_sample_logits(self, z: np.ndarray, target: np.ndarray) -> np.ndarray:
        return sigmoid_bce_logits_per_sample(z, target)

    def loss_grad_logits(self, z: np.ndarray, target: np.ndarray) -> tuple[float, np.ndarray]:
        return sigmoid_bce_logits(z, target)


class KLD(Objective):
    """Per-sample sum_k y log(y / p) with 0 log 0 = 0 (torch KLDivLoss(log p), 'batchmean')."""

    name = "kld"

    def per_sample(self, pred: np.ndarray, target: np.ndarray) -> np.ndarray:
        _check(self.name, pred, target)
        log_y = np.zeros_like(target)
        np.log(target, out=log_y, where=target > 0)
        return (target * (log_y - np.log(np.maximum(pred, EPS)))).sum(axis=1)

    def loss_grad(self, pred: np.ndarray, target: np.ndarray) -> tuple[float, np.ndarray]:
        n, _ = _check(self.name, pred, target)
        loss = float(self.per_sample(pred, target).mean())
        return loss, -target / (np.maximum(pred, EPS) * n)


OBJECTIVES: dict[str, type[Objective]] = {
    "ae": AE,
    "mae": MAE,
    "mse": MSE,
    "rmse": RMSE,
    "cross_entropy": CrossEntropy,
    "bce": BCE,
    "kld": KLD,
}


def make_objective(name: str) -> Objective:
    """A new instance of OBJECTIVES[name]."""
    if name not in OBJECTIVES:
        raise ValueError(f"unknown objective {name!r}; expected one of {sorted(OBJECTIVES)}")
    return OBJECTIVES[name]()
