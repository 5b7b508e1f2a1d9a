"""The issue-15 fast paths against their slow twins: fused conv + activation, 2x2 maxpool;
conv results independent of the thread count; BLAS held at one thread in any import order;
the benchmark's FLOP count and its (e) workload equal to the thesis config."""

from __future__ import annotations

import json
import subprocess
import sys

import numba
import numpy as np
import pytest
from helpers import conv_strategy
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from neurons.kernels import conv, naive, pool

HYP = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def close(got, want, dtype) -> None:
    assert got.dtype == dtype and got.shape == want.shape, (got.dtype, got.shape, want.shape)
    tol = 1e-4 if dtype == np.float32 else 1e-11
    scale = max(1.0, float(np.abs(want).max(initial=0.0)))
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol * scale)


strategy = conv_strategy


@st.composite
def fused_geometry(draw, strided: bool):
    """Odd sizes, paddings 0-2, dilations 1-2, strides 1-3 (im2col) or 1 (direct)."""
    k = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    d = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    p = (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
    s = (draw(st.integers(1, 3)), draw(st.integers(1, 3))) if strided else (1, 1)
    c, f = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    h = max(1, d[0] * (k[0] - 1) + 1 - 2 * p[0]) + draw(st.integers(0, 6))
    w = max(1, d[1] * (k[1] - 1) + 1 - 2 * p[1]) + draw(st.integers(0, 6))
    return dict(n=draw(st.integers(1, 3)), c=c, f=f, h=h, w=w, k=k, s=s, p=p, d=d)


@pytest.mark.parametrize("strat", ["direct", "im2col"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@HYP
@given(
    data=st.data(),
    act=st.sampled_from(["relu", "linear"]),
    bias=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_fused_conv_activation_matches_naive(strat, dtype, data, act, bias, seed):
    g = data.draw(fused_geometry(strided=strat == "im2col"))
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((g["n"], g["c"], g["h"], g["w"])).astype(dtype)
    w = rng.standard_normal((g["f"], g["c"], *g["k"])).astype(dtype)
    b = rng.standard_normal(g["f"]).astype(dtype) if bias else None
    with strategy(strat):
        assert conv.fusable(w, g["s"], act)
        y, cache = conv.conv2d_act_forward(x, w, b, g["s"], g["p"], g["d"], act)
        dy = rng.standard_normal(y.shape).astype(dtype)
        dx, dw, db = conv.conv2d_act_backward(dy, cache)
    z0, c0 = naive.conv2d_forward_naive(x, w, b, g["s"], g["p"], g["d"])
    mask = z0 > 0 if act == "relu" else np.ones(z0.shape, bool)
    close(y, z0 * mask, dtype)
    dx0, dw0, db0 = naive.conv2d_backward_naive(dy * mask, c0)
    close(dx, dx0, dtype)
    close(dw, dw0, dtype)
    assert (db is None) == (not bias)
    if bias:
        close(db, db0, dtype)


def test_fusable_takes_relu_or_linear_on_im2col_or_stride_one_direct():
    w1 = np.zeros((1, 1, 3, 3), np.float32)  # 9 taps: the direct path
    w32 = np.zeros((32, 1, 3, 3), np.float32)  # 288 taps: im2col
    assert conv.fusable(w1, (1, 1), "relu") and conv.fusable(w1, 1, "linear")
    assert not conv.fusable(w1, (2, 1), "relu")  # direct, strided: the generic kernels
    assert conv.fusable(w32, (2, 1), "relu")
    assert not conv.fusable(w1, (1, 1), "tanh") and not conv.fusable(w32, 1, "sigmoid")
    with pytest.raises(ValueError, match="not fusable"):
        conv.conv2d_act_forward(np.zeros((1, 1, 5, 5)), w1.astype(float), None, 2, 0, 1, "relu")


def test_conv_layer_takes_the_fused_path_and_matches_the_generic_one(rng):
    from neurons.layers import Context, Conv2d

    layer = Conv2d(1, 3, padding=1, activation="relu")
    layer.build((1, 9, 7), rng, np.float32)
    x = rng.standard_normal((4, 1, 9, 7)).astype(np.float32)
    y, cache = layer.forward(x, Context())
    assert isinstance(cache, conv.FusedCache)
    y2, cache2 = layer.forward(x, Context(capture={}))  # captures need z: the generic path
    assert not isinstance(cache2, conv.FusedCache)
    np.testing.assert_allclose(y, y2, rtol=1e-6, atol=1e-6)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dx = layer.backward(dy, cache)
    gw = layer.grads["w"].copy()
    layer.zero_grad()
    dx2 = layer.backward(dy, cache2)
    np.testing.assert_allclose(dx, dx2, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(gw, layer.grads["w"], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@HYP
@given(
    h=st.integers(2, 9),
    w=st.integers(2, 9),
    ties=st.booleans(),
    nans=st.integers(0, 3),
    seed=st.integers(0, 2**16),
)
def test_maxpool_2x2_equals_the_generic_kernel_and_naive(dtype, h, w, ties, nans, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, 3, h, w)).astype(dtype)
    if ties:
        x = np.round(x).astype(dtype)
    for _ in range(nans):  # NaNs: the window's first NaN wins, in both kernels
        x[rng.integers(2), rng.integers(3), rng.integers(h), rng.integers(w)] = np.nan
    oh, ow = h // 2, w // 2
    y, arg = pool._max_fwd_2x2(x, oh, ow)
    y1, arg1 = pool._max_fwd(x, 2, 2, 2, 2, oh, ow)
    np.testing.assert_array_equal(y, y1)
    np.testing.assert_array_equal(arg, arg1)
    if nans == 0:
        y0, c0 = naive.maxpool2d_forward_naive(x, 2, 2)
        np.testing.assert_array_equal(y, y0)
        dy = rng.standard_normal(y.shape).astype(dtype)
        close(
            pool.maxpool2d_backward(dy, (arg, x.shape)),
            naive.maxpool2d_backward_naive(dy, c0),
            dtype,
        )


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs two numba threads")
def test_kernels_give_the_same_bits_at_one_and_two_threads(rng):
    x = rng.standard_normal((9, 3, 11, 10)).astype(np.float32)
    w = rng.standard_normal((8, 3, 3, 3)).astype(np.float32)  # 216 taps: the im2col path
    w1 = rng.standard_normal((1, 3, 3, 3)).astype(np.float32)  # 27 taps: direct

    def run():
        out = []
        for ww in (w, w1):
            y, c = conv.conv2d_forward(x, ww, None, 1, 1, 1)
            out += [y, *conv.conv2d_backward(np.ones_like(y), c)[:2]]
        for ww in (w, w1):
            y, c = conv.conv2d_act_forward(x, ww, None, 1, 1, 1, "relu")
            out += [y, *conv.conv2d_act_backward(np.ones_like(y), c)[:2]]
        return out

    old = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = run()
        numba.set_num_threads(2)
        two = run()
    finally:
        numba.set_num_threads(old)
    for p, q in zip(one, two, strict=True):
        np.testing.assert_array_equal(p, q)


@pytest.mark.parametrize("first", ["import numpy, scipy.linalg", "import neurons"])
@pytest.mark.parametrize("entry", ["configure(2)", "hold_blas()"])
def test_blas_runs_single_threaded_whatever_was_imported_first(first, entry, tmp_path):
    """numpy (and scipy) loaded before neurons: configure (a run) and hold_blas (a loaded
    model's predictor) still leave every BLAS at one thread; configure gives numba the cores."""
    code = (
        f"{first}\n"
        "import json\n"
        "from neurons.runtime import configure, hold_blas\n"
        "from threadpoolctl import threadpool_info\n"
        f"got = {entry}\n"
        "blas = [i['num_threads'] for i in threadpool_info() if i['user_api'] == 'blas']\n"
        "print(json.dumps({'got': got, 'blas': blas}))\n"
    )
    env = {"PATH": "/usr/bin:/bin", "NUMBA_NUM_THREADS": "2", "HOME": str(tmp_path)}
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert p.returncode == 0, p.stderr[-2000:]
    out = json.loads(p.stdout.strip().splitlines()[-1])
    assert len(out["blas"]) >= 2 and set(out["blas"]) == {1}, out  # numpy's and scipy's
    if entry.startswith("configure"):
        assert out["got"]["numba"] == 2 and out["got"]["blas"] == 1, out


def test_bench_flops_of_workload_b_counted_by_hand():
    from neurons import bench

    conv1 = 2 * 32 * 1 * 9 * 28 * 28
    conv2 = 2 * 64 * 32 * 9 * 14 * 14
    dense = 2 * 64 * 7 * 7 * 128 + 2 * 128 * 10
    want = 3 * (conv1 + conv2 + dense) - conv1  # no input gradient for the first layer
    assert bench.flops_per_sample(bench.WORKLOADS["b"], (1, 28, 28), 10) == want
    assert bench.flops_per_sample(bench.WORKLOADS["e"], (1, 28, 28), 10) is None


def test_bench_workload_e_is_the_thesis_config(rng):
    """(e) builds the same network as `arch=cnn_looping_x3 arch.skip=true`."""
    from neurons import bench
    from neurons.api import compose
    from neurons.config import build_network

    cfg = compose(["experiment=compare_mnist", "arch=cnn_looping_x3", "arch.skip=true"])
    ours = build_network(cfg.arch, (1, 28, 28), 10, "classification", "cross_entropy", rng)
    w = bench.WORKLOADS["e"]
    arch = {"layers": w.layers, "skips": w.skips, "loops": w.loops}
    arch["output"] = {"kind": "dense", "units": "auto", "activation": "auto"}
    net = build_network(arch, (1, 28, 28), 10, "classification", "cross_entropy", rng)
    assert net.summary() == ours.summary()
    assert (w.batch, cfg.train.batch_size) == (32, 32)


@pytest.mark.torch
def test_bench_torch_model_of_e_computes_our_network(rng):
    """The PyTorch side of (e) is our looped network unrolled with tied weights."""
    torch = pytest.importorskip("torch")
    from neurons import bench
    from neurons.config import build_network

    w = bench.WORKLOADS["e"]
    arch = {"layers": w.layers, "skips": w.skips, "loops": w.loops}
    arch["output"] = {"kind": "dense", "units": "auto", "activation": "auto"}
    net = build_network(arch, (1, 28, 28), 10, "classification", "cross_entropy", rng, "float64")
    model = bench._torch_model(w, (1, 28, 28), 10).double()
    with torch.no_grad():
        for k in range(3):
            model.convs[k].weight.copy_(torch.from_numpy(net.layers[k].params["w"]))
        model.out.weight.copy_(torch.from_numpy(net.layers[4].params["w"].T.copy()))
        model.out.bias.copy_(torch.from_numpy(net.layers[4].params["b"]))
    x = rng.random((5, 1, 28, 28))
    ours, _ = net.forward(x, logits=True)
    theirs = model(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(ours, theirs, rtol=1e-10, atol=1e-10)


def test_fit_runs_blas_on_one_thread_for_every_network():
    """One pool (numba's) owns the cores: during `fit` every BLAS stays at one thread, for an
    MLP (on the tape: a 2-thread BLAS was slower at batch 16-256 on workload c) and a CNN."""
    import numba
    from threadpoolctl import threadpool_info

    from neurons.config import build_network
    from neurons.objectives import make_objective
    from neurons.optim import make_optimizer
    from neurons.runtime import configure
    from neurons.train import TrainConfig, fit

    seen: list[set[int]] = []

    def record(state, row, improved):
        seen.append({i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"})

    rng = np.random.default_rng(0)
    out = {"kind": "dense", "units": "auto", "activation": "auto"}
    old = numba.get_num_threads()
    try:
        configure(2)
        for layer, shape in [({"kind": "dense", "units": 300}, (4,)), (_CONV, (1, 6, 6))]:
            net = build_network(
                {"layers": [layer], "output": out}, shape, 3, "classification", "cross_entropy", rng
            )
            x = rng.standard_normal((64, *shape)).astype(np.float32)
            y = np.eye(3, dtype=np.float32)[rng.integers(0, 3, 64)]
            opt = make_optimizer("adam", net.named_parameters())
            cfg = TrainConfig(epochs=1, batch_size=32, engine="tape")
            fit(net, make_objective("cross_entropy"), opt, x, y, x, y, cfg, rng, callbacks=[record])
    finally:
        numba.set_num_threads(old)
    assert seen == [{1}, {1}]


_CONV = {"kind": "conv", "filters": 1, "kernel_size": 3}
