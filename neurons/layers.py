"""Layers over the kernels: named `params`/`grads` (and `buffers`) dicts, shapes inferred at build.

A layer's `forward(x, ctx) -> (y, cache)` returns its cache instead of storing it, so one layer can
run many times (loops, tied feedback copies); `backward(dy, cache, gscale)` ADDS `gscale * grad`
into `self.grads` and returns dx. Shapes exclude the batch axis. No config parsing happens here.
"""

from __future__ import annotations

import abc
import copy
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from neurons import init as initializers
from neurons.kernels import Array, Cache, Shape, pair
from neurons.kernels import conv as convk
from neurons.kernels import pool as poolk
from neurons.kernels.activations import ACTIVATION_PARAM, ACTIVATIONS
from neurons.kernels.dense import (
    crate_dense_backward,
    crate_dense_forward,
    dense_backward,
    dense_forward,
    tan_dense_backward,
    tan_dense_forward,
)
from neurons.kernels.norm import (
    batchnorm_backward,
    batchnorm_forward_eval,
    batchnorm_forward_train,
    dropout_backward,
    dropout_forward,
)


class BuildError(ValueError):
    """A network cannot be built as configured; the message names the config path."""


@dataclass
class Context:
    """What a forward pass needs besides the input: the mode, the rng, optional captures."""

    train: bool = False
    rng: np.random.Generator | None = None
    capture: dict[int, list[Array]] | None = field(default=None)


def _checked_activation(name: str) -> str:
    if name not in ACTIVATIONS:
        raise BuildError(f"activation: expected one of {sorted(ACTIVATIONS)}, found {name!r}")
    return name


def activate(name: str, param: float | None, z: Array) -> tuple[Array, Cache]:
    """Activation `name` of `z` (with its `activation_param` where it takes one): (a, cache)."""
    fwd = ACTIVATIONS[name][0]
    if name in ACTIVATION_PARAM and param is not None:
        return fwd(z, param)
    return fwd(z)


class Layer(abc.ABC):
    """Base class. Subclasses set `kind` and implement `_build` (if shapes change), forward
    and backward."""

    kind = "layer"

    def __init__(self) -> None:
        self.params: dict[str, Array] = {}
        self.grads: dict[str, Array] = {}
        self.buffers: dict[str, Array] = {}
        self.in_shape: Shape = ()
        self.out_shape: Shape = ()
        self.path = ""  # config path, e.g. "arch.layers[2]", for error messages

    def build(self, in_shape: Shape, rng: np.random.Generator, dtype: np.dtype) -> Shape:
        self.in_shape = tuple(in_shape)
        self.out_shape = self._build(self.in_shape, rng, np.dtype(dtype))
        self.grads = {k: np.zeros_like(v) for k, v in self.params.items()}
        return self.out_shape

    def _build(self, in_shape: Shape, rng: np.random.Generator, dtype: np.dtype) -> Shape:
        return in_shape

    @abc.abstractmethod
    def forward(self, x: Array, ctx: Context) -> tuple[Array, Cache]:
        """x: (N, *in_shape) -> (y: (N, *out_shape), cache for backward)."""

    @abc.abstractmethod
    def backward(self, dy: Array, cache: Cache, gscale: float = 1.0) -> Array:
        """Add gscale * parameter gradients into self.grads; return dx."""

    def backward_params(self, dy: Array, cache: Cache, gscale: float = 1.0) -> None:
        """`backward` for a layer whose dx nobody reads (it reads the network input): only the
        parameter gradients. Layers that can skip the dx work override this."""
        self.backward(dy, cache, gscale)

    def _acc(self, name: str, g: Array, gscale: float) -> None:
        self.grads[name] += g if gscale == 1.0 else g * gscale

    def zero_grad(self) -> None:
        for g in self.grads.values():
            g.fill(0)

    def n_params(self) -> int:
        return int(sum(p.size for p in self.params.values()))

    def describe(self) -> str:
        return self.kind

    def clone(self) -> Layer:
        """An independent copy with equal (copied) parameters."""
        return copy.deepcopy(self)


# --------------------------------------------------------------------------- affine + activation


