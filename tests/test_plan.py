"""The compiled training path (neurons.plan + kernels.program) against its slow twin, the tape.

Every MLP preset, loop and feedback variant, optimizer and objective trains for a few epochs on
both paths: metrics rows, final parameters, gradients and optimizer state must agree (float64
to ~1e-12, float32 to ~1e-6). Fallbacks are named; non-finite failures read the same.
"""

import copy

import numpy as np
import pytest

import neurons
from neurons import plan as planning
from neurons.compat.flags import CompatConfig
from neurons.config import build_experiment
from neurons.graph import Feedback, Loop, Network, Skip
from neurons.layers import BatchNorm, Conv2d, Dense, Dropout, NormDense, Reshape
from neurons.objectives import make_objective
from neurons.optim import make_optimizer
from neurons.train import EarlyStopping, NonFiniteLoss, TrainConfig, evaluate, fit

MLP_PRESETS = [
    "mlp_plain",
    "mlp_skip",
    "mlp_looping",
    "mlp_looping_x3",
    "mlp_looping_x4",
    "mlp_feedback",
    "mlp_feedback_x3",
    "mlp_feedback_x4",
    "mlp_normnet",
]


def _data(rng, n=24, d=4, k=3):
    x = rng.standard_normal((n, d))
    y = np.eye(k)[rng.integers(0, k, n)]
    return x, y


def _train(net, objective, opt_name, hp, x, y, xv, yv, engine, epochs=3, **cfg_kw):
    """Fit a deep copy of `net` on one engine; returns (net, optimizer, state, rows)."""
    net = copy.deepcopy(net)
    opt = make_optimizer(opt_name, net.named_parameters(), **hp)
    rows = []
    cfg = TrainConfig(epochs=epochs, engine=engine, **{"batch_size": 4, **cfg_kw})
    state = fit(
        net,
        make_objective(objective),
        opt,
        x,
        y,
        xv,
        yv,
        cfg,
        np.random.default_rng(7),
        classification=objective in ("cross_entropy", "bce"),
        callbacks=[lambda s, row, imp: rows.append(dict(row))],
    )
    return net, opt, state, rows


def assert_same_training(a, b, rtol):
    """Two `_train` results agree: rows (but seconds), parameters, grads, optimizer state."""
    (na, oa, sa, ra), (nb, ob, sb, rb) = a, b
    assert sa.engine_path == "tape" and sb.engine_path == "compiled", sb.engine_fallback
    assert (sa.epoch, sa.step, sa.best_epoch) == (sb.epoch, sb.step, sb.best_epoch)
    assert len(ra) == len(rb)
    for x, y in zip(ra, rb, strict=True):
        assert x.keys() == y.keys()
        for k in x:
            if k != "seconds":
                np.testing.assert_allclose(y[k], x[k], rtol=rtol, atol=rtol, err_msg=k)
    for what, da, db in (
        ("param", na.named_parameters(), nb.named_parameters()),
        ("grad", na.named_grads(), nb.named_grads()),
        ("optim", oa.state_dict(), ob.state_dict()),
    ):
        assert da.keys() == db.keys(), what
        for k in da:
            assert np.asarray(da[k]).dtype == np.asarray(db[k]).dtype, (what, k)
            scale = max(float(np.max(np.abs(da[k]))), 1e-3) if np.size(da[k]) else 1.0
            np.testing.assert_allclose(db[k], da[k], rtol=rtol, atol=rtol * scale, err_msg=k)


def _both(net, objective="cross_entropy", opt="adam", hp=None, rtol=1e-12, rng=None, **kw):
    rng = rng or np.random.default_rng(0)
    x, y = _data(rng, d=net.input_shape[0], k=net.output_shape[0])
    xv, yv = _data(rng, n=9, d=net.input_shape[0], k=net.output_shape[0])
    hp = {"lr": 0.02} if hp is None else hp
    runs = [_train(net, objective, opt, hp, x, y, xv, yv, e, **kw) for e in ("tape", "compiled")]
    assert_same_training(*runs, rtol)
    return runs


def _mlp(rng, skips=(), loops=(), middle=None, head="softmax", dtype=np.float64, act="relu"):
    middle = middle if middle is not None else [Dense(6, activation=act), Dense(6, activation=act)]
    layers = [Dense(6, activation="tanh"), *middle, Dense(3, activation="linear")]
    net = Network(layers, skips=list(skips), loops=list(loops), head=head)
    return net.build((6,), rng, dtype)


