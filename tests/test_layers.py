"""Layers and activation kernels: float64 finite-difference gradients (random upstream), shapes,
gradient accumulation, and the checker's own negative control."""

import numpy as np
import pytest

from neurons.gradcheck import GradCheckError, check_grad
from neurons.kernels.activations import ACTIVATIONS
from neurons.layers import (
    Activation,
    AvgPool2d,
    BatchNorm,
    BuildError,
    Context,
    Conv2d,
    Deconv2d,
    Dense,
    Dropout,
    Flatten,
    MaxPool2d,
    NormConv2d,
    NormDense,
    Reshape,
)


def layer_gradcheck(layer, in_shape, rng, train=True, n=3):
    layer.build(in_shape, rng, np.float64)
    x = rng.standard_normal((n, *in_shape))

    def ctx():  # a fresh, equally seeded rng: dropout draws the same mask every call
        return Context(train=train, rng=np.random.default_rng(7))

    inputs = {"x": x, **{f"p.{k}": v for k, v in layer.params.items()}}

    def fwd():
        return layer.forward(x, ctx())[0]

    def bwd(g):
        layer.zero_grad()
        _, cache = layer.forward(x, ctx())
        dx = layer.backward(g, cache)
        return {"x": dx, **{f"p.{k}": layer.grads[k].copy() for k in layer.params}}

    check_grad(layer.describe(), fwd, bwd, inputs, rng)
    return layer


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_activation_kernels_gradcheck(name, rng):
    fwd, bwd = ACTIVATIONS[name]
    z = rng.standard_normal((4, 5))

    def backward(g):
        _, cache = fwd(z)
        return {"z": bwd(g, cache)}

    check_grad(name, lambda: fwd(z)[0], backward, {"z": z}, rng)


def test_softmax_is_a_distribution_and_stable(rng):
    z = np.array([[1000.0, 1000.0, -1000.0], [0.0, 1.0, 2.0]])
    a, _ = ACTIVATIONS["softmax"][0](z)
    np.testing.assert_allclose(a.sum(axis=1), 1.0)
    np.testing.assert_allclose(a[0], [0.5, 0.5, 0.0])


@pytest.mark.parametrize(
    "activation", ["linear", "sigmoid", "tanh", "relu", "leaky_relu", "elu", "softmax"]
)
@pytest.mark.parametrize("bias", [True, False])
def test_dense_gradcheck(activation, bias, rng):
    layer_gradcheck(Dense(4, bias=bias, activation=activation), (5,), rng)


@pytest.mark.parametrize("bias", [True, False])
def test_dense_in_the_crates_summation_order_gradcheck(bias, rng):
    """compat mode's Dense (sum_order="crate"): the same maths, other kernels."""
    layer = Dense(4, bias=bias, activation="relu")
    layer.sum_order = "crate"
    layer_gradcheck(layer, (5,), rng)


def test_crate_order_kernels_add_left_to_right_in_float32(rng):
    """Bit for bit the obvious loops (float32 adds in order, one rounding per add), and close
    to BLAS; a parameter-only backward gives the same weight gradient."""
    from neurons.kernels.dense import crate_matmul, crate_outer_sum

    x = rng.standard_normal((3, 7)).astype(np.float32)
    w = rng.standard_normal((7, 5)).astype(np.float32)
    dy = rng.standard_normal((3, 5)).astype(np.float32)

    def loops(a, b, shape, at):  # out[p, q] = sum over k in order of a[at_a] * b[at_b]
        out = np.zeros(shape[:2], np.float32)
        for p_ in range(shape[0]):
            for q in range(shape[1]):
                acc = np.float32(0)
                for k in range(shape[2]):
                    ia, ib = at(p_, q, k)
                    acc = np.float32(acc + np.float32(a[ia] * b[ib]))
                out[p_, q] = acc
        return out

    assert np.array_equal(
        crate_matmul(x, w), loops(w, x, (3, 5, 7), lambda s_, j, i: ((i, j), (s_, i)))
    )
    assert np.array_equal(
        crate_matmul(dy, w.T), loops(w, dy, (3, 7, 5), lambda s_, i, j: ((i, j), (s_, j)))
    )
    assert np.array_equal(
        crate_outer_sum(x, dy), loops(dy, x, (7, 5, 3), lambda i, j, s_: ((s_, j), (s_, i)))
    )
    np.testing.assert_allclose(crate_matmul(x, w), x @ w, rtol=1e-5, atol=1e-5)
    layer = Dense(5, bias=True)
    layer.build((7,), rng, np.float32)
    layer.sum_order = "crate"
    _, cache = layer.forward(x, Context())
    layer.backward(dy, cache)
    full = layer.grads["w"].copy()
    layer.zero_grad()
    layer.backward_params(dy, cache)
    assert np.array_equal(layer.grads["w"], full)


