"""Optimizers, schedules and clipping: PyTorch parity, state round-trips and argument errors."""

import math

import numpy as np
import pytest

from neurons.optim import (
    OPTIMIZERS,
    SGD,
    Adam,
    clip_by_value,
    clip_grad_norm,
    make_optimizer,
    make_schedule,
)

SHAPES = {"layers.0.w": (3, 4), "layers.0.b": (4,), "head.w": (4, 2)}
STEPS = 10

# (our name, torch class name, hyper-parameters shared by both)
CASES = [
    ("sgd", "SGD", {"lr": 0.1}),
    ("sgd", "SGD", {"lr": 0.05, "weight_decay": 0.1}),
    ("sgdm", "SGD", {"lr": 0.05, "momentum": 0.9}),
    ("sgdm", "SGD", {"lr": 0.05, "momentum": 0.8, "dampening": 0.3, "weight_decay": 0.05}),
    ("sgdm", "SGD", {"lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 0.01}),
    ("adam", "Adam", {}),
    ("adam", "Adam", {"lr": 0.01, "betas": (0.8, 0.99), "eps": 1e-6, "weight_decay": 0.1}),
    ("adam", "Adam", {"lr": 0.01, "amsgrad": True}),
    ("adamw", "AdamW", {}),
    ("adamw", "AdamW", {"lr": 0.01, "weight_decay": 0.3, "amsgrad": True}),
    ("rmsprop", "RMSprop", {}),
    ("rmsprop", "RMSprop", {"lr": 0.01, "alpha": 0.9, "weight_decay": 0.1, "centered": True}),
    ("rmsprop", "RMSprop", {"lr": 0.01, "momentum": 0.7}),
    ("rmsprop", "RMSprop", {"lr": 0.01, "momentum": 0.5, "centered": True, "eps": 1e-4}),
]
IDS = [f"{name}-{'-'.join(map(str, hp)) or 'defaults'}" for name, _, hp in CASES]


def _params(rng, dtype):
    return {k: rng.standard_normal(s).astype(dtype) for k, s in SHAPES.items()}


def _grads(rng, dtype, steps=STEPS):
    # varying scales so that Adam/RMSprop denominators actually matter
    return [
        {k: (rng.standard_normal(s) * 10.0 ** rng.integers(-2, 2)).astype(dtype)
         for k, s in SHAPES.items()}
        for _ in range(steps)
    ]  # fmt: skip


def _torch_run(torch, cls_name, hp, params, grads):
    tparams = {k: torch.tensor(v.copy(), requires_grad=True) for k, v in params.items()}
    opt = getattr(torch.optim, cls_name)(list(tparams.values()), foreach=False, **hp)
    for g in grads:
        for k, p in tparams.items():
            p.grad = torch.tensor(g[k].copy())
        opt.step()
    return {k: p.detach().numpy() for k, p in tparams.items()}


def _run(name, hp, params, grads):
    opt = make_optimizer(name, params, **hp)
    for g in grads:
        opt.step(g)
    return opt


@pytest.mark.torch
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize(("name", "cls_name", "hp"), CASES, ids=IDS)
def test_optimizer_matches_torch(name, cls_name, hp, dtype, rng):
    torch = pytest.importorskip("torch")
    params, grads = _params(rng, dtype), _grads(rng, dtype)
    want = _torch_run(torch, cls_name, hp, params, grads)
    ids = {k: id(v) for k, v in params.items()}
    opt = _run(name, hp, params, grads)
    assert opt.t == STEPS
    rtol, atol = (1e-6, 1e-9) if dtype == np.float64 else (1e-4, 1e-5)
    for k, v in params.items():
        assert id(v) == ids[k], "parameters must be updated in place"
        assert v.dtype == dtype
        np.testing.assert_allclose(v, want[k], rtol=rtol, atol=atol, err_msg=k)
    for store in opt.state.values():
        assert all(b.dtype == dtype for b in store.values())


@pytest.mark.parametrize(("name", "cls_name", "hp"), CASES, ids=IDS)
def test_state_dict_round_trip_continues_identically(name, cls_name, hp, rng, tmp_path):
    params, grads = _params(rng, np.float32), _grads(rng, np.float32)
    ref_params = {k: v.copy() for k, v in params.items()}
    ref = _run(name, hp, ref_params, grads)

    first = _run(name, hp, params, grads[:5])
    np.savez(tmp_path / "opt.npz", allow_pickle=False, **first.state_dict())
    resumed_params = {k: v.copy() for k, v in params.items()}
    resumed = make_optimizer(name, resumed_params, **hp)
    with np.load(tmp_path / "opt.npz", allow_pickle=False) as f:
        resumed.load_state_dict(f)
    assert resumed.t == 5
    for g in grads[5:]:
        resumed.step(g)
    for k in params:
        np.testing.assert_array_equal(resumed_params[k], ref_params[k], err_msg=k)
    sd, ref_sd = resumed.state_dict(), ref.state_dict()
    assert sd.keys() == ref_sd.keys()
    for k in sd:
        np.testing.assert_array_equal(sd[k], ref_sd[k], err_msg=k)


def test_state_dict_layout(rng):
    params = _params(rng, np.float64)
    opt = Adam(params, amsgrad=True)
    opt.step(_grads(rng, np.float64, 1)[0])
    sd = opt.state_dict()
    assert sd["t"].shape == () and sd["t"] == 1
    assert {k.split(".", 1)[0] for k in sd} == {
        "t",
        "lr",
        "exp_avg",
        "exp_avg_sq",
        "max_exp_avg_sq",
    }
    assert "exp_avg.layers.0.w" in sd and sd["exp_avg.layers.0.w"].shape == (3, 4)
    sd["exp_avg.layers.0.w"][...] = 7  # a copy, not the live buffer
    assert not (opt.state["exp_avg"]["layers.0.w"] == 7).any()


def test_load_state_dict_rejects_mismatches(rng):
    params = _params(rng, np.float32)
    opt = Adam(params)
    opt.step(_grads(rng, np.float32, 1)[0])
    sd = opt.state_dict()
    bad = dict(sd, **{"exp_avg.nope": np.zeros(3, np.float32)})
    with pytest.raises(ValueError, match="unexpected state entry 'exp_avg.nope'"):
        Adam(_params(rng, np.float32)).load_state_dict(bad)
    bad = dict(sd, **{"exp_avg.head.w": np.zeros((4, 2))})
    with pytest.raises(ValueError, match="float64"):
        Adam(_params(rng, np.float32)).load_state_dict(bad)
    with pytest.raises(ValueError, match="'t'"):
        Adam(_params(rng, np.float32)).load_state_dict({})


def test_params_without_grads_are_skipped_and_lr_is_settable(rng):
    params = _params(rng, np.float64)
    before = {k: v.copy() for k, v in params.items()}
    opt = SGD(params, lr=0.5)
    g = {"head.w": np.ones((4, 2))}
    opt.step(g)
    np.testing.assert_array_equal(params["layers.0.w"], before["layers.0.w"])
    np.testing.assert_allclose(params["head.w"], before["head.w"] - 0.5)
    opt.lr = 0.25
    opt.step(g)
    np.testing.assert_allclose(params["head.w"], before["head.w"] - 0.75)
    with pytest.raises(ValueError, match="'lr'.*-1"):
        opt.lr = -1
    with pytest.raises(ValueError, match="unknown parameter 'nope'"):
        opt.step({"nope": np.zeros(1)})
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        opt.step({"head.w": np.zeros(2)})


def test_sgd_momentum_first_buffer_is_the_gradient():
    params = {"w": np.zeros(2)}
    opt = make_optimizer("sgdm", params, lr=1.0, momentum=0.9, dampening=0.5)
    opt.step({"w": np.array([1.0, 2.0])})
    np.testing.assert_allclose(params["w"], [-1.0, -2.0])  # no dampening on the first step
    opt.step({"w": np.array([1.0, 2.0])})
    np.testing.assert_allclose(params["w"], [-1.0 - 1.4, -2.0 - 2.8])


@pytest.mark.parametrize(
    ("name", "hp", "pattern"),
    [
        ("sgd", {}, r"\['lr'\] are required"),
        ("sgd", {"lr": -0.1}, r"'lr'.*\(0, inf\).*-0.1"),
        ("sgd", {"lr": 0.1, "momentum": 0.9}, r"unknown hyper-parameter.*'momentum'.*'lr'"),
        ("sgdm", {"lr": 0.1, "momentum": -0.5}, r"'momentum'.*>=|'momentum'.*\[0"),
        ("sgdm", {"lr": 0.1, "momentum": 0.0, "nesterov": True}, "'nesterov' needs momentum > 0"),
        ("sgdm", {"lr": 0.1, "dampening": 0.5, "nesterov": True}, "'nesterov'.*dampening"),
        ("sgdm", {"lr": 0.1, "dampening": 2.0}, r"'dampening'.*\[0, 1\].*2.0"),
        ("adam", {"betas": (0.9, 1.0)}, r"'betas\[1\]'.*\[0, 1\).*1.0"),
        ("adam", {"betas": (-0.1, 0.9)}, r"'betas\[0\]'.*-0.1"),
        ("adam", {"betas": 0.9}, "'betas' must be a pair"),
        ("adam", {"eps": -1.0}, "'eps'"),
        ("adam", {"lr": float("nan")}, "'lr'.*nan"),
        ("adamw", {"weight_decay": -0.1}, "'weight_decay'"),
        ("adam", {"amsgrad": "yes"}, "'amsgrad' must be a bool"),
        ("rmsprop", {"alpha": 1.5}, "'alpha'"),
        ("rmsprop", {"momentum": -1}, "'momentum'"),
        ("rmsprop", {"centered": 1}, "'centered' must be a bool"),
        ("lbfgs", {}, r"unknown optimizer 'lbfgs'.*\['adam', 'adamw', 'rmsprop', 'sgd', 'sgdm'\]"),
    ],
)
def test_bad_hyper_parameters_are_named(name, hp, pattern):
    with pytest.raises(ValueError, match=pattern):
        make_optimizer(name, {"w": np.zeros(2)}, **hp)


def test_registry():
    assert {"sgd", "sgdm", "adam", "adamw", "rmsprop"} <= set(OPTIMIZERS)  # + any registered
    with pytest.raises(TypeError, match="float ndarray"):
        make_optimizer("adam", {"w": np.zeros(2, dtype=int)})


# ------------------------------------------------------------------------------------------
# schedules

EPOCHS = 20
SCHEDULE_CASES = [
    ("constant", {}),
    ("step", {"step_size": 3}),
    ("step", {"step_size": 4, "gamma": 0.5}),
    ("exponential", {"gamma": 0.8}),
    ("cosine", {}),
    ("cosine", {"min_lr": 0.01}),
]


def _torch_main(torch, opt, name, kw, t_max):
    sched = torch.optim.lr_scheduler
    if name == "constant":
        return sched.LambdaLR(opt, lambda e: 1.0)
    if name == "step":
        return sched.StepLR(opt, kw["step_size"], gamma=kw.get("gamma", 0.1))
    if name == "exponential":
        return sched.ExponentialLR(opt, kw["gamma"])
    return sched.CosineAnnealingLR(opt, T_max=t_max, eta_min=kw.get("min_lr", 0.0))


@pytest.mark.torch
@pytest.mark.parametrize("warmup", [0, 4])
@pytest.mark.parametrize(("name", "kw"), SCHEDULE_CASES)
def test_schedule_matches_torch(name, kw, warmup):
    torch = pytest.importorskip("torch")
    base = 0.1
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=base)
    main = _torch_main(torch, opt, name, kw, EPOCHS - warmup)
    if warmup:
        linear = torch.optim.lr_scheduler.LinearLR(opt, start_factor=0.25, total_iters=warmup)
        sched = torch.optim.lr_scheduler.SequentialLR(opt, [linear, main], milestones=[warmup])
    else:
        sched = main
    want = []
    for _ in range(EPOCHS):
        want.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    ours = make_schedule(
        name, base, epochs=EPOCHS, warmup_epochs=warmup, warmup_start_factor=0.25, **kw
    )
    got = [ours(e) for e in range(EPOCHS)]
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-14)