# ---------------------------------------------------------------------------- presets


def _preset(name, skip, dtype):
    cfg = neurons.compose(
        [f"arch={name}", f"arch.skip={str(skip).lower()}", f"train.dtype={dtype}", "seed=3"]
    )
    return build_experiment(cfg)


def _fit_preset(exp, engine, epochs, lr):
    ds = exp.dataset
    net = copy.deepcopy(exp.network)
    opt = make_optimizer("adam", net.named_parameters(), lr=lr)
    rows = []
    st = fit(
        net,
        exp.objective,
        opt,
        ds.x_train,
        ds.y_train,
        ds.x_val,
        ds.y_val,
        TrainConfig(epochs=epochs, batch_size=1, engine=engine),
        np.random.default_rng(1),
        callbacks=[lambda s, row, imp: rows.append(dict(row))],
    )
    return net, opt, st, rows


@pytest.mark.parametrize("skip", [False, True])
@pytest.mark.parametrize("name", MLP_PRESETS)
def test_every_mlp_preset_float64(name, skip):
    exp = _preset(name, skip, "float64")
    ds = exp.dataset
    runs = [_fit_preset(exp, engine, 2, 3e-3) for engine in ("tape", "compiled")]
    # NormNet's tan(W) amplifies rounding differences over hundreds of steps (a ReLU kink or a
    # large tan' flips); one step agrees to rounding (see the normnet test)
    assert_same_training(*runs, 1e-5 if name == "mlp_normnet" else 1e-11)
    for kw in ({"recurrent": False}, {"skips": False}):  # the probes
        net = runs[1][0]
        a = evaluate(net, exp.objective, ds.x_val, ds.y_val, classification=True, **kw)
        b = evaluate(
            net, exp.objective, ds.x_val, ds.y_val, classification=True, engine="tape", **kw
        )
        np.testing.assert_allclose(a, b, rtol=1e-12)


@pytest.mark.parametrize("name", ["mlp_plain", "mlp_looping_x3", "mlp_feedback_x3"])
def test_mlp_presets_float32_with_skip(name):
    exp = _preset(name, True, "float32")
    assert exp.network.dtype == np.float32
    runs = [_fit_preset(exp, engine, 3, 1e-3) for engine in ("tape", "compiled")]
    assert_same_training(*runs, 2e-5)


def test_auto_engine_picks_the_compiled_path_for_the_iris_grid():
    exp = _preset("mlp_feedback_x4", True, "float32")
    st = fit(
        exp.network,
        exp.objective,
        exp.optimizer,
        exp.dataset.x_train,
        exp.dataset.y_train,
        None,
        None,
        TrainConfig(epochs=1, batch_size=1),
        exp.rng,
    )
    assert st.engine_path == "compiled" and st.engine_fallback is None


# ---------------------------------------------------------------------------- structures


@pytest.mark.parametrize("merge", ["add", "subtract", "multiply", "mean", "overwrite"])
@pytest.mark.parametrize("inskip", [False, True])
@pytest.mark.parametrize("scale", [1.0, 0.5])
def test_loops(merge, inskip, scale, rng):
    lp = Loop(src=2, dst=1, iterations=2, merge=merge, inskip=inskip, scale=scale)
    _both(_mlp(rng, loops=[lp], act="tanh"))


@pytest.mark.parametrize("merge", ["add", "subtract", "multiply", "mean", "overwrite"])
def test_skips_every_merge_and_a_skip_spanning_a_loop(merge, rng):
    skips = [Skip(0, 2, merge), Skip(1, 3, "add")]
    _both(_mlp(rng, skips=skips, loops=[Loop(src=2, dst=1, iterations=1)], act="sigmoid"))


@pytest.mark.parametrize("coupling", ["mean", "sum", "none"])
@pytest.mark.parametrize("inskips", [False, True])
@pytest.mark.parametrize("outskips", [False, True])
def test_feedback(coupling, inskips, outskips, rng):
    fb = Feedback(
        [Dense(6, activation="relu"), Dense(6, activation="elu")],
        loops=3,
        coupling=coupling,
        inskips=inskips,
        outskips=outskips,
        merge="mean",
    )
    _both(_mlp(rng, skips=[Skip(1, 2)], middle=[fb]))


