"""Optimizers, learning-rate schedules and gradient clipping with PyTorch's formulas and defaults.

Optimizers update a flat `dict[str, np.ndarray]` of parameters in place; their state is a flat
dict of arrays (savable with `np.savez`). This module knows nothing about layers or training.
"""

from __future__ import annotations

import abc
import inspect
import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np

Params = dict[str, np.ndarray]


def _check_number(
    owner: str,
    name: str,
    value: object,
    *,
    lo: float | None = None,
    hi: float | None = None,
    lo_open: bool = False,
    hi_open: bool = False,
) -> float:
    """Return `value` as a float, or raise ValueError naming the hyper-parameter and its range."""
    ok = isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool)
    if ok:
        v = float(value)
        ok = math.isfinite(v)
        if ok and lo is not None:
            ok = v > lo if lo_open else v >= lo
        if ok and hi is not None:
            ok = v < hi if hi_open else v <= hi
    if not ok:
        left = "(" if lo_open else "["
        right = ")" if hi_open or hi is None else "]"
        lo_s = "-inf" if lo is None else f"{lo:g}"
        hi_s = "inf" if hi is None else f"{hi:g}"
        raise ValueError(
            f"{owner}: hyper-parameter {name!r} must be a finite number in "
            f"{left}{lo_s}, {hi_s}{right}, got {value!r}"
        )
    return v


def _check_int(owner: str, name: str, value: object, *, lo: int) -> int:
    if not isinstance(value, int | np.integer) or isinstance(value, bool) or value < lo:
        raise ValueError(f"{owner}: {name!r} must be an integer >= {lo}, got {value!r}")
    return int(value)


class Optimizer(abc.ABC):
    """Base class: holds `params` (updated in place), `lr`, the global step `t` and buffers.

    `step(grads)` increments `t` once and updates every parameter named in `grads`; parameters
    without a gradient are skipped (like PyTorch's `grad is None`). Unlike PyTorch, bias
    corrections use the global step `t`, not a per-parameter step count (identical unless a
    parameter is skipped on some steps).
    """

    name = "optimizer"
    buffers: tuple[str, ...] = ()  # names of the per-parameter state arrays

    def __init__(self, params: Params, lr: float) -> None:
        if not isinstance(params, dict):
            raise TypeError(f"{self.name}: params must be a dict[str, np.ndarray], got {params!r}")
        for key, p in params.items():
            if not isinstance(p, np.ndarray) or not np.issubdtype(p.dtype, np.floating):
                raise TypeError(f"{self.name}: parameter {key!r} must be a float ndarray")
        self.params = params
        self.lr = lr
        self.t = 0
        self.state: dict[str, dict[str, np.ndarray]] = {b: {} for b in self.buffers}

    @property
    def lr(self) -> float:
        return self._lr

    @lr.setter
    def lr(self, value: float) -> None:
        self._lr = _check_number(self.name, "lr", value, lo=0.0)

    def _buf(self, kind: str, key: str, p: np.ndarray) -> np.ndarray:
        """The `kind` buffer of parameter `key`, created as zeros on first use."""
        store = self.state[kind]
        if key not in store:
            store[key] = np.zeros_like(p)
        return store[key]

    def step(self, grads: Mapping[str, np.ndarray]) -> None:
        """Apply one update to every parameter named in `grads` (same shapes as the params)."""
        for key, g in grads.items():
            if key not in self.params:
                raise ValueError(f"{self.name}: gradient for unknown parameter {key!r}")
            if np.shape(g) != self.params[key].shape:
                raise ValueError(
                    f"{self.name}: gradient of {key!r} has shape {np.shape(g)}, "
                    f"parameter has {self.params[key].shape}"
                )
        self.t += 1
        for key, g in grads.items():
            p = self.params[key]
            self._update(key, p, np.asarray(g, dtype=p.dtype))

    @abc.abstractmethod
    def _update(self, key: str, p: np.ndarray, g: np.ndarray) -> None:
        """Update parameter `p` (named `key`) in place from its gradient `g`."""

    def state_dict(self) -> dict[str, np.ndarray]:
        """Flat copy of the state: "t" (0-d int64), "lr" (0-d float64), "<buffer>.<param>"."""
        out: dict[str, np.ndarray] = {
            "t": np.array(self.t, dtype=np.int64),
            "lr": np.array(self.lr, dtype=np.float64),
        }
        for kind, store in self.state.items():
            for key, arr in store.items():
                out[f"{kind}.{key}"] = arr.copy()
        return out

    def load_state_dict(self, d: Mapping[str, np.ndarray]) -> None:
        """Restore a `state_dict()` (copied; shapes and dtypes must match the parameters)."""
        if "t" not in d:
            raise ValueError(f"{self.name}: state dict has no step counter 't'")
        state: dict[str, dict[str, np.ndarray]] = {b: {} for b in self.buffers}
        for full, value in d.items():
            if full in ("t", "lr"):
                continue
            kind, _, key = full.partition(".")
            if kind not in state or key not in self.params:
                raise ValueError(
                    f"{self.name}: unexpected state entry {full!r} (buffers are "
                    f"{list(self.buffers)}, keyed '<buffer>.<param name>')"
                )
            arr = np.array(value, copy=True)
            p = self.params[key]
            if arr.shape != p.shape or arr.dtype != p.dtype:
                raise ValueError(
                    f"{self.name}: state entry {full!r} is {arr.dtype}{arr.shape}, "
                    f"parameter is {p.dtype}{p.shape}"
                )
            state[kind][key] = arr
        self.t = int(np.asarray(d["t"]))
        if "lr" in d:
            self.lr = float(np.asarray(d["lr"]))
        self.state = state


