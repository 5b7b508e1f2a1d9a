"""The training loop: overfitting one batch, early stopping, batched evaluation, batch-mean
gradients, per-epoch reshuffling and reproducibility, NonFiniteLoss, LSUV and gradient clipping."""

import math

import numba
import numpy as np
import pytest

from neurons.graph import Network, lsuv_init
from neurons.layers import BatchNorm, Context, Conv2d, Dense, Dropout, MaxPool2d
from neurons.objectives import MSE, CrossEntropy
from neurons.optim import SGD, Adam
from neurons.train import EarlyStopping, NonFiniteLoss, TrainConfig, evaluate, fit, train_step


@pytest.fixture(autouse=True)
def _one_numba_thread():
    """These networks are tiny: parallel kernels only add thread start-up cost (results do not
    depend on the thread count)."""
    before = numba.get_num_threads()
    numba.set_num_threads(1)
    yield
    numba.set_num_threads(before)


def small_cnn(seed=1, dtype=np.float32, dropout=False, filters=8):
    layers = [Conv2d(filters, 3, padding=1, activation="relu"), MaxPool2d(2)]
    layers += [Dropout(0.2)] if dropout else []
    layers += [Dense(10)]
    net = Network(layers, head="softmax")
    return net.build((1, 8, 8), np.random.default_rng(seed), dtype)


def random_images(n, seed=0, classes=10):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 1, 8, 8)).astype(np.float32)
    y = np.eye(classes, dtype=np.float32)[rng.integers(0, classes, n)]
    return x, y


# --------------------------------------------------------------------------- (a) overfit

OVERFIT_STEPS_NEEDED = 20  # measured: first step after which train accuracy is 1.0
OVERFIT_BUDGET = 40


def test_overfits_one_batch_of_random_labels():
    x, y = random_images(32, seed=0)
    net = small_cnn(seed=100)
    accs = []

    def track(state, row, improved):  # accuracy of the weights after each step (1 step/epoch)
        accs.append(evaluate(net, CrossEntropy(), x, y, classification=True)[1])

    state = fit(
        net,
        CrossEntropy(),
        Adam(net.named_parameters(), lr=1e-2),
        x,
        y,
        None,
        None,
        TrainConfig(epochs=OVERFIT_BUDGET, batch_size=32),
        np.random.default_rng(0),
        callbacks=[track],
    )
    assert state.step == OVERFIT_BUDGET
    first = next((k + 1 for k, a in enumerate(accs) if a == 1.0), None)
    assert first is not None and first <= OVERFIT_BUDGET, accs
    assert first == OVERFIT_STEPS_NEEDED  # deterministic: fixed seeds, no retries
    loss, acc = evaluate(net, CrossEntropy(), x, y, classification=True)
    assert acc == 1.0
    assert loss < 0.5


# --------------------------------------------------------------------------- (b) early stopping


class ScriptedOptimizer:
    """Each step sets the single weight so that the validation loss (w^2) follows `losses`."""

    def __init__(self, w, losses):
        self.w, self.losses, self.lr, self.t = w, list(losses), 0.1, 0

    def step(self, grads):
        self.w[...] = math.sqrt(self.losses[self.t])
        self.t += 1


LOSSES = [1.0, 0.5, 0.45, 0.46, 0.44, 0.47, 0.48, 0.3, 0.2, 0.1]


def run_scripted(es):
    net = Network([Dense(1, bias=False)]).build((1,), np.random.default_rng(0), np.float64)
    w = net.named_parameters()["layers.0.w"]
    one, zero = np.ones((1, 1)), np.zeros((1, 1))
    rows = []
    state = fit(
        net,
        MSE(),
        ScriptedOptimizer(w, LOSSES),
        one,
        zero,
        one,
        zero,
        TrainConfig(epochs=len(LOSSES), batch_size=1, early_stopping=es),
        np.random.default_rng(0),
        classification=False,
        callbacks=[lambda s, row, imp: rows.append((row["val_loss"], imp))],
    )
    np.testing.assert_allclose([r[0] for r in rows], LOSSES[: len(rows)])
    return state, rows, float(w[0, 0]) ** 2