@pytest.mark.parametrize("merge", ["add", "subtract", "multiply", "overwrite"])
def test_feedback_merges_reshape_and_activation_layers(merge, rng):
    from neurons.layers import Activation

    fb = Feedback(
        [Dense(6, activation="leaky_relu", activation_param=0.2), Activation("tanh")],
        loops=2,
        inskips=True,
        outskips=True,
        merge=merge,
    )
    middle = [Reshape((2, 3)), Dense(6, activation="softmax", bias=False), fb]
    _both(_mlp(rng, middle=middle))


@pytest.mark.parametrize("scale", [None, 2.5])
@pytest.mark.parametrize("act", ["tanh", "sigmoid", "linear"])
def test_normnet_dense_with_output_scale_and_tied_copies(scale, act, rng):
    fb = Feedback([NormDense(6, activation=act, scale=scale)], loops=2, coupling="mean")
    middle = [NormDense(6, activation="relu", scale=scale), fb]
    net = _mlp(rng, skips=[Skip(1, 3)], middle=middle, head=None)
    _both(net, objective="mse", rtol=1e-10, epochs=1, batch_size=24)  # one step: to rounding
    _both(net, objective="mse", rtol=1e-5)  # tan'(W) amplifies rounding over the steps


# ---------------------------------------------------------------------------- optimizers, losses

OPTIMIZERS = [
    ("sgd", {"lr": 0.05}),
    ("sgd", {"lr": 0.05, "weight_decay": 0.01}),
    ("sgdm", {"lr": 0.05}),
    ("sgdm", {"lr": 0.05, "momentum": 0.0}),
    ("sgdm", {"lr": 0.05, "nesterov": True, "weight_decay": 0.01}),
    ("sgdm", {"lr": 0.05, "dampening": 0.3}),
    ("adam", {"lr": 0.01}),
    ("adam", {"lr": 0.01, "amsgrad": True, "weight_decay": 0.01}),
    ("adamw", {"lr": 0.01}),
    ("adamw", {"lr": 0.01, "amsgrad": True}),
    ("rmsprop", {"lr": 0.005}),
    ("rmsprop", {"lr": 0.005, "centered": True, "momentum": 0.5, "weight_decay": 0.01}),
]


@pytest.mark.parametrize(("opt", "hp"), OPTIMIZERS)
def test_every_optimizer(opt, hp, rng):
    _both(_mlp(rng, loops=[Loop(src=2, dst=1, iterations=1)]), opt=opt, hp=hp)


@pytest.mark.parametrize(
    ("objective", "head"),
    [("cross_entropy", "softmax"), ("bce", "sigmoid"), ("mse", None), ("mae", None), ("ae", None)],
)
def test_every_objective(objective, head, rng):
    _both(_mlp(rng, skips=[Skip(0, 3)], head=head), objective=objective)


@pytest.mark.parametrize(
    "kw",
    [
        {"clip_value": 0.01},
        {"clip_norm": 0.05},
        {"loss_average": "batch", "batch_size": 5},
        {"shuffle": False, "batch_size": 24},
        {"eval_every": 2, "early_stopping": EarlyStopping(patience=1, monitor="train_loss")},
    ],
)
def test_clipping_averaging_batches_and_stopping(kw, rng):
    _both(_mlp(rng), rtol=1e-11, **kw)


def test_float32_after_a_few_epochs(rng):
    net = _mlp(rng, skips=[Skip(1, 3)], loops=[Loop(2, 1, 2)], dtype=np.float32)
    _both(net, rtol=2e-6, epochs=4)


def test_resume_mid_run_is_bit_identical(rng):
    net0 = _mlp(rng, loops=[Loop(2, 1, 1)], dtype=np.float32)
    x, y = _data(rng, d=6)
    obj = make_objective("cross_entropy")

    def start(net):
        return make_optimizer("sgdm", net.named_parameters(), lr=0.05)

    full = copy.deepcopy(net0)
    opt = start(full)
    fit(full, obj, opt, x, y, x, y, TrainConfig(epochs=4, batch_size=3), np.random.default_rng(2))
    half = copy.deepcopy(net0)
    opt_h, r = start(half), np.random.default_rng(2)
    st = fit(half, obj, opt_h, x, y, x, y, TrainConfig(epochs=2, batch_size=3), r)
    assert st.engine_path == "compiled"
    saved = (half.state_dict(), opt_h.state_dict(), r.bit_generator.state, st.to_dict())
    again = copy.deepcopy(net0)  # a fresh process: new network and optimizer, loaded state
    again.load_state_dict(saved[0])
    opt_a = start(again)
    opt_a.load_state_dict(saved[1])
    r2 = np.random.default_rng()
    r2.bit_generator.state = saved[2]
    from neurons.train import TrainState

    st2 = TrainState(**saved[3])
    fit(again, obj, opt_a, x, y, x, y, TrainConfig(epochs=4, batch_size=3), r2, state=st2)
    for k, v in full.named_parameters().items():
        assert np.array_equal(v, again.named_parameters()[k]), k
    for k, v in opt.state_dict().items():
        assert np.array_equal(v, opt_a.state_dict()[k]), k


