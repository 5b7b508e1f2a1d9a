"""Dense (fully connected) kernels: y = x @ w + b on batched 2-D arrays.

BLAS does the work (numpy matmul). The `crate_*` kernels (compat mode) sum in the original
crate's order instead, left to right per sample in the array's dtype, so compat results do not
depend on the machine's BLAS blocking and FMA use. Not a layer: no parameters are owned, caches
are returned.
"""

from __future__ import annotations

import numba
import numpy as np

from neurons.kernels import Array, Cache


def dense_forward(x: Array, w: Array, b: Array | None) -> tuple[Array, Cache]:
    """x: (N, D_in), w: (D_in, D_out), b: (D_out,) or None -> y: (N, D_out)."""
    y = x @ w
    if b is not None:
        y += b
    return y, (x, w, b is not None)


def dense_backward(dy: Array, cache: Cache) -> tuple[Array, Array, Array | None]:
    """Gradients in the order of dense_forward's inputs: (dx, dw, db)."""
    x, w, has_bias = cache
    return dy @ w.T, x.T @ dy, (dy.sum(axis=0) if has_bias else None)


def tan_dense_forward(x: Array, w: Array) -> tuple[Array, Cache]:
    """NormNet dense: y = (x @ tan(w)) / D_in.  x: (N, D_in), w: (D_in, D_out) -> (N, D_out)."""
    tw = np.tan(w)
    n_in = w.shape[0]
    return (x @ tw) / n_in, (x, w, tw)


def tan_dense_backward(dy: Array, cache: Cache) -> tuple[Array, Array]:
    """(dx, dw) of tan_dense_forward; d tan(w)/dw = 1 + tan(w)^2."""
    x, w, tw = cache
    n_in = w.shape[0]
    dx = (dy @ tw.T) / n_in
    dw = (x.T @ dy) * ((1 + tw * tw) / n_in)
    return dx, dw.astype(w.dtype, copy=False)


# ------------------------------------------------------------------ the crate's summation order
@numba.njit(cache=True)
def crate_matmul(x: Array, w: Array) -> Array:
    """y[s, j] = sum over i of w[i, j] * x[s, i], added left to right in x's dtype (no FMA,
    no blocking): the crate's per-sample dot products.  x: (N, D_in), w: (D_in, D_out), any
    strides (the backward pass passes w.T)."""
    n, d_in = x.shape
    y = np.zeros((n, w.shape[1]), x.dtype)
    for s in range(n):
        for j in range(w.shape[1]):
            for i in range(d_in):
                y[s, j] += w[i, j] * x[s, i]
    return y


@numba.njit(cache=True)
def crate_outer_sum(x: Array, dy: Array) -> Array:
    """dw[i, j] = sum over samples s (in order) of dy[s, j] * x[s, i].  -> (D_in, D_out)."""
    n, d_in = x.shape
    dw = np.zeros((d_in, dy.shape[1]), dy.dtype)
    for s in range(n):
        for i in range(d_in):
            for j in range(dy.shape[1]):
                dw[i, j] += dy[s, j] * x[s, i]
    return dw


def crate_dense_forward(x: Array, w: Array, b: Array | None) -> tuple[Array, Cache]:
    """dense_forward in the crate's summation order."""
    x = np.ascontiguousarray(x)
    y = crate_matmul(x, np.ascontiguousarray(w))
    if b is not None:
        y += b
    return y, (x, w, b is not None)


def crate_dense_backward(dy: Array, cache: Cache) -> tuple[Array, Array, Array | None]:
    """dense_backward in the crate's summation order: (dx, dw, db)."""
    x, w, has_bias = cache
    dy = np.ascontiguousarray(dy)
    dx = crate_matmul(dy, w.T)  # dx[s, i] = sum over j of w[i, j] * dy[s, j], left to right
    return dx, crate_outer_sum(x, dy), (dy.sum(axis=0) if has_bias else None)
