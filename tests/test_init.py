"""Initialisers: shapes, dtypes, seeding, empirical scale vs the formulas, orthogonality, errors."""

import math

import numpy as np
import pytest

from neurons.init import (
    INITIALIZERS,
    calculate_gain,
    fans,
    kaiming_normal,
    kaiming_uniform,
    make_initializer,
    normal,
    orthogonal,
    uniform,
    xavier_normal,
    xavier_uniform,
    zeros,
)

CONV = (8, 3, 5, 5)  # (out, in, kh, kw): fan_in 75, fan_out 200


@pytest.mark.parametrize("name", sorted(INITIALIZERS))
@pytest.mark.parametrize("shape", [(6, 4), CONV])
def test_shape_dtype_and_seeding(name, shape):
    fn = INITIALIZERS[name]
    a = fn(np.random.default_rng(7), shape)
    assert a.shape == shape and a.dtype == np.float32
    assert np.isfinite(a).all()
    np.testing.assert_array_equal(a, fn(np.random.default_rng(7), shape))
    b = fn(np.random.default_rng(7), shape, dtype=np.float64)
    assert b.dtype == np.float64
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)  # same draws, only rounded
    if name != "zeros":
        assert not np.array_equal(a, fn(np.random.default_rng(8), shape))


@pytest.mark.parametrize("name", sorted(INITIALIZERS))
def test_global_numpy_random_is_untouched(name):
    np.random.seed(123)
    state = np.random.get_state()
    INITIALIZERS[name](np.random.default_rng(0), (5, 3))
    after = np.random.get_state()
    assert state[0] == after[0] and state[2:] == after[2:]
    np.testing.assert_array_equal(state[1], after[1])


def test_rng_must_be_a_generator():
    with pytest.raises(TypeError, match="np.random.Generator"):
        normal(np.random.RandomState(0), (2, 2))
    with pytest.raises(TypeError, match="np.random.Generator"):
        normal(None, (2, 2))


def test_fans_follow_pytorch():
    assert fans((6, 4)) == (4, 6)  # torch weight (out, in)
    assert fans(CONV) == (75, 200)
    assert fans((4, 6), fan_in=4, fan_out=6) == (4, 6)  # a dense weight stored (in, out)
    assert fans((3,), fan_in=3, fan_out=5) == (3, 5)
    with pytest.raises(ValueError, match="fewer than 2 dimensions.*fan_in"):
        fans((3,))
    with pytest.raises(ValueError, match="fan_in must be a positive integer"):
        fans((3, 3), fan_in=0)


BIG = (400, 500)  # 200k draws: the std estimate is good to ~0.3%, tolerances are 2%


def _expected(name, fan_in, fan_out):
    """(kind, scale): std for normals, bound for uniforms, from the written-out formulas."""
    return {
        "uniform": ("uniform", 1.0),
        "normal": ("normal", 1.0),
        "xavier_uniform": ("uniform", math.sqrt(6.0 / (fan_in + fan_out))),
        "xavier_normal": ("normal", math.sqrt(2.0 / (fan_in + fan_out))),
        "kaiming_uniform": ("uniform", math.sqrt(2.0) * math.sqrt(3.0 / fan_in)),
        "kaiming_normal": ("normal", math.sqrt(2.0) / math.sqrt(fan_in)),
    }[name]


def _check_distribution(a, kind, scale, mean=0.0):
    a = a.astype(np.float64)
    if kind == "uniform":
        assert a.min() >= -scale * (1 + 1e-6) and a.max() <= scale * (1 + 1e-6)
        assert a.min() < -0.99 * scale and a.max() > 0.99 * scale
        assert a.std() == pytest.approx(scale / math.sqrt(3), rel=0.02)
    else:
        assert a.std() == pytest.approx(scale, rel=0.02)
    assert abs(a.mean() - mean) < 0.02 * scale


@pytest.mark.parametrize(
    "name",
    ["uniform", "normal", "xavier_uniform", "xavier_normal", "kaiming_uniform", "kaiming_normal"],
)
@pytest.mark.parametrize("explicit", [False, True])
def test_empirical_scale_matches_formula(name, explicit):
    rng = np.random.default_rng(2024)
    if explicit:  # a dense weight stored as (in, out) = (400, 500): caller passes the fans
        a = INITIALIZERS[name](rng, BIG, fan_in=400, fan_out=500)
        fan_in, fan_out = 400, 500
    else:  # torch layout (out, in) = (400, 500)
        a = INITIALIZERS[name](rng, BIG)
        fan_in, fan_out = 500, 400
    kind, scale = _expected(name, fan_in, fan_out)
    _check_distribution(a, kind, scale)


def test_hyper_parameters_change_the_scale():
    rng = np.random.default_rng(5)
    a = uniform(rng, BIG, -0.5, 1.5).astype(np.float64)
    assert a.min() >= -0.5 and a.max() <= 1.5 and a.mean() == pytest.approx(0.5, abs=0.01)
    _check_distribution(normal(rng, BIG, mean=3.0, std=0.1), "normal", 0.1, mean=3.0)
    _check_distribution(xavier_normal(rng, BIG, gain=2.0), "normal", 2 * math.sqrt(2 / 900))
    # leaky relu with slope a=0.2, fan_out mode on a conv weight (fan_out = 64 * 25 = 1600)
    shape = (64, 30, 5, 5)
    std = math.sqrt(2 / (1 + 0.2**2)) / math.sqrt(1600)
    _check_distribution(kaiming_normal(rng, shape, a=0.2, mode="fan_out"), "normal", std)
    bound = math.sqrt(3) * (5 / 3) / math.sqrt(30 * 25)
    _check_distribution(kaiming_uniform(rng, shape, nonlinearity="tanh"), "uniform", bound)
    _check_distribution(xavier_uniform(rng, shape), "uniform", math.sqrt(6 / (750 + 1600)))


