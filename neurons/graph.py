"""A network: an ordered list of layers plus skips, loops (FB1/COMBINE) and feedback blocks (FB2).

A training forward pass records one backward closure per operation on a small tape, so any
combination of skips, unrolled loop passes and feedback copies gets exact gradients (backprop
through time over shared weights). Probing switches recurrence or skips off at inference. No
config parsing here: `neurons.config` builds the layers and structure specs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from neurons.kernels import Array, Shape
from neurons.kernels.activations import ACTIVATIONS
from neurons.layers import Affine, BuildError, Context, Layer

MERGES = ("add", "subtract", "multiply", "mean", "overwrite")

Value = tuple[Array, int]  # an array and its id on the tape (-1 when nothing is recorded)


@dataclass
class Skip:
    """Merge the input of layer `src` (0 = the network input) into the input of layer `dst`."""

    src: int
    dst: int
    merge: str = "add"
    path: str = "arch.skips[?]"


@dataclass
class Loop:
    """After layer `src`, feed its output back into `dst`; rerun dst..src `iterations` times."""

    src: int
    dst: int
    iterations: int = 1
    merge: str = "mean"
    inskip: bool = False
    scale: float = 1.0
    path: str = "arch.loops[?]"


class Tape:
    """Backward closures recorded by a training forward pass, replayed in reverse."""

    __slots__ = ("ops", "n", "out", "input_grad")

    def __init__(self, input_grad: bool = True) -> None:
        self.ops: list[tuple[int, tuple[int, ...], Callable]] = []
        self.n = 1  # id 0 is the network input
        self.out = -1
        self.input_grad = input_grad  # False: a layer reading the input skips its dx

    def push(self, ins: tuple[int, ...], backward: Callable[[Array], tuple]) -> int:
        nid = self.n
        self.n += 1
        self.ops.append((nid, ins, backward))
        return nid

    def backward(self, dout: Array) -> Array | None:
        """Propagate `dout` (gradient of the recorded output); returns the input gradient."""
        grads: dict[int, Array] = {self.out: dout}
        for nid, ins, bwd in reversed(self.ops):
            g = grads.pop(nid, None)
            if g is None:
                continue
            for i, d in zip(ins, bwd(g), strict=True):
                if d is None or i < 0:
                    continue
                grads[i] = grads[i] + d if i in grads else d  # never in place: d may be aliased
        return grads.get(0)


class _Exec:
    """One forward pass: the context, the tape (None at inference) and the probe switches."""

    __slots__ = ("ctx", "tape", "recurrent", "skips")

    def __init__(self, ctx: Context, tape: Tape | None, recurrent: bool, skips: bool) -> None:
        self.ctx, self.tape, self.recurrent, self.skips = ctx, tape, recurrent, skips

    def layer(self, layer: Layer | Feedback, v: Value, gscale: float = 1.0) -> Value:
        if isinstance(layer, Feedback):
            return layer.run(self, v)
        x, i = v
        y, cache = layer.forward(x, self.ctx)
        if self.tape is None:
            return (y, -1)
        if i == 0 and not self.tape.input_grad:  # nobody reads d input: parameters only
            return (y, self.tape.push((i,), lambda g: (layer.backward_params(g, cache, gscale),)))
        return (y, self.tape.push((i,), lambda g: (layer.backward(g, cache, gscale),)))

    def reshape(self, v: Value, shape: Shape) -> Value:
        x, i = v
        if x.shape[1:] == tuple(shape):
            return v
        old = x.shape
        y = x.reshape(x.shape[0], *shape)  # same values per sample, another layout
        if self.tape is None:
            return (y, -1)
        return (y, self.tape.push((i,), lambda g: (g.reshape(old),)))

    def scale_grad(self, v: Value, s: float) -> Value:
        if s == 1.0 or self.tape is None:
            return v
        x, i = v
        return (x, self.tape.push((i,), lambda g: (g * g.dtype.type(s),)))

    def merge(self, vs: list[Value], mode: str) -> Value:
        """Merge equal-shape values with MERGE_OPS[mode] (validated at build time)."""
        if len(vs) == 1:
            return vs[0]
        xs = [x for x, _ in vs]
        fwd, bwd = MERGE_OPS[mode]
        y = fwd(xs)
        if self.tape is None:
            return (y, -1)
        return (y, self.tape.push(tuple(i for _, i in vs), lambda g: bwd(g, xs)))


def _multiply_backward(g: Array, xs: list[Array]) -> tuple:
    """d/dx_k = g * the product of the other inputs."""
    n = len(xs)
    return tuple(g * math.prod([xs[j] for j in range(n) if j != k], start=1) for k in range(n))


# merge mode -> (forward(xs) -> y, backward(g, xs) -> one gradient per input, None = none)
MERGE_OPS: dict[str, tuple[Callable, Callable]] = {
    "add": (lambda xs: sum(xs[1:], xs[0]), lambda g, xs: (g,) * len(xs)),
    "subtract": (  # first - rest
        lambda xs: xs[0] - sum(xs[2:], xs[1]),
        lambda g, xs: (g,) + (-g,) * (len(xs) - 1),
    ),
    "multiply": (lambda xs: math.prod(xs[1:], start=xs[0]), _multiply_backward),
    "mean": (
        lambda xs: sum(xs[1:], xs[0]) / xs[0].dtype.type(len(xs)),
        lambda g, xs: (g / g.dtype.type(len(xs)),) * len(xs),
    ),
    "overwrite": (lambda xs: xs[-1], lambda g, xs: (None,) * (len(xs) - 1) + (g,)),
}


class Feedback:
    """A feedback block (FB2/COUPLE): `loops` unrolled copies of `layers` run in sequence.

    coupling: `mean` ties the copies' weights and averages their gradients over the copies,
    `sum` ties them and sums (standard weight tying), `none` gives independent copies that
    start equal. `inskips` merges the block input into every later copy's input, `outskips`
    merges all copies' outputs into the block output, both with `merge`.
    """

    kind = "feedback"

    def __init__(
        self,
        layers: list[Layer],
        loops: int = 2,
        coupling: str = "mean",
        inskips: bool = False,
        outskips: bool = False,
        merge: str = "mean",
    ) -> None:
        self.body = list(layers)
        self.loops = int(loops)
        self.coupling = coupling
        self.inskips = bool(inskips)
        self.outskips = bool(outskips)
        self.merge_mode = merge
        self.copies: list[list[Layer]] = []
        self.in_shape: Shape = ()
        self.out_shape: Shape = ()
        self.path = ""

    def build(self, in_shape: Shape, rng: np.random.Generator, dtype: np.dtype) -> Shape:
        p = self.path
        if self.loops < 1:
            raise BuildError(f"{p}.loops: expected an int >= 1, found {self.loops}")
        if self.coupling not in ("mean", "sum", "none"):
            raise BuildError(
                f"{p}.coupling: expected one of mean, sum, none, found {self.coupling!r}"
            )
        if self.merge_mode not in MERGES:
            raise BuildError(
                f"{p}.merge: expected one of {', '.join(MERGES)}, found {self.merge_mode!r}"
            )
        if not self.body:
            raise BuildError(f"{p}.layers: a feedback block needs at least one layer")
        self.in_shape = tuple(in_shape)
        shape = self.in_shape
        for q, layer in enumerate(self.body):
            if isinstance(layer, Feedback):
                raise BuildError(f"{p}.layers[{q}]: feedback blocks cannot be nested")
            layer.path = f"{p}.layers[{q}]"
            shape = layer.build(shape, rng, dtype)
        if shape != self.in_shape:
            raise BuildError(
                f"{p}: a feedback block's output shape must equal its input shape "
                f"{self.in_shape}, found {shape} after its layers"
            )
        self.out_shape = shape
        if self.coupling == "none":
            self.copies = [self.body] + [
                [ly.clone() for ly in self.body] for _ in range(self.loops - 1)
            ]
        else:
            self.copies = [self.body] * self.loops
        return shape

    def run(self, ex: _Exec, v: Value) -> Value:
        n = self.loops if ex.recurrent else 1
        gscale = 1.0 / self.loops if self.coupling == "mean" else 1.0
        h, outs = v, []
        for c in range(n):
            if c > 0 and self.inskips:
                h = ex.merge([h, v], self.merge_mode)
            for layer in self.copies[c]:
                h = ex.layer(layer, h, gscale)
            outs.append(h)
        if self.outskips and n > 1:
            h = ex.merge(outs, self.merge_mode)
        return h

    def unique_layers(self, prefix: str) -> Iterator[tuple[str, Layer]]:
        if self.coupling == "none":
            for c, copy_ in enumerate(self.copies):
                for q, layer in enumerate(copy_):
                    yield f"{prefix}copies.{c}.{q}.", layer
        else:
            for q, layer in enumerate(self.body):
                yield f"{prefix}body.{q}.", layer

    def describe(self) -> str:
        extra = "".join(
            [", inskips" if self.inskips else "", ", outskips" if self.outskips else ""]
        )
        inner = " -> ".join(ly.describe() for ly in self.body)
        return f"feedback x{self.loops} [{inner}] (coupling {self.coupling}{extra})"


class Network:
    """Layers 0..L-1 with skips, loops and feedback blocks; shapes inferred by `build`.

    Args:
        layers: built in order from `input_shape` (per sample, no batch axis).
        skips, loops: structure specs (see `Skip`, `Loop`).
        head: an output activation applied after the last layer, kept apart so a fused
            objective (softmax + cross-entropy, sigmoid + BCE) can train on the logits.
    """

    def __init__(
        self,
        layers: list[Layer | Feedback],
        skips: list[Skip] | None = None,
        loops: list[Loop] | None = None,
        head: str | None = None,
    ) -> None:
        self.layers = list(layers)
        self.skips = list(skips or [])
        self.loops = list(loops or [])
        self.head = head
        self.input_shape: Shape = ()
        self.output_shape: Shape = ()
        self.dtype = np.dtype(np.float32)
        self.compat = None  # neurons.compat.CompatConfig: the original crate's quirks, if any

    # ------------------------------------------------------------------ build
    def build(
        self, input_shape: Shape, rng: np.random.Generator, dtype: np.dtype | type = np.float32
    ) -> Network:
        self.input_shape = tuple(int(s) for s in input_shape)
        self.dtype = np.dtype(dtype)
        if not self.layers:
            raise BuildError("arch.layers: a network needs at least one layer")
        shape = self.input_shape
        for k, layer in enumerate(self.layers):
            if not layer.path:
                layer.path = f"arch.layers[{k}]"
            shape = layer.build(shape, rng, self.dtype)
        self.output_shape = shape
        if self.head is not None and self.head not in ACTIVATIONS:
            raise BuildError(f"head: expected one of {sorted(ACTIVATIONS)}, found {self.head!r}")
        self._check_structure()
        self._compiled: dict = {}  # neurons.plan's programs per (recurrent, skips), built lazily
        return self

    def _check_structure(self) -> None:
        L = len(self.layers)
        ins = [ly.in_shape for ly in self.layers]
        for s in self.skips:
            if not (0 <= s.src <= s.dst < L):
                raise BuildError(
                    f"{s.path}: expected 0 <= from <= to < {L} (layer indices; from = 0 is the "
                    f"network input), found from={s.src}, to={s.dst}"
                )
            if s.merge not in MERGES:
                raise BuildError(
                    f"{s.path}.merge: expected one of {', '.join(MERGES)}, found {s.merge!r}"
                )
            if math.prod(ins[s.src]) != math.prod(ins[s.dst]):
                raise BuildError(
                    f"{s.path}: the input of layer {s.src} has shape {ins[s.src]} but the input "
                    f"of layer {s.dst} has shape {ins[s.dst]}; a skip needs equal sizes"
                )
        seen: list[Loop] = []
        for lp in self.loops:
            if not (0 <= lp.dst <= lp.src < L):
                raise BuildError(
                    f"{lp.path}: expected 0 <= to <= from < {L}, found from={lp.src}, to={lp.dst}"
                )
            if lp.iterations < 0:
                raise BuildError(
                    f"{lp.path}.iterations: expected an int >= 0, found {lp.iterations}"
                )
            if lp.merge not in MERGES:
                raise BuildError(
                    f"{lp.path}.merge: expected one of {', '.join(MERGES)}, found {lp.merge!r}"
                )
            out, into = self.layers[lp.src].out_shape, ins[lp.dst]
            if math.prod(out) != math.prod(into):
                raise BuildError(
                    f"{lp.path}: the output of layer {lp.src} has shape {out} but the input of "
                    f"layer {lp.dst} has shape {into}; a loop needs equal sizes"
                )
            for other in seen:
                if not (lp.src < other.dst or other.src < lp.dst):
                    raise BuildError(
                        f"{lp.path}: its range {lp.dst}..{lp.src} overlaps {other.path} "
                        f"({other.dst}..{other.src}); loop ranges must not overlap"
                    )
            seen.append(lp)
        self._loop_at = {lp.dst: lp for lp in self.loops if lp.iterations > 0}
        self._skips_into: dict[int, list[Skip]] = {}
        for s in self.skips:
            self._skips_into.setdefault(s.dst, []).append(s)
        self._skip_sources = {s.src for s in self.skips}

    # ------------------------------------------------------------------ forward / backward
    def _run(self, x: Array, ex: _Exec) -> Value:
        inputs: dict[int, Value] = {}  # inputs[k]: the input of layer k before skips merge in
        v: Value = (x, 0)
        L = len(self.layers)
        k = 0
        quirks = self.compat
        while k < L:
            inputs[k] = v
            xin = self._merge_skips(k, v, inputs, ex)
            lp = self._loop_at.get(k) if ex.recurrent else None
            if quirks is not None and (quirks.skip_weight_grad or quirks.loop_backward):
                from neurons.compat import engine  # the crate's skip and loop backward

                if lp is not None and quirks.loop_backward:
                    v = engine.run_loop(self, ex, lp, xin, v, inputs)
                    k = lp.src + 1
                    continue
                if lp is None and quirks.skip_weight_grad and xin is not v:
                    v = engine.skip_receiver(ex, self.layers[k], xin, v)
                    k += 1
                    continue
            if lp is None:
                v = ex.layer(self.layers[k], xin)
                k += 1
                continue
            i, j = lp.dst, lp.src
            passes = [[]]  # passes[t][m - i]: output of layer m in pass t
            h = xin
            for m in range(i, j + 1):
                if m > i:
                    inputs[m] = h
                    h = self._merge_skips(m, h, inputs, ex)
                h = ex.layer(self.layers[m], h)
                passes[0].append(h)
            for _ in range(lp.iterations):
                h = ex.reshape(passes[-1][-1], self.layers[i].in_shape)
                h = ex.scale_grad(h, lp.scale)
                if lp.inskip:
                    h = ex.merge([h, ex.reshape(xin, self.layers[i].in_shape)], "add")
                outs = []
                for m in range(i, j + 1):
                    h = ex.layer(self.layers[m], h)
                    outs.append(h)
                passes.append(outs)
            for m in range(i + 1, j + 1):  # later skips from inside the range see merged values
                if m in self._skip_sources:
                    inputs[m] = ex.merge([p[m - 1 - i] for p in passes], lp.merge)
            v = ex.merge([p[-1] for p in passes], lp.merge)
            k = j + 1
        return v

    def _merge_skips(self, k: int, v: Value, inputs: dict[int, Value], ex: _Exec) -> Value:
        if not ex.skips:
            return v
        for s in self._skips_into.get(k, ()):
            src = ex.reshape(inputs[s.src], v[0].shape[1:])
            v = ex.merge([v, src], s.merge)
        return v

    def forward(
        self,
        x: Array,
        ctx: Context | None = None,
        *,
        record: bool = False,
        recurrent: bool = True,
        skips: bool = True,
        logits: bool = False,
        input_grad: bool = True,
    ) -> tuple[Array, Tape | None]:
        """Run a batch.  x: (N, *input_shape) -> (N, *output_shape).

        Args:
            ctx: mode and rng (default: inference).
            record: keep a tape for `backward`.
            input_grad: False when `backward`'s input gradient is not wanted (training): the
                layers that read the network input then compute their parameter gradients only
                (PyTorch's `requires_grad=False` input; the first dense layer's dx is ~30% of an
                MLP step's multiply-adds).
            recurrent: False runs every loop once and every feedback block's first copy only.
            skips: False drops every skip connection.
            logits: return the values before the network's `head` activation.
        """
        ctx = ctx or Context()
        tape = Tape(input_grad) if record else None
        ex = _Exec(ctx, tape, recurrent, skips)
        y, nid = self._run(x, ex)
        if tape is not None:
            tape.out = nid
        if self.head is not None and not logits:
            y = ACTIVATIONS[self.head][0](y)[0]
        return y, tape

    def backward(self, dout: Array, tape: Tape) -> Array | None:
        """Accumulate (+=) every parameter gradient for the recorded pass; returns d input
        (None when the pass was recorded with input_grad=False).

        `dout` is the gradient w.r.t. what `forward(..., record=True)` returned (so w.r.t. the
        logits when it was called with logits=True).
        """
        return tape.backward(dout)

    def predict(
        self, x: Array, batch_size: int = 256, *, recurrent: bool = True, skips: bool = True
    ) -> Array:
        """Inference in batches; returns the outputs after the head activation."""
        outs = [
            self.forward(
                x[s : s + batch_size].astype(self.dtype, copy=False),
                recurrent=recurrent,
                skips=skips,
            )[0]
            for s in range(0, len(x), batch_size)
        ]
        return np.concatenate(outs, axis=0)

    # ------------------------------------------------------------------ parameters
    def unique_layers(self) -> Iterator[tuple[str, Layer]]:
        """(prefix, layer) for every layer holding state, shared layers once."""
        for k, layer in enumerate(self.layers):
            if isinstance(layer, Feedback):
                yield from layer.unique_layers(f"layers.{k}.")
            else:
                yield f"layers.{k}.", layer

    def named_parameters(self) -> dict[str, Array]:
        return {f"{p}{n}": a for p, ly in self.unique_layers() for n, a in ly.params.items()}

    def named_grads(self) -> dict[str, Array]:
        return {f"{p}{n}": a for p, ly in self.unique_layers() for n, a in ly.grads.items()}

    def named_buffers(self) -> dict[str, Array]:
        return {f"{p}{n}": a for p, ly in self.unique_layers() for n, a in ly.buffers.items()}

    def zero_grad(self) -> None:
        for _, layer in self.unique_layers():
            layer.zero_grad()

    def n_params(self) -> int:
        return int(sum(a.size for a in self.named_parameters().values()))

    def state_dict(self) -> dict[str, Array]:
        """Copies of every parameter and buffer, keyed `param.<name>` / `buffer.<name>`."""
        out = {f"param.{k}": v.copy() for k, v in self.named_parameters().items()}
        out.update({f"buffer.{k}": v.copy() for k, v in self.named_buffers().items()})
        return out

    def load_state_dict(self, state: dict[str, Array]) -> None:
        """Copy values in place (optimizers keep their references); every key must match."""
        own = {f"param.{k}": v for k, v in self.named_parameters().items()}
        own.update({f"buffer.{k}": v for k, v in self.named_buffers().items()})
        missing = sorted(set(own) - set(state))
        if missing:
            raise KeyError(f"state is missing {missing[:5]}{' ...' if len(missing) > 5 else ''}")
        for k, arr in own.items():
            src = np.asarray(state[k])
            if src.shape != arr.shape:
                raise ValueError(f"state {k}: shape {src.shape}, the network has {arr.shape}")
            np.copyto(arr, src)

    # ------------------------------------------------------------------ reporting
    def has_recurrence(self) -> bool:
        return bool(self._loop_at) or any(
            isinstance(ly, Feedback) and ly.loops > 1 for ly in self.layers
        )

    def summary(self) -> str:
        rows = [("#", "layer", "output", "params")]
        for k, layer in enumerate(self.layers):
            if isinstance(layer, Feedback):
                n = sum(ly.n_params() for _, ly in layer.unique_layers(""))
            else:
                n = layer.n_params()
            rows.append((str(k), layer.describe(), str(tuple(layer.out_shape)), f"{n:,}"))
        if self.head:
            rows.append(("", f"head: {self.head}", str(tuple(self.output_shape)), "0"))
        w = [max(len(r[c]) for r in rows) for c in range(4)]
        lines = [f"input {self.input_shape}"]
        for r in rows:
            lines.append(f"{r[0]:>{w[0]}}  {r[1]:<{w[1]}}  {r[2]:<{w[2]}}  {r[3]:>{w[3]}}")
        for s in self.skips:
            lines.append(f"skip: input of {s.src} -> input of {s.dst} ({s.merge})")
        for lp in self.loops:
            extra = ", inskip" if lp.inskip else ""
            lines.append(
                f"loop: output of {lp.src} -> input of {lp.dst}, {lp.iterations} extra "
                f"pass(es), merge {lp.merge}{extra}, scale {lp.scale}"
            )
        lines.append(f"parameters: {self.n_params():,}")
        return "\n".join(lines)


def lsuv_init(
    net: Network, x: Array, tol: float = 0.1, max_iter: int = 10, only_marked: bool = True
) -> dict[str, float]:
    """Layer-sequential unit-variance init (Mishkin & Matas; sarek's LSUV), data-driven.

    Each affine layer (those built with `init: lsuv` when `only_marked`) starts orthogonal; in
    network order its weights are rescaled until the variance of its pre-activation output on
    the batch `x` is within `tol` of 1, and its bias is zeroed. Returns the final variances.
    """
    out: dict[str, float] = {}
    for prefix, layer in net.unique_layers():
        if not isinstance(layer, Affine) or "w" not in layer.params:
            continue
        if only_marked and layer.init != "lsuv":
            continue
        if "b" in layer.params:
            layer.params["b"].fill(0)

        def variance(layer: Layer = layer) -> float:
            cap: dict[int, list[Array]] = {}
            net.forward(x.astype(net.dtype, copy=False), Context(capture=cap))
            z = np.concatenate([a.ravel() for a in cap.get(id(layer), [])])
            return float(np.var(z.astype(np.float64)))

        var = variance()
        for _ in range(max_iter):
            if not np.isfinite(var) or var == 0 or abs(var - 1.0) < tol:
                break
            layer.params["w"] *= layer.params["w"].dtype.type(1.0 / np.sqrt(var))
            var = variance()  # what is returned is always measured after the last rescale
        out[f"{prefix}w"] = var
    return out
