"""Float64 central-difference gradient checking with a random upstream gradient.

`check_grad` compares an analytic backward against finite differences of <f(x), g> where g is a
random upstream gradient (a `.sum()` upstream would hide transposed or mis-summed gradients).
It is used by the test-suite; it is not part of the training path.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np


class GradCheckError(AssertionError):
    """Raised when an analytic gradient disagrees with finite differences."""


def numerical_grad(
    f: Callable[[], np.ndarray], x: np.ndarray, upstream: np.ndarray, eps: float = 1e-6
) -> np.ndarray:
    """d<f(), upstream>/dx by central differences; `f` reads `x` (mutated in place and restored)."""
    grad = np.zeros_like(x, dtype=np.float64)
    it = np.nditer(x, flags=["multi_index"])
    for _ in it:
        idx = it.multi_index
        old = x[idx]
        x[idx] = old + eps
        fp = float(np.sum(np.asarray(f(), dtype=np.float64) * upstream))
        x[idx] = old - eps
        fm = float(np.sum(np.asarray(f(), dtype=np.float64) * upstream))
        x[idx] = old
        grad[idx] = (fp - fm) / (2 * eps)
    return grad


def check_grad(
    name: str,
    forward: Callable[[], np.ndarray],
    backward: Callable[[np.ndarray], Mapping[str, np.ndarray]],
    inputs: Mapping[str, np.ndarray],
    rng: np.random.Generator,
    eps: float = 1e-6,
    rtol: float = 1e-5,
    atol: float = 1e-6,
) -> None:
    """Check every analytic gradient returned by `backward` against central differences.

    Args:
        name: what is being checked (used in the failure message).
        forward: computes the output from the arrays in `inputs` (which it must read, not copy).
        backward: given the upstream gradient (same shape as the output), returns a mapping with an
            analytic gradient for each name in `inputs` (a name may be absent only if it is
            deliberately not differentiated).
        inputs: float64 arrays the output depends on; mutated in place during the check.
        rng: source of the random upstream gradient.
    Raises:
        GradCheckError naming the op, the input, the worst index, expected and received values.
    """
    out = np.asarray(forward())
    upstream = rng.standard_normal(out.shape)
    analytic = backward(upstream.copy())
    for key, x in inputs.items():
        if x.dtype != np.float64:
            raise TypeError(f"{name}: gradient checks run in float64, input {key!r} is {x.dtype}")
        if key not in analytic:
            raise GradCheckError(f"{name}: backward returned no gradient for input {key!r}")
        got = np.asarray(analytic[key], dtype=np.float64)
        if got.shape != x.shape:
            raise GradCheckError(
                f"{name}: gradient of {key!r} has shape {got.shape}, expected {x.shape}"
            )
        want = numerical_grad(forward, x, upstream, eps)
        err = np.abs(got - want)
        scale = max(1.0, float(np.abs(want).max(initial=0.0)))
        bad = err > rtol * np.abs(want) + atol * scale
        if bad.any():
            idx = np.unravel_index(int(np.argmax(err)), err.shape)
            rel = err[idx] / max(abs(want[idx]), abs(got[idx]), 1e-12)
            raise GradCheckError(
                f"{name}: d/d{key} mismatch at index {tuple(int(i) for i in idx)}: "
                f"finite differences {want[idx]:.8g}, backward {got[idx]:.8g} "
                f"(relative error {rel:.3g}; {int(bad.sum())} of {bad.size} entries off)"
            )
