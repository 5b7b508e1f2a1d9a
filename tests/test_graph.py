"""Networks with skips, loops and feedback blocks: exact gradients (float64 finite differences with
a random upstream gradient), probing semantics on hand-set weights, and structure errors."""

import numpy as np
import pytest

from neurons.gradcheck import check_grad
from neurons.graph import MERGES, Feedback, Loop, Network, Skip
from neurons.layers import BuildError, Context, Conv2d, Dense, Dropout, MaxPool2d


def net_gradcheck(net, rng, n=3, grad_factor=None):
    """Check d(net(x))/d(x and every parameter). `grad_factor[name]` rescales an analytic
    gradient before comparing (mean coupling reports the mean, not the sum, over copies)."""
    grad_factor = grad_factor or {}
    x = rng.standard_normal((n, *net.input_shape))
    params = net.named_parameters()
    for k, v in params.items():  # zero biases put ReLUs of dead regions exactly on their kink
        if k.endswith(".b"):
            v[:] = rng.uniform(0.1, 0.5, v.shape) * rng.choice([-1, 1], v.shape)

    def fwd():
        return net.forward(x, Context(train=True, rng=np.random.default_rng(3)))[0]

    def bwd(g):
        net.zero_grad()
        _, tape = net.forward(x, Context(train=True, rng=np.random.default_rng(3)), record=True)
        dx = net.backward(g, tape)
        grads = {k: v.copy() * grad_factor.get(k, 1.0) for k, v in net.named_grads().items()}
        return {"x": dx, **grads}

    check_grad("network", fwd, bwd, {"x": x, **params}, rng)


def mlp(rng, skips=(), loops=(), middle=None, act="tanh"):
    middle = middle if middle is not None else [Dense(4, activation=act), Dense(4, activation=act)]
    layers = [Dense(4, activation=act), *middle, Dense(3, activation="linear")]
    return Network(layers, skips=list(skips), loops=list(loops)).build((5,), rng, np.float64)


def test_plain(rng):
    net_gradcheck(mlp(rng), rng)


@pytest.mark.parametrize("merge", MERGES)
def test_skip_every_merge(merge, rng):
    net_gradcheck(mlp(rng, skips=[Skip(1, 3, merge)]), rng)


def test_skip_from_network_input_reshaped(rng):
    layers = [Conv2d(1, 3, padding=1, activation="tanh"), Dense(6, activation="tanh"), Dense(2)]
    net = Network(layers, skips=[Skip(0, 1, "add")]).build((1, 2, 3), rng, np.float64)
    net_gradcheck(net, rng)


@pytest.mark.parametrize("merge", MERGES)
@pytest.mark.parametrize("iterations", [1, 2])
def test_loop_every_merge(merge, iterations, rng):
    net_gradcheck(mlp(rng, loops=[Loop(src=2, dst=1, iterations=iterations, merge=merge)]), rng)


def test_loop_inskip_and_single_layer_loop(rng):
    net_gradcheck(mlp(rng, loops=[Loop(src=2, dst=1, iterations=2, inskip=True)]), rng)
    net_gradcheck(mlp(rng, loops=[Loop(src=1, dst=1, iterations=3, merge="add")]), rng)


def test_skip_spanning_a_loop(rng):
    net = mlp(rng, skips=[Skip(1, 3, "add")], loops=[Loop(src=2, dst=1, iterations=2)])
    net_gradcheck(net, rng)
    # a skip from inside the loop range (input of layer 2 = merged output of layer 1)
    net = mlp(rng, skips=[Skip(2, 3, "mean")], loops=[Loop(src=2, dst=1, iterations=1)])
    net_gradcheck(net, rng)
    # a skip into a layer inside the loop range (applied on the main pass)
    net = mlp(rng, skips=[Skip(1, 2, "add")], loops=[Loop(src=2, dst=1, iterations=1)])
    net_gradcheck(net, rng)


def test_cnn_loop(rng):
    layers = [Conv2d(1, 3, padding=1, activation="relu") for _ in range(3)]
    layers += [MaxPool2d(2), Dense(3)]
    net = Network(layers, skips=[Skip(1, 3)], loops=[Loop(src=2, dst=0, iterations=2)])
    net.build((1, 6, 6), rng, np.float64)
    net_gradcheck(net, rng)


def feedback_net(
    rng, coupling="sum", loops=3, inskips=False, outskips=False, merge="mean", skips=()
):
    block = Feedback(
        [Dense(4, activation="tanh"), Dense(4, activation="sigmoid")],
        loops=loops,
        coupling=coupling,
        inskips=inskips,
        outskips=outskips,
        merge=merge,
    )
    layers = [Dense(4, activation="tanh"), block, Dense(3)]
    return Network(layers, skips=list(skips)).build((5,), rng, np.float64)


