"""Where a training step's time goes, per layer, forward and backward (`debug=profile`).

`profile_steps` runs a few real `train_step`s with timers wrapped around every layer's
`forward`/`backward` (instance attributes, removed afterwards), the loss and the optimizer step.
It leaves the run untouched: parameters and buffers are restored, the optimizer is a copy and the
rng is a private one. It measures; it does not train, and it knows nothing of Hydra or files.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from neurons.graph import Network
from neurons.kernels import Array
from neurons.train import TrainConfig, train_step


@contextmanager
def _timed(obj: Any, name: str, into: list[float]) -> Iterator[None]:
    """Replace `obj.name` by a wrapper adding each call's seconds to `into[0]`."""
    inner: Callable[..., Any] = getattr(obj, name)
    had_own = name in vars(obj)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return inner(*args, **kwargs)
        finally:
            into[0] += time.perf_counter() - t0

    setattr(obj, name, wrapper)
    try:
        yield
    finally:
        if had_own:
            setattr(obj, name, inner)
        else:
            delattr(obj, name)


def profile_steps(
    net: Network,
    objective: Any,
    optimizer: Any,
    x: Array,
    y: Array,
    cfg: TrainConfig,
    *,
    steps: int = 5,
    warmup: int = 1,
) -> list[dict[str, Any]]:
    """Time `steps` training steps on the first batch of (x, y), after `warmup` untimed ones.

    Returns rows (per layer, then `loss`, `optimizer`, `other` and `step`) with the mean
    milliseconds per step: `forward_ms`, `backward_ms` (NaN where a row has no such phase),
    `total_ms`, and `share` of the whole step. `other` is the graph's own work between layers
    (skips, merges, loops, the output head, the tape).
    """
    if steps < 1:
        raise ValueError(f"debug.profile_steps: expected an integer >= 1, found {steps!r}")
    xb = x[: cfg.batch_size].astype(net.dtype, copy=False)
    yb = y[: cfg.batch_size].astype(net.dtype, copy=False)
    saved = net.state_dict()
    opt = copy.deepcopy(optimizer)  # its own parameter copies and state: the run's stay as they are
    rng = np.random.default_rng(0)
    for _ in range(warmup):  # numba compilation and first-touch allocations stay out of the table
        train_step(net, objective, opt, xb, yb, rng, cfg)
    layers = list(net.unique_layers())
    fwd = {id(ly): [0.0] for _, ly in layers}
    bwd = {id(ly): [0.0] for _, ly in layers}
    total_f, total_b, loss_t, opt_t, step_t = [0.0], [0.0], [0.0], [0.0], [0.0]
    try:
        with _stack(
            [(ly, "forward", fwd[id(ly)]) for _, ly in layers]
            + [(ly, "backward", bwd[id(ly)]) for _, ly in layers]
            + [(net, "forward", total_f), (net, "backward", total_b), (opt, "step", opt_t)]
            + [(objective, n, loss_t) for n in ("loss_grad_logits", "loss_grad")]
        ):
            for _ in range(steps):
                t0 = time.perf_counter()
                train_step(net, objective, opt, xb, yb, rng, cfg)
                step_t[0] += time.perf_counter() - t0
    finally:
        net.load_state_dict(saved)
        net.zero_grad()
    step = step_t[0] / steps

    def row(name: str, what: str, f: float, b: float, alone: float = 0.0) -> dict[str, Any]:
        ms_f, ms_b = 1e3 * f / steps, 1e3 * b / steps
        total = np.nansum([ms_f, ms_b]) + 1e3 * alone / steps
        share = total / (1e3 * step) if step > 0 else float("nan")
        return {
            "layer": name,
            "what": what,
            "forward_ms": ms_f,
            "backward_ms": ms_b,
            "total_ms": float(total),
            "share": float(share),
        }

    nan = float("nan")

    rows = [
        row(prefix.rstrip("."), ly.describe(), fwd[id(ly)][0], bwd[id(ly)][0])
        for prefix, ly in layers
    ]
    in_layers_f = sum(v[0] for v in fwd.values())
    in_layers_b = sum(v[0] for v in bwd.values())
    rows.append(row("loss", "objective value and gradient", nan, nan, loss_t[0]))
    rows.append(row("optimizer", type(optimizer).__name__ + " step", nan, nan, opt_t[0]))
    rows.append(
        row(
            "other",
            "graph: skips, merges, loops, head, tape",
            max(total_f[0] - in_layers_f, 0.0),
            max(total_b[0] - in_layers_b, 0.0),
        )
    )
    rows.append(row("step", f"batch of {len(xb)}, mean of {steps} steps", nan, nan, step_t[0]))
    return rows


@contextmanager
def _stack(items: list[tuple[Any, str, list[float]]]) -> Iterator[None]:
    from contextlib import ExitStack

    with ExitStack() as stack:
        for obj, name, into in items:
            if hasattr(obj, name):
                stack.enter_context(_timed(obj, name, into))
        yield


def format_profile(rows: list[dict[str, Any]]) -> str:
    """The rows of `profile_steps` as a fixed-width table (ms per step)."""
    w = max(len(r["layer"]) for r in rows)

    def ms(v: float) -> str:
        return "-" if np.isnan(v) else f"{v:.3f}"

    head = f"{'layer':<{w}}  {'forward ms':>10}  {'backward ms':>11}  {'total ms':>9}  {'share':>6}"
    lines = [head + "  what"]
    for r in rows:
        lines.append(
            f"{r['layer']:<{w}}  {ms(r['forward_ms']):>10}  {ms(r['backward_ms']):>11}  "
            f"{ms(r['total_ms']):>9}  {100 * r['share']:>5.1f}%  {r['what']}"
        )
    return "\n".join(lines)
