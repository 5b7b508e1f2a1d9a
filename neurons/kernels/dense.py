"""Dense (fully connected) kernels: y = x @ w + b on batched 2-D arrays.

BLAS does the work (numpy matmul); there is nothing for numba to add here. Not a layer: no
parameters are owned, caches are returned.
"""

from __future__ import annotations

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