class SGD(Optimizer):
    """Plain SGD: p -= lr * (g + weight_decay * p)."""

    name = "sgd"

    def __init__(self, params: Params, lr: float, weight_decay: float = 0.0) -> None:
        super().__init__(params, lr)
        self.weight_decay = _check_number(self.name, "weight_decay", weight_decay, lo=0.0)

    def _update(self, key: str, p: np.ndarray, g: np.ndarray) -> None:
        if self.weight_decay != 0:
            g = g + self.weight_decay * p
        p -= self.lr * g


class SGDMomentum(Optimizer):
    """torch.optim.SGD with momentum (buffer starts as the first gradient), optional Nesterov."""

    name = "sgdm"
    buffers = ("momentum_buffer",)

    def __init__(
        self,
        params: Params,
        lr: float,
        momentum: float = 0.9,
        dampening: float = 0.0,
        nesterov: bool = False,
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__(params, lr)
        self.momentum = _check_number(self.name, "momentum", momentum, lo=0.0)
        self.dampening = _check_number(self.name, "dampening", dampening, lo=0.0, hi=1.0)
        self.weight_decay = _check_number(self.name, "weight_decay", weight_decay, lo=0.0)
        if not isinstance(nesterov, bool | np.bool_):
            raise ValueError(f"{self.name}: 'nesterov' must be a bool, got {nesterov!r}")
        if nesterov and (self.momentum <= 0 or self.dampening != 0):
            raise ValueError(
                f"{self.name}: 'nesterov' needs momentum > 0 and dampening == 0, "
                f"got momentum={momentum!r}, dampening={dampening!r}"
            )
        self.nesterov = bool(nesterov)

    def _update(self, key: str, p: np.ndarray, g: np.ndarray) -> None:
        if self.weight_decay != 0:
            g = g + self.weight_decay * p
        if self.momentum != 0:
            store = self.state["momentum_buffer"]
            if key not in store:
                buf = store[key] = g.copy()
            else:
                buf = store[key]
                buf *= self.momentum
                buf += (1 - self.dampening) * g
            g = g + self.momentum * buf if self.nesterov else buf
        p -= self.lr * g


def _check_betas(owner: str, betas: object) -> tuple[float, float]:
    if not isinstance(betas, Sequence) or isinstance(betas, str) or len(betas) != 2:
        raise ValueError(
            f"{owner}: hyper-parameter 'betas' must be a pair (beta1, beta2), got {betas!r}"
        )
    b1 = _check_number(owner, "betas[0]", betas[0], lo=0.0, hi=1.0, hi_open=True)
    b2 = _check_number(owner, "betas[1]", betas[1], lo=0.0, hi=1.0, hi_open=True)
    return b1, b2  # any 2-sequence (tuple, list, OmegaConf ListConfig)


class Adam(Optimizer):
    """torch.optim.Adam (weight_decay is L2 added to the gradient), optional AMSGrad."""

    name = "adam"
    decoupled = False

    def __init__(
        self,
        params: Params,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        amsgrad: bool = False,
    ) -> None:
        super().__init__(params, lr)
        self.betas = _check_betas(self.name, betas)
        self.eps = _check_number(self.name, "eps", eps, lo=0.0)
        self.weight_decay = _check_number(self.name, "weight_decay", weight_decay, lo=0.0)
        if not isinstance(amsgrad, bool | np.bool_):
            raise ValueError(f"{self.name}: 'amsgrad' must be a bool, got {amsgrad!r}")
        self.amsgrad = bool(amsgrad)
        self.buffers = ("exp_avg", "exp_avg_sq") + (("max_exp_avg_sq",) if amsgrad else ())
        self.state = {b: {} for b in self.buffers}

    def _update(self, key: str, p: np.ndarray, g: np.ndarray) -> None:
        b1, b2 = self.betas
        if self.weight_decay != 0:
            if self.decoupled:
                p *= 1 - self.lr * self.weight_decay
            else:
                g = g + self.weight_decay * p
        m = self._buf("exp_avg", key, p)
        v = self._buf("exp_avg_sq", key, p)
        m += (1 - b1) * (g - m)  # torch's lerp_ for weight < 0.5
        v *= b2
        v += (1 - b2) * g * g
        bias_correction1 = 1 - b1**self.t
        bias_correction2_sqrt = math.sqrt(1 - b2**self.t)
        if self.amsgrad:
            vmax = self._buf("max_exp_avg_sq", key, p)
            np.maximum(vmax, v, out=vmax)
            v = vmax
        denom = np.sqrt(v) / bias_correction2_sqrt + self.eps
        p += (-self.lr / bias_correction1) * (m / denom)


class AdamW(Adam):
    """torch.optim.AdamW: decoupled weight decay p *= 1 - lr * weight_decay, then Adam."""

    name = "adamw"
    decoupled = True

    def __init__(
        self,
        params: Params,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        amsgrad: bool = False,
    ) -> None:
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad)


