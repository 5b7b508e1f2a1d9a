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
