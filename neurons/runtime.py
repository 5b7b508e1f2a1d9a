"""Process-level runtime settings for training: thread counts and the C allocator.

Called once where a run or a benchmark starts (never on import, never by kernels).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any


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


_job_default: tuple[int, str] | None = None


def cores() -> int:
    """Cores this process may run on (its CPU affinity: a SLURM allocation, `taskset`)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # no sched_getaffinity (macOS)
        return os.cpu_count() or 1


def set_job_default(threads: int | None, rule: str | None = None) -> None:
    """Thread count used when `train.threads` is null (set per job by a parallel launcher)."""
    global _job_default
    _job_default = (int(threads), rule or f"{threads} threads") if threads else None


def set_threads(threads: int | None) -> dict[str, int | str]:
    """Set numba's thread count (None = the job default, else all cores); BLAS runs on one.

    One thread pool owns the cores: numba's. BLAS (numpy's and scipy's OpenBLAS, the latter
    called by numba's `np.dot`) is held at one thread; the conv kernels split their GEMMs into
    single-threaded BLAS calls (one per sample) inside numba's parallel loops. A dense layer is
    one single-threaded BLAS call: split in two row blocks at batch 64 its products took 1.5x
    the CPU time of one call, which leaves at most ~1.3x to gain on two threads. An idle OpenBLAS
    pool spin-waits next to numba's threads unless OPENBLAS_THREAD_TIMEOUT was set before numpy
    loaded it, so letting BLAS run threaded made speed depend on the import order (issue 15).
    Returns what is in force and the rule that chose it (recorded in summary.json).
    """
    import numba
    from threadpoolctl import threadpool_info

    from neurons.numba_cache import install_compile_lock

    install_compile_lock()
    if threads:
        rule = "train.threads"
    elif _job_default is not None:
        threads, rule = _job_default
    else:
        threads = cores()
        rule = f"all {threads} cores"
    n = min(threads, numba.config.NUMBA_NUM_THREADS)
    numba.set_num_threads(n)
    hold_blas()
    blas = [i.get("num_threads", 0) for i in threadpool_info() if i.get("user_api") == "blas"]
    return {"numba": numba.get_num_threads(), "blas": max(blas) if blas else 0, "rule": rule}


def hold_blas() -> None:
    """Hold every BLAS (numpy's and scipy's OpenBLAS) at one thread, as `set_threads` does:
    for entry points that run the kernels without `configure` (a loaded model's predictions)."""
    import scipy.linalg.cython_blas  # noqa: F401  (load scipy's OpenBLAS so it is limited too)
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1, user_api="blas")


def configure(threads: int | None) -> dict[str, int | str]:
    """Threads plus allocator tuning (and numba's compile lock); returns the threads in force."""
    tune_allocator()
    return set_threads(threads)


@contextmanager
def signals_held(signals: Sequence[int] = (signal.SIGTERM, signal.SIGINT)) -> Iterator[None]:
    """Hold `signals` back inside the block and deliver them when it ends (to whatever handler
    is then in force): for writes a signal must not cut in half (final records, a tracking
    store's transaction). The calling thread blocks them (`pthread_sigmask`), and in the main
    thread their Python handlers are swapped for a recorder too: a process signal may be taken
    by any other thread (TensorBoard's and MLflow's writers run some), and its Python handler
    would then still run in the main thread in the middle of the block."""
    import threading

    held: list[int] = []
    swapped: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for s in signals:
            old = signal.getsignal(s)
            if old is not None:
                swapped[s] = old
                signal.signal(s, lambda signum, frame: held.append(signum))
    try:
        signal.pthread_sigmask(signal.SIG_BLOCK, signals)
        masked = True
    except (ValueError, OSError, AttributeError):
        masked = False
    try:
        yield
    finally:
        if masked:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, signals)  # pending ones reach the recorder
        for s, old in swapped.items():
            signal.signal(s, old)
        for s in dict.fromkeys(held):  # once each, to the handler now in force
            signal.raise_signal(s)
