"""Objectives: finite-difference gradient checks, edge cases and PyTorch parity."""

import numpy as np
import pytest

from neurons.gradcheck import GradCheckError, check_grad
from neurons.objectives import (
    OBJECTIVES,
    make_objective,
    sigmoid_bce_logits,
    sigmoid_bce_logits_per_sample,
    softmax_cross_entropy_logits,
    softmax_cross_entropy_logits_per_sample,
)

N, K = 5, 4


def _data(name: str, rng: np.random.Generator, dtype=np.float64, onehot: bool = False):
    """(pred, target) in the domain of objective `name` (probabilities where needed)."""
    if name in ("cross_entropy", "kld"):
        pred = rng.dirichlet(np.ones(K), size=N) * 0.9 + 0.1 / K  # rows sum to 1, away from 0
        if onehot:
            target = np.eye(K)[rng.integers(0, K, size=N)]
        else:
            target = rng.dirichlet(np.ones(K), size=N)
    elif name == "bce":
        pred = rng.uniform(0.05, 0.95, size=(N, K))
        target = rng.uniform(0, 1, size=(N, K)) if not onehot else np.eye(K)[np.arange(N) % K]
    else:
        pred = rng.standard_normal((N, K))
        target = rng.standard_normal((N, K))
    return pred.astype(dtype), target.astype(dtype)


def _scalar_check(label, fn, x, y, rng):
    """Grad-check a (loss, dx) = fn(x, y) pair with respect to x."""
    inputs = {"x": x}

    def forward():
        return np.asarray(fn(inputs["x"], y)[0])

    def backward(up):
        return {"x": up * fn(inputs["x"], y)[1]}

    check_grad(label, forward, backward, inputs, rng)


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
@pytest.mark.parametrize("onehot", [False, True])
def test_gradient_matches_finite_differences(name, onehot, rng):
    obj = make_objective(name)
    pred, target = _data(name, rng, onehot=onehot)
    _scalar_check(name, obj.loss_grad, pred, target, rng)


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_loss_is_mean_of_per_sample(name, rng):
    obj = make_objective(name)
    pred, target = _data(name, rng)
    per = obj.per_sample(pred, target)
    assert per.shape == (N,)
    loss, grad = obj.loss_grad(pred, target)
    assert isinstance(loss, float)
    assert loss == pytest.approx(per.mean(), rel=1e-12)
    assert grad.shape == pred.shape and grad.dtype == pred.dtype


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_float32_stays_float32(name, rng):
    obj = make_objective(name)
    pred, target = _data(name, rng, dtype=np.float32)
    assert obj.per_sample(pred, target).dtype == np.float32
    assert obj.loss_grad(pred, target)[1].dtype == np.float32


@pytest.mark.parametrize("fused", ["softmax", "sigmoid"])
def test_fused_gradients(fused, rng):
    z = rng.standard_normal((N, K)) * 3
    if fused == "softmax":
        y = rng.dirichlet(np.ones(K), size=N) * rng.uniform(0.5, 2, size=(N, 1))  # sum(y) != 1
        fn, per = softmax_cross_entropy_logits, softmax_cross_entropy_logits_per_sample
    else:
        y = rng.uniform(0, 1, size=(N, K))
        fn, per = sigmoid_bce_logits, sigmoid_bce_logits_per_sample
    _scalar_check(fused, fn, z, y, rng)
    assert fn(z, y)[0] == pytest.approx(per(z, y).mean(), rel=1e-12)


def test_fused_paths_agree_with_unfused_objectives(rng):
    z = rng.standard_normal((N, K))
    y = np.eye(K)[rng.integers(0, K, size=N)]
    ce = make_objective("cross_entropy")
    p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    assert ce.fused_activation == "softmax"
    assert ce.loss_grad_logits(z, y)[0] == pytest.approx(ce.loss_grad(p, y)[0], rel=1e-12)
    np.testing.assert_allclose(ce.per_sample_logits(z, y), ce.per_sample(p, y), rtol=1e-12)
    bce = make_objective("bce")
    s = 1 / (1 + np.exp(-z))
    assert bce.fused_activation == "sigmoid"
    assert bce.loss_grad_logits(z, y)[0] == pytest.approx(bce.loss_grad(s, y)[0], rel=1e-12)
    np.testing.assert_allclose(bce.per_sample_logits(z, y), bce.per_sample(s, y), rtol=1e-12)
    assert all(
        make_objective(n).fused_activation is None for n in ("ae", "mae", "mse", "rmse", "kld")
    )