# ---------------------------------------------------------------------------- fallbacks


def _fallback(net, objective="cross_entropy", opt="adam", on_batch=None, **cfg_kw):
    x, y = _data(np.random.default_rng(0), d=net.input_shape[0], k=net.output_shape[0])
    o = make_optimizer(opt, net.named_parameters(), lr=0.01)
    cfg = TrainConfig(epochs=1, **{"batch_size": 4, **cfg_kw})
    st = fit(net, make_objective(objective), o, x, y, None, None, cfg, np.random.default_rng(0),
             on_batch=on_batch)  # fmt: skip
    assert st.engine_path == "tape"
    return st.engine_fallback


def test_named_fallbacks(rng):
    conv = Network([Reshape((1, 2, 2)), Conv2d(2, 2), Dense(3)], head="softmax").build(
        (4,), rng, np.float64
    )
    assert "layer kind 'conv'" in _fallback(conv)
    drop = Network([Dense(5), Dropout(0.2), Dense(3)], head="softmax").build((4,), rng)
    assert "'dropout'" in _fallback(drop)
    bn = Network([Dense(5), BatchNorm(), Dense(3)], head="softmax").build((4,), rng)
    assert "'batchnorm'" in _fallback(bn)
    assert "objective 'rmse'" in _fallback(_mlp(rng, head=None), objective="rmse")
    assert "objective 'kld'" in _fallback(_mlp(rng, head=None), objective="kld")
    assert "head softmax" in _fallback(_mlp(rng), objective="mse")
    assert _fallback(_mlp(rng), engine="tape") == "train.engine=tape"
    big = Network([Dense(1200), Dense(3)], head="softmax").build((4,), rng)
    assert "BLAS" in _fallback(big, batch_size=512)
    patched = _mlp(rng)
    patched.backward = lambda dout, tape: None
    assert "Network.backward is replaced" in _fallback(patched)
    crate = _mlp(rng)
    crate.compat = CompatConfig()
    assert "net.compat" in _fallback(crate)


def test_on_batch_gets_the_tape_paths_calls_after_each_compiled_epoch(rng):
    net = _mlp(rng)
    x, y = _data(rng, d=6)
    calls = {}
    for engine in ("tape", "compiled"):
        seen: list = []
        n2 = copy.deepcopy(net)
        opt = make_optimizer("adam", n2.named_parameters(), lr=0.01)
        cfg = TrainConfig(epochs=2, batch_size=5, engine=engine)
        hook = lambda b, n, loss, s=seen: s.append((b, n, loss))  # noqa: E731
        obj = make_objective("cross_entropy")
        st = fit(n2, obj, opt, x, y, None, None, cfg, np.random.default_rng(0), on_batch=hook)
        calls[engine] = seen
        assert st.engine_path == engine
    assert [c[:2] for c in calls["compiled"]] == [c[:2] for c in calls["tape"]]
    assert [c[:2] for c in calls["tape"]][:6] == [(1, 5), (2, 5), (3, 5), (4, 5), (5, 5), (1, 5)]
    losses = [[c[2] for c in calls[e]] for e in ("tape", "compiled")]
    np.testing.assert_allclose(losses[1], losses[0], rtol=1e-12)


def test_unknown_engine_is_refused(rng):
    with pytest.raises(ValueError, match="train.engine: expected one of auto, tape, compiled"):
        _fallback(_mlp(rng), engine="fast")


# ---------------------------------------------------------------------------- non-finite


