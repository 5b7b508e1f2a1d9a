"""Pure array kernels: forward -> (out, cache) and backward(dout, cache) -> grads, numpy/numba only.

No classes, no config, no hidden randomness (an `np.random.Generator` is passed in where needed).
Every fast kernel has a slow, obvious twin in `neurons.kernels.naive` used by the tests.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

Array = npt.NDArray[np.floating]
Shape = tuple[int, ...]
Cache = Any


def pair(
    v: int | tuple[int, int] | list[int], what: str = "value", error: type[Exception] = ValueError
) -> tuple[int, int]:
    """An int or a 2-sequence as (int, int), e.g. a kernel size; `error` names `what` if not."""
    if isinstance(v, int | np.integer):
        return int(v), int(v)
    t = tuple(int(i) for i in v)
    if len(t) != 2:
        raise error(f"{what}: expected an int or a pair of ints, found {v!r}")
    return t  # type: ignore[return-value]
