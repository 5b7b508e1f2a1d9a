"""Process-level runtime settings for training: thread counts and the C allocator.

Called once where a run or a benchmark starts (never on import, never by kernels).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os


def tune_allocator() -> bool:
    """Keep freed large buffers in glibc's heap instead of returning them to the OS.

    The conv kernels allocate ~MB-sized column buffers every step; by default glibc mmaps and
    unmaps each one, and the page faults cost ~25% of a conv training step (measured on the
    benchmark workload b). Returns False where there is no glibc (the setting is then skipped).
    """
    name = ctypes.util.find_library("c")
    if not name or "libc" not in name:
        return False
    try:
        libc = ctypes.CDLL(name)
        m_trim_threshold, m_mmap_threshold = -1, -3  # from <malloc.h>
        ok = libc.mallopt(m_mmap_threshold, 32 * 1024 * 1024)
        ok &= libc.mallopt(m_trim_threshold, 256 * 1024 * 1024)
        return bool(ok)
    except (OSError, AttributeError):
        return False


def set_threads(threads: int | None) -> dict[str, int]:
    """Set numba's and BLAS's thread counts (None = all cores); return what is in force."""
    import numba
    from threadpoolctl import threadpool_info, threadpool_limits

    n = threads or os.cpu_count() or 1
    n = min(n, numba.config.NUMBA_NUM_THREADS)
    numba.set_num_threads(n)
    threadpool_limits(limits=n)
    blas = [i.get("num_threads", 0) for i in threadpool_info() if i.get("user_api") == "blas"]
    return {"numba": numba.get_num_threads(), "blas": max(blas) if blas else 0}


def configure(threads: int | None) -> dict[str, int]:
    """Threads plus allocator tuning; returns the thread counts in force."""
    tune_allocator()
    return set_threads(threads)