def test_schedule_values():
    cos = make_schedule("cosine", 1.0, epochs=10, min_lr=0.1)
    assert cos(0) == 1.0 and cos(5) == pytest.approx(0.55) and cos(10) == pytest.approx(0.1)
    warm = make_schedule("constant", 2.0, epochs=10, warmup_epochs=2, warmup_start_factor=0.5)
    assert [warm(e) for e in range(4)] == [1.0, 1.5, 2.0, 2.0]
    step = make_schedule("step", 1.0, epochs=10, step_size=2)
    assert [step(e) for e in range(5)] == pytest.approx([1, 1, 0.1, 0.1, 0.01])


@pytest.mark.parametrize(
    ("name", "kw", "pattern"),
    [
        ("linear", {}, r"unknown schedule 'linear'.*'cosine'"),
        ("step", {}, "'step_size'.*required"),
        ("step", {"step_size": 0}, "'step_size'.*>= 1.*0"),
        ("exponential", {}, "'gamma'.*required"),
        ("exponential", {"gamma": 1.5}, r"'gamma'.*\(0, 1\].*1.5"),
        ("cosine", {"gamma": 0.5}, r"'gamma' only applies to schedules \['step', 'exponential'\]"),
        ("step", {"step_size": 2, "min_lr": 0.01}, "'min_lr' only applies"),
        ("cosine", {"min_lr": 0.5}, r"'min_lr'.*\[0, 0.1\].*0.5"),
        ("cosine", {"epochs": 0}, "'epochs'.*>= 1"),
        ("cosine", {"warmup_epochs": 20}, "'warmup_epochs' must be < epochs=20"),
        ("cosine", {"warmup_epochs": 2, "warmup_start_factor": 0.0}, "'warmup_start_factor'"),
        ("constant", {"base_lr": -1.0}, "'base_lr'"),
    ],
)
def test_bad_schedule_arguments_are_named(name, kw, pattern):
    args = {"base_lr": 0.1, "epochs": 20} | kw
    base = args.pop("base_lr")
    with pytest.raises(ValueError, match=pattern):
        make_schedule(name, base, **args)


