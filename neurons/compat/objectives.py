"""The crate's objectives as the training loop sees them: loss, output gradient, class pick.

`CrateObjective` wraps one of our objectives and, per the switches, swaps in the crate's loss and
gradient formulas (CE clip 1e-6, gradient p - y; RMSE sign(p - y)/n; MAE without 1/n), its
softmax backward constant (n - 2) * sum(p^2), summed (not averaged) minibatch gradients and
argmax ties to the last index. exp/log run in float64 and are rounded to float32, as the C
library's f32 functions do. Not an optimizer or a layer.
"""

from __future__ import annotations

import numpy as np

from neurons.compat.flags import CompatConfig
from neurons.objectives import Objective, make_objective

CLIP = 1e-6  # the crate clamps probabilities to [1e-6, 1 - 1e-6] inside every log


def softmax32(z: np.ndarray) -> np.ndarray:
    """Row softmax in z's dtype, exp computed in float64 and rounded (like C's expf)."""
    s = z - z.max(axis=1, keepdims=True)
    e = np.exp(s.astype(np.float64)).astype(z.dtype)
    return e / e.sum(axis=1, keepdims=True)


def _log32(p: np.ndarray) -> np.ndarray:
    return np.log(p.astype(np.float64)).astype(p.dtype)


def crate_loss_grad(name: str, p: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample losses (N,) and per-sample gradients d loss_i / d p_i (N, K), the crate's way."""
    n = p.shape[1]
    one = p.dtype.type(1)
    d = p - y
    if name == "cross_entropy":
        pc = np.clip(p, p.dtype.type(CLIP), one - p.dtype.type(CLIP))
        return -(y * _log32(pc)).sum(axis=1), d
    if name == "bce":
        pc = np.clip(p, p.dtype.type(CLIP), one - p.dtype.type(CLIP))
        loss = -(y * _log32(pc) + (one - y) * _log32(one - pc)).sum(axis=1)
        return loss, (pc - y) / (pc * (one - pc))
    if name == "mse":
        return (d * d).sum(axis=1) / p.dtype.type(n), d * p.dtype.type(2.0 / n)
    if name == "rmse":
        loss = np.sqrt((d * d).sum(axis=1) / p.dtype.type(n))
        return loss, np.sign(d) / p.dtype.type(n)
    if name == "mae":
        return np.abs(d).sum(axis=1) / p.dtype.type(n), np.sign(d)
    if name == "ae":
        return np.abs(d).sum(axis=1), np.sign(d)
    if name == "kld":
        pc = np.clip(p, p.dtype.type(CLIP), one - p.dtype.type(CLIP))
        with np.errstate(divide="ignore", invalid="ignore"):
            loss = (y * _log32(y / pc)).sum(axis=1)
        return loss, -y / pc
    raise ValueError(f"objective.name: the crate has no objective {name!r}")


def last_argmax(a: np.ndarray) -> np.ndarray:
    """Row argmax with ties going to the LAST index (Rust's max_by)."""
    k = a.shape[1]
    return k - 1 - np.argmax(a[:, ::-1], axis=1)


class CrateObjective(Objective):
    """Our objective `base` with the crate's quirks switched on by `flags` (see module doc).

    With a softmax head it always takes logits (`fused_activation = "softmax"`), so the
    output delta can be the crate's constant or the true Jacobian product, for any loss.
    """

    def __init__(self, base: str, flags: CompatConfig, head: str | None) -> None:
        self.base_name = base
        self.base = make_objective(base)
        self.flags = flags
        self.head = head
        self.fused_activation = head if head == "softmax" else self.base.fused_activation
        self.name = base

    # ------------------------------------------------------------------ per-sample pieces
    def _per_sample(self, p: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(losses (N,), d loss_i / d p_i) for probabilities / outputs p."""
        if self.flags.objective:
            return crate_loss_grad(self.base_name, p, y)
        loss, g = self.base.loss_grad(p, y)  # gradient of the batch mean: undo its 1/N
        return self.base.per_sample(p, y), (g * p.dtype.type(p.shape[0])).astype(p.dtype)

    def _scale(self, g: np.ndarray) -> np.ndarray:
        return g if self.flags.grad_sum else g / g.dtype.type(g.shape[0])

    # ------------------------------------------------------------------ Objective API
    def per_sample(self, pred: np.ndarray, target: np.ndarray) -> np.ndarray:
        return self._per_sample(pred, target)[0]

    def loss_grad(self, pred: np.ndarray, target: np.ndarray) -> tuple[float, np.ndarray]:
        loss, g = self._per_sample(pred, target)
        return float(np.mean(loss, dtype=np.float64)), self._scale(g)

    def per_sample_logits(self, z: np.ndarray, target: np.ndarray) -> np.ndarray:
        if self.head != "softmax":
            return self.base.per_sample_logits(z, target)
        if not self.flags.objective and self.base.fused_activation == "softmax":
            return self.base.per_sample_logits(z, target)
        return self._per_sample(softmax32(z), target)[0]

    def loss_grad_logits(self, z: np.ndarray, target: np.ndarray) -> tuple[float, np.ndarray]:
        if self.head != "softmax":  # sigmoid + bce: our fused path, gradients summed or not
            loss, dz = self.base.loss_grad_logits(z, target)
            if self.flags.grad_sum:
                dz = dz * dz.dtype.type(z.shape[0])
            return loss, dz
        p = softmax32(z)
        if self.base_name == "cross_entropy":
            # d(fused softmax + CE)/dz = p - y: the crate uses it as its output gradient too
            loss = self.per_sample_logits(z, target)
            g = p - target
        else:
            loss, g = self._per_sample(p, target)  # d loss / d p
        if self.flags.softmax_backward:  # the crate's constant, whatever the loss
            k = p.shape[1]
            dz = p.dtype.type(k - 2) * (p * p).sum(axis=1, keepdims=True) * g
        elif self.base_name == "cross_entropy":
            dz = g
        else:  # exact softmax Jacobian-vector product of the output gradient
            dz = p * (g - (g * p).sum(axis=1, keepdims=True))
        return float(np.mean(loss, dtype=np.float64)), self._scale(dz.astype(z.dtype))

    def predict_class(self, out: np.ndarray, logits: bool = False) -> np.ndarray:
        """The class the accuracy counts: argmax of the probabilities, ties per the switch."""
        if not self.flags.argmax_last:
            return out.argmax(axis=1)
        p = softmax32(out) if logits and self.head == "softmax" else out
        return last_argmax(p)

    def __repr__(self) -> str:
        return f"CrateObjective({self.base_name!r}, on={self.flags.on()})"
