"""Element-wise activations (and softmax over each sample) with exact backward passes.

Each `<name>_forward(z) -> (a, cache)` sits beside `<name>_backward(da, cache) -> dz`. Softmax
normalises over all non-batch axes of a sample and its backward is the exact Jacobian-vector
product. Pure numpy; these are memory-bound and BLAS-free.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from neurons.kernels import Array, Cache


def linear_forward(z: Array) -> tuple[Array, Cache]:
    return z, None


def linear_backward(da: Array, cache: Cache) -> Array:
    return da


def sigmoid_forward(z: Array) -> tuple[Array, Cache]:
    # exp(-softplus(-z)) never overflows, unlike 1 / (1 + exp(-z)) for very negative z
    a = np.exp(-np.logaddexp(0, -z)).astype(z.dtype, copy=False)
    return a, a


def sigmoid_backward(da: Array, a: Cache) -> Array:
    return da * a * (1 - a)


def tanh_forward(z: Array) -> tuple[Array, Cache]:
    a = np.tanh(z)
    return a, a


def tanh_backward(da: Array, a: Cache) -> Array:
    return da * (1 - a * a)


def relu_forward(z: Array) -> tuple[Array, Cache]:
    mask = z > 0
    return z * mask, mask


def relu_backward(da: Array, mask: Cache) -> Array:
    return da * mask


def leaky_relu_forward(z: Array, slope: float = 0.01) -> tuple[Array, Cache]:
    mask = z > 0
    return np.where(mask, z, z * z.dtype.type(slope)), (mask, slope)


def leaky_relu_backward(da: Array, cache: Cache) -> Array:
    mask, slope = cache
    return np.where(mask, da, da * da.dtype.type(slope))


def elu_forward(z: Array, alpha: float = 1.0) -> tuple[Array, Cache]:
    mask = z > 0
    neg = z.dtype.type(alpha) * np.expm1(np.minimum(z, 0))  # min() keeps exp from overflowing
    return np.where(mask, z, neg), (mask, neg, alpha)


def elu_backward(da: Array, cache: Cache) -> Array:
    mask, neg, alpha = cache
    return np.where(mask, da, da * (neg + da.dtype.type(alpha)))


def softmax_forward(z: Array) -> tuple[Array, Cache]:
    """Softmax over every non-batch axis of each sample.  z: (N, ...) -> a: (N, ...)."""
    axes = tuple(range(1, z.ndim))
    e = np.exp(z - z.max(axis=axes, keepdims=True))
    a = e / e.sum(axis=axes, keepdims=True)
    return a, a


def softmax_backward(da: Array, a: Cache) -> Array:
    """Exact JVP: dz = a * (da - <da, a>) per sample."""
    axes = tuple(range(1, a.ndim))
    return a * (da - (da * a).sum(axis=axes, keepdims=True))


ACTIVATIONS: dict[str, tuple[Callable, Callable]] = {
    "linear": (linear_forward, linear_backward),
    "sigmoid": (sigmoid_forward, sigmoid_backward),
    "tanh": (tanh_forward, tanh_backward),
    "relu": (relu_forward, relu_backward),
    "leaky_relu": (leaky_relu_forward, leaky_relu_backward),
    "elu": (elu_forward, elu_backward),
    "softmax": (softmax_forward, softmax_backward),
}
# activations that take one float hyper-parameter, and its config name
ACTIVATION_PARAM = {"leaky_relu": "slope", "elu": "alpha"}
