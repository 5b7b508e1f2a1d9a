"""Matrix products split over numba's threads, each piece one single-threaded BLAS call.

`neurons.runtime` holds BLAS at one thread so that numba's pool alone owns the cores; these
keep large dense products parallel under that rule. Small products go straight to numpy. Not
a layer and no state: the chunk counts are fixed, so results do not depend on the thread count.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from neurons.kernels import Array

# Below this many multiply-adds a product stays one numpy (BLAS) call: a parallel launch costs
# a few microseconds, which small networks (Iris, batch 1) cannot afford. Above it the split is
# taken at any thread count (one thread included), so a run's sums do not depend on it.
PARALLEL_MIN_MACS = 1 << 18
_CHUNKS = 4  # fixed pieces per product (not one per thread): the same sums at any thread count


@njit(parallel=True, cache=True)
def _mm_rows(a, b, k):  # pragma: no cover - numba
    """a: (M, K), b: (K, N) -> a @ b: (M, N), k blocks of rows, one BLAS call each."""
    m = a.shape[0]
    out = np.empty((m, b.shape[1]), dtype=a.dtype)
    for t in prange(k):
        r0, r1 = t * m // k, (t + 1) * m // k
        np.dot(a[r0:r1], b, out[r0:r1])
    return out


@njit(parallel=True, cache=True)
def _mm_tn(a, b, k):  # pragma: no cover - numba
    """a: (M, K), b: (M, N) -> a.T @ b: (K, N), k blocks of the shared M, summed in order."""
    m = a.shape[0]
    part = np.empty((k, a.shape[1], b.shape[1]), dtype=a.dtype)
    for t in prange(k):
        r0, r1 = t * m // k, (t + 1) * m // k
        np.dot(a[r0:r1].T, b[r0:r1], part[t])
    out = part[0].copy()
    for t in range(1, k):
        out += part[t]
    return out


def _parallel(a: Array, b: Array, macs: int, rows: int) -> bool:
    return (
        macs >= PARALLEL_MIN_MACS
        and rows >= _CHUNKS
        and a.dtype == b.dtype
        and a.dtype in (np.float32, np.float64)
        and (a.flags.c_contiguous or a.flags.f_contiguous)
        and (b.flags.c_contiguous or b.flags.f_contiguous)
    )


def matmul(a: Array, b: Array) -> Array:
    """a: (M, K) @ b: (K, N) -> (M, N); rows split over the threads when the product is large."""
    if a.ndim == 2 and b.ndim == 2 and _parallel(a, b, a.size * b.shape[1], a.shape[0]):
        return _mm_rows(np.ascontiguousarray(a), b, _CHUNKS)
    return a @ b


def matmul_tn(a: Array, b: Array) -> Array:
    """a: (M, K), b: (M, N) -> a.T @ b: (K, N), the sum over M split when the product is large."""
    if a.ndim == 2 and b.ndim == 2 and _parallel(a, b, a.size * b.shape[1], a.shape[0]):
        return _mm_tn(np.ascontiguousarray(a), np.ascontiguousarray(b), _CHUNKS)
    return a.T @ b