@pytest.mark.parametrize("coupling", ["sum", "none", "mean"])
@pytest.mark.parametrize(
    "inskips,outskips", [(False, False), (True, False), (False, True), (True, True)]
)
def test_feedback_every_coupling(coupling, inskips, outskips, rng):
    net = feedback_net(rng, coupling=coupling, inskips=inskips, outskips=outskips)
    # mean coupling averages the tied weights' gradient over the 3 copies: x3 gives the sum
    factor = {k: 3.0 for k in net.named_parameters() if ".body." in k} if coupling == "mean" else {}
    net_gradcheck(net, rng, grad_factor=factor)


@pytest.mark.parametrize("merge", MERGES)
def test_feedback_skip_merges(merge, rng):
    net_gradcheck(feedback_net(rng, inskips=True, outskips=True, merge=merge), rng)


def test_skip_into_and_out_of_feedback_block(rng):
    # into the block (input of layer 1) from the network input, and out of it (input of 2)
    net = Network(
        [
            Dense(5, activation="tanh"),
            Feedback([Dense(5, activation="tanh")], loops=2, coupling="sum"),
            Dense(3),
        ],
        skips=[Skip(0, 1, "add"), Skip(1, 2, "subtract"), Skip(0, 2, "mean")],
    ).build((5,), rng, np.float64)
    net_gradcheck(net, rng)


def test_feedback_inside_a_loop_and_dropout(rng):
    block = Feedback([Dense(4, activation="tanh")], loops=2, coupling="sum")
    layers = [Dense(4, activation="tanh"), block, Dropout(0.3), Dense(3)]
    net = Network(layers, loops=[Loop(src=2, dst=1, iterations=1)]).build((5,), rng, np.float64)
    net_gradcheck(net, rng)


def test_coupled_parameters_appear_once(rng):
    tied = feedback_net(rng, coupling="mean")
    free = feedback_net(rng, coupling="none")
    assert len(free.named_parameters()) == len(tied.named_parameters()) + 2 * 2 * 2
    assert tied.n_params() == 5 * 4 + 4 + 2 * (4 * 4 + 4) + 4 * 3 + 3
    # independent copies start equal
    p = free.named_parameters()
    np.testing.assert_array_equal(p["layers.1.copies.0.0.w"], p["layers.1.copies.2.0.w"])
    assert p["layers.1.copies.0.0.w"] is not p["layers.1.copies.2.0.w"]


# ----------------------------------------------------------------------------- probes
def scalar_net(w, skips=(), loops=(), block=None):
    """1 -> 1 linear layers without bias and with hand-set weights."""
    layers = [Dense(1, bias=False) for _ in w]
    if block is not None:
        layers.insert(1, block)
    net = Network(layers, skips=list(skips), loops=list(loops))
    net.build((1,), np.random.default_rng(0), np.float64)
    dense = [ly for ly in net.layers if isinstance(ly, Dense)]
    for d, v in zip(dense, w, strict=True):
        d.params["w"][:] = v
    return net


def test_probe_loops():
    # layers: x2, x3, x5; loop 1 -> 1 with 2 iterations, mean: passes give 6x, 18x, 54x
    net = scalar_net([2, 3, 5], loops=[Loop(src=1, dst=1, iterations=2, merge="mean")])
    x = np.array([[1.0]])
    assert net.forward(x)[0].item() == pytest.approx(5 * (6 + 18 + 54) / 3)
    assert net.forward(x, recurrent=False)[0].item() == pytest.approx(30)
    add = scalar_net([2, 3, 5], loops=[Loop(src=1, dst=1, iterations=2, merge="add")])
    assert add.forward(x)[0].item() == pytest.approx(5 * (6 + 18 + 54))
    last = scalar_net([2, 3, 5], loops=[Loop(src=1, dst=1, iterations=2, merge="overwrite")])
    assert last.forward(x)[0].item() == pytest.approx(5 * 54)
    inskip = scalar_net([2, 3, 5], loops=[Loop(src=1, dst=1, iterations=1, inskip=True)])
    # pass 0: 3*2 = 6; pass 1 input 6 + 2 -> 24; mean 15
    assert inskip.forward(x)[0].item() == pytest.approx(5 * 15)


def test_probe_feedback_and_skips():
    block = Feedback([Dense(1, bias=False)], loops=3, coupling="sum")
    net = scalar_net([2, 5], block=block, skips=[Skip(0, 2, "add")])
    block.body[0].params["w"][:] = 3
    x = np.array([[1.0]])
    # 2x -> 3^3 (three copies) -> + x (skip into the last layer) -> x5
    assert net.forward(x)[0].item() == pytest.approx(5 * (2 * 27 + 1))
    assert net.forward(x, recurrent=False)[0].item() == pytest.approx(5 * (2 * 3 + 1))
    assert net.forward(x, skips=False)[0].item() == pytest.approx(5 * 2 * 27)
    assert net.forward(x, skips=False, recurrent=False)[0].item() == pytest.approx(30)
    out = Feedback([Dense(1, bias=False)], loops=2, coupling="none", outskips=True)
    net = scalar_net([1, 1], block=out)
    for c in out.copies:
        c[0].params["w"][:] = 3
    assert net.forward(x)[0].item() == pytest.approx((3 + 9) / 2)
    assert net.forward(x, recurrent=False)[0].item() == pytest.approx(3)