def test_dense_flattens_images(rng):
    layer = layer_gradcheck(Dense(3), (2, 3, 2), rng)
    assert layer.params["w"].shape == (12, 3)


def test_activation_params_change_the_output(rng):
    z = np.array([[-2.0, 3.0]])
    a1 = Activation("leaky_relu", 0.2).forward(z, Context())[0]
    a2 = Activation("elu", 2.0).forward(z, Context())[0]
    np.testing.assert_allclose(a1, [[-0.4, 3.0]])
    np.testing.assert_allclose(a2, [[2.0 * np.expm1(-2.0), 3.0]])


@pytest.mark.parametrize(
    "kw",
    [
        dict(kernel_size=3, padding=1),
        dict(kernel_size=(2, 3), stride=2, padding=(1, 0), bias=False),
        dict(kernel_size=3, dilation=2, padding=2, activation="tanh"),
    ],
)
def test_conv_gradcheck(kw, rng):
    layer = layer_gradcheck(Conv2d(3, **kw), (2, 6, 5), rng)
    assert layer.out_shape[0] == 3


@pytest.mark.parametrize(
    "kw",
    [
        dict(kernel_size=3),
        dict(kernel_size=3, stride=2, padding=1, output_padding=1, bias=False),
        dict(kernel_size=2, dilation=2, activation="relu"),
    ],
)
def test_deconv_gradcheck(kw, rng):
    layer_gradcheck(Deconv2d(2, **kw), (3, 4, 3), rng)