@pytest.mark.parametrize(
    "patience,min_delta,stop_epoch,best_epoch",
    [(2, 0.02, 5, 3), (2, 0.0, 7, 5), (3, 0.0, None, 10), (1, 0.06, 3, 2)],
)
@pytest.mark.parametrize("restore_best", [True, False])
def test_early_stopping(patience, min_delta, stop_epoch, best_epoch, restore_best):
    es = EarlyStopping(patience=patience, min_delta=min_delta, restore_best=restore_best)
    state, rows, w2 = run_scripted(es)
    last = stop_epoch or len(LOSSES)
    assert state.stopped_early == (stop_epoch is not None)
    assert state.epoch == last and len(rows) == last
    assert state.best_epoch == best_epoch
    assert state.best_value == pytest.approx(LOSSES[best_epoch - 1])
    improved = [e + 1 for e, (_, imp) in enumerate(rows) if imp]
    assert improved[-1] == best_epoch
    # restore_best reloads the best epoch's weights; otherwise the last epoch's stay
    assert w2 == pytest.approx(LOSSES[(best_epoch if restore_best else last) - 1], rel=1e-12)


def test_early_stopping_on_accuracy_maximises():
    es = EarlyStopping(patience=2, monitor="val_acc")
    assert es.better(0.6, 0.5) and not es.better(0.5, 0.6)
    assert EarlyStopping(patience=2).better(0.5, 0.6)  # val_loss: smaller is better


# --------------------------------------------------------------------------- (c) batched inference


def test_evaluate_and_predict_do_not_depend_on_batch_size():
    rng = np.random.default_rng(3)
    net = Network(
        [
            Conv2d(3, 3, padding=1, activation="relu"),
            BatchNorm(),
            MaxPool2d(2),
            Dropout(0.5),
            Dense(10),
        ],
        head="softmax",
    ).build((1, 8, 8), rng, np.float32)
    bn = net.layers[1]
    bn.buffers["running_mean"][:] = rng.uniform(-0.5, 0.5, 3)
    bn.buffers["running_var"][:] = rng.uniform(0.5, 2.0, 3)
    x, y = random_images(53, seed=4)
    whole_loss, whole_acc = evaluate(
        net, CrossEntropy(), x, y, classification=True, batch_size=1000
    )
    for bs in (1, 7, 32):
        loss, acc = evaluate(net, CrossEntropy(), x, y, classification=True, batch_size=bs)
        assert acc == whole_acc
        assert loss == pytest.approx(whole_loss, rel=1e-6)
    whole = net.predict(x, batch_size=1000)
    assert whole.shape == (53, 10)
    np.testing.assert_allclose(whole.sum(axis=1), 1.0, rtol=1e-5)  # after the softmax head
    for bs in (1, 7, 32):
        np.testing.assert_allclose(net.predict(x, batch_size=bs), whole, rtol=1e-5, atol=1e-7)
    # the accuracy evaluate reports is the argmax match of predict's outputs
    assert whole_acc == np.mean(whole.argmax(1) == y.argmax(1))


# --------------------------------------------------------------------------- (d) batch-mean grads


@pytest.mark.parametrize("objective", [MSE(), CrossEntropy()])
def test_gradients_are_averaged_over_the_batch(objective):
    x, y = (a.astype(np.float64) for a in random_images(1, seed=5))
    nets = [small_cnn(seed=9, dtype=np.float64) for _ in range(2)]
    if isinstance(objective, MSE):
        for net in nets:
            net.head = None
    cfg = TrainConfig()
    one = train_step(
        nets[0],
        objective,
        SGD(nets[0].named_parameters(), lr=0.5),
        x,
        y,
        np.random.default_rng(0),
        cfg,
    )[0]
    two = train_step(
        nets[1],
        objective,
        SGD(nets[1].named_parameters(), lr=0.5),
        np.concatenate([x, x]),
        np.concatenate([y, y]),
        np.random.default_rng(0),
        cfg,
    )[0]
    assert one == pytest.approx(two, rel=1e-12)
    g1, g2 = nets[0].named_grads(), nets[1].named_grads()
    p1, p2 = nets[0].named_parameters(), nets[1].named_parameters()
    for k in p1:
        assert np.abs(g1[k]).max() > 0, k
        np.testing.assert_allclose(g2[k], g1[k], rtol=1e-10, atol=1e-14, err_msg=k)
        np.testing.assert_allclose(p2[k], p1[k], rtol=1e-12, atol=1e-14, err_msg=k)