class Affine(Layer):
    """A linear map followed by an activation: z = lin(x); a = act(z)."""

    def __init__(
        self,
        activation: str = "linear",
        activation_param: float | None = None,
        init: str = "auto",
        init_args: dict | None = None,
    ) -> None:
        super().__init__()
        self.activation = _checked_activation(activation)
        self.activation_param = activation_param
        self.init = init
        self.init_args = dict(init_args or {})

    # subclasses: _lin_forward(x) -> (z, cache), _lin_backward(dz, cache, gscale) -> dx
    def forward(self, x: Array, ctx: Context) -> tuple[Array, Cache]:
        z, c1 = self._lin_forward(x)
        if ctx.capture is not None:
            ctx.capture.setdefault(id(self), []).append(z)
        a, c2 = activate(self.activation, self.activation_param, z)
        return a, (c1, c2)

    def backward(self, dy: Array, cache: Cache, gscale: float = 1.0) -> Array:
        c1, c2 = cache
        dz = ACTIVATIONS[self.activation][1](dy, c2)
        return self._lin_backward(dz, c1, gscale)

    def _init_weight(
        self, rng: np.random.Generator, shape: Shape, fan_in: int, fan_out: int, dtype: np.dtype
    ) -> Array:
        name = self.init
        kw = dict(self.init_args)
        if name == "auto":  # He for the ReLU family, Glorot otherwise (Keras/PyTorch habits)
            relu_like = self.activation in ("relu", "leaky_relu", "elu")
            name = "kaiming_uniform" if relu_like else "xavier_uniform"
            if relu_like:
                kw.setdefault(
                    "nonlinearity", "leaky_relu" if self.activation == "leaky_relu" else "relu"
                )
                if self.activation == "leaky_relu":
                    kw.setdefault(
                        "a", 0.01 if self.activation_param is None else self.activation_param
                    )
        if name == "lsuv":  # orthogonal start; neurons.graph.lsuv_init rescales with data
            name = "orthogonal"
        try:
            w = initializers.make_initializer(name, **kw)(
                rng, shape, fan_in=fan_in, fan_out=fan_out, dtype=dtype
            )
        except initializers.UnknownInitializer:
            names = sorted([*initializers.INITIALIZERS, "auto", "lsuv"])
            raise BuildError(
                f"{self.path}.init: expected one of {names}, found {self.init!r}"
            ) from None
        except (TypeError, ValueError) as e:
            raise BuildError(f"{self.path}.init_args: {e}") from None
        return np.asarray(w, dtype=dtype)

    def describe(self) -> str:
        return f"{self.kind}[{self.activation}]"


