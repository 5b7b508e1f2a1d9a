"""Optimizers, learning-rate schedules and gradient clipping with PyTorch's formulas and defaults.

Each optimizer and schedule is a class carrying `hparams`, the spec of its hyper-parameters
(default, type, range; checked here and reported by `neurons.config` under the config key), and a
registry entry. Optimizers update a flat `dict[str, np.ndarray]` of parameters in place; their
state is a flat dict of arrays (savable with `np.savez`). Nothing here knows layers or training.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from neurons.kernels import optim as kopt

Params = dict[str, np.ndarray]
REQUIRED: Any = object()  # an `HParam` default: the hyper-parameter must be given


class HParamError(ValueError):
    """A bad hyper-parameter: `key`, what is `expected` and what was `found` (for config paths).

    `str()` is the message for a direct call; `neurons.config` reports `<path>.<key>: expected
    <expected>, found <found>`.
    """

    def __init__(self, message: str, key: str, expected: str, found: str) -> None:
        super().__init__(message)
        self.key, self.expected, self.found = key, expected, found


def _is_number(value: object) -> bool:
    number = isinstance(value, int | float | np.integer | np.floating)
    return number and not isinstance(value, bool) and math.isfinite(float(value))  # type: ignore[arg-type]


@dataclass(frozen=True)
class Number:
    """A finite number in [lo, hi] (each end open or closed, None = unbounded)."""

    default: Any = REQUIRED
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False

    def interval(self) -> str:
        left = "(" if self.lo_open else "["
        right = ")" if self.hi_open or self.hi is None else "]"
        lo_s = "-inf" if self.lo is None else f"{self.lo:g}"
        hi_s = "inf" if self.hi is None else f"{self.hi:g}"
        return f"{left}{lo_s}, {hi_s}{right}"

    def expected(self) -> str:
        if self.hi is None and self.lo is not None:
            return f"a number {'>' if self.lo_open else '>='} {float(self.lo)}"
        return f"a number in {self.interval()}"

    def ok(self, value: object) -> bool:
        if not _is_number(value):
            return False
        v = float(value)  # type: ignore[arg-type]
        if self.lo is not None and (v <= self.lo if self.lo_open else v < self.lo):
            return False
        return self.hi is None or (v < self.hi if self.hi_open else v <= self.hi)

    def check(self, owner: str, key: str, value: object) -> float:
        if not self.ok(value):
            raise HParamError(
                f"{owner}: hyper-parameter {key!r} must be a finite number in "
                f"{self.interval()}, got {value!r}",
                key,
                self.expected(),
                repr(value),
            )
        return float(value)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Int:
    """An integer >= lo."""

    default: Any = REQUIRED
    lo: int = 0

    def check(self, owner: str, key: str, value: object) -> int:
        bad = not isinstance(value, int | np.integer) or isinstance(value, bool)
        if bad or value < self.lo:  # type: ignore[operator]
            raise HParamError(
                f"{owner}: {key!r} must be an integer >= {self.lo}, got {value!r}",
                key,
                f"an integer >= {self.lo}",
                repr(value),
            )
        return int(value)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Flag:
    """A bool."""

    default: Any = False

    def check(self, owner: str, key: str, value: object) -> bool:
        if not isinstance(value, bool | np.bool_):
            raise HParamError(
                f"{owner}: {key!r} must be a bool, got {value!r}", key, "true or false", repr(value)
            )
        return bool(value)


@dataclass(frozen=True)
class Pair:
    """Two numbers, each checked by `item` (any 2-sequence: tuple, list, OmegaConf ListConfig)."""

    item: Number
    names: tuple[str, str]
    default: Any = REQUIRED

    def check(self, owner: str, key: str, value: object) -> tuple[float, float]:
        expected = f"two numbers in {self.item.interval()}"
        if not isinstance(value, Sequence) or isinstance(value, str) or len(value) != 2:
            raise HParamError(
                f"{owner}: hyper-parameter {key!r} must be a pair ({', '.join(self.names)}), "
                f"got {value!r}",
                key,
                expected,
                repr(value),
            )
        try:
            a = self.item.check(owner, f"{key}[0]", value[0])
            b = self.item.check(owner, f"{key}[1]", value[1])
        except HParamError as e:
            raise HParamError(str(e), key, expected, repr(list(value))) from None
        return a, b


HParam = Number | Int | Flag | Pair


def check_hparams(owner: str, spec: Mapping[str, HParam], given: Mapping[str, object]) -> dict:
    """`given` checked against `spec`: every key known, every required one present, each value in
    its range; returns all keys (defaults filled in). Raises HParamError naming the key."""
    unknown = sorted(set(given) - set(spec))
    if unknown:
        raise HParamError(
            f"{owner}: unknown hyper-parameter(s) {unknown}; expected a subset of {list(spec)}",
            unknown[0],
            f"one of {owner}'s hyper-parameters ({', '.join(spec)})",
            f"{unknown[0]}={given[unknown[0]]!r}",
        )
    missing = [k for k, s in spec.items() if k not in given and s.default is REQUIRED]
    if missing:
        raise HParamError(
            f"{owner}: hyper-parameter(s) {missing} are required",
            missing[0],
            "a value (it has no default)",
            "nothing",
        )
    return {k: s.check(owner, k, given.get(k, s.default)) for k, s in spec.items()}


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
    return Number(lo=lo, hi=hi, lo_open=lo_open, hi_open=hi_open).check(owner, name, value)


class Optimizer(abc.ABC):
    """Base class: holds `params` (updated in place), `lr`, the global step `t` and buffers.

    A subclass sets `name`, `hparams` (its hyper-parameters' spec: each becomes an attribute of
    that name) and `buffers`, and implements `_update`; `OPTIMIZERS` maps names to classes.
    `step(grads)` increments `t` once and updates every parameter named in `grads`; parameters
    without a gradient are skipped (like PyTorch's `grad is None`). Unlike PyTorch, bias
    corrections use the global step `t`, not a per-parameter step count (identical unless a
    parameter is skipped on some steps).
    """

    name = "optimizer"
    hparams: ClassVar[dict[str, HParam]] = {"lr": Number(lo=0.0, lo_open=True)}
    buffers: tuple[str, ...] = ()  # names of the per-parameter state arrays

    def __init__(self, params: Params, **hparams: object) -> None:
        if not isinstance(params, dict):
            raise TypeError(f"{self.name}: params must be a dict[str, np.ndarray], got {params!r}")
        for key, p in params.items():
            if not isinstance(p, np.ndarray) or not np.issubdtype(p.dtype, np.floating):
                raise TypeError(f"{self.name}: parameter {key!r} must be a float ndarray")
        for key, value in self.check(hparams).items():
            setattr(self, key, value)
        self.params = params
        self.t = 0
        self.buffers = self._buffer_names()
        self.state: dict[str, dict[str, np.ndarray]] = {b: {} for b in self.buffers}

    @classmethod
    def check(cls, hparams: Mapping[str, object]) -> dict[str, Any]:
        """The hyper-parameters checked (defaults filled in); HParamError naming the key."""
        return check_hparams(cls.name, cls.hparams, hparams)

    def _buffer_names(self) -> tuple[str, ...]:
        return type(self).buffers

    @property
    def lr(self) -> float:
        return self._lr

    @lr.setter
    def lr(self, value: float) -> None:  # a schedule may set 0 (cosine down to min_lr=0)
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
    hparams = {**Optimizer.hparams, "weight_decay": Number(0.0, lo=0.0)}

    def _update(self, key: str, p: np.ndarray, g: np.ndarray) -> None:
        if self.weight_decay != 0:
            g = g + self.weight_decay * p
        p -= self.lr * g


class SGDMomentum(Optimizer):
    """torch.optim.SGD with momentum (buffer starts as the first gradient), optional Nesterov."""

    name = "sgdm"
    hparams = {
        **Optimizer.hparams,
        "momentum": Number(0.9, lo=0.0),
        "dampening": Number(0.0, lo=0.0, hi=1.0),
        "nesterov": Flag(False),
        "weight_decay": Number(0.0, lo=0.0),
    }
    buffers = ("momentum_buffer",)

    @classmethod
    def check(cls, hparams: Mapping[str, object]) -> dict[str, Any]:
        hp = super().check(hparams)
        if hp["nesterov"] and (hp["momentum"] <= 0 or hp["dampening"] != 0):
            found = f"momentum={hp['momentum']!r}, dampening={hp['dampening']!r}"
            raise HParamError(
                f"{cls.name}: 'nesterov' needs momentum > 0 and dampening == 0, got {found}",
                "nesterov",
                "momentum > 0 and dampening = 0 (nesterov: true)",
                found,
            )
        return hp

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


class Adam(Optimizer):
    """torch.optim.Adam (weight_decay is L2 added to the gradient), optional AMSGrad."""

    name = "adam"
    decoupled = False
    hparams = {
        "lr": Number(1e-3, lo=0.0, lo_open=True),
        "betas": Pair(Number(lo=0.0, hi=1.0, hi_open=True), ("beta1", "beta2"), (0.9, 0.999)),
        "eps": Number(1e-8, lo=0.0, lo_open=True),
        "weight_decay": Number(0.0, lo=0.0),
        "amsgrad": Flag(False),
    }

    def _buffer_names(self) -> tuple[str, ...]:
        return ("exp_avg", "exp_avg_sq") + (("max_exp_avg_sq",) if self.amsgrad else ())

    def _update(self, key: str, p: np.ndarray, g: np.ndarray) -> None:
        if self.fused and not self.amsgrad and p.size >= kopt.FUSED_MIN_SIZE:
            m, v = self._buf("exp_avg", key, p), self._buf("exp_avg_sq", key, p)
            if p.flags.c_contiguous and m.flags.c_contiguous and v.flags.c_contiguous:
                self._fused_update(p, np.ascontiguousarray(g), m, v)
                return
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

    fused = True  # large float parameters: one numba pass (kernels/optim.py), bit-identical

    def _fused_update(self, p: np.ndarray, g: np.ndarray, m: np.ndarray, v: np.ndarray) -> None:
        """The update above in one pass (`neurons.kernels.optim.adam_update`); all contiguous."""
        b1, b2 = self.betas
        f = p.dtype.type  # numpy rounds each Python scalar to the array's dtype first
        wd = self.weight_decay
        kopt.adam_update(
            p.reshape(-1),  # (size,) views of contiguous arrays: the updates land in p, m, v
            g.reshape(-1),
            m.reshape(-1),
            v.reshape(-1),
            f(1 - b1),
            f(b2),
            f(1 - b2),
            f(math.sqrt(1 - b2**self.t)),
            f(self.eps),
            f(-self.lr / (1 - b1**self.t)),
            f(wd if wd != 0 and not self.decoupled else 0),
            f(1 - self.lr * wd if wd != 0 and self.decoupled else 1),
        )


class AdamW(Adam):
    """torch.optim.AdamW: decoupled weight decay p *= 1 - lr * weight_decay, then Adam."""

    name = "adamw"
    decoupled = True
    hparams = {**Adam.hparams, "weight_decay": Number(1e-2, lo=0.0)}


class RMSprop(Optimizer):
    """torch.optim.RMSprop (eps added after the square root), optional centering and momentum."""

    name = "rmsprop"
    hparams = {
        "lr": Number(1e-2, lo=0.0, lo_open=True),
        "alpha": Number(0.99, lo=0.0, hi=1.0, hi_open=True),
        "eps": Number(1e-8, lo=0.0, lo_open=True),
        "weight_decay": Number(0.0, lo=0.0),
        "momentum": Number(0.0, lo=0.0),
        "centered": Flag(False),
    }

    def _buffer_names(self) -> tuple[str, ...]:
        return (
            ("square_avg",)
            + (("momentum_buffer",) if self.momentum > 0 else ())
            + (("grad_avg",) if self.centered else ())
        )

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
    return optimizer_class(name)(params, **hparams)


def optimizer_class(name: str) -> type[Optimizer]:
    """OPTIMIZERS[name], or ValueError listing the registered names."""
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; expected one of {sorted(OPTIMIZERS)}")
    return OPTIMIZERS[name]


# ----------------------------------------------------------------------------------------------
# learning-rate schedules


class Schedule:
    """`lr(epoch)` (0-based epoch -> learning rate): a warm-up, then the subclass's `main`.

    With warmup_epochs = W > 0 the first W epochs follow torch's LinearLR(warmup_start_factor ->
    1, total_iters=W) and `main` then restarts its count at epoch W (SequentialLR). A subclass
    sets `name` and `hparams` (each becomes an attribute) and implements `main`; `SCHEDULES`
    maps names to classes.
    """

    name = "schedule"
    hparams: ClassVar[dict[str, HParam]] = {
        "warmup_epochs": Int(0, lo=0),
        "warmup_start_factor": Number(0.1, lo=0.0, hi=1.0, lo_open=True),
    }

    def __init__(self, base_lr: float, *, epochs: int, **hparams: object) -> None:
        owner = f"schedule {self.name!r}"
        self.base = _check_number(owner, "base_lr", base_lr, lo=0.0)
        self.epochs = Int(lo=1).check(owner, "epochs", epochs)
        applies = {k: [n for n, c in SCHEDULES.items() if k in c.hparams] for k in hparams}
        for key, value in hparams.items():
            if key not in self.hparams and applies[key]:
                raise HParamError(
                    f"{owner}: {key!r} only applies to schedules {applies[key]}, "
                    f"got {key}={value!r}",
                    key,
                    f"a hyper-parameter of {self.name} ({', '.join(self.hparams)})",
                    f"{key}={value!r}",
                )
        for key, value in check_hparams(owner, self.hparams, hparams).items():
            setattr(self, key, value)
        if self.warmup_epochs >= self.epochs:
            raise HParamError(
                f"{owner}: 'warmup_epochs' must be < epochs={self.epochs}, "
                f"got {self.warmup_epochs}",
                "warmup_epochs",
                f"fewer than the {self.epochs} epochs",
                repr(self.warmup_epochs),
            )

    def main(self, epoch: int) -> float:
        """The schedule after the warm-up, counted from its end."""
        return self.base

    def __call__(self, epoch: int) -> float:
        if not isinstance(epoch, int | np.integer) or isinstance(epoch, bool) or epoch < 0:
            raise ValueError(
                f"schedule {self.name!r}: epoch must be an integer >= 0, got {epoch!r}"
            )
        epoch, warm, start = int(epoch), self.warmup_epochs, self.warmup_start_factor
        if epoch < warm:
            return self.base * (start + (1 - start) * epoch / warm)
        return self.main(epoch - warm)


class ConstantLR(Schedule):
    """base_lr throughout."""

    name = "constant"


class StepLR(Schedule):
    """torch's StepLR: base_lr * gamma ** (epoch // step_size)."""

    name = "step"
    hparams = {
        **Schedule.hparams,
        "step_size": Int(lo=1),
        "gamma": Number(0.1, lo=0.0, hi=1.0, lo_open=True),
    }

    def main(self, epoch: int) -> float:
        return self.base * self.gamma ** (epoch // self.step_size)


class ExponentialLR(Schedule):
    """torch's ExponentialLR: base_lr * gamma ** epoch."""

    name = "exponential"
    hparams = {**Schedule.hparams, "gamma": Number(lo=0.0, hi=1.0, lo_open=True)}

    def main(self, epoch: int) -> float:
        return self.base * self.gamma**epoch


class CosineLR(Schedule):
    """torch's CosineAnnealingLR(T_max=epochs - warmup_epochs, eta_min=min_lr)."""

    name = "cosine"
    hparams = {**Schedule.hparams, "min_lr": Number(0.0, lo=0.0)}

    def __init__(self, base_lr: float, *, epochs: int, **hparams: object) -> None:
        super().__init__(base_lr, epochs=epochs, **hparams)
        owner = f"schedule {self.name!r}"
        self.min_lr = Number(lo=0.0, hi=self.base).check(owner, "min_lr", self.min_lr)

    def main(self, epoch: int) -> float:
        t_max = self.epochs - self.warmup_epochs
        return self.min_lr + (self.base - self.min_lr) * (1 + math.cos(math.pi * epoch / t_max)) / 2


SCHEDULES: dict[str, type[Schedule]] = {
    "constant": ConstantLR,
    "step": StepLR,
    "exponential": ExponentialLR,
    "cosine": CosineLR,
}


def make_schedule(name: str, base_lr: float, *, epochs: int, **hparams: object) -> Schedule:
    """Schedule `name` (a key of SCHEDULES) from `base_lr` over `epochs`; see its `hparams`."""
    return schedule_class(name)(base_lr, epochs=epochs, **hparams)


def schedule_class(name: str) -> type[Schedule]:
    """SCHEDULES[name], or ValueError listing the registered names."""
    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}; expected one of {list(SCHEDULES)}")
    return SCHEDULES[name]


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
