"""A network's execution planned once: traced steps, flat buffers, and the compiled training path.

`Plan` is the order of layer applications, skips, loop passes and feedback copies that
`Network.forward` performs, traced once symbolically (so it cannot drift from the tape path);
`Program` lowers it to int op codes for `neurons.kernels.program`. `CompiledTrainer` runs whole
epochs in one kernel call; `fit_fallback` names why a network/objective/optimizer falls back
to the tape path. Not a second engine: anything it cannot express runs on the tape as before.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from neurons import objectives as objs
from neurons import optim
from neurons.kernels import Array, Shape
from neurons.kernels import program as pk
from neurons.layers import Activation, Dense, Flatten, Layer, NormDense, Reshape

# Above this many parameter-rows per step (n_params x batch rows), BLAS on the tape path wins.
AUTO_LIMIT = 1 << 21
ENGINES = ("auto", "tape", "compiled")


class _Sym:
    """A stand-in for an array while tracing: only its shape (batch axis first) is known."""

    __slots__ = ("shape",)

    def __init__(self, shape: Shape) -> None:
        self.shape = tuple(shape)

    def reshape(self, *shape: int) -> _Sym:
        return _Sym(shape)


@dataclass
class Step:
    """One traced operation: `op` in layer | reshape | scale | merge, value ids in and out."""

    op: str
    ins: tuple[int, ...]
    out: int
    layer: Layer | None = None
    gscale: float = 1.0
    mode: str = ""


@dataclass
class Plan:
    """The traced execution of one forward configuration (recurrent / skips switches)."""

    steps: list[Step]
    widths: list[int]  # per value id: values per sample
    out: int  # value id of the network output (before the head)
    recurrent: bool = True
    skips: bool = True


class _Trace:
    """Quacks like `graph._Exec` for `Network._run` / `Feedback.run`, recording steps."""

    def __init__(self, recurrent: bool, skips: bool, in_width: int) -> None:
        self.recurrent, self.skips = recurrent, skips
        self.steps: list[Step] = []
        self.widths = [in_width]

    def _new(self, shape: Shape) -> tuple[_Sym, int]:
        self.widths.append(math.prod(shape[1:]))
        return _Sym(shape), len(self.widths) - 1

    def layer(self, layer: Any, v: tuple[_Sym, int], gscale: float = 1.0) -> tuple[_Sym, int]:
        if hasattr(layer, "copies"):  # a feedback block runs its copies through this trace
            return layer.run(self, v)
        y = self._new((1, *layer.out_shape))
        self.steps.append(Step("layer", (v[1],), y[1], layer=layer, gscale=gscale))
        return y

    def reshape(self, v: tuple[_Sym, int], shape: Shape) -> tuple[_Sym, int]:
        if v[0].shape[1:] == tuple(shape):
            return v
        y = self._new((1, *shape))
        self.steps.append(Step("reshape", (v[1],), y[1]))
        return y

    def scale_grad(self, v: tuple[_Sym, int], s: float) -> tuple[_Sym, int]:
        if s == 1.0:
            return v
        y = self._new(v[0].shape)
        self.steps.append(Step("scale", (v[1],), y[1], gscale=float(s)))
        return y

    def merge(self, vs: list[tuple[_Sym, int]], mode: str) -> tuple[_Sym, int]:
        if len(vs) == 1:
            return vs[0]
        y = self._new(vs[0][0].shape)
        self.steps.append(Step("merge", tuple(i for _, i in vs), y[1], mode=mode))
        return y


def trace(net: Any, recurrent: bool = True, skips: bool = True) -> Plan:
    """The steps `net.forward(x, recurrent=..., skips=...)` performs, for any batch size."""
    ex = _Trace(recurrent, skips, math.prod(net.input_shape))
    _, out = net._run(_Sym((1, *net.input_shape)), ex)
    return Plan(ex.steps, ex.widths, out, recurrent, skips)


def unsupported_layer(layer: Layer) -> str | None:
    """Why `layer` has no kernel (None when it has one)."""
    if type(layer) in (Dense, NormDense):
        return None if layer.activation in pk.ACTS else f"activation {layer.activation}"
    if type(layer) is Activation:
        return None if layer.activation in pk.ACTS else f"activation {layer.activation}"
    if type(layer) in (Reshape, Flatten):
        return None
    return f"layer kind {layer.kind!r} has no compiled kernel"


@dataclass
class Program:
    """A plan lowered to kernel arrays; offsets are per sample (the kernels multiply by rows)."""

    prog: Array  # (n_ops, N_COLS) int64
    fargs: Array  # (n_ops, 3) float64: gradient scale, activation parameter, output scale
    margs: Array  # (n_merge_inputs, 2) int64: data slot, grad slot
    io: Array  # int64, see kernels.program.train_epoch
    data_width: int  # per-sample size of the activation workspace
    grad_width: int  # per-sample size of the gradient workspace
    max_width: int
    tw_width: int  # size of the NormNet tan(W) buffer
    layout: list[tuple[str, int, int]]  # (parameter name, offset, size) in the flat buffer
    n_params: int


def lower(net: Any, plan: Plan) -> Program:
    """Assign workspace slots to the plan's values and encode its steps as kernel rows."""
    offsets: dict[tuple[int, str], int] = {}
    layout: list[tuple[str, int, int]] = []
    pos = 0
    for prefix, layer in net.unique_layers():
        for name, arr in layer.params.items():
            offsets[(id(layer), name)] = pos
            layout.append((f"{prefix}{name}", pos, arr.size))
            pos += arr.size
    n_vals = len(plan.widths)
    data = [-1] * n_vals
    grad = [-1] * n_vals
    dpos, gpos = 0, 0

    def new_data(v: int) -> None:
        nonlocal dpos
        data[v] = dpos
        dpos += plan.widths[v]

    def new_grad(v: int) -> None:
        nonlocal gpos
        grad[v] = gpos
        gpos += plan.widths[v]

    new_data(0)  # the network input: data slot 0, no gradient
    twpos = 0
    rows: list[list[int]] = []
    fargs: list[tuple[float, float, float]] = []
    margs: list[tuple[int, int]] = []
    for st in plan.steps:
        w = plan.widths[st.out]
        row = [0] * pk.N_COLS
        row[pk.OUT_W] = w
        if st.op == "reshape" or (st.op == "layer" and type(st.layer) in (Reshape, Flatten)):
            data[st.out], grad[st.out] = data[st.ins[0]], grad[st.ins[0]]  # same values
            continue
        if st.op == "merge" and st.mode == "overwrite":
            data[st.out], grad[st.out] = data[st.ins[-1]], grad[st.ins[-1]]  # the last wins
            continue
        src = st.ins[0]
        if st.op == "scale":
            data[st.out] = data[src]
            new_grad(st.out)
            row[pk.OP] = pk.SCALE
            fargs.append((st.gscale, 0.0, 1.0))
        elif st.op == "merge":
            new_data(st.out)
            new_grad(st.out)
            row[pk.OP] = pk.MERGE
            row[pk.MODE] = pk.MERGE_CODES[st.mode]
            row[pk.M_START], row[pk.M_COUNT] = len(margs), len(st.ins)
            margs.extend((data[i], grad[i]) for i in st.ins)
            fargs.append((1.0, 0.0, 1.0))
        else:
            layer = st.layer
            prm = getattr(layer, "activation_param", None)
            act = layer.activation  # type: ignore[union-attr]
            if prm is None:
                prm = {"leaky_relu": 0.01, "elu": 1.0}.get(act, 0.0)
            new_data(st.out)
            new_grad(st.out)
            row[pk.ACT_CODE] = pk.ACTS[act]
            scale = getattr(layer, "scale", None) if type(layer) is NormDense else None
            fargs.append((st.gscale, float(prm), 1.0 if scale is None else float(scale)))
            row[pk.TW_OFF], row[pk.A_D] = -1, data[st.out]
            if type(layer) in (Dense, NormDense):
                row[pk.OP] = pk.DENSE
                row[pk.W_OFF] = offsets[(id(layer), "w")]
                row[pk.B_OFF] = offsets.get((id(layer), "b"), -1)
                if type(layer) is NormDense:
                    row[pk.TW_OFF] = twpos  # tan(W), then (1 + tan(W)^2) / n_in
                    twpos += 2 * layer.params["w"].size
                if scale is not None:
                    row[pk.A_D] = dpos  # the activation before the output scale
                    dpos += w
                if act == "linear":
                    row[pk.Z_D] = row[pk.A_D]
                else:
                    row[pk.Z_D] = dpos  # the pre-activation, kept for the backward pass
                    dpos += w
            else:
                row[pk.OP] = pk.ACT
        row[pk.OUT_D], row[pk.OUT_G] = data[st.out], grad[st.out]
        row[pk.IN_D], row[pk.IN_G], row[pk.IN_W] = data[src], grad[src], plan.widths[src]
        rows.append(row)
    if grad[plan.out] < 0:  # the output is the input itself (no layer in between)
        new_grad(plan.out)
    io = np.array(
        [plan.widths[0], data[plan.out], grad[plan.out], plan.widths[plan.out], 0, 0], np.int64
    )
    return Program(
        prog=np.array(rows, np.int64).reshape(-1, pk.N_COLS),
        fargs=np.array(fargs, np.float64).reshape(-1, 3),
        margs=np.array(margs, np.int64).reshape(-1, 2),
        io=io,
        data_width=max(dpos, 1),
        grad_width=max(gpos, 1),
        max_width=max(plan.widths),
        tw_width=max(twpos, 1),
        layout=layout,
        n_params=pos,
    )