class RMSprop(Optimizer):
    """torch.optim.RMSprop (eps added after the square root), optional centering and momentum."""

    name = "rmsprop"

    def __init__(
        self,
        params: Params,
        lr: float = 1e-2,
        alpha: float = 0.99,
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        momentum: float = 0.0,
        centered: bool = False,
    ) -> None:
        super().__init__(params, lr)
        self.alpha = _check_number(self.name, "alpha", alpha, lo=0.0, hi=1.0)
        self.eps = _check_number(self.name, "eps", eps, lo=0.0)
        self.weight_decay = _check_number(self.name, "weight_decay", weight_decay, lo=0.0)
        self.momentum = _check_number(self.name, "momentum", momentum, lo=0.0)
        if not isinstance(centered, bool | np.bool_):
            raise ValueError(f"{self.name}: 'centered' must be a bool, got {centered!r}")
        self.centered = bool(centered)
        self.buffers = (
            ("square_avg",)
            + (("momentum_buffer",) if self.momentum > 0 else ())
            + (("grad_avg",) if self.centered else ())
        )
        self.state = {b: {} for b in self.buffers}

    def _update(self, key: str, p: np.ndarray, g: np.ndarray) -> None:
        a = self.alpha
        if self.weight_decay != 0:
            g = g + self.weight_decay * p
        sq = self._buf("square_avg", key, p)
        sq *= a
        sq += (1 - a) * g * g
        if self.centered:
            ga = self._buf("grad_avg", key, p)
            ga += (1 - a) * (g - ga)
            # mathematically >= 0; the clamp only guards against rounding (torch would give nan)
            avg = np.sqrt(np.maximum(sq - ga * ga, 0))
        else:
            avg = np.sqrt(sq)
        avg += self.eps
        if self.momentum > 0:
            buf = self._buf("momentum_buffer", key, p)
            buf *= self.momentum
            buf += g / avg
            p -= self.lr * buf
        else:
            p += -self.lr * (g / avg)


OPTIMIZERS: dict[str, type[Optimizer]] = {
    "sgd": SGD,
    "sgdm": SGDMomentum,
    "adam": Adam,
    "adamw": AdamW,
    "rmsprop": RMSprop,
}


def make_optimizer(name: str, params: Params, **hparams: object) -> Optimizer:
    """Build optimizer `name` (a key of OPTIMIZERS) over `params` with keyword hyper-parameters."""
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; expected one of {sorted(OPTIMIZERS)}")
    cls = OPTIMIZERS[name]
    sig = inspect.signature(cls.__init__)
    allowed = [k for k in sig.parameters if k not in ("self", "params")]
    unknown = sorted(set(hparams) - set(allowed))
    if unknown:
        raise ValueError(
            f"{name}: unknown hyper-parameter(s) {unknown}; expected a subset of {allowed}"
        )
    missing = [
        k
        for k in allowed
        if sig.parameters[k].default is inspect.Parameter.empty and k not in hparams
    ]
    if missing:
        raise ValueError(f"{name}: hyper-parameter(s) {missing} are required")
    return cls(params, **hparams)


# ----------------------------------------------------------------------------------------------
# learning-rate schedules

SCHEDULES = ("constant", "step", "exponential", "cosine")


