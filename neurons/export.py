"""`python -m neurons.export <run dir or checkpoint> --format onnx|safetensors [--out FILE]`.

ONNX graphs are built with `onnx.helper` by walking the engine's own `Network._run` with a
symbolic executor, so loops and feedback blocks unroll exactly as in training (tied copies share
initializers). Preprocessing sits inside the graph; the output is what `neurons.predict` reports.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np

from neurons import tensorfile
from neurons.graph import Feedback, Network
from neurons.inference import CheckpointError, Predictor, load_model, model_metadata
from neurons.layers import (
    Activation,
    Affine,
    AvgPool2d,
    BatchNorm,
    Conv2d,
    Deconv2d,
    Dense,
    Dropout,
    Layer,
    MaxPool2d,
    NormConv2d,
    NormDense,
    Reshape,
)

OPSET = 17
IR_VERSION = 8  # opset 17 needs IR >= 8; every onnxruntime >= 1.12 reads it
PROBES = ("none", "no_feedback", "no_skip")


class ExportError(ValueError):
    """The model cannot be exported as asked; the message names the layer or option."""


# --------------------------------------------------------------------------- safetensors
def export_safetensors(p: Predictor, out: Path) -> Path:
    """Weights as `param.*` / `buffer.*` tensors; the model card and preprocessing in metadata."""
    meta = {"neurons": json.dumps(model_metadata(p)), "format": "neurons"}
    tensorfile.save(out, p.network.state_dict(), meta)
    return out


# --------------------------------------------------------------------------- ONNX
class _Sym:
    """A symbolic tensor: an ONNX value name and its shape (batch axis first, as 'N')."""

    __slots__ = ("name", "shape")

    def __init__(self, name: str, shape: tuple) -> None:
        self.name, self.shape = name, tuple(shape)


class _Builder:
    """Nodes and initializers of one graph, and the executor `Network._run` drives."""

    def __init__(self, net: Network, recurrent: bool, skips: bool) -> None:
        from onnx import TensorProto

        self.net = net
        self.recurrent, self.skips, self.tape = recurrent, skips, None
        self.nodes: list[Any] = []
        self.inits: dict[str, Any] = {}
        self.n = 0
        self.prefix = {id(ly): p for p, ly in net.unique_layers()}
        self.float32 = TensorProto.FLOAT
        self.elem = TensorProto.DOUBLE if net.dtype == np.float64 else TensorProto.FLOAT

    # -- plumbing
    def fresh(self, hint: str) -> str:
        self.n += 1
        return f"{hint}_{self.n}"

    def node(self, op: str, ins: list[str], shape: tuple, hint: str = "", **attrs: Any) -> _Sym:
        from onnx import helper

        out = self.fresh(hint or op.lower())
        self.nodes.append(helper.make_node(op, ins, [out], name=out, **attrs))
        return _Sym(out, shape)

    def const(self, name: str, value: np.ndarray) -> str:
        from onnx import numpy_helper

        if name not in self.inits:
            self.inits[name] = numpy_helper.from_array(np.ascontiguousarray(value), name)
        return name

    def scalar(self, value: float) -> str:
        name = f"const_{value!r}"
        return self.const(name, np.array(value, dtype=self.net.dtype))

    def shape_const(self, shape: tuple) -> str:
        dims = [-1, *[int(s) for s in shape]]
        return self.const("shape_" + "x".join(map(str, dims)), np.array(dims, dtype=np.int64))

    def to_shape(self, x: _Sym, shape: tuple) -> _Sym:
        if x.shape[1:] == tuple(shape):
            return x
        return self.node("Reshape", [x.name, self.shape_const(shape)], ("N", *shape), "reshape")

    # -- the executor interface of neurons.graph._Exec
    def reshape(self, v: tuple, shape: tuple) -> tuple:
        return (self.to_shape(v[0], tuple(shape)), -1)

    def scale_grad(self, v: tuple, s: float) -> tuple:
        return v  # gradient scaling only

    def merge(self, vs: list[tuple], mode: str) -> tuple:
        if len(vs) == 1:
            return vs[0]
        xs = [x for x, _ in vs]
        shape = xs[0].shape

        def chain(op: str, items: list[_Sym]) -> _Sym:
            acc = items[0]
            for b in items[1:]:
                acc = self.node(op, [acc.name, b.name], shape, op.lower())
            return acc

        if mode == "add":
            y = chain("Add", xs)
        elif mode == "subtract":
            y = self.node("Sub", [xs[0].name, chain("Add", xs[1:]).name], shape, "sub")
        elif mode == "multiply":
            y = chain("Mul", xs)
        elif mode == "mean":
            y = self.node("Mean", [x.name for x in xs], shape, "mean")
        elif mode == "overwrite":
            y = xs[-1]
        else:
            raise ExportError(f"merge: no ONNX form for {mode!r}")
        return (y, -1)

    def layer(self, layer: Layer | Feedback, v: tuple, gscale: float = 1.0) -> tuple:
        if isinstance(layer, Feedback):
            return layer.run(self, v)  # type: ignore[arg-type]
        return (self.emit(layer, v[0]), -1)

    # -- layers
    def param(self, layer: Layer, name: str, value: np.ndarray | None = None) -> str:
        key = f"{self.prefix[id(layer)]}{name}"
        return self.const(key, layer.params[name] if value is None else value)

    def activation(self, x: _Sym, act: str, param: float | None) -> _Sym:
        if act == "linear":
            return x
        if act in ("sigmoid", "tanh", "relu"):
            return self.node(
                {"sigmoid": "Sigmoid", "tanh": "Tanh", "relu": "Relu"}[act], [x.name], x.shape
            )
        if act == "leaky_relu":
            alpha = 0.01 if param is None else float(param)
            return self.node("LeakyRelu", [x.name], x.shape, alpha=alpha)
        if act == "elu":
            return self.node("Elu", [x.name], x.shape, alpha=1.0 if param is None else float(param))
        if act == "softmax":  # over every non-batch axis of a sample
            flat = self.to_shape(x, (math.prod(x.shape[1:]),))
            y = self.node("Softmax", [flat.name], flat.shape, axis=1)
            return self.to_shape(y, x.shape[1:])
        raise ExportError(f"activation: no ONNX form for {act!r}")

    def emit(self, layer: Layer, x: _Sym) -> _Sym:
        where = layer.path or layer.kind
        out = ("N", *layer.out_shape)
        if isinstance(layer, Dense | NormDense):
            x = self.to_shape(x, (math.prod(layer.in_shape),))  # (N, D_in)
            if isinstance(layer, NormDense):
                w = self.param(layer, "w")
                tw = self.const(f"{w}.tan", np.tan(layer.params["w"]))
                z = self.node("MatMul", [x.name, tw], out, "matmul")
                n_in = float(layer.params["w"].shape[0])  # as tan_dense_forward
                z = self.node("Div", [z.name, self.scalar(n_in)], out, "div")
            else:
                z = self.node("MatMul", [x.name, self.param(layer, "w")], out, "matmul")
                if "b" in layer.params:
                    z = self.node("Add", [z.name, self.param(layer, "b")], out, "bias")
            return self._finish_affine(layer, z)
        if isinstance(layer, Conv2d | NormConv2d) and self.elem != self.float32:
            raise ExportError(
                f"{where}: train.dtype=float64 with a {layer.kind} layer: onnxruntime has no "
                f"float64 Conv/ConvTranspose kernel; export a float32 run (or use safetensors)"
            )
        if isinstance(layer, NormConv2d):
            x = self.to_shape(x, layer.in_shape)
            w = self.param(layer, "w")
            tw = self.const(f"{w}.tan", np.tan(layer.params["w"]))
            z = self.node("Conv", [x.name, tw], out, "conv", **self._conv_attrs(layer))
            z = self.node("Div", [z.name, self.scalar(float(layer.n_in))], out, "div")
            return self._finish_affine(layer, z)
        if isinstance(layer, Conv2d):
            x = self.to_shape(x, layer.in_shape)
            ins = [x.name, self.param(layer, "w")]
            if "b" in layer.params:
                ins.append(self.param(layer, "b"))
            attrs = self._conv_attrs(layer)
            if isinstance(layer, Deconv2d):
                attrs["output_padding"] = list(layer.output_padding)
                z = self.node("ConvTranspose", ins, out, "deconv", **attrs)
            else:
                z = self.node("Conv", ins, out, "conv", **attrs)
            return self._finish_affine(layer, z)
        if isinstance(layer, MaxPool2d | AvgPool2d):
            x = self.to_shape(x, layer.in_shape)
            op = "MaxPool" if isinstance(layer, MaxPool2d) else "AveragePool"
            return self.node(
                op,
                [x.name],
                out,
                op.lower(),
                kernel_shape=list(layer.kernel_size),
                strides=list(layer.stride),
            )
        if isinstance(layer, Reshape):  # also Flatten
            return self.to_shape(x, tuple(layer.out_shape))
        if isinstance(layer, Dropout):
            return x  # identity at inference
        if isinstance(layer, BatchNorm):
            pre = self.prefix[id(layer)]
            ins = [x.name, self.param(layer, "gamma"), self.param(layer, "beta")]
            ins += [
                self.const(f"{pre}{n}", layer.buffers[n]) for n in ("running_mean", "running_var")
            ]
            return self.node("BatchNormalization", ins, x.shape, "batchnorm", epsilon=layer.eps)
        if isinstance(layer, Activation):
            return self.activation(x, layer.activation, layer.activation_param)
        raise ExportError(f"{where}: no ONNX form for layer kind {layer.kind!r}")

    def _conv_attrs(self, c: Conv2d) -> dict[str, Any]:
        ph, pw = c.padding
        return {
            "kernel_shape": list(c.kernel_size),
            "strides": list(c.stride),
            "pads": [ph, pw, ph, pw],
            "dilations": list(c.dilation),
        }

    def _finish_affine(self, layer: Affine, z: _Sym) -> _Sym:
        a = self.activation(z, layer.activation, layer.activation_param)
        scale = getattr(layer, "scale", None)
        if isinstance(layer, NormDense | NormConv2d) and scale is not None:
            a = self.node("Mul", [a.name, self.scalar(float(scale))], a.shape, "scale")
        return a


def build_onnx(p: Predictor, probe: str = "none") -> Any:
    """The `onnx.ModelProto` of a loaded model (raw input -> probabilities or outputs)."""
    import onnx
    from onnx import TensorProto, helper

    if probe not in PROBES:
        raise ExportError(f"--probe: expected one of {', '.join(PROBES)}, found {probe!r}")
    net = p.network
    b = _Builder(net, recurrent=probe != "no_feedback", skips=probe != "no_skip")
    prep = p.preprocessing
    x = _Sym("input", ("N", *prep.raw_shape))
    if prep.downsample > 1:
        k = prep.downsample
        x = b.node("AveragePool", [x.name], (), "downsample", kernel_shape=[k, k], strides=[k, k])
        c, h, w = prep.raw_shape
        x = _Sym(x.name, ("N", c, h // k, w // k))
    if np.any(prep.shift != 0):
        x = b.node("Sub", [x.name, b.const("preprocess.shift", prep.shift)], x.shape, "shift")
    if np.any(prep.scale != 1):
        x = b.node("Div", [x.name, b.const("preprocess.scale", prep.scale)], x.shape, "scale")
    x = b.to_shape(x, net.input_shape)
    if b.elem != TensorProto.FLOAT:  # preprocessing runs in float32, the network in its dtype
        x = b.node("Cast", [x.name], x.shape, "cast", to=b.elem)
    y, _ = net._run(x, b)  # the engine's own control flow, on symbols
    y = b.to_shape(y, net.output_shape)
    if net.head is not None:
        y = b.activation(y, net.head, None)
    if not p.classification and prep.target_scale is not None and prep.target_shift is not None:
        t_scale, t_shift = (a.astype(net.dtype) for a in (prep.target_scale, prep.target_shift))
        y = b.node("Mul", [y.name, b.const("postprocess.target_scale", t_scale)], y.shape)
        y = b.node("Add", [y.name, b.const("postprocess.target_shift", t_shift)], y.shape)
    out_name = "probabilities" if p.classification else "outputs"
    b.nodes.append(helper.make_node("Identity", [y.name], [out_name], name=out_name))
    outputs = [helper.make_tensor_value_info(out_name, b.elem, ["N", *net.output_shape])]
    if p.classification:
        b.nodes.append(
            helper.make_node(
                "ArgMax", [out_name], ["predictions"], name="predictions", axis=1, keepdims=0
            )
        )
        outputs.append(helper.make_tensor_value_info("predictions", TensorProto.INT64, ["N"]))
    graph = helper.make_graph(
        b.nodes,
        f"neurons_{p.card.arch.get('name', 'model')}",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", *prep.raw_shape])],
        outputs,
        initializer=list(b.inits.values()),
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="neurons",
        ir_version=IR_VERSION,
    )
    meta = model_metadata(p)
    meta["probe"] = probe
    helper.set_model_props(
        model,
        {
            "neurons": json.dumps(meta),
            "task": p.task,
            "classes": json.dumps(p.classes),
            "input": "raw samples (N, *raw_shape); preprocessing is inside the graph: "
            + (prep.description or "none"),
        },
    )
    onnx.checker.check_model(model, full_check=True)
    return model


def export_onnx(p: Predictor, out: Path, probe: str = "none") -> Path:
    from neurons.record import write_atomic

    model = build_onnx(p, probe)
    write_atomic(out, model.SerializeToString())
    return out


# --------------------------------------------------------------------------- CLI
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m neurons.export",
        description="Export a trained model as ONNX (opset 17) or safetensors.",
    )
    ap.add_argument("model", help="a run directory, a checkpoint .npz or a .safetensors file")
    ap.add_argument("--format", required=True, choices=("onnx", "safetensors"))
    ap.add_argument("--out", help="output file (default: <run>/model.<format>)")
    ap.add_argument(
        "--probe",
        default="none",
        choices=PROBES,
        help="ONNX only: export the probing variant (recurrence or skips switched off)",
    )
    args = ap.parse_args(argv)
    try:
        p = load_model(args.model)
        src = Path(args.model)
        base = src if src.is_dir() else src.parent
        suffix = "onnx" if args.format == "onnx" else "safetensors"
        tag = "" if args.probe == "none" else f".{args.probe}"
        out = Path(args.out) if args.out else base / f"model{tag}.{suffix}"
        if args.format == "onnx":
            export_onnx(p, out, args.probe)
        else:
            if args.probe != "none":
                raise ExportError("--probe: applies to --format onnx only")
            export_safetensors(p, out)
    except ImportError as e:
        print(
            f"neurons.export: {e.name or e}: install the onnx extra "
            f"(pip install 'neurons-lab[onnx]')",
            file=sys.stderr,
        )
        return 2
    except (CheckpointError, ExportError, ValueError) as e:
        print(f"neurons.export: {e}", file=sys.stderr)
        return 1
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