# ----------------------------------------------------------------------------- errors
def test_structure_errors_name_the_config_path(rng):
    with pytest.raises(BuildError, match=r"arch.skips\[0\]: the input of layer 0 has shape"):
        Network([Dense(4), Dense(3)], skips=[Skip(0, 1, path="arch.skips[0]")]).build((5,), rng)
    with pytest.raises(BuildError, match=r"arch.loops\[1\]: its range 2..2 overlaps"):
        Network(
            [Dense(4), Dense(4), Dense(4), Dense(3)],
            loops=[Loop(2, 1, path="arch.loops[0]"), Loop(2, 2, path="arch.loops[1]")],
        ).build((4,), rng)
    with pytest.raises(BuildError, match=r"arch.loops\[0\]: expected 0 <= to <= from"):
        Network([Dense(4), Dense(3)], loops=[Loop(0, 1, path="arch.loops[0]")]).build((4,), rng)
    with pytest.raises(BuildError, match=r"arch.layers\[1\]: a feedback block's output shape"):
        Network([Dense(4), Feedback([Dense(3)]), Dense(3)]).build((4,), rng)
    with pytest.raises(BuildError, match=r"arch.skips\[0\].merge: expected one of"):
        Network([Dense(4), Dense(3)], skips=[Skip(1, 1, "concat", path="arch.skips[0]")]).build(
            (4,), rng
        )


def test_summary_and_state_dict_round_trip(rng):
    net = feedback_net(rng, coupling="mean", skips=[Skip(1, 2)])
    text = net.summary()
    assert "feedback x3" in text and "skip: input of 1 -> input of 2" in text
    assert f"parameters: {net.n_params():,}" in text
    state = net.state_dict()
    x = rng.standard_normal((2, 5))
    before = net.forward(x)[0]
    for p in net.named_parameters().values():
        p += 1
    assert not np.allclose(net.forward(x)[0], before)
    net.load_state_dict(state)
    np.testing.assert_array_equal(net.forward(x)[0], before)


def _first_block_net(rng):
    block = Feedback([Dense(4, activation="tanh"), Dense(5, activation="tanh")], loops=2)
    return Network([block, Dense(3)]).build((5,), rng, np.float64)


@pytest.mark.parametrize(
    "make",
    [
        lambda rng: mlp(rng),
        lambda rng: Network(
            [Dense(5, activation="tanh"), Dense(4, activation="tanh"), Dense(3)],
            skips=[Skip(0, 1, "multiply")],
        ).build((5,), rng, np.float64),
        lambda rng: Network(
            [Dense(5, activation="tanh"), Dense(5, activation="tanh"), Dense(3)],
            loops=[Loop(src=1, dst=0, iterations=2, inskip=True)],
        ).build((5,), rng, np.float64),
        lambda rng: Network(
            [Conv2d(1, 3, padding=1, activation="relu"), Conv2d(1, 3, padding=1), Dense(3)],
            loops=[Loop(src=1, dst=0, iterations=2)],
            skips=[Skip(0, 2)],
        ).build((1, 4, 4), rng, np.float64),
        _first_block_net,
        lambda rng: feedback_net(rng, inskips=True, outskips=True),
    ],
    ids=["plain", "skip-from-input", "loop-into-layer-0", "cnn-loop", "feedback-first", "fb"],
)
def test_training_pass_without_input_grad_gives_the_same_parameter_gradients(
    make, rng, monkeypatch
):
    """`input_grad=False` (what train_step records) skips the dx of the layers that read the
    network input, and every parameter gradient stays what full backprop gives."""
    import neurons.layers as layers_mod

    net = make(rng)
    x = rng.standard_normal((4, *net.input_shape))
    g = rng.standard_normal((4, 3))

    def grads(input_grad):
        net.zero_grad()
        ctx = Context(train=True, rng=np.random.default_rng(0))
        _, tape = net.forward(x, ctx, record=True, input_grad=input_grad)
        net.backward(g, tape)
        return {k: v.copy() for k, v in net.named_grads().items()}

    full = grads(True)
    calls = []
    real = layers_mod.dense_backward
    monkeypatch.setattr(layers_mod, "dense_backward", lambda *a: calls.append(1) or real(*a))
    cut = grads(False)
    assert full.keys() == cut.keys()
    for k in full:
        np.testing.assert_allclose(cut[k], full[k], rtol=1e-12, atol=1e-14, err_msg=k)
    calls.clear()
    grads(True)
    with_dx = len(calls)
    calls.clear()
    grads(False)
    if isinstance(net.layers[0], Dense):  # the input layer's dx was skipped
        assert len(calls) < with_dx