@pytest.mark.parametrize("shape", [(6, 4), (4, 6), (5, 5), (4, 3, 2, 2), (16, 3, 3, 3)])
def test_orthogonal(shape):
    q = orthogonal(np.random.default_rng(3), shape, gain=1.0, dtype=np.float64)
    m = q.reshape(shape[0], -1)
    small = m.T @ m if m.shape[0] >= m.shape[1] else m @ m.T
    np.testing.assert_allclose(small, np.eye(small.shape[0]), atol=1e-12)
    g = orthogonal(np.random.default_rng(3), shape, gain=2.5, dtype=np.float64)
    np.testing.assert_allclose(g, 2.5 * q, rtol=1e-12)
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        orthogonal(np.random.default_rng(3), (4,))


def test_orthogonal_sign_correction_makes_it_haar():
    # with the sign fix, the diagonal of Q is symmetric around 0 across seeds (without it, QR
    # from LAPACK tends to give a fixed sign pattern)
    diag = [
        orthogonal(np.random.default_rng(s), (3, 3), dtype=np.float64)[0, 0] for s in range(200)
    ]
    assert 60 < sum(d > 0 for d in diag) < 140


def test_calculate_gain():
    assert calculate_gain("linear") == 1.0 and calculate_gain("conv2d") == 1.0
    assert calculate_gain("sigmoid") == 1.0
    assert calculate_gain("tanh") == pytest.approx(5 / 3)
    assert calculate_gain("relu") == pytest.approx(math.sqrt(2))
    assert calculate_gain("leaky_relu") == pytest.approx(math.sqrt(2 / (1 + 0.01**2)))
    assert calculate_gain("leaky_relu", 0.2) == pytest.approx(math.sqrt(2 / 1.04))
    assert calculate_gain("selu") == 0.75
    with pytest.raises(ValueError, match="unsupported nonlinearity 'gelu'.*'relu'"):
        calculate_gain("gelu")
    with pytest.raises(ValueError, match="negative_slope"):
        calculate_gain("leaky_relu", "x")


def test_zeros():
    z = zeros(None, (3, 2), dtype=np.float64)
    assert z.dtype == np.float64 and not z.any()


def test_make_initializer():
    init = make_initializer("kaiming_normal", nonlinearity="relu", mode="fan_out")
    a = init(np.random.default_rng(1), (4, 6), fan_in=6, fan_out=4)
    np.testing.assert_array_equal(
        a, kaiming_normal(np.random.default_rng(1), (4, 6), nonlinearity="relu", mode="fan_out")
    )
    assert make_initializer("zeros")(None, (2,)).shape == (2,)


@pytest.mark.parametrize(
    ("name", "kw", "pattern"),
    [
        ("he", {}, r"unknown initializer 'he'.*'kaiming_normal'"),
        ("normal", {"sigma": 1.0}, r"unknown argument.*'sigma'.*'std'"),
        ("normal", {"std": -1.0}, "'std' must be a finite number >= 0, got -1.0"),
        ("uniform", {"a": 1.0, "b": 0.0}, "a < b.*a=1.0, b=0.0"),
        ("kaiming_uniform", {"mode": "fan_avg"}, "'mode' must be 'fan_in' or 'fan_out'.*fan_avg"),
        ("kaiming_normal", {"nonlinearity": "swish"}, "unsupported nonlinearity 'swish'"),
        ("xavier_uniform", {"gain": float("nan")}, "'gain'"),
        ("orthogonal", {"gain": -1.0}, "'gain'"),
        ("normal", {"dtype": np.int32}, "dtype must be a floating type"),
    ],
)
def test_bad_arguments_are_named(name, kw, pattern):
    with pytest.raises(ValueError, match=pattern):
        make_initializer(name, **kw)


@pytest.mark.torch
@pytest.mark.parametrize(
    ("name", "kw"),
    [
        ("xavier_uniform", {}),
        ("xavier_normal", {"gain": 1.5}),
        ("kaiming_uniform", {"a": math.sqrt(5)}),  # torch's default nn.Linear / Conv init
        ("kaiming_normal", {"mode": "fan_out", "nonlinearity": "relu"}),
    ],
)
def test_scale_matches_torch(name, kw):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    shape = (64, 30, 3, 3)
    t = getattr(torch.nn.init, name + "_")(torch.empty(shape, dtype=torch.float64), **kw).numpy()
    a = INITIALIZERS[name](np.random.default_rng(0), shape, dtype=np.float64, **kw)
    assert a.std() == pytest.approx(t.std(), rel=0.03)
    if "uniform" in name:
        assert np.abs(a).max() <= np.abs(t).max() * 1.01
        assert np.abs(a).max() >= np.abs(t).max() * 0.99
    for nl in ["linear", "sigmoid", "tanh", "relu", "selu"]:
        assert calculate_gain(nl) == pytest.approx(torch.nn.init.calculate_gain(nl))
    assert calculate_gain("leaky_relu", 0.3) == pytest.approx(
        torch.nn.init.calculate_gain("leaky_relu", 0.3)
    )
