"""Batch normalisation and inverted dropout kernels (numpy; memory-bound).

Batch norm normalises per feature for (N, D) and per channel for (N, C, H, W), like PyTorch's
BatchNorm1d/2d; running statistics are updated by the caller-visible return values, not in place.
"""

from __future__ import annotations

import numpy as np

from neurons.kernels import Array, Cache


def _axes(x: Array) -> tuple[int, ...]:
    return (0,) if x.ndim == 2 else (0, 2, 3)


def _bshape(x: Array) -> tuple[int, ...]:
    return (1, -1) if x.ndim == 2 else (1, -1, 1, 1)


def batchnorm_forward_train(
    x: Array, gamma: Array, beta: Array, eps: float
) -> tuple[Array, Array, Array, Cache]:
    """Normalise with batch statistics.  Returns (y, batch_mean, batch_var_unbiased, cache)."""
    axes, bs = _axes(x), _bshape(x)
    m = x.size // x.shape[1]  # values per feature/channel
    mean = x.mean(axis=axes)
    xc = x - mean.reshape(bs)
    var = (xc * xc).mean(axis=axes)  # biased, used to normalise (as PyTorch)
    inv = 1.0 / np.sqrt(var + eps)
    xhat = xc * inv.reshape(bs)
    y = xhat * gamma.reshape(bs) + beta.reshape(bs)
    unbiased = var * (m / max(m - 1, 1))
    return y.astype(x.dtype, copy=False), mean, unbiased, ("train", xhat, inv, gamma)


def batchnorm_forward_eval(
    x: Array, gamma: Array, beta: Array, running_mean: Array, running_var: Array, eps: float
) -> tuple[Array, Cache]:
    bs = _bshape(x)
    inv = 1.0 / np.sqrt(running_var + eps)
    xhat = (x - running_mean.reshape(bs)) * inv.reshape(bs)
    y = xhat * gamma.reshape(bs) + beta.reshape(bs)
    return y.astype(x.dtype, copy=False), ("eval", xhat, inv, gamma)


def batchnorm_backward(dy: Array, cache: Cache) -> tuple[Array, Array, Array]:
    """(dx, dgamma, dbeta) for either forward mode."""
    if cache[0] == "eval":
        _, xhat, inv, gamma = cache
        axes, bs = _axes(dy), _bshape(dy)
        dx = dy * (gamma * inv).reshape(bs)
        return dx, (dy * xhat).sum(axis=axes), dy.sum(axis=axes)
    _, xhat, inv, gamma = cache
    axes, bs = _axes(dy), _bshape(dy)
    dbeta = dy.sum(axis=axes)
    dgamma = (dy * xhat).sum(axis=axes)
    m = dy.size // dy.shape[1]
    dxhat = dy * gamma.reshape(bs)
    dx = (inv.reshape(bs) / m) * (
        m * dxhat
        - dxhat.sum(axis=axes, keepdims=True)
        - xhat * (dxhat * xhat).sum(axis=axes, keepdims=True)
    )
    return dx.astype(dy.dtype, copy=False), dgamma, dbeta


def dropout_forward(x: Array, p: float, rng: np.random.Generator) -> tuple[Array, Cache]:
    """Inverted dropout: zero each entry with probability p, scale survivors by 1/(1-p)."""
    keep = (rng.random(x.shape, dtype=np.float32) >= p).astype(x.dtype)
    keep *= x.dtype.type(1.0 / (1.0 - p))
    return x * keep, keep


def dropout_backward(dy: Array, keep: Cache) -> Array:
    return dy * keep