def _fail(net, x, y, objective, engine, xv=None, yv=None):
    o = make_optimizer("sgd", net.named_parameters(), lr=1e-12)
    cfg = TrainConfig(epochs=2, batch_size=1, shuffle=False, engine=engine)
    with pytest.raises(NonFiniteLoss) as e, np.errstate(all="ignore"):  # NaN/Inf on purpose
        fit(net, make_objective(objective), o, x, y, xv, yv, cfg, np.random.default_rng(0),
            classification=False)  # fmt: skip
    return str(e.value), o.t


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_nonfinite_loss_same_error(dtype, rng):
    x, y = _data(rng, d=6)
    x[2, 1] = np.nan
    msgs = {}
    for engine in ("tape", "compiled"):
        net = _mlp(np.random.default_rng(1), head=None, dtype=dtype)
        msgs[engine] = _fail(net, x, y, "mse", engine)
    assert msgs["tape"] == msgs["compiled"]
    assert "training loss is nan at epoch 1, batch 3 of 24 (step 3)" in msgs["tape"][0]


def test_nonfinite_gradient_same_error_and_parameters_kept(rng):
    x, y = np.array([[1.0], [1e308]]), np.zeros((2, 1))
    res = {}
    for engine in ("tape", "compiled"):
        net = Network([Dense(1, bias=False), Dense(1, bias=False)]).build((1,), rng, np.float64)
        net.layers[0].params["w"][:] = 1e-10
        net.layers[1].params["w"][:] = 10.0
        msg, t = _fail(net, x, y, "ae", engine)
        res[engine] = (msg, t, {k: v.copy() for k, v in net.named_parameters().items()})
    assert res["tape"][:2] == res["compiled"][:2]
    expected = "gradient of layers.0.w is not finite at epoch 1, batch 2 of 2 (step 2)"
    assert expected in res["tape"][0]
    for k, v in res["tape"][2].items():
        assert np.array_equal(v, res["compiled"][2][k])  # stopped before the bad step


def test_nonfinite_validation_same_error(rng):
    x, y = _data(rng, d=6)
    xv, yv = x[:5].copy(), y[:5]
    xv[0, 0] = np.nan
    msgs = [
        _fail(_mlp(np.random.default_rng(1), head=None), x, y, "mse", e, xv, yv)[0]
        for e in ("tape", "compiled")
    ]
    assert msgs[0] == msgs[1] and "validation loss is nan at epoch 1" in msgs[0]


# ---------------------------------------------------------------------------- the plan


def test_merge_table_covers_every_mode():
    from neurons.graph import MERGE_OPS, MERGES

    assert tuple(MERGE_OPS) == MERGES


def test_plan_traces_loops_and_feedback_once(rng):
    fb = Feedback([Dense(6), Dense(6)], loops=3, coupling="mean")
    net = _mlp(rng, middle=[fb], skips=[Skip(1, 2)])
    p = planning.trace(net)
    layers = [s.layer for s in p.steps if s.op == "layer"]
    assert len(layers) == 1 + 3 * 2 + 1  # input layer, three copies of two, output layer
    assert [s.gscale for s in p.steps if s.op == "layer"][1:7] == [pytest.approx(1 / 3)] * 6
    assert planning.trace(net, recurrent=False).steps[1:3] == p.steps[1:3]
    assert len([s for s in planning.trace(net, skips=False).steps if s.op == "merge"]) == 0
    prog = planning.compiled_for(net).program
    assert prog.n_params == net.n_params()
    assert planning.compiled_for(net) is planning.compiled_for(net)  # built once per network


def test_a_run_records_its_engine_path(tmp_path):
    run = neurons.fit(
        ["arch=mlp_feedback", "arch.skip=true", "train.epochs=2", "train.threads=1"],
        run_dir=tmp_path / "compiled",
    )
    assert run.summary["engine_path"] == "compiled" and run.summary["engine_fallback"] is None
    run = neurons.fit(
        ["objective=rmse", "train.epochs=1", "train.threads=1"], run_dir=tmp_path / "tape"
    )
    assert run.summary["engine_path"] == "tape"
    assert "objective 'rmse'" in run.summary["engine_fallback"]


def test_a_checkpoint_serialised_once_is_the_same_file(tmp_path):
    from neurons import record as rec

    arrays, meta = {"model.param.w": np.arange(6.0).reshape(2, 3)}, {"epoch": 3}
    rec.save_checkpoint(tmp_path / "a.npz", arrays, meta)
    rec.save_checkpoint(tmp_path / "b.npz", arrays, meta, rec.checkpoint_bytes(arrays, meta))
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()
    loaded, m = rec.load_checkpoint(tmp_path / "b.npz")
    assert m == meta and np.array_equal(loaded["model.param.w"], arrays["model.param.w"])