@pytest.mark.parametrize("cls", [MaxPool2d, AvgPool2d])
@pytest.mark.parametrize("k,s", [(2, 2), (3, 1), (2, 3)])
def test_pool_gradcheck(cls, k, s, rng):
    layer = layer_gradcheck(cls(k, s), (2, 7, 6), rng)
    assert layer.out_shape == (2, (7 - k) // s + 1, (6 - k) // s + 1)


def test_reshape_flatten_dropout_gradcheck(rng):
    layer_gradcheck(Flatten(), (2, 3, 4), rng)
    layer_gradcheck(Reshape([3, 8]), (2, 3, 4), rng)
    layer_gradcheck(Dropout(0.3), (10,), rng)


def test_dropout_is_inverted_and_off_in_eval(rng):
    layer = Dropout(0.25)
    layer.build((4000,), rng, np.float32)
    x = np.ones((2, 4000), np.float32)
    y, _ = layer.forward(x, Context(train=True, rng=np.random.default_rng(0)))
    kept = y != 0
    assert 0.70 < kept.mean() < 0.80
    np.testing.assert_allclose(y[kept], 1 / 0.75, rtol=1e-6)
    assert y.dtype == np.float32
    y_eval, _ = layer.forward(x, Context(train=False))
    np.testing.assert_array_equal(y_eval, x)


@pytest.mark.parametrize("shape", [(5,), (3, 4, 4)])
@pytest.mark.parametrize("train", [True, False])
def test_batchnorm_gradcheck(shape, train, rng):
    layer = BatchNorm()
    layer.build(shape, rng, np.float64)
    layer.params["gamma"][:] = rng.standard_normal(shape[0])
    layer.params["beta"][:] = rng.standard_normal(shape[0])
    layer.buffers["running_var"][:] = rng.uniform(0.5, 2, shape[0])
    x = rng.standard_normal((6, *shape))
    inputs = {"x": x, "gamma": layer.params["gamma"], "beta": layer.params["beta"]}

    def bwd(g):
        layer.zero_grad()
        _, cache = layer.forward(x, Context(train=train))
        dx = layer.backward(g, cache)
        return {"x": dx, "gamma": layer.grads["gamma"].copy(), "beta": layer.grads["beta"].copy()}

    check_grad("batchnorm", lambda: layer.forward(x, Context(train=train))[0], bwd, inputs, rng)


def test_batchnorm_running_stats_follow_pytorch(rng):
    layer = BatchNorm(momentum=0.1)
    layer.build((3,), rng, np.float64)
    x = rng.standard_normal((8, 3)) * 2 + 1
    layer.forward(x, Context(train=True))
    np.testing.assert_allclose(layer.buffers["running_mean"], 0.1 * x.mean(axis=0))
    np.testing.assert_allclose(layer.buffers["running_var"], 0.9 + 0.1 * x.var(axis=0, ddof=1))


@pytest.mark.parametrize("scale", [None, 3.0])
def test_normnet_gradcheck(scale, rng):
    layer = NormDense(4, activation="tanh", scale=scale)
    layer_gradcheck(layer, (5,), rng)
    assert "b" not in layer.params
    # std 0.5 keeps every weight away from tan's pole at pi/2, where finite differences fail
    conv = NormConv2d(
        2, kernel_size=3, padding=1, activation="relu", scale=scale, init_args={"std": 0.5}
    )
    layer_gradcheck(conv, (2, 5, 5), rng)


def test_normdense_computes_tan_over_fan_in(rng):
    layer = NormDense(2, activation="linear")
    layer.build((3,), rng, np.float64)
    x = rng.standard_normal((4, 3))
    y, _ = layer.forward(x, Context())
    np.testing.assert_allclose(y, x @ np.tan(layer.params["w"]) / 3)
    # weights start N(0, 1)
    big = NormDense(200)
    big.build((300,), np.random.default_rng(0), np.float64)
    assert abs(big.params["w"].std() - 1) < 0.02


def test_gradients_accumulate_and_scale(rng):
    layer = Dense(3)
    layer.build((4,), rng, np.float64)
    x = rng.standard_normal((2, 4))
    g = rng.standard_normal((2, 3))
    _, cache = layer.forward(x, Context())
    layer.backward(g, cache)
    once = layer.grads["w"].copy()
    layer.backward(g, cache, gscale=0.5)
    np.testing.assert_allclose(layer.grads["w"], 1.5 * once)
    layer.zero_grad()
    assert not layer.grads["w"].any()


def test_checker_catches_a_wrong_backward(rng):
    layer = Dense(3)
    layer.build((4,), rng, np.float64)
    x = rng.standard_normal((2, 4))

    def wrong(g):  # transposed-product bug: uses g summed over the batch
        return {"x": g @ layer.params["w"].T, "w": np.outer(x.sum(0), g.sum(0)) * 0.5}

    with pytest.raises(GradCheckError, match="d/dw mismatch"):
        check_grad(
            "dense",
            lambda: layer.forward(x, Context())[0],
            wrong,
            {"x": x, "w": layer.params["w"]},
            rng,
        )


def test_build_errors_name_the_path(rng):
    conv = Conv2d(2, kernel_size=3)
    conv.path = "arch.layers[0]"
    with pytest.raises(BuildError, match=r"arch.layers\[0\]: conv expects a \(C, H, W\) input"):
        conv.build((16,), rng, np.float32)
    big = Conv2d(2, kernel_size=9)
    big.path = "arch.layers[2]"
    with pytest.raises(BuildError, match=r"arch.layers\[2\]"):
        big.build((1, 4, 4), rng, np.float32)
    r = Reshape([5, 5])
    r.path = "arch.layers[1]"
    with pytest.raises(BuildError, match=r"arch.layers\[1\].shape: \[5, 5\] has 25 values"):
        r.build((24,), rng, np.float32)


def test_float32_stays_float32(rng):
    for layer, shape in [
        (Dense(3), (4,)),
        (Conv2d(2, 3, padding=1), (1, 5, 5)),
        (MaxPool2d(2), (1, 4, 4)),
        (BatchNorm(), (4,)),
    ]:
        layer.build(shape, rng, np.float32)
        x = rng.standard_normal((2, *shape)).astype(np.float32)
        y, cache = layer.forward(x, Context(train=True))
        assert y.dtype == np.float32, layer.kind
        dx = layer.backward(np.ones_like(y), cache)
        assert dx.dtype == np.float32, layer.kind
        assert all(g.dtype == np.float32 for g in layer.grads.values()), layer.kind
