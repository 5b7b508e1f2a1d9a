"""Weight initialisers with torch.nn.init formulas, drawing only from an explicit Generator.

Every initialiser is `fn(rng, shape, ..., *, fan_in=None, fan_out=None, dtype=np.float32)`; fans
default to PyTorch's computation on `shape` (out, in, *kernel). Never touches global numpy random.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable

import numpy as np
from numpy.typing import DTypeLike

Shape = tuple[int, ...]
Initializer = Callable[..., np.ndarray]

_GAINS_ONE = (
    "linear",
    "identity",
    "conv1d",
    "conv2d",
    "conv3d",
    "conv_transpose1d",
    "conv_transpose2d",
    "conv_transpose3d",
    "sigmoid",
)
NONLINEARITIES = (*_GAINS_ONE, "tanh", "relu", "leaky_relu", "selu")


def calculate_gain(nonlinearity: str, param: float | None = None) -> float:
    """torch.nn.init.calculate_gain: recommended gain for `nonlinearity` (`param`: leaky slope)."""
    if nonlinearity in _GAINS_ONE:
        return 1.0
    if nonlinearity == "tanh":
        return 5.0 / 3
    if nonlinearity == "relu":
        return math.sqrt(2.0)
    if nonlinearity == "leaky_relu":
        if param is None:
            slope = 0.01
        elif isinstance(param, int | float) and not isinstance(param, bool):
            slope = float(param)
        else:
            raise ValueError(f"calculate_gain: negative_slope {param!r} is not a valid number")
        return math.sqrt(2.0 / (1 + slope**2))
    if nonlinearity == "selu":
        return 3.0 / 4
    raise ValueError(
        f"calculate_gain: unsupported nonlinearity {nonlinearity!r}; expected one of "
        f"{list(NONLINEARITIES)}"
    )


def _shape(shape: int | Shape) -> Shape:
    shp = (shape,) if isinstance(shape, int | np.integer) else tuple(shape)
    if any(not isinstance(s, int | np.integer) or s < 0 for s in shp):
        raise ValueError(f"shape must be a tuple of non-negative integers, got {shape!r}")
    return tuple(int(s) for s in shp)


def _dtype(dtype: DTypeLike) -> np.dtype:
    dt = np.dtype(dtype)
    if not np.issubdtype(dt, np.floating):
        raise ValueError(f"dtype must be a floating type, got {dt}")
    return dt


def _rng(rng: object) -> np.random.Generator:
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a np.random.Generator, got {type(rng).__name__}")
    return rng


def fans(shape: Shape, fan_in: int | None = None, fan_out: int | None = None) -> tuple[int, int]:
    """(fan_in, fan_out): explicit values win, else PyTorch's rule for shape (out, in, *kernel)."""
    if fan_in is None or fan_out is None:
        if len(shape) < 2:
            raise ValueError(
                f"fan in/out cannot be computed for shape {shape} (fewer than 2 dimensions); "
                "pass fan_in and fan_out explicitly"
            )
        receptive = math.prod(shape[2:])
        fan_in = shape[1] * receptive if fan_in is None else fan_in
        fan_out = shape[0] * receptive if fan_out is None else fan_out
    for name, v in (("fan_in", fan_in), ("fan_out", fan_out)):
        if not isinstance(v, int | np.integer) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r} (shape {shape})")
    return int(fan_in), int(fan_out)