def make_schedule(
    name: str,
    base_lr: float,
    *,
    epochs: int,
    step_size: int | None = None,
    gamma: float | None = None,
    min_lr: float = 0.0,
    warmup_epochs: int = 0,
    warmup_start_factor: float = 1.0 / 3.0,
) -> Callable[[int], float]:
    """Return `lr(epoch)` (0-based epoch -> learning rate), closed forms of torch's schedulers.

    constant: base_lr. step: StepLR(step_size, gamma=0.1 by default). exponential:
    ExponentialLR(gamma, required). cosine: CosineAnnealingLR(T_max=epochs - warmup_epochs,
    eta_min=min_lr). With warmup_epochs = W > 0 the first W epochs follow LinearLR(start_factor
    -> 1, total_iters=W) and the main schedule then restarts its count at epoch W (SequentialLR).
    """
    owner = f"schedule {name!r}"
    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}; expected one of {list(SCHEDULES)}")
    base = _check_number(owner, "base_lr", base_lr, lo=0.0)
    epochs = _check_int(owner, "epochs", epochs, lo=1)
    warm = _check_int(owner, "warmup_epochs", warmup_epochs, lo=0)
    if warm >= epochs:
        raise ValueError(f"{owner}: 'warmup_epochs' must be < epochs={epochs}, got {warm}")
    start = _check_number(
        owner, "warmup_start_factor", warmup_start_factor, lo=0.0, hi=1.0, lo_open=True
    )
    uses = {"step_size": ("step",), "gamma": ("step", "exponential"), "min_lr": ("cosine",)}
    given = {"step_size": step_size, "gamma": gamma, "min_lr": min_lr or None}
    for arg, value in given.items():
        if value is not None and name not in uses[arg]:
            raise ValueError(
                f"{owner}: {arg!r} only applies to schedules {list(uses[arg])}, got {arg}={value!r}"
            )

    main: Callable[[int], float]
    if name == "constant":

        def main(e: int) -> float:
            return base

    elif name == "step":
        if step_size is None:
            raise ValueError(f"{owner}: 'step_size' (epochs per decay) is required")
        size = _check_int(owner, "step_size", step_size, lo=1)
        g = _check_number(
            owner, "gamma", 0.1 if gamma is None else gamma, lo=0.0, hi=1.0, lo_open=True
        )

        def main(e: int) -> float:
            return base * g ** (e // size)

    elif name == "exponential":
        if gamma is None:
            raise ValueError(f"{owner}: 'gamma' (per-epoch decay factor) is required")
        g = _check_number(owner, "gamma", gamma, lo=0.0, hi=1.0, lo_open=True)

        def main(e: int) -> float:
            return base * g**e

    else:
        floor = _check_number(owner, "min_lr", min_lr, lo=0.0, hi=base)
        t_max = epochs - warm

        def main(e: int) -> float:
            return floor + (base - floor) * (1 + math.cos(math.pi * e / t_max)) / 2

    def schedule(epoch: int) -> float:
        if not isinstance(epoch, int | np.integer) or isinstance(epoch, bool) or epoch < 0:
            raise ValueError(f"{owner}: epoch must be an integer >= 0, got {epoch!r}")
        epoch = int(epoch)
        if epoch < warm:
            return base * (start + (1 - start) * epoch / warm)
        return main(epoch - warm)

    return schedule


# ----------------------------------------------------------------------------------------------
# gradient clipping


def clip_grad_norm(grads: Mapping[str, np.ndarray], max_norm: float) -> float:
    """torch.nn.utils.clip_grad_norm_: scale all grads in place so their joint L2 norm <= max_norm.

    Scales by max_norm / (total + 1e-6) when that is < 1 and returns the total norm (before
    clipping). A non-finite total norm leaves the gradients untouched (and is returned).
    """
    limit = _check_number("clip_grad_norm", "max_norm", max_norm, lo=0.0, lo_open=True)
    sq = 0.0
    for g in grads.values():
        n = float(np.linalg.norm(np.ravel(g).astype(np.float64, copy=False)))
        sq += n * n
    total = math.sqrt(sq)
    coef = limit / (total + 1e-6)
    if math.isfinite(total) and coef < 1:
        for g in grads.values():
            g *= coef
    return total


def clip_by_value(g: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Element-wise clamp of `g` to [lo, hi] (a new array of the same dtype)."""
    lo_f = _check_number("clip_by_value", "lo", lo)
    hi_f = _check_number("clip_by_value", "hi", hi, lo=lo_f)
    return np.clip(g, lo_f, hi_f).astype(g.dtype, copy=False)
