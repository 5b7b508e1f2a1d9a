"""Slow, obvious reference twins of the fast kernels, written straight from the definitions.

Used only by the test-suite to check the fast kernels; never on the training path. Same
signatures and returns as the kernels they mirror. Each kernel family has its own section.
"""

from __future__ import annotations

import numpy as np

from neurons.kernels import Array, Cache

# ============================================================================================
# conv / deconv / pooling twins of neurons.kernels.conv and neurons.kernels.pool
# ============================================================================================

_Pair = tuple[int, int]


def _p2(v: int | _Pair) -> _Pair:
    return (int(v), int(v)) if isinstance(v, int | np.integer) else (int(v[0]), int(v[1]))


def conv2d_forward_naive(
    x: Array,
    w: Array,
    b: Array | None,
    stride: _Pair = (1, 1),
    padding: _Pair = (0, 0),
    dilation: _Pair = (1, 1),
) -> tuple[Array, Cache]:
    """x: (N, C, H, W), w: (F, C, kh, kw), b: (F,) | None -> y: (N, F, OH, OW), a dot each."""
    (sh, sw), (ph, pw), (dh, dw) = _p2(stride), _p2(padding), _p2(dilation)
    n_n, _, h, wd = x.shape
    f_n, _, kh, kw = w.shape
    oh_n = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    ow_n = (wd + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    y = np.zeros((n_n, f_n, oh_n, ow_n), dtype=x.dtype)
    for n in range(n_n):
        for f in range(f_n):
            for oh in range(oh_n):
                for ow in range(ow_n):
                    r, c = oh * sh, ow * sw
                    win = xp[n, :, r : r + dh * (kh - 1) + 1 : dh, c : c + dw * (kw - 1) + 1 : dw]
                    y[n, f, oh, ow] = np.sum(win * w[f]) + (0 if b is None else b[f])
    return y, (x, w, b is not None, (sh, sw), (ph, pw), (dh, dw))


def conv2d_backward_naive(dy: Array, cache: Cache) -> tuple[Array, Array, Array | None]:
    """dy: (N, F, OH, OW) -> dx: (N, C, H, W), dw: (F, C, kh, kw), db: (F,) | None."""
    x, w, has_bias, (sh, sw), (ph, pw), (dh, dw) = cache
    n_n, f_n, oh_n, ow_n = dy.shape
    kh, kw = w.shape[2:]
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    dxp = np.zeros_like(xp)
    gw = np.zeros_like(w)
    for n in range(n_n):
        for f in range(f_n):
            for oh in range(oh_n):
                for ow in range(ow_n):
                    r, c = oh * sh, ow * sw
                    rows = slice(r, r + dh * (kh - 1) + 1, dh)
                    cols = slice(c, c + dw * (kw - 1) + 1, dw)
                    g = dy[n, f, oh, ow]
                    dxp[n, :, rows, cols] += g * w[f]
                    gw[f] += g * xp[n, :, rows, cols]
    dx = dxp[:, :, ph : ph + x.shape[2], pw : pw + x.shape[3]].copy()
    db = dy.sum(axis=(0, 2, 3)) if has_bias else None
    return dx, gw, db


def deconv2d_forward_naive(
    x: Array,
    w: Array,
    b: Array | None,
    stride: _Pair = (1, 1),
    padding: _Pair = (0, 0),
    dilation: _Pair = (1, 1),
    output_padding: _Pair = (0, 0),
) -> tuple[Array, Cache]:
    """x: (N, C, H, W), w: (C, F, kh, kw) -> y: (N, F, OH, OW); each input pixel scatters w[c]."""
    (sh, sw), (ph, pw), (dh, dw) = _p2(stride), _p2(padding), _p2(dilation)
    oph, opw = _p2(output_padding)
    n_n, c_n, h, wd = x.shape
    _, f_n, kh, kw = w.shape
    oh_n = (h - 1) * sh - 2 * ph + dh * (kh - 1) + oph + 1
    ow_n = (wd - 1) * sw - 2 * pw + dw * (kw - 1) + opw + 1
    # full (uncropped) output; the padding is then cut from both sides
    yp = np.zeros((n_n, f_n, oh_n + 2 * ph, ow_n + 2 * pw), dtype=x.dtype)
    for n in range(n_n):
        for c in range(c_n):
            for i in range(h):
                for j in range(wd):
                    r, q = i * sh, j * sw
                    rows = slice(r, r + dh * (kh - 1) + 1, dh)
                    cols = slice(q, q + dw * (kw - 1) + 1, dw)
                    yp[n, :, rows, cols] += x[n, c, i, j] * w[c]
    y = yp[:, :, ph : ph + oh_n, pw : pw + ow_n].copy()
    if b is not None:
        y += b[None, :, None, None]
    return y, (x, w, b is not None, (sh, sw), (ph, pw), (dh, dw))


def deconv2d_backward_naive(dy: Array, cache: Cache) -> tuple[Array, Array, Array | None]:
    """dy: (N, F, OH, OW) -> dx: (N, C, H, W), dw: (C, F, kh, kw), db: (F,) | None."""
    x, w, has_bias, (sh, sw), (ph, pw), (dh, dw) = cache
    n_n, c_n, h, wd = x.shape
    kh, kw = w.shape[2:]
    oh_n, ow_n = dy.shape[2:]
    dyp = np.zeros((*dy.shape[:2], oh_n + 2 * ph, ow_n + 2 * pw), dtype=dy.dtype)
    dyp[:, :, ph : ph + oh_n, pw : pw + ow_n] = dy
    dx = np.zeros_like(x)
    gw = np.zeros_like(w)
    for n in range(n_n):
        for c in range(c_n):
            for i in range(h):
                for j in range(wd):
                    r, q = i * sh, j * sw
                    win = dyp[n, :, r : r + dh * (kh - 1) + 1 : dh, q : q + dw * (kw - 1) + 1 : dw]
                    dx[n, c, i, j] = np.sum(win * w[c])
                    gw[c] += x[n, c, i, j] * win
    db = dy.sum(axis=(0, 2, 3)) if has_bias else None
    return dx, gw, db


def maxpool2d_forward_naive(
    x: Array, kernel: int | _Pair, stride: int | _Pair
) -> tuple[Array, Cache]:
    """x: (N, C, H, W) -> y: (N, C, OH, OW); first maximum (row-major) of each window wins."""
    (kh, kw), (sh, sw) = _p2(kernel), _p2(stride)
    n_n, c_n, h, wd = x.shape
    oh_n, ow_n = (h - kh) // sh + 1, (wd - kw) // sw + 1
    y = np.zeros((n_n, c_n, oh_n, ow_n), dtype=x.dtype)
    where = np.zeros((n_n, c_n, oh_n, ow_n, 2), dtype=np.int64)
    for n in range(n_n):
        for c in range(c_n):
            for oh in range(oh_n):
                for ow in range(ow_n):
                    win = x[n, c, oh * sh : oh * sh + kh, ow * sw : ow * sw + kw]
                    k = int(np.argmax(win))  # argmax returns the first occurrence
                    y[n, c, oh, ow] = win.flat[k]
                    where[n, c, oh, ow] = (oh * sh + k // kw, ow * sw + k % kw)
    return y, (where, x.shape)


def maxpool2d_backward_naive(dy: Array, cache: Cache) -> Array:
    """dy: (N, C, OH, OW) -> dx: (N, C, H, W)."""
    where, xshape = cache
    dx = np.zeros(xshape, dtype=dy.dtype)
    n_n, c_n, oh_n, ow_n = dy.shape
    for n in range(n_n):
        for c in range(c_n):
            for oh in range(oh_n):
                for ow in range(ow_n):
                    i, j = where[n, c, oh, ow]
                    dx[n, c, i, j] += dy[n, c, oh, ow]
    return dx


def avgpool2d_forward_naive(
    x: Array, kernel: int | _Pair, stride: int | _Pair
) -> tuple[Array, Cache]:
    """x: (N, C, H, W) -> y: (N, C, OH, OW), the mean of each window."""
    (kh, kw), (sh, sw) = _p2(kernel), _p2(stride)
    n_n, c_n, h, wd = x.shape
    oh_n, ow_n = (h - kh) // sh + 1, (wd - kw) // sw + 1
    y = np.zeros((n_n, c_n, oh_n, ow_n), dtype=x.dtype)
    for oh in range(oh_n):
        for ow in range(ow_n):
            y[:, :, oh, ow] = x[:, :, oh * sh : oh * sh + kh, ow * sw : ow * sw + kw].mean((2, 3))
    return y, ((kh, kw), (sh, sw), x.shape)


def avgpool2d_backward_naive(dy: Array, cache: Cache) -> Array:
    """dy: (N, C, OH, OW) -> dx: (N, C, H, W)."""
    (kh, kw), (sh, sw), xshape = cache
    dx = np.zeros(xshape, dtype=dy.dtype)
    for oh in range(dy.shape[2]):
        for ow in range(dy.shape[3]):
            win = dx[:, :, oh * sh : oh * sh + kh, ow * sw : ow * sw + kw]
            win += dy[:, :, oh, ow][:, :, None, None] / (kh * kw)
    return dx


# ============================================================================================
# end of conv / deconv / pooling twins
# ============================================================================================