def test_schedule_rejects_bad_epoch():
    f = make_schedule("constant", 0.1, epochs=5)
    with pytest.raises(ValueError, match="epoch must be an integer >= 0"):
        f(-1)
    with pytest.raises(ValueError, match="epoch"):
        f(1.5)


# ------------------------------------------------------------------------------------------
# clipping


@pytest.mark.torch
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("max_norm", [0.5, 1e3])
def test_clip_grad_norm_matches_torch(max_norm, dtype, rng):
    torch = pytest.importorskip("torch")
    grads = {k: rng.standard_normal(s).astype(dtype) for k, s in SHAPES.items()}
    tensors = [torch.zeros(s, dtype=torch.from_numpy(grads[k]).dtype) for k, s in SHAPES.items()]
    for t, g in zip(tensors, grads.values(), strict=True):
        t.grad = torch.from_numpy(g.copy())
    want = torch.nn.utils.clip_grad_norm_(tensors, max_norm).item()
    ids = {k: id(v) for k, v in grads.items()}
    total = clip_grad_norm(grads, max_norm)
    rtol = 1e-6 if dtype == np.float32 else 1e-12
    assert total == pytest.approx(want, rel=rtol)
    for t, (k, g) in zip(tensors, grads.items(), strict=True):
        assert id(g) == ids[k] and g.dtype == dtype
        np.testing.assert_allclose(g, t.grad.numpy(), rtol=rtol, atol=1e-7)