def _nonneg(owner: str, name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
        raise ValueError(f"{owner}: {name!r} must be a finite number >= 0, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{owner}: {name!r} must be a finite number >= 0, got {value!r}")
    return float(value)


def _uniform(rng: np.random.Generator, shape: Shape, lo: float, hi: float, dt: np.dtype):
    # drawn in float64 then rounded, so float32 values may equal the bounds
    return rng.uniform(lo, hi, size=shape).astype(dt)


def _normal(rng: np.random.Generator, shape: Shape, mean: float, std: float, dt: np.dtype):
    return (mean + std * rng.standard_normal(shape)).astype(dt)


def uniform(
    rng: np.random.Generator,
    shape: int | Shape,
    a: float = -1.0,
    b: float = 1.0,
    *,
    fan_in: int | None = None,
    fan_out: int | None = None,
    dtype: DTypeLike = np.float32,
) -> np.ndarray:
    """U(a, b) of `shape` (fans are accepted and ignored)."""
    if not (isinstance(a, int | float) and isinstance(b, int | float) and a < b):
        raise ValueError(f"uniform: need finite a < b, got a={a!r}, b={b!r}")
    if not (math.isfinite(a) and math.isfinite(b)):
        raise ValueError(f"uniform: need finite a < b, got a={a!r}, b={b!r}")
    return _uniform(_rng(rng), _shape(shape), float(a), float(b), _dtype(dtype))


def normal(
    rng: np.random.Generator,
    shape: int | Shape,
    mean: float = 0.0,
    std: float = 1.0,
    *,
    fan_in: int | None = None,
    fan_out: int | None = None,
    dtype: DTypeLike = np.float32,
) -> np.ndarray:
    """N(mean, std^2) of `shape` (fans are accepted and ignored)."""
    if isinstance(mean, bool) or not isinstance(mean, int | float) or not math.isfinite(mean):
        raise ValueError(f"normal: 'mean' must be a finite number, got {mean!r}")
    std = _nonneg("normal", "std", std)
    return _normal(_rng(rng), _shape(shape), float(mean), std, _dtype(dtype))


def xavier_uniform(
    rng: np.random.Generator,
    shape: int | Shape,
    gain: float = 1.0,
    *,
    fan_in: int | None = None,
    fan_out: int | None = None,
    dtype: DTypeLike = np.float32,
) -> np.ndarray:
    """Glorot uniform: U(-a, a), a = gain * sqrt(6 / (fan_in + fan_out))."""
    shp = _shape(shape)
    fi, fo = fans(shp, fan_in, fan_out)
    std = _nonneg("xavier_uniform", "gain", gain) * math.sqrt(2.0 / (fi + fo))
    bound = math.sqrt(3.0) * std
    return _uniform(_rng(rng), shp, -bound, bound, _dtype(dtype))


def xavier_normal(
    rng: np.random.Generator,
    shape: int | Shape,
    gain: float = 1.0,
    *,
    fan_in: int | None = None,
    fan_out: int | None = None,
    dtype: DTypeLike = np.float32,
) -> np.ndarray:
    """Glorot normal: N(0, std^2), std = gain * sqrt(2 / (fan_in + fan_out))."""
    shp = _shape(shape)
    fi, fo = fans(shp, fan_in, fan_out)
    std = _nonneg("xavier_normal", "gain", gain) * math.sqrt(2.0 / (fi + fo))
    return _normal(_rng(rng), shp, 0.0, std, _dtype(dtype))


def _kaiming_std(
    owner: str, shp: Shape, a: float, mode: str, nonlinearity: str, fan_in, fan_out
) -> float:
    if mode not in ("fan_in", "fan_out"):
        raise ValueError(f"{owner}: 'mode' must be 'fan_in' or 'fan_out', got {mode!r}")
    if isinstance(a, bool) or not isinstance(a, int | float) or not math.isfinite(a):
        raise ValueError(f"{owner}: 'a' (leaky_relu negative slope) must be a number, got {a!r}")
    fi, fo = fans(shp, fan_in, fan_out)
    fan = fi if mode == "fan_in" else fo
    return calculate_gain(nonlinearity, a) / math.sqrt(fan)


def kaiming_uniform(
    rng: np.random.Generator,
    shape: int | Shape,
    a: float = 0.0,
    mode: str = "fan_in",
    nonlinearity: str = "leaky_relu",
    *,
    fan_in: int | None = None,
    fan_out: int | None = None,
    dtype: DTypeLike = np.float32,
) -> np.ndarray:
    """He uniform: U(-b, b), b = gain(nonlinearity, a) * sqrt(3 / fan) with fan = fan_in|fan_out."""
    shp = _shape(shape)
    std = _kaiming_std("kaiming_uniform", shp, a, mode, nonlinearity, fan_in, fan_out)
    bound = math.sqrt(3.0) * std
    return _uniform(_rng(rng), shp, -bound, bound, _dtype(dtype))


def kaiming_normal(
    rng: np.random.Generator,
    shape: int | Shape,
    a: float = 0.0,
    mode: str = "fan_in",
    nonlinearity: str = "leaky_relu",
    *,
    fan_in: int | None = None,
    fan_out: int | None = None,
    dtype: DTypeLike = np.float32,
) -> np.ndarray:
    """He normal: N(0, std^2), std = gain(nonlinearity, a) / sqrt(fan)."""
    shp = _shape(shape)
    std = _kaiming_std("kaiming_normal", shp, a, mode, nonlinearity, fan_in, fan_out)
    return _normal(_rng(rng), shp, 0.0, std, _dtype(dtype))


def orthogonal(
    rng: np.random.Generator,
    shape: int | Shape,
    gain: float = 1.0,
    *,
    fan_in: int | None = None,
    fan_out: int | None = None,
    dtype: DTypeLike = np.float32,
) -> np.ndarray:
    """torch orthogonal_: QR of a gaussian (shape[0], prod(rest)) matrix, signs fixed by diag(R).

    The result has orthonormal rows or columns (whichever are fewer) times `gain`; fans ignored.
    """
    shp = _shape(shape)
    if len(shp) < 2:
        raise ValueError(f"orthogonal: shape needs at least 2 dimensions, got {shp}")
    gain = _nonneg("orthogonal", "gain", gain)
    dt = _dtype(dtype)
    rows = shp[0]
    cols = math.prod(shp[1:])
    if rows == 0 or cols == 0:
        return np.zeros(shp, dtype=dt)
    flat = _rng(rng).standard_normal((rows, cols))
    if rows < cols:
        flat = flat.T
    q, r = np.linalg.qr(flat)
    q = q * np.where(np.diag(r) < 0, -1.0, 1.0)  # sign(0) -> +1 so no column is zeroed
    if rows < cols:
        q = q.T
    return (gain * q).reshape(shp).astype(dt)


def zeros(
    rng: np.random.Generator | None,
    shape: int | Shape,
    *,
    fan_in: int | None = None,
    fan_out: int | None = None,
    dtype: DTypeLike = np.float32,
) -> np.ndarray:
    """All zeros (`rng` and fans are accepted for a uniform signature and ignored)."""
    return np.zeros(_shape(shape), dtype=_dtype(dtype))


INITIALIZERS: dict[str, Initializer] = {
    "uniform": uniform,
    "normal": normal,
    "xavier_uniform": xavier_uniform,
    "xavier_normal": xavier_normal,
    "kaiming_uniform": kaiming_uniform,
    "kaiming_normal": kaiming_normal,
    "orthogonal": orthogonal,
    "zeros": zeros,
}


class UnknownInitializer(ValueError):
    """`make_initializer` was given a name that is not in INITIALIZERS."""


def make_initializer(name: str, **kw: object) -> Initializer:
    """INITIALIZERS[name] with hyper-parameters `kw` bound and checked now.

    Returns `init(rng, shape, *, fan_in=None, fan_out=None, dtype=np.float32) -> np.ndarray`.
    """
    if name not in INITIALIZERS:
        raise UnknownInitializer(
            f"unknown initializer {name!r}; expected one of {sorted(INITIALIZERS)}"
        )
    fn = INITIALIZERS[name]
    allowed = [k for k in inspect.signature(fn).parameters if k not in ("rng", "shape")]
    unknown = sorted(set(kw) - set(allowed))
    if unknown:
        raise ValueError(f"{name}: unknown argument(s) {unknown}; expected a subset of {allowed}")
    bound = functools.partial(fn, **kw)
    # validate the hyper-parameters once, on a throwaway local generator (not the global one)
    bound(np.random.default_rng(0), (2, 2))
    return bound
