"""A file lock around numba compilation, so concurrent jobs share the on-disk cache safely.

numba's `cache=True` keeps one index file per kernel mapping signatures to data files. Two
processes compiling different signatures of one kernel at once can each pick the same data-file
number, and the index can end up pointing at the other signature's machine code; two processes
compiling the same signature both pay for it (a recompilation storm when a parallel sweep starts
cold). `install_compile_lock()` makes each process take an exclusive `flock` on a lock file in
the kernel's cache directory around "load from the cache or compile and save": the first job
compiles, the others wait and then load its result. It does not change what numba compiles.
"""

from __future__ import annotations

import fcntl
import functools
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

LOCK_NAME = "neurons-numba-compile.lock"
_state = threading.local()
_installed = False


def _lock_path(dispatcher: Any) -> Path | None:
    cache = getattr(dispatcher, "_cache", None)
    path = getattr(cache, "cache_path", None)
    return Path(path) / LOCK_NAME if path else None


def _locked(compile_fn: Callable) -> Callable:
    @functools.wraps(compile_fn)
    def compile(self: Any, sig: Any) -> Any:
        if getattr(_state, "depth", 0) or _in_memory(self, sig):
            return compile_fn(self, sig)  # nested compile, or already in memory: no lock
        path = _lock_path(self)
        fd = None
        if path is not None:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
                fcntl.flock(fd, fcntl.LOCK_EX)
            except OSError:  # read-only or lock-less file system: numba's own behaviour
                if fd is not None:
                    os.close(fd)
                fd = None
        _state.depth = getattr(_state, "depth", 0) + 1
        try:
            return compile_fn(self, sig)
        finally:
            _state.depth -= 1
            if fd is not None:
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)

    return compile


def _in_memory(dispatcher: Any, sig: Any) -> bool:
    try:
        from numba.core import sigutils

        args, _ = sigutils.normalize_signature(sig)
        return tuple(args) in dispatcher.overloads
    except Exception:  # an unusual signature: let numba handle it under the lock
        return False


def install_compile_lock() -> bool:
    """Wrap numba's CPU dispatcher `compile` with the inter-process lock (idempotent).

    Returns False when this numba has no such method (then numba's own behaviour stands).
    """
    global _installed
    if _installed:
        return True
    try:
        from numba.core.dispatcher import Dispatcher
    except ImportError:
        return False
    fn = getattr(Dispatcher, "compile", None)
    if fn is None:
        return False
    Dispatcher.compile = _locked(fn)
    _installed = True
    return True