@dataclass
class Compiled:
    """One network's program for one forward configuration, with its reusable workspaces."""

    net: Any
    program: Program
    dtype: np.dtype
    _ws: dict[int, tuple[Array, Array, Array]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.tw = np.zeros(self.program.tw_width, self.dtype)  # NormNet tan(W), per step
        self.cs = np.zeros(16, self.dtype)  # dtype-rounded scalars for the kernels
        self.cs[13] = np.finfo(self.dtype).tiny  # the smallest normal number (kernels' _flush)

    def workspaces(self, bmax: int) -> tuple[Array, Array, Array]:
        """(activations, gradients, scratch) for up to `bmax` rows, allocated once per size."""
        ws = self._ws.get(bmax)
        if ws is None:
            p = self.program
            ws = (
                np.zeros(p.data_width * bmax, self.dtype),
                np.zeros(p.grad_width * bmax, self.dtype),
                np.zeros(p.max_width * bmax, self.dtype),
            )
            if len(self._ws) > 3:
                self._ws.clear()
            self._ws[bmax] = ws
        return ws

    def gather(self, arrays: dict[str, Array], out: Array | None = None) -> Array:
        """Concatenate named arrays (parameters, grads or optimizer buffers) in layout order."""
        flat = np.empty(self.program.n_params, self.dtype) if out is None else out
        for name, off, size in self.program.layout:
            flat[off : off + size] = arrays[name].ravel()
        return flat

    def scatter(self, flat: Array, arrays: dict[str, Array]) -> None:
        for name, off, size in self.program.layout:
            arr = arrays[name]
            arr[...] = flat[off : off + size].reshape(arr.shape)

    def forward(self, x: Array, batch_size: int) -> Array:
        """Inference on x (N, *input_shape) in chunks of `batch_size`: (N, *output_shape)."""
        n = len(x)
        bmax = max(1, min(int(batch_size), n))
        W, _, _ = self.workspaces(bmax)
        P = self.gather(self.net.named_parameters())
        xf = np.ascontiguousarray(x, dtype=self.dtype).reshape(-1)  # (N, ...) -> flat rows
        k = int(self.program.io[3])
        out = np.empty(n * k, self.dtype)
        p = self.program
        pk.forward_rows(p.prog, p.fargs, p.margs, p.io, P, xf, out, bmax, W, self.tw, self.cs)
        return out.reshape(n, k)  # flat -> (N, K)


def compiled_for(net: Any, recurrent: bool = True, skips: bool = True) -> Compiled | None:
    """The network's compiled program (cached on it), or None when it has no kernel."""
    if structural_fallback(net) is not None:
        return None
    cache = net.__dict__.setdefault("_compiled", {})
    key = (bool(recurrent), bool(skips))
    c = cache.get(key)
    if c is None:
        c = Compiled(net, lower(net, trace(net, recurrent, skips)), np.dtype(net.dtype))
        cache[key] = c
    return c


def structural_fallback(net: Any) -> str | None:
    """Why the network itself cannot run compiled (None when it can)."""
    if getattr(net, "compat", None) is not None:
        return "compat quirks (net.compat) run on the tape"
    if net.dtype not in (np.float32, np.float64):
        return f"dtype {net.dtype} has no kernel"
    for prefix, layer in net.unique_layers():
        why = unsupported_layer(layer)
        if why is not None:
            return f"{layer.path or prefix}: {why}"
        for name, arr in layer.params.items():
            if arr.dtype != net.dtype:
                return f"parameter {prefix}{name} is {arr.dtype}, the network is {net.dtype}"
    return None


_OBJECTIVES = {
    objs.MSE: "mse",
    objs.MAE: "mae",
    objs.AE: "ae",
}
_OPTIMIZERS = {
    optim.SGD: pk.SGD,
    optim.SGDMomentum: pk.SGDM,
    optim.Adam: pk.ADAM,
    optim.AdamW: pk.ADAM,
    optim.RMSprop: pk.RMSPROP,
}
# optimizer state buffers -> kernel arrays S1, S2, S3
_BUFFERS = {
    pk.SGDM: ("momentum_buffer", "", ""),
    pk.ADAM: ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"),
    pk.RMSPROP: ("square_avg", "momentum_buffer", "grad_avg"),
    pk.SGD: ("", "", ""),
}


def objective_code(net: Any, objective: Any) -> tuple[int, str | None]:
    """(kernel objective code, None) or (0, why not)."""
    fused = net.head is not None and net.head == getattr(objective, "fused_activation", None)
    t = type(objective)
    if fused and t is objs.CrossEntropy:
        return pk.OBJECTIVES["softmax_ce"], None
    if fused and t is objs.BCE:
        return pk.OBJECTIVES["sigmoid_bce"], None
    if net.head is not None:
        return 0, f"head {net.head} without its fused objective runs on the tape"
    if t in _OBJECTIVES:
        return pk.OBJECTIVES[_OBJECTIVES[t]], None
    return 0, f"objective {getattr(objective, 'name', t.__name__)!r} has no compiled kernel"


def _hparams(opt: Any) -> tuple[int, Array]:
    code = _OPTIMIZERS[type(opt)]
    hp = np.zeros(8, np.float64)
    hp[0], hp[1] = opt.lr, opt.weight_decay
    if code == pk.SGDM:
        hp[2:5] = opt.momentum, opt.dampening, float(opt.nesterov)
    elif code == pk.ADAM:
        hp[2:7] = *opt.betas, opt.eps, float(opt.decoupled), float(opt.amsgrad)
    elif code == pk.RMSPROP:
        hp[2:6] = opt.alpha, opt.eps, opt.momentum, float(opt.centered)
    return code, hp


def _patched(obj: Any, names: tuple[str, ...]) -> str | None:
    """The first of `names` that `obj` overrides per instance or per subclass, if any."""
    from neurons.graph import Network

    base = Network if hasattr(obj, "unique_layers") else type(obj)
    for name in names:
        if name in vars(obj) or getattr(type(obj), name, None) is not getattr(base, name, None):
            return f"{type(obj).__name__}.{name}"
    return None


def fit_fallback(
    net: Any, objective: Any, optimizer: Any, cfg: Any, classification: bool
) -> str | None:
    """Why `fit` must use the tape path (None: the compiled path applies)."""
    engine = getattr(cfg, "engine", "auto")
    if engine not in ENGINES:
        raise ValueError(f"train.engine: expected one of {', '.join(ENGINES)}, found {engine!r}")
    if engine == "tape":
        return "train.engine=tape"
    why = structural_fallback(net)
    if why is not None:
        return why
    _, why = objective_code(net, objective)
    if why is not None:
        return why
    if type(optimizer) not in _OPTIMIZERS:
        return f"optimizer {type(optimizer).__name__} has no compiled kernel"
    patched = _patched(net, ("forward", "backward", "zero_grad", "_run")) or _patched(
        optimizer, ("step", "_update")
    )
    if patched:
        return f"{patched} is replaced on the instance (honoured on the tape)"
    if classification and getattr(objective, "predict_class", None) is not None:
        return "the objective's own predict_class runs on the tape"
    params = net.named_parameters()
    if set(optimizer.params) != set(params) or any(
        optimizer.params[k] is not v for k, v in params.items()
    ):
        return "the optimizer does not hold exactly the network's parameters"
    code = _OPTIMIZERS[type(optimizer)]
    for kind in _BUFFERS[code]:
        store = optimizer.state.get(kind) if kind else None
        if store and set(store) != set(params):
            return f"optimizer state {kind} covers only some parameters"
    if engine == "auto":
        rows = min(int(cfg.batch_size), 1 << 30)
        if net.n_params() * rows > AUTO_LIMIT:
            return f"n_params x batch_size > {AUTO_LIMIT} (BLAS on the tape is faster)"
    return None


class CompiledTrainer:
    """Runs `fit`'s epochs through `kernels.program.train_epoch` (see `fit_fallback`)."""

    def __init__(
        self, net: Any, objective: Any, optimizer: Any, x: Array, y: Array, cfg: Any, classify: bool
    ) -> None:
        c = compiled_for(net)
        assert c is not None  # fit_fallback said so
        self.c, self.net, self.opt, self.cfg = c, net, optimizer, cfg
        dt = c.dtype
        self.x = np.ascontiguousarray(x, dtype=dt).reshape(-1)  # (N, ...) -> flat rows
        self.y = np.ascontiguousarray(y, dtype=dt).reshape(-1)  # (N, K) -> flat rows
        self.bs = int(cfg.batch_size)
        self.bmax = max(1, min(self.bs, len(x)))
        self.io = c.program.io.copy()
        self.io[4] = objective_code(net, objective)[0]
        self.io[5] = int(classify)
        n = c.program.n_params
        self.P, self.G = np.empty(n, dt), np.zeros(n, dt)
        self.code = _OPTIMIZERS[type(optimizer)]
        self.bufs = [np.zeros(n if k else 0, dt) for k in _BUFFERS[self.code]]
        self.cs = c.cs
        clip_v = np.nan if cfg.clip_value is None else float(cfg.clip_value)
        clip_n = np.nan if cfg.clip_norm is None else float(cfg.clip_norm)
        if cfg.clip_value is not None:
            optim.clip_by_value(np.zeros(1), -clip_v, clip_v)  # the same argument checks
        if cfg.clip_norm is not None:
            optim.clip_grad_norm({}, clip_n)
        self.clip = np.array([clip_v, clip_n], np.float64)

    def _store(self, kind: str) -> dict[str, Array] | None:
        """The optimizer's state dict for buffer `kind`, None when it never fills one."""
        if not kind or (self.code == pk.SGDM and self.opt.momentum == 0):
            return None
        return self.opt.state.get(kind)

    def epoch(self, order: Array) -> tuple[int, int, int, int, Array]:
        """One epoch in `order`; returns (status, batch, hits, steps, per-batch losses).

        Parameters, gradients and optimizer state go back to their owners' arrays afterwards,
        also when the kernel stopped at a non-finite loss or gradient.
        """
        c, opt = self.c, self.opt
        params = self.net.named_parameters()
        c.gather(params, self.P)
        code, hp = _hparams(opt)
        have = True
        for kind, buf in zip(_BUFFERS[code], self.bufs, strict=True):
            if not kind:
                continue
            store = self._store(kind)
            if store is None:  # this optimizer configuration has no such buffer
                continue
            if store:
                c.gather(store, buf)
            else:
                buf.fill(0)
                have = False
        n_batches = math.ceil(len(order) / self.bs)
        losses = np.zeros(n_batches, np.float64)
        W, D, T = c.workspaces(self.bmax)
        p = c.program
        status, b, hits, steps = pk.train_epoch(
            p.prog,
            p.fargs,
            p.margs,
            self.io,
            self.P,
            self.G,
            *self.bufs,
            self.x,
            self.y,
            np.ascontiguousarray(order, np.int64),
            self.bs,
            self.bmax,
            W,
            D,
            T,
            c.tw,
            self.clip,
            code,
            hp,
            opt.t,
            have,
            self.cs,
            losses,
        )
        c.scatter(self.P, params)
        c.scatter(self.G, self.net.named_grads())
        if steps > 0:
            opt.t += int(steps)
            for kind, buf in zip(_BUFFERS[code], self.bufs, strict=True):
                store = self._store(kind)
                if store is None:
                    continue
                for name, off, size in p.layout:
                    arr = store.get(name)
                    if arr is None:
                        arr = store[name] = np.zeros_like(params[name])
                    arr[...] = buf[off : off + size].reshape(arr.shape)
        return int(status), int(b), int(hits), int(steps), losses