# --------------------------------------------------------------------------- (e) shuffling, seeds


class RecordingMSE(MSE):
    """MSE that records the targets of every batch (the targets encode the sample index)."""

    def __init__(self):
        self.seen = []

    def loss_grad(self, pred, target):
        self.seen.append(target[:, 0].astype(int).tolist())
        return super().loss_grad(pred, target)


def test_fit_reshuffles_every_epoch_with_the_passed_rng():
    n, bs, epochs = 10, 4, 3
    x = np.random.default_rng(0).standard_normal((n, 3))
    y = np.arange(n, dtype=np.float64)[:, None]
    net = Network([Dense(1)]).build((3,), np.random.default_rng(0), np.float64)
    obj = RecordingMSE()
    fit(
        net,
        obj,
        SGD(net.named_parameters(), lr=1e-3),
        x,
        y,
        None,
        None,
        TrainConfig(epochs=epochs, batch_size=bs),
        np.random.default_rng(5),
        classification=False,
    )
    assert [len(b) for b in obj.seen] == [4, 4, 2] * epochs
    per_batch = math.ceil(n / bs)
    orders = [sum(obj.seen[e * per_batch : (e + 1) * per_batch], []) for e in range(epochs)]
    ref = np.random.default_rng(5)  # no dropout: the rng is drawn only for the permutations
    for order in orders:
        assert order == ref.permutation(n).tolist()
    assert len({tuple(o) for o in orders}) == epochs  # a new order every epoch
    # shuffle=False keeps the data order
    obj = RecordingMSE()
    fit(
        net,
        obj,
        SGD(net.named_parameters(), lr=1e-3),
        x,
        y,
        None,
        None,
        TrainConfig(epochs=2, batch_size=bs, shuffle=False),
        np.random.default_rng(5),
        classification=False,
    )
    assert sum(obj.seen, []) == list(range(n)) * 2


def train_cnn(seed):
    x, y = random_images(40, seed=6)
    net = small_cnn(seed=3, dropout=True, filters=4)
    fit(
        net,
        CrossEntropy(),
        Adam(net.named_parameters(), lr=1e-2),
        x,
        y,
        None,
        None,
        TrainConfig(epochs=2, batch_size=16),
        np.random.default_rng(seed),
    )
    return net.named_parameters()


def test_same_seed_same_weights_other_seed_differs():
    a, b, c = train_cnn(7), train_cnn(7), train_cnn(8)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert any(not np.array_equal(a[k], c[k]) for k in a)


# --------------------------------------------------------------------------- (f) NonFiniteLoss


class NaNAtCall(MSE):
    def __init__(self, call):
        self.call, self.calls = call, 0

    def loss_grad(self, pred, target):
        self.calls += 1
        loss, grad = super().loss_grad(pred, target)
        return (float("nan") if self.calls == self.call else loss), grad


def test_non_finite_loss_names_epoch_and_batch():
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((16, 3)), rng.standard_normal((16, 2))
    net = Network([Dense(2)]).build((3,), rng, np.float64)
    steps = []
    with pytest.raises(NonFiniteLoss, match=r"epoch 2, batch 3 of 4 \(step 7\)"):
        fit(
            net,
            NaNAtCall(7),
            SGD(net.named_parameters(), lr=1e-3),
            x,
            y,
            None,
            None,
            TrainConfig(epochs=5, batch_size=4),
            rng,
            classification=False,
            on_batch=lambda b, nb, loss: steps.append(b),
        )
    assert steps == [1, 2, 3, 4, 1, 2]