class Dense(Affine):
    """y = act(x @ w + b); an input of any shape is flattened per sample first."""

    kind = "dense"

    def __init__(self, units: int, bias: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.units = int(units)
        self.bias = bool(bias)
        self.sum_order = "blas"  # "crate": compat mode's left-to-right sums (kernels/dense.py)

    def _build(self, in_shape: Shape, rng: np.random.Generator, dtype: np.dtype) -> Shape:
        if self.units < 1:
            raise BuildError(f"{self.path}.units: expected a positive int, found {self.units}")
        d_in = math.prod(in_shape)
        self.params["w"] = self._init_weight(rng, (d_in, self.units), d_in, self.units, dtype)
        if self.bias:
            self.params["b"] = np.zeros(self.units, dtype)
        return (self.units,)

    def _lin_forward(self, x: Array) -> tuple[Array, Cache]:
        shape = x.shape
        x2 = x.reshape(shape[0], -1)  # (N, *in_shape) -> (N, D_in): automatic flatten
        fwd = crate_dense_forward if self.sum_order == "crate" else dense_forward
        z, c = fwd(x2, self.params["w"], self.params.get("b"))
        return z, (c, shape)

    def _lin_backward(self, dz: Array, cache: Cache, gscale: float) -> Array:
        c, shape = cache
        bwd = crate_dense_backward if self.sum_order == "crate" else dense_backward
        dx, dw, db = bwd(dz, c)
        self._acc("w", dw, gscale)
        if db is not None:
            self._acc("b", db, gscale)
        return dx.reshape(shape)  # (N, D_in) -> (N, *in_shape)

    def backward_params(self, dy: Array, cache: Cache, gscale: float = 1.0) -> None:
        """dw (and db) only: `x.T @ dz` without the `dz @ w.T` that nobody reads."""
        own = (
            type(self).backward is Dense.backward
            and type(self)._lin_backward is Dense._lin_backward
        )
        own = own and "backward" not in vars(self)  # an instance-patched one (debug=profile)
        if not own or self.sum_order == "crate":  # a subclass's own backward; compat's sums
            self.backward(dy, cache, gscale)
            return
        c1, c2 = cache
        dz = ACTIVATIONS[self.activation][1](dy, c2)
        (x, _, has_bias), _ = c1
        self._acc("w", x.T @ dz, gscale)
        if has_bias:
            self._acc("b", dz.sum(axis=0), gscale)

    def describe(self) -> str:
        return f"dense({self.units}{'' if self.bias else ', no bias'})[{self.activation}]"


def _require_image(layer: Layer, in_shape: Shape) -> tuple[int, int, int]:
    if len(in_shape) != 3:
        raise BuildError(
            f"{layer.path}: {layer.kind} expects a (C, H, W) input, found {tuple(in_shape)}; "
            f"add a layer {{kind: reshape, shape: [C, H, W]}} before it "
            f"(the original crate read a 1-D input of n values as (1, 1, n))"
        )
    return in_shape  # type: ignore[return-value]


class Conv2d(Affine):
    """2-D cross-correlation with stride, zero padding, dilation and optional bias."""

    kind = "conv"
    _backward_kernel = staticmethod(convk.conv2d_backward)

    def __init__(
        self,
        filters: int,
        kernel_size: int | tuple[int, int] = 3,
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] = 0,
        dilation: int | tuple[int, int] = 1,
        bias: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.filters = int(filters)
        self.kernel_size = pair(kernel_size, "kernel_size", BuildError)
        self.stride = pair(stride, "stride", BuildError)
        self.padding = pair(padding, "padding", BuildError)
        self.dilation = pair(dilation, "dilation", BuildError)
        self.bias = bool(bias)

    def _output_hw(self, hw: tuple[int, int]) -> tuple[int, int]:
        return convk.conv2d_output_shape(
            hw, self.kernel_size, self.stride, self.padding, self.dilation
        )

    def _weight_shape(self, c: int) -> Shape:
        return (self.filters, c, *self.kernel_size)

    def _build(self, in_shape: Shape, rng: np.random.Generator, dtype: np.dtype) -> Shape:
        c, h, w = _require_image(self, in_shape)
        try:
            oh, ow = self._output_hw((h, w))
        except ValueError as e:
            raise BuildError(f"{self.path}: {e} (input {tuple(in_shape)})") from None
        shape = self._weight_shape(c)
        # PyTorch's fans: dim 1 of the weight is "in" (for deconv that is F), dim 0 is "out"
        fan_in, fan_out = math.prod(shape[1:]), shape[0] * math.prod(shape[2:])
        self.params["w"] = self._init_weight(rng, shape, fan_in, fan_out, dtype)
        if self.bias:
            self.params["b"] = np.zeros(self.filters, dtype)
        return (self.filters, oh, ow)

    _fuse = True  # relu/linear convs: bias and activation inside the conv kernel (not Deconv2d)

    def forward(self, x: Array, ctx: Context) -> tuple[Array, Cache]:
        w = self.params["w"]
        if self._fuse and ctx.capture is None and convk.fusable(w, self.stride, self.activation):
            x = x.reshape(x.shape[0], *self.in_shape)  # (N, C, H, W)
            b, s, p, d = self.params.get("b"), self.stride, self.padding, self.dilation
            return convk.conv2d_act_forward(x, w, b, s, p, d, self.activation)
        return super().forward(x, ctx)

    def backward(self, dy: Array, cache: Cache, gscale: float = 1.0) -> Array:
        if isinstance(cache, convk.FusedCache):
            dx, dw, db = convk.conv2d_act_backward(dy, cache)
            self._acc("w", dw, gscale)
            if db is not None:
                self._acc("b", db, gscale)
            return dx
        return super().backward(dy, cache, gscale)

    def _lin_forward(self, x: Array) -> tuple[Array, Cache]:
        x = x.reshape(x.shape[0], *self.in_shape)  # a flat skip/loop input back to (N, C, H, W)
        return convk.conv2d_forward(
            x, self.params["w"], self.params.get("b"), self.stride, self.padding, self.dilation
        )

    def _lin_backward(self, dz: Array, cache: Cache, gscale: float) -> Array:
        dx, dw, db = self._backward_kernel(dz, cache)
        self._acc("w", dw, gscale)
        if db is not None:
            self._acc("b", db, gscale)
        return dx

    def describe(self) -> str:
        k = "x".join(map(str, self.kernel_size))
        geo = f"{self.filters}, {k}, s{self.stride[0]}, p{self.padding[0]}"
        return f"{self.kind}({geo})[{self.activation}]"


class Deconv2d(Conv2d):
    """Transposed 2-D convolution (PyTorch ConvTranspose2d semantics), weight (C_in, F, kh, kw)."""

    kind = "deconv"
    _backward_kernel = staticmethod(convk.deconv2d_backward)
    _fuse = False

    def __init__(
        self, *args: Any, output_padding: int | tuple[int, int] = 0, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)  # Conv2d's keys
        self.output_padding = pair(output_padding, "output_padding", BuildError)

    def _output_hw(self, hw: tuple[int, int]) -> tuple[int, int]:
        return convk.deconv2d_output_shape(
            hw, self.kernel_size, self.stride, self.padding, self.dilation, self.output_padding
        )

    def _weight_shape(self, c: int) -> Shape:
        return (c, self.filters, *self.kernel_size)

    def _lin_forward(self, x: Array) -> tuple[Array, Cache]:
        x = x.reshape(x.shape[0], *self.in_shape)
        w, b = self.params["w"], self.params.get("b")
        s, p, d, op = self.stride, self.padding, self.dilation, self.output_padding
        return convk.deconv2d_forward(x, w, b, s, p, d, op)


class _OutputScale:
    """NormNet's optional output scale, y = layer(x) * scale (a mixin before the layer class)."""

    scale: float | None

    def forward(self, x: Array, ctx: Context) -> tuple[Array, Cache]:
        a, cache = super().forward(x, ctx)  # type: ignore[misc]
        return (a * a.dtype.type(self.scale), cache) if self.scale is not None else (a, cache)

    def backward(self, dy: Array, cache: Cache, gscale: float = 1.0) -> Array:
        if self.scale is not None:
            dy = dy * dy.dtype.type(self.scale)
        return super().backward(dy, cache, gscale)  # type: ignore[misc]


class NormDense(_OutputScale, Affine):
    """The `brains` crate's NormNet dense layer: act((x @ tan(W)) / n_in) * scale, no bias.

    Weights start N(0, 1); the tan makes large weights' gradients grow, pushing connections
    towards zero ("gradient-based connection dropout"). `scale` (optional) rescales the output.
    """

    kind = "normdense"

    def __init__(self, units: int, scale: float | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("init", "normal")
        super().__init__(**kwargs)
        self.units = int(units)
        self.scale = scale

    def _build(self, in_shape: Shape, rng: np.random.Generator, dtype: np.dtype) -> Shape:
        d_in = math.prod(in_shape)
        self.params["w"] = self._init_weight(rng, (d_in, self.units), d_in, self.units, dtype)
        return (self.units,)

    def _lin_forward(self, x: Array) -> tuple[Array, Cache]:
        shape = x.shape
        z, c = tan_dense_forward(x.reshape(shape[0], -1), self.params["w"])  # (N, D_in)
        return z, (c, shape)

    def _lin_backward(self, dz: Array, cache: Cache, gscale: float) -> Array:
        c, shape = cache
        dx, dw = tan_dense_backward(dz, c)
        self._acc("w", dw, gscale)
        return dx.reshape(shape)

    def describe(self) -> str:
        return f"normdense({self.units})[{self.activation}]"


class NormConv2d(_OutputScale, Conv2d):
    """NormNet convolution: act(conv(x, tan(W)) / (C_in * kh * kw)) * scale, no bias.

    Conv2d's geometry keys; weights start N(0, 1) (`init: normal`) unless `init` says otherwise.
    """

    kind = "normconv"
    _fuse = False  # tan(W), the 1/n_in and the output scale live in _lin_forward

    def __init__(
        self, *args: Any, scale: float | None = None, bias: bool = False, **kwargs: Any
    ) -> None:
        if bias:
            raise BuildError("bias: expected false (a normconv layer has no bias), found true")
        kwargs.setdefault("init", "normal")
        super().__init__(*args, bias=False, **kwargs)
        self.scale = scale

    def _build(self, in_shape: Shape, rng: np.random.Generator, dtype: np.dtype) -> Shape:
        out = super()._build(in_shape, rng, dtype)  # the weight (F, C_in, kh, kw), no bias
        self.n_in = math.prod(self.params["w"].shape[1:])
        return out

    def _lin_forward(self, x: Array) -> tuple[Array, Cache]:
        x = x.reshape(x.shape[0], *self.in_shape)
        w = self.params["w"]
        tw = np.tan(w)
        z, c = convk.conv2d_forward(x, tw, None, self.stride, self.padding, self.dilation)
        return z / z.dtype.type(self.n_in), (c, tw)

    def _lin_backward(self, dz: Array, cache: Cache, gscale: float) -> Array:
        c, tw = cache
        dx, dtw, _ = convk.conv2d_backward(dz, c)
        inv = dz.dtype.type(1.0 / self.n_in)
        self._acc("w", (dtw * (1 + tw * tw) * inv).astype(tw.dtype, copy=False), gscale)
        return dx * inv

    def describe(self) -> str:
        return f"normconv({self.filters})[{self.activation}]"


# --------------------------------------------------------------------------- parameter-free layers


class Activation(Layer):
    """A standalone activation layer (`kind: activation, activation: relu`)."""

    kind = "activation"

    def __init__(self, activation: str, activation_param: float | None = None) -> None:
        super().__init__()
        self.activation = _checked_activation(activation)
        self.activation_param = activation_param

    def forward(self, x: Array, ctx: Context) -> tuple[Array, Cache]:
        return activate(self.activation, self.activation_param, x)

    def backward(self, dy: Array, cache: Cache, gscale: float = 1.0) -> Array:
        return ACTIVATIONS[self.activation][1](dy, cache)

    def describe(self) -> str:
        return self.activation


class _Pool(Layer):
    """Max or average pooling: a subclass names its kernels (`neurons.kernels.pool`)."""

    _forward_kernel: Any
    _backward_kernel: Any

    def __init__(
        self, kernel_size: int | tuple[int, int] = 2, stride: int | tuple[int, int] | None = None
    ) -> None:
        super().__init__()
        self.kernel_size = pair(kernel_size, "kernel_size", BuildError)
        self.stride = pair(stride if stride is not None else kernel_size, "stride", BuildError)

    def _build(self, in_shape: Shape, rng: np.random.Generator, dtype: np.dtype) -> Shape:
        c, h, w = _require_image(self, in_shape)
        (kh, kw), (sh, sw) = self.kernel_size, self.stride
        if kh > h or kw > w or min(kh, kw, sh, sw) < 1:
            raise BuildError(
                f"{self.path}: {self.kind} window {self.kernel_size} with stride {self.stride} "
                f"does not fit the input {tuple(in_shape)}"
            )
        return (c, (h - kh) // sh + 1, (w - kw) // sw + 1)

    def forward(self, x: Array, ctx: Context) -> tuple[Array, Cache]:
        x = x.reshape(x.shape[0], *self.in_shape)
        return self._forward_kernel(x, self.kernel_size, self.stride)

    def backward(self, dy: Array, cache: Cache, gscale: float = 1.0) -> Array:
        return self._backward_kernel(dy, cache)

    def describe(self) -> str:
        return f"{self.kind}({self.kernel_size[0]}x{self.kernel_size[1]}, s{self.stride[0]})"


class MaxPool2d(_Pool):
    kind = "maxpool"
    _forward_kernel = staticmethod(poolk.maxpool2d_forward)
    _backward_kernel = staticmethod(poolk.maxpool2d_backward)


class AvgPool2d(_Pool):
    kind = "avgpool"
    _forward_kernel = staticmethod(poolk.avgpool2d_forward)
    _backward_kernel = staticmethod(poolk.avgpool2d_backward)


class Reshape(Layer):
    """Reshape each sample; `Flatten` is Reshape to (prod(in_shape),)."""

    kind = "reshape"

    def __init__(self, shape: tuple[int, ...] | list[int]) -> None:
        super().__init__()
        self.shape = tuple(int(s) for s in shape)

    def _build(self, in_shape: Shape, rng: np.random.Generator, dtype: np.dtype) -> Shape:
        if math.prod(self.shape) != math.prod(in_shape):
            raise BuildError(
                f"{self.path}.shape: {list(self.shape)} has {math.prod(self.shape)} values, "
                f"the input {tuple(in_shape)} has {math.prod(in_shape)}"
            )
        return self.shape

    def forward(self, x: Array, ctx: Context) -> tuple[Array, Cache]:
        return x.reshape(x.shape[0], *self.shape), x.shape

    def backward(self, dy: Array, cache: Cache, gscale: float = 1.0) -> Array:
        return dy.reshape(cache)

    def describe(self) -> str:
        return f"reshape{list(self.shape)}"


class Flatten(Reshape):
    kind = "flatten"

    def __init__(self) -> None:
        super().__init__(())

    def _build(self, in_shape: Shape, rng: np.random.Generator, dtype: np.dtype) -> Shape:
        self.shape = (math.prod(in_shape),)
        return self.shape

    def describe(self) -> str:
        return "flatten"


class Dropout(Layer):
    """Inverted dropout with probability p, drawn from the context's rng; identity in eval."""

    kind = "dropout"

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        if not 0.0 <= float(p) < 1.0:
            raise BuildError(f"dropout.p: expected 0 <= p < 1, found {p}")
        self.p = float(p)

    def forward(self, x: Array, ctx: Context) -> tuple[Array, Cache]:
        if not ctx.train or self.p == 0.0:
            return x, None
        if ctx.rng is None:
            raise ValueError(f"{self.path}: dropout in training mode needs an rng")
        return dropout_forward(x, self.p, ctx.rng)

    def backward(self, dy: Array, cache: Cache, gscale: float = 1.0) -> Array:
        return dy if cache is None else dropout_backward(dy, cache)

    def describe(self) -> str:
        return f"dropout({self.p})"


class BatchNorm(Layer):
    """Batch normalisation per feature (N, D) or per channel (N, C, H, W), PyTorch semantics."""

    kind = "batchnorm"

    def __init__(self, momentum: float = 0.1, eps: float = 1e-5) -> None:
        super().__init__()
        self.momentum = float(momentum)
        self.eps = float(eps)

    def _build(self, in_shape: Shape, rng: np.random.Generator, dtype: np.dtype) -> Shape:
        if len(in_shape) not in (1, 3):
            raise BuildError(f"{self.path}: batchnorm expects (D,) or (C, H, W), found {in_shape}")
        c = in_shape[0]
        self.params = {"gamma": np.ones(c, dtype), "beta": np.zeros(c, dtype)}
        self.buffers = {"running_mean": np.zeros(c, dtype), "running_var": np.ones(c, dtype)}
        return in_shape

    def forward(self, x: Array, ctx: Context) -> tuple[Array, Cache]:
        g, b = self.params["gamma"], self.params["beta"]
        if not ctx.train:
            return batchnorm_forward_eval(
                x, g, b, self.buffers["running_mean"], self.buffers["running_var"], self.eps
            )
        y, mean, var, cache = batchnorm_forward_train(x, g, b, self.eps)
        m = self.momentum
        rm, rv = self.buffers["running_mean"], self.buffers["running_var"]
        rm *= 1 - m
        rm += m * mean.astype(rm.dtype)
        rv *= 1 - m
        rv += m * var.astype(rv.dtype)
        return y, cache

    def backward(self, dy: Array, cache: Cache, gscale: float = 1.0) -> Array:
        dx, dg, db = batchnorm_backward(dy, cache)
        self._acc("gamma", dg.astype(dy.dtype, copy=False), gscale)
        self._acc("beta", db.astype(dy.dtype, copy=False), gscale)
        return dx
