"""Conv, transposed-conv and pooling kernels: fast == naive, finite differences, PyTorch parity."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import conv_strategy
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from neurons.gradcheck import check_grad
from neurons.kernels import conv, naive, pool

STRATEGIES = ["direct", "im2col"]
DTYPES = [np.float32, np.float64]
HYP = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])


strategy = conv_strategy


def close(got, want, dtype) -> None:
    assert got.dtype == dtype, f"dtype {got.dtype} != {dtype}"
    assert got.shape == want.shape, f"shape {got.shape} != {want.shape}"
    tol = 1e-4 if dtype == np.float32 else 1e-11
    scale = max(1.0, float(np.abs(want).max(initial=0.0)))
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol * scale)


# ---------------------------------------------------------------------------------------------
# geometry drawn by hypothesis: odd sizes, strides 1-3, paddings 0-2, dilations 1-2
# ---------------------------------------------------------------------------------------------


@st.composite
def conv_geometry(draw, transposed: bool = False):
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    s = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    d = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    p = (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
    n, c, f = draw(st.integers(1, 2)), draw(st.integers(1, 3)), draw(st.integers(1, 3))
    if transposed:
        op = tuple(draw(st.integers(0, max(si, di) - 1)) for si, di in zip(s, d, strict=True))
        # smallest input with a non-empty output, plus a little room
        h = max(1, (2 * p[0] - d[0] * (kh - 1) - op[0]) // s[0] + 2) + draw(st.integers(0, 3))
        w = max(1, (2 * p[1] - d[1] * (kw - 1) - op[1]) // s[1] + 2) + draw(st.integers(0, 3))
        return dict(n=n, c=c, f=f, h=h, w=w, k=(kh, kw), s=s, p=p, d=d, op=op)
    h = max(1, d[0] * (kh - 1) + 1 - 2 * p[0]) + draw(st.integers(0, 5))
    w = max(1, d[1] * (kw - 1) + 1 - 2 * p[1]) + draw(st.integers(0, 5))
    return dict(n=n, c=c, f=f, h=h, w=w, k=(kh, kw), s=s, p=p, d=d)


def make_conv(g, dtype, bias, rng, transposed=False):
    x = rng.standard_normal((g["n"], g["c"], g["h"], g["w"])).astype(dtype)
    wshape = (g["c"], g["f"], *g["k"]) if transposed else (g["f"], g["c"], *g["k"])
    w = rng.standard_normal(wshape).astype(dtype)
    b = rng.standard_normal(g["f"]).astype(dtype) if bias else None
    return x, w, b


# ---------------------------------------------------------------------------------------------
# (a) fast == naive
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("strat", STRATEGIES)
@pytest.mark.parametrize("dtype", DTYPES)
@HYP
@given(g=conv_geometry(), bias=st.booleans(), seed=st.integers(0, 2**16))
def test_conv2d_matches_naive(strat, dtype, g, bias, seed):
    rng = np.random.default_rng(seed)
    x, w, b = make_conv(g, dtype, bias, rng)
    with strategy(strat):
        y, cache = conv.conv2d_forward(x, w, b, g["s"], g["p"], g["d"])
        y0, cache0 = naive.conv2d_forward_naive(x, w, b, g["s"], g["p"], g["d"])
        close(y, y0, dtype)
        dy = rng.standard_normal(y.shape).astype(dtype)
        got, want = conv.conv2d_backward(dy, cache), naive.conv2d_backward_naive(dy, cache0)
    for a, e in zip(got[:2], want[:2], strict=True):
        close(a, e, dtype)
    if bias:
        close(got[2], want[2], dtype)
    else:
        assert got[2] is None and want[2] is None


@pytest.mark.parametrize("strat", STRATEGIES)
@pytest.mark.parametrize("dtype", DTYPES)
@HYP
@given(g=conv_geometry(transposed=True), bias=st.booleans(), seed=st.integers(0, 2**16))
def test_deconv2d_matches_naive(strat, dtype, g, bias, seed):
    rng = np.random.default_rng(seed)
    x, w, b = make_conv(g, dtype, bias, rng, transposed=True)
    args = (g["s"], g["p"], g["d"], g["op"])
    with strategy(strat):
        y, cache = conv.deconv2d_forward(x, w, b, *args)
        y0, cache0 = naive.deconv2d_forward_naive(x, w, b, *args)
        close(y, y0, dtype)
        dy = rng.standard_normal(y.shape).astype(dtype)
        got, want = conv.deconv2d_backward(dy, cache), naive.deconv2d_backward_naive(dy, cache0)
    for a, e in zip(got[:2], want[:2], strict=True):
        close(a, e, dtype)
    if bias:
        close(got[2], want[2], dtype)
    else:
        assert got[2] is None and want[2] is None


@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize("dtype", DTYPES)
@HYP
@given(
    k=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    s=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    extra=st.tuples(st.integers(0, 4), st.integers(0, 4)),
    seed=st.integers(0, 2**16),
)
def test_pool_matches_naive(kind, dtype, k, s, extra, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, 3, k[0] + extra[0], k[1] + extra[1])).astype(dtype)
    if seed % 3 == 0:  # exact ties: first maximum in row-major order must win
        x = np.round(x).astype(dtype)
    fwd, bwd = getattr(pool, f"{kind}pool2d_forward"), getattr(pool, f"{kind}pool2d_backward")
    fwd0 = getattr(naive, f"{kind}pool2d_forward_naive")
    bwd0 = getattr(naive, f"{kind}pool2d_backward_naive")
    y, cache = fwd(x, k, s)
    y0, cache0 = fwd0(x, k, s)
    close(y, y0, dtype)
    dy = rng.standard_normal(y.shape).astype(dtype)
    close(bwd(dy, cache), bwd0(dy, cache0), dtype)


def test_maxpool_tie_goes_to_first_and_overlaps_accumulate():
    x = np.zeros((1, 1, 3, 4))
    x[0, 0, 1, 1] = 5.0  # in all four overlapping 2x2 windows of the left 3x3 block
    y, cache = pool.maxpool2d_forward(x, 2, 1)
    dx = pool.maxpool2d_backward(np.ones_like(y), cache)
    # windows at column 2 hold only zeros: ties -> their first (top-left) element
    want = np.zeros((3, 4))
    want[1, 1] = 4.0
    want[0, 2] += 1.0
    want[1, 2] += 1.0
    np.testing.assert_array_equal(dx[0, 0], want)


def test_conv_accepts_flat_upstream_and_keeps_float32(rng):
    x = rng.standard_normal((2, 3, 6, 5)).astype(np.float32)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    b = np.zeros(4, np.float32)
    y, cache = conv.conv2d_forward(x, w, b, (1, 1), (1, 1), (1, 1))
    dy = rng.standard_normal(y.shape).astype(np.float32)
    grads = conv.conv2d_backward(dy.reshape(2, -1), cache)
    ref = conv.conv2d_backward(dy, cache)
    for g, r in zip(grads, ref, strict=True):
        assert g.dtype == np.float32
        np.testing.assert_array_equal(g, r)


def test_dtype_mismatch_is_rejected(rng):
    x = rng.standard_normal((1, 1, 4, 4)).astype(np.float32)
    with pytest.raises(TypeError, match="dtype mismatch"):
        conv.conv2d_forward(x, np.ones((1, 1, 2, 2)), None, (1, 1), (0, 0), (1, 1))


# ---------------------------------------------------------------------------------------------
# (b) float64 central differences with a random upstream gradient
# ---------------------------------------------------------------------------------------------

GRAD_CASES = [  # (s, p, d, op)
    ((1, 1), (1, 1), (1, 1), (0, 0)),
    ((2, 3), (2, 0), (2, 1), (1, 2)),
]


@pytest.mark.parametrize("strat", STRATEGIES)
@pytest.mark.parametrize("s,p,d,op", GRAD_CASES)
def test_conv2d_gradcheck(strat, s, p, d, op, rng):
    inputs = {
        "x": rng.standard_normal((2, 2, 7, 6)),
        "w": rng.standard_normal((3, 2, 3, 2)),
        "b": rng.standard_normal(3),
    }

    def forward():
        return conv.conv2d_forward(inputs["x"], inputs["w"], inputs["b"], s, p, d)[0]

    def backward(up):
        dx, dw, db = conv.conv2d_backward(up, conv.conv2d_forward(*inputs.values(), s, p, d)[1])
        return {"x": dx, "w": dw, "b": db}

    with strategy(strat):
        check_grad(f"conv2d[{strat}]", forward, backward, inputs, rng)


@pytest.mark.parametrize("strat", STRATEGIES)
@pytest.mark.parametrize("s,p,d,op", GRAD_CASES)
def test_deconv2d_gradcheck(strat, s, p, d, op, rng):
    inputs = {
        "x": rng.standard_normal((2, 2, 4, 5)),
        "w": rng.standard_normal((2, 3, 3, 2)),
        "b": rng.standard_normal(3),
    }

    def forward():
        return conv.deconv2d_forward(*inputs.values(), s, p, d, op)[0]

    def backward(up):
        cache = conv.deconv2d_forward(*inputs.values(), s, p, d, op)[1]
        dx, dw, db = conv.deconv2d_backward(up, cache)
        return {"x": dx, "w": dw, "b": db}

    with strategy(strat):
        check_grad(f"deconv2d[{strat}]", forward, backward, inputs, rng)


@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize("k,s", [((2, 2), (2, 2)), ((3, 2), (1, 2))])
def test_pool_gradcheck(kind, k, s, rng):
    # a permutation keeps every value distinct, so no max is within eps of a tie
    inputs = {"x": rng.permutation(2 * 2 * 7 * 6).reshape(2, 2, 7, 6) / 10.0}
    fwd, bwd = getattr(pool, f"{kind}pool2d_forward"), getattr(pool, f"{kind}pool2d_backward")

    def forward():
        return fwd(inputs["x"], k, s)[0]

    def backward(up):
        return {"x": bwd(up, fwd(inputs["x"], k, s)[1])}

    check_grad(f"{kind}pool2d", forward, backward, inputs, rng)


# ---------------------------------------------------------------------------------------------
# (c) PyTorch parity in float32
# ---------------------------------------------------------------------------------------------

TORCH_CONV = [  # (n, c, f, h, w, k, s, p, d, op)
    (2, 3, 4, 9, 7, (3, 3), (1, 1), (1, 1), (1, 1), (0, 0)),
    (2, 1, 2, 8, 9, (3, 2), (2, 3), (2, 0), (2, 1), (1, 2)),
    (3, 5, 6, 11, 10, (2, 3), (3, 1), (0, 2), (1, 2), (2, 1)),
]


def torch_close(got, ref):
    ref = ref.detach().numpy()
    assert got.dtype == np.float32 and got.shape == ref.shape
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5 * float(np.abs(ref).max()))


@pytest.mark.torch
@pytest.mark.parametrize("transposed", [False, True])
@pytest.mark.parametrize("case", TORCH_CONV)
def test_conv_matches_torch(case, transposed, rng):
    torch = pytest.importorskip("torch")
    n, c, f, h, w, k, s, p, d, op = case
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    wt = rng.standard_normal((c, f, *k) if transposed else (f, c, *k)).astype(np.float32)
    b = rng.standard_normal(f).astype(np.float32)
    tx, tw, tb = (torch.tensor(a, requires_grad=True) for a in (x, wt, b))
    if transposed:
        y, cache = conv.deconv2d_forward(x, wt, b, s, p, d, op)
        ty = torch.nn.functional.conv_transpose2d(tx, tw, tb, s, p, op, 1, d)
    else:
        y, cache = conv.conv2d_forward(x, wt, b, s, p, d)
        ty = torch.nn.functional.conv2d(tx, tw, tb, s, p, d)
    torch_close(y, ty)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    ty.backward(torch.tensor(dy))
    back = conv.deconv2d_backward if transposed else conv.conv2d_backward
    for got, ref in zip(back(dy, cache), (tx.grad, tw.grad, tb.grad), strict=True):
        torch_close(got, ref)


@pytest.mark.torch
@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize("k,s", [((2, 2), (2, 2)), ((3, 3), (1, 1)), ((3, 2), (2, 3))])
def test_pool_matches_torch(kind, k, s, rng):
    torch = pytest.importorskip("torch")
    x = rng.standard_normal((2, 3, 9, 8)).astype(np.float32)
    x[0, 0, :3, :3] = 1.5  # a window full of ties
    fwd, bwd = getattr(pool, f"{kind}pool2d_forward"), getattr(pool, f"{kind}pool2d_backward")
    y, cache = fwd(x, k, s)
    tx = torch.tensor(x, requires_grad=True)
    ty = getattr(torch.nn.functional, f"{kind}_pool2d")(tx, k, s)
    torch_close(y, ty)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    ty.backward(torch.tensor(dy))
    torch_close(bwd(dy, cache), tx.grad)


# ---------------------------------------------------------------------------------------------
# (d) impossible output sizes
# ---------------------------------------------------------------------------------------------


def test_impossible_output_sizes_raise_clear_errors():
    with pytest.raises(ValueError, match=r"conv2d: empty output along W.*dilated kernel extent 5"):
        conv.conv2d_output_shape((8, 3), (3, 3), (1, 1), (0, 0), (1, 2))
    with pytest.raises(ValueError, match="conv2d: empty output along H"):
        conv.conv2d_forward(np.zeros((1, 1, 2, 9)), np.zeros((1, 1, 3, 3)), None, 1, 0, 1)
    with pytest.raises(ValueError, match=r"output_padding 2 along H must satisfy"):
        conv.deconv2d_output_shape((4, 4), (3, 3), (2, 2), (0, 0), (1, 1), (2, 0))
    with pytest.raises(ValueError, match="deconv2d: empty output along W"):
        conv.deconv2d_forward(np.zeros((1, 1, 3, 1)), np.zeros((1, 1, 1, 1)), None, 1, 1, 1, 0)
    with pytest.raises(ValueError, match="stride must be >= 1"):
        conv.conv2d_output_shape((8, 8), (3, 3), (0, 1), (0, 0), (1, 1))
    with pytest.raises(ValueError, match="pool2d: empty output along W: input 2 < kernel 3"):
        pool.maxpool2d_forward(np.zeros((1, 1, 5, 2)), 3, 1)
    # the boundary cases are still valid
    assert conv.conv2d_output_shape((5, 5), (3, 3), (2, 2), (0, 0), (2, 2)) == (1, 1)
    assert conv.deconv2d_output_shape((3, 3), (3, 3), (1, 2), (1, 1), (2, 1), (1, 1)) == (6, 6)
