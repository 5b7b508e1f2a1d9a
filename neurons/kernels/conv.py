"""Fast 2-D convolution and transposed-convolution kernels (PyTorch layouts and semantics).

Two strategies share one interface: a direct numba loop (tiny channel counts) and im2col + BLAS
GEMM (everything else). This module is not a layer: no parameters, state or initialisation here.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from neurons.kernels import Array, Cache, Shape
from neurons.kernels import pair as _pair

Pair = tuple[int, int]

# Reassociation lets LLVM vectorise the float reductions in the weight gradient; no nnan/ninf.
_FM = {"reassoc", "contract", "nsz"}

# Direct loops beat im2col + GEMM only for very few filter-channel taps F*C*kh*kw (measured on
# 28x28, batch 64: 1->1 3x3 direct ~2.7x faster, 1->4 even, 1->32 3x3 im2col ~1.9x faster).
DIRECT_MAX_TAPS = 36


def _check_geometry(stride: Pair, padding: Pair, dilation: Pair) -> None:
    if min(stride) < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    if min(dilation) < 1:
        raise ValueError(f"dilation must be >= 1, got {dilation}")
    if min(padding) < 0:
        raise ValueError(f"padding must be >= 0, got {padding}")


def conv2d_output_shape(
    hw: Pair, kernel: Pair, stride: Pair, padding: Pair, dilation: Pair
) -> Pair:
    """(H, W) -> (OH, OW) with OH = floor((H + 2p - d(k-1) - 1) / s) + 1 (PyTorch Conv2d).

    Raises ValueError if the output would be empty (kernel larger than the padded input).
    """
    stride, padding, dilation = _pair(stride), _pair(padding), _pair(dilation)
    _check_geometry(stride, padding, dilation)
    out = []
    for axis, h, k, s, p, d in zip("HW", hw, kernel, stride, padding, dilation, strict=True):
        span = d * (k - 1) + 1
        o = (h + 2 * p - span) // s + 1
        if o < 1:
            raise ValueError(
                f"conv2d: empty output along {axis}: input {h} + 2*padding {p} = {h + 2 * p} "
                f"is smaller than the dilated kernel extent {span} (kernel {k}, dilation {d})"
            )
        out.append(o)
    return out[0], out[1]


def deconv2d_output_shape(
    hw: Pair, kernel: Pair, stride: Pair, padding: Pair, dilation: Pair, output_padding: Pair
) -> Pair:
    """(H, W) -> (OH, OW) with OH = (H-1)s - 2p + d(k-1) + output_padding + 1 (ConvTranspose2d).

    Raises ValueError if the output would be empty or output_padding >= max(stride, dilation).
    """
    stride, padding, dilation = _pair(stride), _pair(padding), _pair(dilation)
    output_padding = _pair(output_padding)
    _check_geometry(stride, padding, dilation)
    out = []
    for axis, h, k, s, p, d, op in zip(
        "HW", hw, kernel, stride, padding, dilation, output_padding, strict=True
    ):
        if op < 0 or op >= max(s, d):
            raise ValueError(
                f"deconv2d: output_padding {op} along {axis} must satisfy "
                f"0 <= output_padding < max(stride {s}, dilation {d})"
            )
        o = (h - 1) * s - 2 * p + d * (k - 1) + op + 1
        if o < 1:
            raise ValueError(
                f"deconv2d: empty output along {axis}: (H-1)*s - 2p + d(k-1) + op + 1 = {o} "
                f"for H={h}, kernel {k}, stride {s}, padding {p}, dilation {d}, output_padding {op}"
            )
        out.append(o)
    return out[0], out[1]


def _check_inputs(x: Array, w: Array, b: Array | None, c_axis: int, what: str) -> None:
    if x.ndim != 4 or w.ndim != 4:
        raise ValueError(f"{what}: x and w must be 4-D, got x{x.shape} and w{w.shape}")
    if x.dtype not in (np.float32, np.float64):
        raise TypeError(f"{what}: x must be float32 or float64, got {x.dtype}")
    if w.dtype != x.dtype or (b is not None and b.dtype != x.dtype):
        bd = None if b is None else b.dtype
        raise TypeError(f"{what}: dtype mismatch x={x.dtype}, w={w.dtype}, b={bd}")
    if x.shape[1] != w.shape[c_axis]:
        raise ValueError(
            f"{what}: x has {x.shape[1]} channels but w{w.shape} expects {w.shape[c_axis]}"
        )


# --------------------------------------------------------------------------------------------
# numba building blocks on a zero-padded input xp: (N, C, H + 2ph, W + 2pw)
# --------------------------------------------------------------------------------------------


def _pad(x: Array, ph: int, pw: int) -> Array:
    """x: (N, C, H, W) -> (N, C, H + 2ph, W + 2pw), zero border, C-contiguous."""
    if ph == 0 and pw == 0:
        return np.ascontiguousarray(x)
    n, c, h, w = x.shape
    xp = np.zeros((n, c, h + 2 * ph, w + 2 * pw), dtype=x.dtype)
    xp[:, :, ph : ph + h, pw : pw + w] = x
    return xp


@njit(cache=True)
def _im2col1(x, cols, kh, kw, sh, sw, dh, dw, oh_n, ow_n):  # pragma: no cover - numba
    """One sample: x: (C, Hp, Wp) -> cols: (C*kh*kw, OH*OW) in place, row r = (c*kh + i)*kw + j."""
    for c in range(x.shape[0]):
        for i in range(kh):
            for j in range(kw):
                row = cols[(c * kh + i) * kw + j]
                for oh in range(oh_n):
                    src = x[c, oh * sh + i * dh, j * dw :]
                    dst = row[oh * ow_n : (oh + 1) * ow_n]
                    if sw == 1:  # contiguous copy, vectorised
                        for ow in range(ow_n):
                            dst[ow] = src[ow]
                    else:
                        for ow in range(ow_n):
                            dst[ow] = src[ow * sw]


@njit(cache=True)
def _col2im1(dcols, dx, kh, kw, sh, sw, dh, dw, oh_n, ow_n):  # pragma: no cover - numba
    """One sample: dcols: (C*kh*kw, OH*OW) -> dx: (C, Hp, Wp) (zeroed by the caller);
    overlapping windows accumulate."""
    for c in range(dx.shape[0]):
        for i in range(kh):
            for j in range(kw):
                row = dcols[(c * kh + i) * kw + j]
                for oh in range(oh_n):
                    dst = dx[c, oh * sh + i * dh, j * dw :]
                    src = row[oh * ow_n : (oh + 1) * ow_n]
                    if sw == 1:
                        for ow in range(ow_n):
                            dst[ow] += src[ow]
                    else:
                        for ow in range(ow_n):
                            dst[ow * sw] += src[ow]


# The GEMM path runs BLAS single-threaded inside numba's parallel loops (neurons.runtime keeps
# BLAS at one thread): one thread pool owns the cores, and no BLAS thread spin-waits next to a
# numba kernel, whatever the import order (issue 15: numpy first cost up to 1.8x).


@njit(parallel=True, cache=True)
def _gemm_fwd(xp, w2, kh, kw, sh, sw, dh, dw, oh_n, ow_n):  # pragma: no cover - numba
    """xp: (N, C, Hp, Wp), w2: (F, C*kh*kw) -> y: (N, F, OH, OW), cols: (N, C*kh*kw, OH*OW).

    Per sample: im2col, then one single-threaded GEMM (F, CK) @ (CK, P) straight into y[n].
    """
    n_n = xp.shape[0]
    f_n, ck = w2.shape
    p = oh_n * ow_n
    cols = np.empty((n_n, ck, p), dtype=xp.dtype)
    y = np.empty((n_n, f_n, p), dtype=xp.dtype)
    for n in prange(n_n):
        _im2col1(xp[n], cols[n], kh, kw, sh, sw, dh, dw, oh_n, ow_n)
        np.dot(w2, cols[n], y[n])
    return y.reshape(n_n, f_n, oh_n, ow_n), cols


@njit(parallel=True, cache=True)
def _gemm_act_fwd(xp, w2, b, relu, kh, kw, sh, sw, dh, dw, oh_n, ow_n):  # pragma: no cover
    """`_gemm_fwd` with the bias and (relu=True) ReLU applied to each sample's GEMM output
    while it is in cache. b: (F,). ReLU is z if z > 0 else z * 0 (NaN stays NaN)."""
    n_n = xp.shape[0]
    f_n, ck = w2.shape
    p = oh_n * ow_n
    zero = xp.dtype.type(0)
    cols = np.empty((n_n, ck, p), dtype=xp.dtype)
    y = np.empty((n_n, f_n, p), dtype=xp.dtype)
    for n in prange(n_n):
        _im2col1(xp[n], cols[n], kh, kw, sh, sw, dh, dw, oh_n, ow_n)
        yn = y[n]
        np.dot(w2, cols[n], yn)
        for f in range(f_n):
            row = yn[f]
            bf = b[f]
            if relu:
                for q in range(p):
                    v = row[q] + bf
                    row[q] = v if v > zero else v * zero
            else:
                for q in range(p):
                    row[q] += bf
    return y.reshape(n_n, f_n, oh_n, ow_n), cols


@njit(parallel=True, cache=True)
def _gemm_cols(xp, ck, kh, kw, sh, sw, dh, dw, oh_n, ow_n):  # pragma: no cover - numba
    """xp: (N, C, Hp, Wp) -> cols: (N, C*kh*kw, OH*OW) (im2col alone, for a weight gradient)."""
    n_n = xp.shape[0]
    cols = np.empty((n_n, ck, oh_n * ow_n), dtype=xp.dtype)
    for n in prange(n_n):
        _im2col1(xp[n], cols[n], kh, kw, sh, sw, dh, dw, oh_n, ow_n)
    return cols


@njit(parallel=True, cache=True)
def _gemm_dx(dy, w2, c_n, kh, kw, sh, sw, dh, dw, hp, wp):  # pragma: no cover - numba
    """dy: (N, F, OH, OW), w2: (F, C*kh*kw) -> dxp: (N, C, Hp, Wp); per sample one GEMM
    (CK, F) @ (F, P) into a column buffer, then col2im."""
    n_n, f_n, oh_n, ow_n = dy.shape
    ck = w2.shape[1]
    dy2 = dy.reshape(n_n, f_n, oh_n * ow_n)  # (N, F, P)
    w2t = w2.T  # (CK, F), Fortran-ordered view: BLAS reads it transposed, no copy
    dxp = np.zeros((n_n, c_n, hp, wp), dtype=dy.dtype)
    for n in prange(n_n):
        dcols = np.empty((ck, oh_n * ow_n), dtype=dy.dtype)
        np.dot(w2t, dy2[n], dcols)
        _col2im1(dcols, dxp[n], kh, kw, sh, sw, dh, dw, oh_n, ow_n)
    return dxp


# Weight-gradient partial sums: a fixed number of sample chunks (not one per thread), so the
# summation order and the result do not depend on the thread count.
_DW_CHUNKS = 8


@njit(parallel=True, cache=True)
def _gemm_dw(dy, cols, n_chunks):  # pragma: no cover - numba
    """dy: (N, F, OH, OW), cols: (N, CK, P) -> dw: (F, CK) = sum_n dy[n] @ cols[n].T."""
    n_n, f_n = dy.shape[0], dy.shape[1]
    ck, p = cols.shape[1], cols.shape[2]
    dy2 = dy.reshape(n_n, f_n, p)  # (N, F, P)
    k = min(n_chunks, n_n)
    part = np.zeros((k, f_n, ck), dtype=dy.dtype)
    for t in prange(k):
        for n in range(t * n_n // k, (t + 1) * n_n // k):
            part[t] += np.dot(dy2[n], cols[n].T)  # (F, P) @ (P, CK)
    gw = part[0].copy()
    for t in range(1, k):
        gw += part[t]
    return gw


@njit(parallel=True, cache=True, fastmath=_FM)
def _direct_fwd(xp, w, sh, sw, dh, dw, oh_n, ow_n):  # pragma: no cover - numba
    """xp: (N, C, Hp, Wp), w: (F, C, kh, kw) -> y: (N, F, OH, OW), no bias."""
    n_n, c_n = xp.shape[0], xp.shape[1]
    f_n, _, kh, kw = w.shape
    y = np.zeros((n_n, f_n, oh_n, ow_n), dtype=xp.dtype)
    for n in prange(n_n):
        for f in range(f_n):
            for c in range(c_n):
                for i in range(kh):
                    for j in range(kw):
                        wv = w[f, c, i, j]
                        for oh in range(oh_n):
                            src = xp[n, c, oh * sh + i * dh, j * dw :]
                            dst = y[n, f, oh]
                            if sw == 1:
                                for ow in range(ow_n):
                                    dst[ow] += wv * src[ow]
                            else:
                                for ow in range(ow_n):
                                    dst[ow] += wv * src[ow * sw]
    return y


@njit(parallel=True, cache=True, fastmath=_FM)
def _direct_dx(dy, w, sh, sw, dh, dw, hp, wp):  # pragma: no cover - numba
    """dy: (N, F, OH, OW), w: (F, C, kh, kw) -> dxp: (N, C, Hp, Wp) (padded input gradient)."""
    n_n, f_n, oh_n, ow_n = dy.shape
    c_n, kh, kw = w.shape[1], w.shape[2], w.shape[3]
    dxp = np.zeros((n_n, c_n, hp, wp), dtype=dy.dtype)
    for n in prange(n_n):
        for c in range(c_n):
            for f in range(f_n):
                for i in range(kh):
                    for j in range(kw):
                        wv = w[f, c, i, j]
                        for oh in range(oh_n):
                            src = dy[n, f, oh]
                            dst = dxp[n, c, oh * sh + i * dh, j * dw :]
                            if sw == 1:
                                for ow in range(ow_n):
                                    dst[ow] += wv * src[ow]
                            else:
                                for ow in range(ow_n):
                                    dst[ow * sw] += wv * src[ow]
    return dxp


@njit(parallel=True, cache=True, fastmath=_FM)
def _direct_dw(xp, dy, kh, kw, sh, sw, dh, dw, zero):  # pragma: no cover - numba
    """xp: (N, C, Hp, Wp), dy: (N, F, OH, OW) -> dw: (F, C, kh, kw); parallel over weights."""
    n_n, c_n = xp.shape[0], xp.shape[1]
    f_n, oh_n, ow_n = dy.shape[1], dy.shape[2], dy.shape[3]
    gw = np.empty((f_n, c_n, kh, kw), dtype=dy.dtype)
    for t in prange(f_n * c_n * kh * kw):
        j = t % kw
        i = (t // kw) % kh
        c = (t // (kw * kh)) % c_n
        f = t // (kw * kh * c_n)
        acc = zero
        for n in range(n_n):
            for oh in range(oh_n):
                src = xp[n, c, oh * sh + i * dh, j * dw :]
                g = dy[n, f, oh]
                if sw == 1:
                    for ow in range(ow_n):
                        acc += g[ow] * src[ow]
                else:
                    for ow in range(ow_n):
                        acc += g[ow] * src[ow * sw]
        gw[f, c, i, j] = acc
    return gw


@njit(cache=True)
def _to_wide(dy, wp):  # pragma: no cover - numba
    """dy: (N, F, OH, OW) -> g: (N, F, L), L = (OH-1)*Wp + OW, on the padded-width grid
    q = oh*Wp + ow; the Wp - OW columns past OW of each row are zero."""
    n_n, f_n, oh_n, ow_n = dy.shape
    g = np.zeros((n_n, f_n, (oh_n - 1) * wp + ow_n), dtype=dy.dtype)
    for n in range(n_n):
        for f in range(f_n):
            for oh in range(oh_n):
                dst = g[n, f, oh * wp :]
                src = dy[n, f, oh]
                for ow in range(ow_n):
                    dst[ow] = src[ow]
    return g


@njit(parallel=True, cache=True, fastmath=_FM)
def _direct1_fwd(xp, w, dh, dw, oh_n, ow_n):  # pragma: no cover - numba
    """Stride 1: xp: (N, C, Hp, Wp), w: (F, C, kh, kw) -> y: (N, F, OH, OW), no bias.

    Computed on the flat padded-width grid q = oh*Wp + ow (columns past OW are junk, dropped
    at the end), so each tap is one contiguous AXPY of (OH-1)*Wp + OW values: long, vectorised
    runs instead of one short run per output row.
    """
    n_n, c_n, hp, wp = xp.shape
    f_n, _, kh, kw = w.shape
    ln = (oh_n - 1) * wp + ow_n
    xf = xp.reshape(n_n, c_n, hp * wp)  # (N, C, Hp*Wp)
    y = np.empty((n_n, f_n, oh_n, ow_n), dtype=xp.dtype)
    for n in prange(n_n):
        acc = np.empty(ln, dtype=xp.dtype)
        for f in range(f_n):
            acc[:] = 0
            for c in range(c_n):
                for i in range(kh):
                    for j in range(kw):
                        wv = w[f, c, i, j]
                        src = xf[n, c, i * dh * wp + j * dw :]  # a slice: no index wraparound
                        for q in range(ln):
                            acc[q] += wv * src[q]
            for oh in range(oh_n):
                row = acc[oh * wp :]
                dst = y[n, f, oh]
                for ow in range(ow_n):
                    dst[ow] = row[ow]
    return y


@njit(parallel=True, cache=True, fastmath=_FM)
def _direct1_dx(dy, w, dh, dw, hp, wp):  # pragma: no cover - numba
    """Stride 1: dy: (N, F, OH, OW), w: (F, C, kh, kw) -> dxp: (N, C, Hp, Wp), on the same
    padded-width grid as `_direct1_fwd` (dy's junk columns are zero, so they add nothing)."""
    n_n, f_n, oh_n, ow_n = dy.shape
    c_n, kh, kw = w.shape[1], w.shape[2], w.shape[3]
    ln = (oh_n - 1) * wp + ow_n
    dxp = np.zeros((n_n, c_n, hp * wp), dtype=dy.dtype)  # (N, C, Hp*Wp)
    for n in prange(n_n):
        g = np.zeros(ln, dtype=dy.dtype)
        for f in range(f_n):
            for oh in range(oh_n):
                dst = g[oh * wp :]
                src = dy[n, f, oh]
                for ow in range(ow_n):
                    dst[ow] = src[ow]
            for c in range(c_n):
                for i in range(kh):
                    for j in range(kw):
                        wv = w[f, c, i, j]
                        out = dxp[n, c, i * dh * wp + j * dw :]
                        for q in range(ln):
                            out[q] += wv * g[q]
    return dxp.reshape(n_n, c_n, hp, wp)


@njit(parallel=True, cache=True, fastmath=_FM)
def _direct1_dw(xp, dy, kh, kw, dh, dw, zero):  # pragma: no cover - numba
    """Stride 1: xp: (N, C, Hp, Wp), dy: (N, F, OH, OW) -> dw: (F, C, kh, kw); one long dot
    product per sample and weight on the padded-width grid; parallel over weights (the sum
    order does not depend on the thread count)."""
    n_n, c_n, hp, wp = xp.shape
    f_n = dy.shape[1]
    g = _to_wide(dy, wp)  # (N, F, L)
    ln = g.shape[2]
    xf = xp.reshape(n_n, c_n, hp * wp)  # (N, C, Hp*Wp)
    gw = np.empty((f_n, c_n, kh, kw), dtype=dy.dtype)
    for t in prange(f_n * c_n * kh * kw):
        j = t % kw
        i = (t // kw) % kh
        c = (t // (kw * kh)) % c_n
        f = t // (kw * kh * c_n)
        off = i * dh * wp + j * dw
        acc = zero
        for n in range(n_n):
            src = xf[n, c, off:]
            gg = g[n, f]
            for q in range(ln):
                acc += gg[q] * src[q]
        gw[f, c, i, j] = acc
    return gw


@njit(cache=True)
def _pad1(x, xp, ph, pw):  # pragma: no cover - numba
    """One sample: x: (C, H, W) -> xp: (C, H + 2ph, W + 2pw) in place (border zeroed)."""
    xp[:] = 0
    h, w = x.shape[1], x.shape[2]
    for c in range(x.shape[0]):
        for r in range(h):
            dst = xp[c, ph + r, pw:]
            src = x[c, r]
            for q in range(w):
                dst[q] = src[q]


@njit(parallel=True, cache=True, fastmath=_FM)
def _fused1_fwd(x, w, b, ph, pw, dh, dw, oh_n, ow_n, relu):  # pragma: no cover - numba
    """Stride 1, one pass per sample: zero padding, the taps of `_direct1_fwd`, bias and
    (relu=True) ReLU. x: (N, C, H, W), w: (F, C, kh, kw), b: (F,) -> y: (N, F, OH, OW) and
    the padded input xp: (N, C, Hp, Wp) (the weight gradient reads it).

    ReLU is z if z > 0 else z * 0 (NaN stays NaN, like `activations.relu_forward`).
    """
    n_n, c_n, h, wd = x.shape
    f_n, _, kh, kw = w.shape
    hp, wp = h + 2 * ph, wd + 2 * pw
    ln = (oh_n - 1) * wp + ow_n
    zero = x.dtype.type(0)
    y = np.empty((n_n, f_n, oh_n, ow_n), dtype=x.dtype)
    xp = np.empty((n_n, c_n, hp, wp), dtype=x.dtype)  # kept for the backward pass
    for n in prange(n_n):
        _pad1(x[n], xp[n], ph, pw)
        xf = xp[n].reshape(c_n, hp * wp)  # (C, Hp*Wp)
        acc = np.empty(ln, dtype=x.dtype)
        for f in range(f_n):
            acc[:] = b[f]
            for c in range(c_n):
                for i in range(kh):
                    for j in range(kw):
                        wv = w[f, c, i, j]
                        src = xf[c, i * dh * wp + j * dw :]
                        for q in range(ln):
                            acc[q] += wv * src[q]
            for oh in range(oh_n):
                row = acc[oh * wp :]
                dst = y[n, f, oh]
                if relu:  # two loops, not a test per value: each one vectorises
                    for ow in range(ow_n):
                        v = row[ow]
                        dst[ow] = v if v > zero else v * zero
                else:
                    for ow in range(ow_n):
                        dst[ow] = row[ow]
    return y, xp


# --------------------------------------------------------------------------------------------
# strategy-dispatching cores (no bias); output sizes passed explicitly so deconv can reuse them
# --------------------------------------------------------------------------------------------


def _use_direct(taps: int) -> bool:
    """taps = F*C*kh*kw, the weight count (symmetric in F and C, so deconv dispatches alike)."""
    return taps <= DIRECT_MAX_TAPS


def _core_fwd(
    xp: Array, w: Array, s: Pair, d: Pair, oh: int, ow: int
) -> tuple[Array, Array | None]:
    """xp: (N, C, Hp, Wp), w: (F, C, kh, kw) -> (y: (N, F, OH, OW), cols: (N, CK, P) or None)."""
    f, c, kh, kw = w.shape
    if _use_direct(w.size):
        if s == (1, 1):
            return _direct1_fwd(xp, w, d[0], d[1], oh, ow), None
        return _direct_fwd(xp, w, s[0], s[1], d[0], d[1], oh, ow), None
    y, cols = _gemm_fwd(xp, w.reshape(f, c * kh * kw), kh, kw, *s, *d, oh, ow)  # cols (N, CK, P)
    return y, cols


def _core_dx(dy: Array, w: Array, s: Pair, d: Pair, hp: int, wp: int) -> Array:
    """dy: (N, F, OH, OW), w: (F, C, kh, kw) -> dxp: (N, C, Hp, Wp) (gradient of padded input)."""
    n, f, oh, ow = dy.shape
    _, c, kh, kw = w.shape
    if _use_direct(w.size):
        if s == (1, 1):
            return _direct1_dx(dy, w, d[0], d[1], hp, wp)
        return _direct_dx(dy, w, s[0], s[1], d[0], d[1], hp, wp)
    return _gemm_dx(dy, w.reshape(f, c * kh * kw), c, kh, kw, *s, *d, hp, wp)


def _core_dw(
    xp: Array | None, dy: Array, cols: Array | None, kshape: Shape, s: Pair, d: Pair
) -> Array:
    """xp: (N, C, Hp, Wp) or cols: (N, C*kh*kw, OH*OW), dy: (N, F, OH, OW) -> dw: (F, C, kh, kw)."""
    n, f, oh, ow = dy.shape
    kh, kw = kshape
    c = xp.shape[1] if cols is None else cols.shape[1] // (kh * kw)
    if cols is None and _use_direct(f * c * kh * kw):
        zero = xp.dtype.type(0)
        if s == (1, 1):
            return _direct1_dw(xp, dy, kh, kw, d[0], d[1], zero)
        return _direct_dw(xp, dy, kh, kw, s[0], s[1], d[0], d[1], zero)
    if cols is None:
        cols = _gemm_cols(xp, c * kh * kw, kh, kw, *s, *d, oh, ow)  # (N, CK, P)
    gw = _gemm_dw(dy, cols, _DW_CHUNKS)  # (F, CK)
    return gw.reshape(f, c, kh, kw)


# --------------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------------


def conv2d_forward(
    x: Array,
    w: Array,
    b: Array | None,
    stride: Pair = (1, 1),
    padding: Pair = (0, 0),
    dilation: Pair = (1, 1),
) -> tuple[Array, Cache]:
    """2-D cross-correlation with zero padding (PyTorch Conv2d).

    x: (N, C, H, W), w: (F, C, kh, kw), b: (F,) or None -> y: (N, F, OH, OW),
    OH = floor((H + 2p - d(kh-1) - 1) / s) + 1 (likewise OW). Output dtype = x.dtype.
    """
    _check_inputs(x, w, b, 1, "conv2d")
    s, p, d = _pair(stride), _pair(padding), _pair(dilation)
    oh, ow = conv2d_output_shape(x.shape[2:], w.shape[2:], s, p, d)
    w = np.ascontiguousarray(w)
    xp = _pad(x, p[0], p[1])  # (N, C, H + 2ph, W + 2pw)
    y, cols = _core_fwd(xp, w, s, d, oh, ow)
    if b is not None:
        y += b[None, :, None, None]
    # im2col already holds every input value dw needs; keep xp only for the direct path
    cache = (
        xp if cols is None else None,
        xp.shape,
        cols,
        w,
        b is not None,
        x.shape,
        y.shape,
        s,
        p,
        d,
    )
    return y, cache


def conv2d_backward(dy: Array, cache: Cache) -> tuple[Array, Array, Array | None]:
    """dy: (N, F, OH, OW) -> dx: (N, C, H, W), dw: (F, C, kh, kw), db: (F,) or None."""
    xp, xpshape, cols, w, has_bias, xshape, yshape, s, p, d = cache
    dy = np.ascontiguousarray(dy.reshape(yshape), dtype=w.dtype)  # a flat dy back to 4-D
    h, wd = xshape[2], xshape[3]
    dxp = _core_dx(dy, w, s, d, xpshape[2], xpshape[3])  # (N, C, H + 2ph, W + 2pw)
    dx = dxp if p == (0, 0) else np.ascontiguousarray(dxp[:, :, p[0] : p[0] + h, p[1] : p[1] + wd])
    dw = _core_dw(xp, dy, cols, w.shape[2:], s, d)
    db = dy.sum(axis=(0, 2, 3)) if has_bias else None
    return dx, dw, db


class FusedCache:
    """What `conv2d_act_backward` needs: conv2d_backward's cache, the activated output y and
    whether the activation is a ReLU (its mask is y > 0)."""

    __slots__ = ("conv", "y", "relu")

    def __init__(self, conv: Cache, y: Array, relu: bool) -> None:
        self.conv, self.y, self.relu = conv, y, relu


def fusable(w: Array, stride: int | Pair, activation: str) -> bool:
    """Whether `conv2d_act_forward` takes this conv: a ReLU or linear activation, and either
    the im2col path or the direct path at stride 1."""
    return activation in ("relu", "linear") and (not _use_direct(w.size) or _pair(stride) == (1, 1))


def conv2d_act_forward(
    x: Array,
    w: Array,
    b: Array | None,
    stride: Pair,
    padding: Pair,
    dilation: Pair,
    activation: str,
) -> tuple[Array, FusedCache]:
    """act(conv2d(x, w, b)) with the bias and activation applied inside the conv kernel, for
    `fusable` convs (activation relu or linear).

    x: (N, C, H, W), w: (F, C, kh, kw), b: (F,) or None -> y: (N, F, OH, OW); the same values
    as conv2d_forward followed by the activation, without the pre-activation array, the mask
    and the separate bias pass (the backward pass reads the mask off y > 0).
    """
    _check_inputs(x, w, b, 1, "conv2d")
    s, p, d = _pair(stride), _pair(padding), _pair(dilation)
    if not fusable(w, s, activation):
        raise ValueError(f"conv2d_act_forward: not fusable: w{w.shape}, stride {s}, {activation}")
    oh, ow = conv2d_output_shape(x.shape[2:], w.shape[2:], s, p, d)
    x, w = np.ascontiguousarray(x), np.ascontiguousarray(w)
    bias = np.zeros(w.shape[0], dtype=x.dtype) if b is None else np.ascontiguousarray(b)
    relu = activation == "relu"
    if _use_direct(w.size):
        y, xp = _fused1_fwd(x, w, bias, p[0], p[1], d[0], d[1], oh, ow, relu)
        cols = None
    else:
        f, c, kh, kw = w.shape
        xp = _pad(x, p[0], p[1])  # (N, C, H + 2ph, W + 2pw)
        w2 = w.reshape(f, c * kh * kw)
        y, cols = _gemm_act_fwd(xp, w2, bias, relu, kh, kw, *s, *d, oh, ow)  # cols (N, CK, P)
    has_bias = b is not None
    inner = (xp if cols is None else None, xp.shape, cols, w, has_bias, x.shape, y.shape, s, p, d)
    return y, FusedCache(inner, y, relu)


def conv2d_act_backward(dy: Array, cache: FusedCache) -> tuple[Array, Array, Array | None]:
    """dy: (N, F, OH, OW) (the gradient of the activated output) -> dx, dw, db (or None).

    The ReLU mask (y > 0), then conv2d_backward's kernels (a fused direct backward measured
    slower than these vectorised passes).
    """
    dy = dy.reshape(cache.y.shape)  # a flat dy back to 4-D
    dz = dy * (cache.y > 0) if cache.relu else dy
    return conv2d_backward(dz, cache.conv)


def deconv2d_forward(
    x: Array,
    w: Array,
    b: Array | None,
    stride: Pair = (1, 1),
    padding: Pair = (0, 0),
    dilation: Pair = (1, 1),
    output_padding: Pair = (0, 0),
) -> tuple[Array, Cache]:
    """Transposed 2-D convolution (PyTorch ConvTranspose2d): the adjoint of conv2d's dx.

    x: (N, C, H, W), w: (C, F, kh, kw), b: (F,) or None -> y: (N, F, OH, OW),
    OH = (H-1)s - 2p + d(kh-1) + output_padding + 1 (likewise OW). Output dtype = x.dtype.
    """
    _check_inputs(x, w, b, 0, "deconv2d")
    s, p, d = _pair(stride), _pair(padding), _pair(dilation)
    op = _pair(output_padding)
    oh, ow = deconv2d_output_shape(x.shape[2:], w.shape[2:], s, p, d, op)
    w = np.ascontiguousarray(w)
    x = np.ascontiguousarray(x)
    # y is conv2d's input gradient with w read as a (F_conv=C, C_conv=F) conv weight.
    yp = _core_dx(x, w, s, d, oh + 2 * p[0], ow + 2 * p[1])  # (N, F, OH + 2ph, OW + 2pw)
    y = yp if p == (0, 0) else np.ascontiguousarray(yp[:, :, p[0] : p[0] + oh, p[1] : p[1] + ow])
    if b is not None:
        y += b[None, :, None, None]
    cache = (x, w, b is not None, y.shape, s, p, d)
    return y, cache


def deconv2d_backward(dy: Array, cache: Cache) -> tuple[Array, Array, Array | None]:
    """dy: (N, F, OH, OW) -> dx: (N, C, H, W), dw: (C, F, kh, kw), db: (F,) or None."""
    x, w, has_bias, yshape, s, p, d = cache
    dy = np.ascontiguousarray(dy.reshape(yshape), dtype=x.dtype)  # a flat dy back to 4-D
    h, wd = x.shape[2], x.shape[3]
    dyp = _pad(dy, p[0], p[1])  # (N, F, OH + 2ph, OW + 2pw)
    dx, cols = _core_fwd(dyp, w, s, d, h, wd)  # conv2d of dy with w: (N, C, H, W)
    dw = _core_dw(dyp, x, cols, w.shape[2:], s, d)  # (C, F, kh, kw)
    db = dy.sum(axis=(0, 2, 3)) if has_bias else None
    return dx, dw, db