def test_non_finite_loss_from_nan_data():
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((12, 3)), rng.standard_normal((12, 2))
    x[9, 1] = np.nan  # sample 9 is in the third batch of 4
    net = Network([Dense(2, activation="tanh")]).build((3,), rng, np.float64)
    with np.errstate(invalid="ignore"), pytest.raises(NonFiniteLoss, match="epoch 1, batch 3"):
        fit(
            net,
            MSE(),
            SGD(net.named_parameters(), lr=1e-3),
            x,
            y,
            None,
            None,
            TrainConfig(epochs=2, batch_size=4, shuffle=False),
            rng,
            classification=False,
        )


# --------------------------------------------------------------------------- (g) LSUV


def test_lsuv_gives_unit_preactivation_variance():
    rng = np.random.default_rng(0)
    net = Network(
        [
            Conv2d(4, 3, padding=1, activation="relu", init="lsuv"),
            MaxPool2d(2),
            Dense(16, activation="tanh", init="lsuv"),
            Dense(12, activation="relu", init="lsuv"),
            Dense(10, init="auto"),
        ],
        head="softmax",
    ).build((1, 8, 8), rng, np.float32)
    for k, v in net.named_parameters().items():
        if k.endswith(".b"):
            v[:] = 0.3
    untouched = net.named_parameters()["layers.4.w"].copy()
    x = rng.standard_normal((64, 1, 8, 8)).astype(np.float32) * 3
    tol = 0.05
    out = lsuv_init(net, x, tol=tol)
    assert sorted(out) == ["layers.0.w", "layers.2.w", "layers.3.w"]
    cap = {}
    net.forward(x, Context(capture=cap))
    for k in (0, 2, 3):
        layer = net.layers[k]
        z = np.concatenate([a.ravel() for a in cap[id(layer)]]).astype(np.float64)
        assert abs(np.var(z) - 1.0) < tol, (k, np.var(z))
        assert not layer.params["b"].any()  # biases zeroed
    assert np.array_equal(net.named_parameters()["layers.4.w"], untouched)
    assert np.all(net.named_parameters()["layers.4.b"] == np.float32(0.3))


# --------------------------------------------------------------------------- (h) clipping


class RecordingAdam(Adam):
    def step(self, grads):
        self.norms = getattr(self, "norms", [])
        sq = sum(float(np.sum(np.asarray(g, np.float64) ** 2)) for g in grads.values())
        self.norms.append(math.sqrt(sq))
        super().step(grads)


@pytest.mark.parametrize("clip_norm", [None, 0.05])
def test_clip_norm_bounds_the_gradient_the_optimizer_sees(clip_norm):
    x, y = random_images(64, seed=8)
    net = small_cnn(seed=2, filters=4)
    opt = RecordingAdam(net.named_parameters(), lr=1e-2)
    fit(
        net,
        CrossEntropy(),
        opt,
        x,
        y,
        None,
        None,
        TrainConfig(epochs=2, batch_size=16, clip_norm=clip_norm),
        np.random.default_rng(0),
    )
    norms = np.array(opt.norms)
    assert len(norms) == 8
    if clip_norm is None:
        assert norms.min() > 0.05  # so the clipped run below really is clipped
    else:
        assert np.all(norms <= clip_norm * (1 + 1e-5))
        np.testing.assert_allclose(norms, clip_norm, rtol=1e-4)


def test_clip_value_clamps_the_output_gradient():
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((8, 3)), 10 * rng.standard_normal((8, 2))
    net = Network([Dense(2)]).build((3,), rng, np.float64)
    seen = []
    backward = net.backward

    def recording_backward(dout, tape):
        seen.append(dout.copy())
        return backward(dout, tape)

    net.backward = recording_backward
    opt = SGD(net.named_parameters(), lr=1e-3)
    for clip in (None, 0.01):
        seen.clear()
        train_step(net, MSE(), opt, x, y, rng, TrainConfig(clip_value=clip))
        if clip is None:
            assert np.abs(seen[0]).max() > 0.01  # so the clipped step below really clips
        else:
            assert np.abs(seen[0]).max() <= clip
            assert np.sum(np.abs(seen[0]) == clip) > 0
            # the parameter gradient is what backward gives for the clamped output gradient
            np.testing.assert_allclose(net.named_grads()["layers.0.w"], x.T @ seen[0])