def test_clip_grad_norm_semantics():
    grads = {"a": np.array([3.0, 0.0]), "b": np.array([[4.0]])}
    assert clip_grad_norm(grads, 1.0) == pytest.approx(5.0)
    total = math.sqrt(sum(float((g**2).sum()) for g in grads.values()))
    assert total == pytest.approx(5.0 / (5.0 + 1e-6))
    grads = {"a": np.array([0.3, 0.4])}
    assert clip_grad_norm(grads, 1.0) == pytest.approx(0.5)
    np.testing.assert_array_equal(grads["a"], [0.3, 0.4])  # untouched below the threshold
    with pytest.raises(ValueError, match="'max_norm'.*0"):
        clip_grad_norm(grads, 0.0)


def test_clip_by_value():
    g = np.array([-2.0, 0.5, 3.0], dtype=np.float32)
    out = clip_by_value(g, -1.0, 1.0)
    np.testing.assert_array_equal(out, [-1.0, 0.5, 1.0])
    assert out.dtype == np.float32 and g[0] == -2.0
    with pytest.raises(ValueError, match="'hi'"):
        clip_by_value(g, 1.0, -1.0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    ("name", "kw"),
    [
        ("adam", {}),
        ("adam", {"weight_decay": 0.01}),
        ("adamw", {}),
        ("adamw", {"weight_decay": 0.1, "lr": 3e-3, "betas": (0.8, 0.99)}),
    ],
)
def test_fused_adam_is_bit_identical_to_the_numpy_update(name, kw, dtype, rng):
    """Large parameters take one numba pass (kernels/optim.py); over 5 steps it gives exactly
    the numpy update's parameters and state, for Adam's L2 and AdamW's decoupled decay."""
    from neurons.kernels.optim import FUSED_MIN_SIZE

    shape = (FUSED_MIN_SIZE // 64 + 3, 64)  # above the size threshold
    p0 = rng.standard_normal(shape).astype(dtype)
    grads = [rng.standard_normal(shape).astype(dtype) for _ in range(5)]
    runs = []
    for fused in (False, True):
        params = {"w": p0.copy()}
        opt = make_optimizer(name, params, **kw)
        opt.fused = fused
        for g in grads:
            opt.step({"w": g})
        runs.append((params["w"], opt.state_dict()))
    (p_np, s_np), (p_f, s_f) = runs
    assert np.array_equal(p_np, p_f)
    assert s_np.keys() == s_f.keys()
    for k in s_np:
        assert np.array_equal(s_np[k], s_f[k]), k
    assert not np.array_equal(p_np, p0)