def test_fused_paths_stable_for_huge_logits():
    z = np.array([[1000.0, -1000.0, 0.0], [-800.0, 800.0, 5.0]])
    y = np.array([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    loss, dz = softmax_cross_entropy_logits(z, y)
    assert loss == pytest.approx(1600.0 / 2)
    assert np.isfinite(dz).all()
    loss, dz = sigmoid_bce_logits(z, y)
    assert np.isfinite(loss) and np.isfinite(dz).all()


def test_kld_one_hot_is_finite_and_zero_when_equal(rng):
    obj = make_objective("kld")
    y = np.eye(K)[rng.integers(0, K, size=N)]
    # one-hot prediction too: p = 0 where y = 0 and p = 1 where y = 1
    loss, grad = obj.loss_grad(y.copy(), y)
    assert loss == 0.0 and np.isfinite(grad).all()
    pred, _ = _data("kld", rng)
    loss, grad = obj.loss_grad(pred, y)
    assert np.isfinite(loss) and loss > 0 and np.isfinite(grad).all()


def test_rmse_zero_rows_have_zero_gradient(rng):
    pred = rng.standard_normal((3, K))
    target = pred.copy()
    target[1] += 1.0
    loss, grad = make_objective("rmse").loss_grad(pred, target)
    assert loss == pytest.approx(1.0 / 3)
    np.testing.assert_array_equal(grad[[0, 2]], 0.0)
    np.testing.assert_allclose(grad[1], -1.0 / (K * 1.0) / 3)


def test_cross_entropy_and_bce_survive_zero_probabilities():
    p = np.array([[0.0, 1.0], [1.0, 0.0]])
    y = np.array([[0.0, 1.0], [0.0, 1.0]])
    for name in ("cross_entropy", "bce", "kld"):
        loss, grad = make_objective(name).loss_grad(p, y)
        assert np.isfinite(loss) and np.isfinite(grad).all(), name


def test_gradcheck_catches_a_wrong_gradient(rng):
    obj = make_objective("mse")
    pred, target = _data("mse", rng)

    def wrong(p, y):
        loss, grad = obj.loss_grad(p, y)
        return loss, grad * N  # forgot the batch mean

    with pytest.raises(GradCheckError):
        _scalar_check("mse-wrong", wrong, pred, target, rng)


def test_errors():
    with pytest.raises(ValueError, match="unknown objective 'hinge'.*cross_entropy"):
        make_objective("hinge")
    obj = make_objective("mse")
    with pytest.raises(ValueError, match=r"\(N, K\).*\(2, 3\).*\(3, 2\)"):
        obj.loss_grad(np.zeros((2, 3)), np.zeros((3, 2)))
    with pytest.raises(ValueError, match=r"\(N, K\)"):
        obj.per_sample(np.zeros(3), np.zeros(3))
    with pytest.raises(TypeError, match="float"):
        obj.loss_grad(np.zeros((2, 2), dtype=int), np.zeros((2, 2)))


# ------------------------------------------------------------------------------------------
# PyTorch parity


def _torch_loss(torch, name, p, y):
    F = torch.nn.functional
    n = p.shape[0]
    if name == "ae":
        return F.l1_loss(p, y, reduction="sum") / n
    if name == "mae":
        return F.l1_loss(p, y)
    if name == "mse":
        return F.mse_loss(p, y)
    if name == "rmse":
        return torch.sqrt(F.mse_loss(p, y, reduction="none").mean(dim=1)).mean()
    if name == "cross_entropy":
        return -(y * torch.log(p)).sum(dim=1).mean()
    if name == "bce":
        return F.binary_cross_entropy(p, y)
    if name == "kld":
        return F.kl_div(torch.log(p), y, reduction="batchmean")
    if name == "softmax":
        return F.cross_entropy(p, y)
    if name == "sigmoid":
        return F.binary_cross_entropy_with_logits(p, y)
    raise AssertionError(name)


def _compare(torch, name, ours, p, y, dtype):
    pt = torch.tensor(p, requires_grad=True)
    loss_t = _torch_loss(torch, name, pt, torch.tensor(y))
    loss_t.backward()
    loss, grad = ours(p, y)
    rtol = 1e-5 if dtype == np.float32 else 1e-11
    assert loss == pytest.approx(loss_t.item(), rel=rtol, abs=1e-7)
    assert grad.dtype == dtype
    np.testing.assert_allclose(grad, pt.grad.numpy(), rtol=rtol, atol=rtol * 1e-2)


@pytest.mark.torch
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", sorted(OBJECTIVES))
@pytest.mark.parametrize("onehot", [False, True])
def test_objective_matches_torch(name, dtype, onehot, rng):
    torch = pytest.importorskip("torch")
    pred, target = _data(name, rng, dtype=dtype, onehot=onehot)
    _compare(torch, name, make_objective(name).loss_grad, pred, target, dtype)


@pytest.mark.torch
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("fused", ["softmax", "sigmoid"])
def test_fused_matches_torch(fused, dtype, rng):
    torch = pytest.importorskip("torch")
    z = (rng.standard_normal((N, K)) * 4).astype(dtype)
    if fused == "softmax":
        y = rng.dirichlet(np.ones(K), size=N).astype(dtype)
        fn = softmax_cross_entropy_logits
    else:
        y = rng.uniform(0, 1, size=(N, K)).astype(dtype)
        fn = sigmoid_bce_logits
    _compare(torch, fused, fn, z, y, dtype)


@pytest.mark.torch
def test_bce_clamps_like_torch():
    torch = pytest.importorskip("torch")
    p = np.array([[0.0, 1.0, 1e-50], [1.0, 0.0, 0.5]])
    y = np.array([[1.0, 0.0, 1.0], [0.0, 1.0, 0.25]])
    loss = make_objective("bce").loss_grad(p, y)[0]
    want = torch.nn.functional.binary_cross_entropy(torch.tensor(p), torch.tensor(y)).item()
    assert loss == pytest.approx(want, rel=1e-12)
