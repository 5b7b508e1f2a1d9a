"""The crate's forward/backward quirks inside our graph, and `apply` (switches -> objects).

Two graph hooks: a skip receiver whose weight gradient uses its un-summed input, and a loop
whose backward is one pass over its layers at the combined (merged) pre-/post-activations,
with the loop's `scale` on every delta and no gradient through the extra passes. `apply`
turns a built experiment's objects into the crate's (U(-1,1) init, per-copy feedback state,
epoch step counter, crate objective, early stopping and loss averaging). No config parsing.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np

from neurons.compat.flags import CompatConfig
from neurons.compat.objectives import CrateObjective
from neurons.compat.optim import CrateOptimizer
from neurons.compat.stopping import CrateEarlyStopping
from neurons.kernels.activations import ACTIVATIONS
from neurons.layers import Affine, BuildError, Conv2d, Dense, activate

if TYPE_CHECKING:
    from neurons.graph import Loop, Network, Value, _Exec

CRATE_LAYERS = (Dense, Conv2d)  # Conv2d includes Deconv2d: the crate's dense/conv/deconv


def _act(layer: Affine, z: np.ndarray) -> tuple[np.ndarray, Any]:
    return activate(layer.activation, layer.activation_param, z)


def _check_crate_layer(layer: Any, what: str) -> Affine:
    if not isinstance(layer, CRATE_LAYERS) or type(layer).forward is not Affine.forward:
        raise BuildError(
            f"{getattr(layer, 'path', '?')}: compat.{what} supports dense, conv and deconv "
            f"layers only (what the crate can loop over), found {getattr(layer, 'kind', layer)}"
        )
    return layer


def skip_receiver(ex: _Exec, layer: Any, xin: Value, x: Value) -> Value:
    """Run `layer` on the skip-merged `xin`; its weight gradient uses the un-summed `x`."""
    if (
        ex.tape is None
        or not isinstance(layer, Affine)
        or type(layer).forward is not Affine.forward
    ):
        return ex.layer(layer, xin)
    z, _ = layer._lin_forward(xin[0])
    if ex.ctx.capture is not None:
        ex.ctx.capture.setdefault(id(layer), []).append(z)
    a, c2 = _act(layer, z)
    _, c1 = layer._lin_forward(x[0])  # the crate's stored input: activated[into], no skip

    def bwd(g: np.ndarray) -> tuple:
        dz = ACTIVATIONS[layer.activation][1](g, c2)
        return (layer._lin_backward(dz, c1, 1.0),)  # dx = W^T dz does not depend on the input

    return (a, ex.tape.push((xin[1],), bwd))


def run_loop(net: Network, ex: _Exec, lp: Loop, xin: Value, x: Value, inputs: dict) -> Value:
    """Loop dst..src: main pass + `iterations` passes, merged per layer; crate backward."""
    from neurons.graph import _Exec as Exec

    i, j = lp.dst, lp.src
    layers = [_check_crate_layer(net.layers[m], "loop_backward") for m in range(i, j + 1)]
    for m in range(i + 1, j + 1):
        if net._skips_into.get(m):
            raise BuildError(
                f"{net._skips_into[m][0].path}: with compat.loop_backward a skip may not end "
                f"inside a loop ({lp.path} covers layers {i}..{j})"
            )
    fwd_only = Exec(ex.ctx, None, ex.recurrent, ex.skips)
    in_shape = net.layers[i].in_shape
    zs: list[list[np.ndarray]] = []  # zs[t][m - i]: pre-activation of layer m in pass t
    hs: list[list[np.ndarray]] = []  # hs[t][m - i]: its output
    h = xin[0]
    for t in range(lp.iterations + 1):
        if t > 0:
            h = hs[-1][-1].reshape(h.shape[0], *in_shape)
            if lp.inskip:
                h = h + x[0].reshape(h.shape)  # the crate adds the un-looped input
        zt, ht = [], []
        for layer in layers:
            z, _ = layer._lin_forward(h)
            h, _ = _act(layer, z)
            zt.append(z)
            ht.append(h)
        zs.append(zt)
        hs.append(ht)
    n = len(layers)
    zbar = [fwd_only.merge([(p[q], -1) for p in zs], lp.merge)[0] for q in range(n)]
    hbar = [fwd_only.merge([(p[q], -1) for p in hs], lp.merge)[0] for q in range(n)]
    if ex.tape is None:
        for q in range(n - 1):
            inputs[i + 1 + q] = (hbar[q], -1)
        return (hbar[-1], -1)
    nid = xin[1]
    s = float(lp.scale)
    for q, layer in enumerate(layers):
        if q == 0:  # the crate's layer `into` sees its input without the skip
            x_in = x[0] if net.compat is not None and net.compat.skip_weight_grad else xin[0]
        else:
            x_in = hbar[q - 1]
        _, c1 = layer._lin_forward(x_in)
        _, c2 = _act(layer, zbar[q])  # derivative at the combined pre-activation

        def bwd(g: np.ndarray, layer: Affine = layer, c1: Any = c1, c2: Any = c2) -> tuple:
            dz = ACTIVATIONS[layer.activation][1](g, c2)
            if s != 1.0:
                dz = dz * dz.dtype.type(s)
            return (layer._lin_backward(dz, c1, 1.0),)

        nid = ex.tape.push((nid,), bwd)
        if q < n - 1:
            inputs[i + 1 + q] = (hbar[q], nid)
    return (hbar[-1], nid)


# --------------------------------------------------------------------------- apply


def _uniform_init(net: Network, rng: np.random.Generator) -> None:
    for _, layer in net.unique_layers():
        for p in layer.params.values():
            np.copyto(p, rng.uniform(-1.0, 1.0, p.shape).astype(p.dtype))


def _decouple(net: Network) -> list[list[np.ndarray]]:
    """Give every feedback copy its own layers (equal values); return the coupled groups."""
    from neurons.graph import Feedback

    groups: list[list[np.ndarray]] = []
    for layer in net.layers:
        if not isinstance(layer, Feedback):
            continue
        if layer.inskips or layer.outskips:
            raise BuildError(
                f"{layer.path}: compat.feedback_coupling does not reproduce the crate's "
                "internal-skip gradients (inskips/outskips); switch them off or set "
                "compat.feedback_coupling=false"
            )
        if layer.coupling != "none":
            layer.coupling = "none"
            layer.copies = [layer.body] + [
                [ly.clone() for ly in layer.body] for _ in range(layer.loops - 1)
            ]
        for q, first in enumerate(layer.copies[0]):
            for name in first.params:
                groups.append([copy_[q].params[name] for copy_ in layer.copies])
    return groups


def prepare_network(net: Network, flags: CompatConfig, rng: np.random.Generator) -> list:
    """Network-level switches (before the optimizer is built); returns coupling groups."""
    if flags.init:
        _uniform_init(net, rng)
    groups = _decouple(net) if flags.feedback_coupling else []
    last = net.layers[-1]
    if (
        net.head is None
        and isinstance(last, Affine)
        and getattr(last, "activation", "") == ("softmax")
    ):
        if flags.softmax_backward or flags.objective:
            if type(last).forward is Affine.forward:
                last.activation, net.head = "linear", "softmax"  # the objective takes logits
    for _, layer in net.unique_layers():  # the crate's float32 sums, on any machine
        if isinstance(layer, Dense):
            layer.sum_order = "crate"
    net.compat = flags
    return groups


# sklearn's iris has rows 35 and 38 corrected (Fisher's paper); the crate's iris.csv has UCI's
SKLEARN_IRIS_ROWS = ([4.9, 3.1, 1.5, 0.2], [4.9, 3.6, 1.4, 0.1])
CRATE_IRIS_ROWS = ([4.9, 3.1, 1.5, 0.1], [4.9, 3.1, 1.5, 0.1])


def crate_iris_rows(ds: Any) -> int:
    """Put the crate's two iris rows in place of sklearn's (raw iris only); returns how many."""
    if ds.name != "iris" or "normalize=none" not in (ds.preprocessing or "normalize=none"):
        return 0
    done, seen = 0, set()
    for x in (ds.x_train, ds.x_val, ds.x_test):
        if x is None or id(x) in seen:
            continue
        seen.add(id(x))
        for old, new in zip(SKLEARN_IRIS_ROWS, CRATE_IRIS_ROWS, strict=True):
            hit = (x == np.asarray(old, x.dtype)).all(axis=1)
            x[hit] = np.asarray(new, x.dtype)
            done += int(hit.sum())
    return done


def apply(exp: Any, flags: CompatConfig, build_optimizer: Any) -> Any:
    """Return `exp` (an Experiment) with the crate's objects for every switch that is on.

    `build_optimizer(params)` makes a fresh optimizer over a parameter dict (the copies of a
    decoupled feedback block are new parameters).
    """
    net = exp.network
    if flags.data:
        crate_iris_rows(exp.dataset)
    groups = prepare_network(net, flags, exp.rng)
    optimizer = exp.optimizer
    if flags.feedback_coupling and groups:
        optimizer = build_optimizer(net.named_parameters())
    if flags.adam_step == "epoch" or groups:
        optimizer = CrateOptimizer(optimizer, flags.adam_step == "epoch", groups)
    objective = CrateObjective(exp.objective_name, flags, net.head)
    train = exp.train
    if flags.early_stopping and train.early_stopping is not None:
        es = train.early_stopping
        train = replace(train, early_stopping=CrateEarlyStopping(patience=es.patience))
    if flags.no_reshuffle:
        train = replace(train, shuffle=False)
    if flags.batch_mean_loss:
        train = replace(train, loss_average="batch")
    return replace(exp, network=net, optimizer=optimizer, objective=objective, train=train)
