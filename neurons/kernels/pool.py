"""Fast 2-D max and average pooling kernels (numba, parallel over (n, c); PyTorch semantics).

No padding, no ceil_mode, no layers: output size is floor((H - k) / s) + 1 along each axis.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from neurons.kernels import Array, Cache
from neurons.kernels import pair as _pair

Pair = tuple[int, int]


def pool2d_output_shape(hw: Pair, kernel: int | Pair, stride: int | Pair) -> Pair:
    """(H, W) -> (OH, OW) = floor((H - k) / s) + 1; ValueError if empty or k, s < 1."""
    k, s = _pair(kernel), _pair(stride)
    if min(k) < 1 or min(s) < 1:
        raise ValueError(f"pool2d: kernel {k} and stride {s} must be >= 1")
    out = []
    for axis, h, kk, ss in zip("HW", hw, k, s, strict=True):
        if h < kk:
            raise ValueError(f"pool2d: empty output along {axis}: input {h} < kernel {kk}")
        out.append((h - kk) // ss + 1)
    return out[0], out[1]


def _check(x: Array) -> None:
    if x.ndim != 4:
        raise ValueError(f"pool2d: x must be (N, C, H, W), got shape {x.shape}")
    if x.dtype not in (np.float32, np.float64):
        raise TypeError(f"pool2d: x must be float32 or float64, got {x.dtype}")


@njit(parallel=True, cache=True)
def _max_fwd(x, kh, kw, sh, sw, oh_n, ow_n):  # pragma: no cover - numba
    """x: (N, C, H, W) -> y: (N, C, OH, OW), arg: (N, C, OH, OW) flat h*W + w of the max.

    One comparison per value (`v > best`, so ties keep the first max in row-major order): a
    second condition in that branch stops LLVM from emitting a select and costs ~3x. NaN is
    tracked branch-free and resolved afterwards: the window's first NaN wins (PyTorch).
    """
    n_n, c_n, _, w_n = x.shape
    y = np.empty((n_n, c_n, oh_n, ow_n), dtype=x.dtype)
    arg = np.empty((n_n, c_n, oh_n, ow_n), dtype=np.int32)
    for t in prange(n_n * c_n):
        n = t // c_n
        c = t % c_n
        for oh in range(oh_n):
            yr = y[n, c, oh]
            ar = arg[n, c, oh]
            h0 = oh * sh
            for ow in range(ow_n):
                w0 = ow * sw
                best = x[n, c, h0, w0]
                bi = h0 * w_n + w0
                nan = False
                for i in range(kh):
                    r = x[n, c, h0 + i]
                    for j in range(kw):
                        v = r[w0 + j]
                        nan |= v != v
                        if v > best:
                            best = v
                            bi = (h0 + i) * w_n + w0 + j
                if nan:  # rare: find the first NaN of the window
                    for i in range(kh):
                        for j in range(kw):
                            v = x[n, c, h0 + i, w0 + j]
                            if nan and v != v:
                                best = v
                                bi = (h0 + i) * w_n + w0 + j
                                nan = False
                yr[ow] = best
                ar[ow] = bi
    return y, arg


@njit(parallel=True, cache=True)
def _max_bwd(dy, arg, h_n, w_n):  # pragma: no cover - numba
    """dy, arg: (N, C, OH, OW) -> dx: (N, C, H, W); overlapping windows accumulate."""
    n_n, c_n, oh_n, ow_n = dy.shape
    p = oh_n * ow_n
    dyf = dy.reshape(n_n * c_n, p)  # (N*C, OH*OW)
    af = arg.reshape(n_n * c_n, p)
    dx = np.zeros((n_n * c_n, h_n * w_n), dtype=dy.dtype)  # flat: no integer division per value
    for t in prange(n_n * c_n):
        g = dx[t]
        a = af[t]
        d = dyf[t]
        for k in range(p):
            g[a[k]] += d[k]
    return dx.reshape(n_n, c_n, h_n, w_n)


def maxpool2d_forward(x: Array, kernel: int | Pair, stride: int | Pair) -> tuple[Array, Cache]:
    """Max pooling, no padding. x: (N, C, H, W) -> y: (N, C, OH, OW), OH = (H - kh)//sh + 1.

    Ties go to the first maximum in row-major window order (PyTorch); NaN propagates.
    """
    _check(x)
    k, s = _pair(kernel), _pair(stride)
    oh, ow = pool2d_output_shape(x.shape[2:], k, s)
    y, arg = _max_fwd(np.ascontiguousarray(x), k[0], k[1], s[0], s[1], oh, ow)
    return y, (arg, x.shape)


def maxpool2d_backward(dy: Array, cache: Cache) -> Array:
    """dy: (N, C, OH, OW) -> dx: (N, C, H, W); each dy goes to its window's argmax."""
    arg, xshape = cache
    dy = np.ascontiguousarray(dy.reshape(arg.shape))  # a flat dy back to (N, C, OH, OW)
    return _max_bwd(dy, arg, xshape[2], xshape[3])


@njit(parallel=True, cache=True)
def _avg_fwd(x, kh, kw, sh, sw, oh_n, ow_n, zero):  # pragma: no cover - numba
    """x: (N, C, H, W) -> y: (N, C, OH, OW), mean over each kh x kw window."""
    n_n, c_n = x.shape[0], x.shape[1]
    y = np.empty((n_n, c_n, oh_n, ow_n), dtype=x.dtype)
    inv = 1.0 / (kh * kw)
    for t in prange(n_n * c_n):
        n = t // c_n
        c = t % c_n
        img = x[n, c]
        for oh in range(oh_n):
            for ow in range(ow_n):
                acc = zero
                for i in range(kh):
                    for j in range(kw):
                        acc += img[oh * sh + i, ow * sw + j]
                y[n, c, oh, ow] = acc * inv
    return y


@njit(parallel=True, cache=True)
def _avg_bwd(dy, kh, kw, sh, sw, h_n, w_n):  # pragma: no cover - numba
    """dy: (N, C, OH, OW) -> dx: (N, C, H, W); dy / (kh*kw) spread over each window."""
    n_n, c_n, oh_n, ow_n = dy.shape
    dx = np.zeros((n_n, c_n, h_n, w_n), dtype=dy.dtype)
    inv = 1.0 / (kh * kw)
    for t in prange(n_n * c_n):
        n = t // c_n
        c = t % c_n
        g = dx[n, c]
        for oh in range(oh_n):
            for ow in range(ow_n):
                v = dy[n, c, oh, ow] * inv
                for i in range(kh):
                    for j in range(kw):
                        g[oh * sh + i, ow * sw + j] += v
    return dx


def avgpool2d_forward(x: Array, kernel: int | Pair, stride: int | Pair) -> tuple[Array, Cache]:
    """Average pooling, no padding. x: (N, C, H, W) -> y: (N, C, OH, OW), OH = (H - kh)//sh + 1."""
    _check(x)
    k, s = _pair(kernel), _pair(stride)
    oh, ow = pool2d_output_shape(x.shape[2:], k, s)
    y = _avg_fwd(np.ascontiguousarray(x), k[0], k[1], s[0], s[1], oh, ow, x.dtype.type(0))
    return y, (k, s, x.shape, y.shape)


def avgpool2d_backward(dy: Array, cache: Cache) -> Array:
    """dy: (N, C, OH, OW) -> dx: (N, C, H, W)."""
    k, s, xshape, yshape = cache
    dy = np.ascontiguousarray(dy.reshape(yshape))  # a flat dy back to (N, C, OH, OW)
    return _avg_bwd(dy, k[0], k[1], s[0], s[1], xshape[2], xshape[3])
