"""PyTorch parity: every layer kind (forward, input and parameter gradients under a random
upstream gradient), one epoch of CNN training with Adam, and looping / feedback / skip networks
against explicitly unrolled torch models with tied weights (float64)."""

import numpy as np
import pytest

from neurons.graph import Feedback, Loop, Network, Skip
from neurons.layers import (
    AvgPool2d,
    BatchNorm,
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
from neurons.objectives import MSE, CrossEntropy
from neurons.optim import Adam
from neurons.train import TrainConfig, fit, train_step

pytestmark = pytest.mark.torch


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch")


def _np(t):
    return t.detach().cpu().numpy() if hasattr(t, "detach") else np.asarray(t)


def close(ours, theirs, rtol=1e-5, atol=1e-6, what=""):
    """assert_allclose with an absolute tolerance scaled by the reference's magnitude."""
    theirs = _np(theirs)
    assert np.shape(ours) == theirs.shape, (what, np.shape(ours), theirs.shape)
    scale = max(1.0, float(np.abs(theirs).max())) if theirs.size else 1.0
    np.testing.assert_allclose(ours, theirs, rtol=rtol, atol=atol * scale, err_msg=what)


def torch_act(torch, name, param=None):
    F = torch.nn.functional
    return {
        "linear": lambda z: z,
        "sigmoid": torch.sigmoid,
        "tanh": torch.tanh,
        "relu": torch.relu,
        "leaky_relu": lambda z: F.leaky_relu(z, 0.01 if param is None else param),
        "elu": lambda z: F.elu(z, 1.0 if param is None else param),
        "softmax": lambda z: torch.softmax(z.flatten(1), dim=1).reshape(z.shape),
    }[name]


def layer_parity(
    torch,
    layer,
    in_shape,
    torch_fn,
    *,
    transpose=(),
    train=False,
    n=4,
    seed=0,
    dtype=np.float32,
    params=None,
):
    """Build `layer`, run forward + backward with a random dy, and compare with
    `torch_fn(x, tparams)`. Parameters named in `transpose` are stored transposed in torch."""
    rng = np.random.default_rng(seed)
    layer.build(in_shape, rng, dtype)
    for k, v in (params or {}).items():
        layer.params[k][...] = v
    x = rng.standard_normal((n, *in_shape)).astype(dtype)
    y, cache = layer.forward(x, Context(train=train, rng=np.random.default_rng(seed + 1)))
    dy = rng.standard_normal(y.shape).astype(dtype)
    layer.zero_grad()
    dx = layer.backward(dy, cache)

    xt = torch.tensor(x, requires_grad=True)
    tp = {
        k: torch.tensor(v.T.copy() if k in transpose else v.copy(), requires_grad=True)
        for k, v in layer.params.items()
    }
    yt = torch_fn(xt, tp)
    yt.backward(torch.tensor(dy))
    close(y, yt, what="forward")
    close(dx, xt.grad, what="d input")
    assert set(layer.grads) == set(tp)
    for k, t in tp.items():
        g = _np(t.grad)
        close(layer.grads[k], g.T if k in transpose else g, what=f"d {k}")
    return layer, x, y, dy


# --------------------------------------------------------------------------- layers


DENSE_ACTS = [
    ("linear", None),
    ("sigmoid", None),
    ("tanh", None),
    ("relu", None),
    ("leaky_relu", None),
    ("leaky_relu", 0.2),
    ("elu", None),
    ("elu", 0.7),
    ("softmax", None),
]


@pytest.mark.parametrize("activation,param", DENSE_ACTS)
@pytest.mark.parametrize("bias", [True, False])
def test_dense(torch, activation, param, bias):
    F = torch.nn.functional
    act = torch_act(torch, activation, param)
    layer = Dense(7, bias=bias, activation=activation, activation_param=param)
    rng = np.random.default_rng(5)
    extra = {"b": rng.uniform(-0.5, 0.5, 7).astype(np.float32)} if bias else {}
    layer_parity(
        torch,
        layer,
        (6,),
        lambda x, p: act(F.linear(x, p["w"], p.get("b"))),
        transpose={"w"},
        params=extra,
    )


def test_dense_flattens_an_image_input(torch):
    F = torch.nn.functional
    layer_parity(
        torch,
        Dense(5, activation="tanh"),
        (2, 3, 4),
        lambda x, p: torch.tanh(F.linear(x.flatten(1), p["w"], p["b"])),
        transpose={"w"},
    )


CONV_CASES = [  # filters, kernel, stride, padding, dilation, bias, in_shape, activation
    (3, 3, 1, 0, 1, True, (2, 7, 7), "linear"),
    (4, 3, 2, 1, 1, True, (3, 8, 8), "relu"),
    (2, (3, 2), (2, 1), (1, 0), 1, False, (2, 7, 6), "linear"),
    (3, 3, 1, 2, 2, True, (2, 8, 8), "tanh"),
    (2, (2, 3), (1, 2), (0, 1), (2, 1), False, (3, 9, 8), "linear"),
    (5, 1, 1, 0, 1, True, (4, 5, 5), "linear"),
]


@pytest.mark.parametrize("f,k,s,p,d,bias,in_shape,act", CONV_CASES)
def test_conv2d(torch, f, k, s, p, d, bias, in_shape, act):
    F = torch.nn.functional
    tact = torch_act(torch, act)
    layer = Conv2d(f, k, s, p, d, bias=bias, activation=act)
    extra = {"b": np.linspace(-0.3, 0.3, f, dtype=np.float32)} if bias else {}
    layer_parity(
        torch,
        layer,
        in_shape,
        lambda x, q: tact(F.conv2d(x, q["w"], q.get("b"), stride=s, padding=p, dilation=d)),
        params=extra,
    )


DECONV_CASES = [  # filters, kernel, stride, padding, dilation, output_padding, bias, in_shape
    (3, 3, 1, 0, 1, 0, True, (2, 5, 5)),
    (2, 3, 2, 1, 1, 1, True, (3, 4, 4)),
    (2, (3, 2), (2, 3), (1, 0), 1, (1, 2), False, (2, 4, 5)),
    (3, 3, 2, 0, 2, 1, True, (2, 4, 4)),
    (2, (2, 3), (3, 1), (1, 1), (1, 2), (2, 0), False, (1, 3, 4)),
]


@pytest.mark.parametrize("f,k,s,p,d,op,bias,in_shape", DECONV_CASES)
def test_deconv2d(torch, f, k, s, p, d, op, bias, in_shape):
    F = torch.nn.functional
    layer = Deconv2d(f, k, s, p, d, output_padding=op, bias=bias)
    extra = {"b": np.linspace(-0.3, 0.3, f, dtype=np.float32)} if bias else {}
    layer, *_ = layer_parity(
        torch,
        layer,
        in_shape,
        lambda x, q: F.conv_transpose2d(
            x, q["w"], q.get("b"), stride=s, padding=p, output_padding=op, dilation=d
        ),
        params=extra,
    )
    assert layer.params["w"].shape[:2] == (in_shape[0], f)  # (C_in, F, kh, kw) like torch


POOL_CASES = [(2, None, (3, 8, 8)), (3, 2, (2, 7, 9)), ((2, 3), (1, 2), (2, 6, 7))]


@pytest.mark.parametrize("k,s,in_shape", POOL_CASES)
@pytest.mark.parametrize("kind", ["max", "avg"])
def test_pool2d(torch, kind, k, s, in_shape):
    F = torch.nn.functional
    cls, fn = (MaxPool2d, F.max_pool2d) if kind == "max" else (AvgPool2d, F.avg_pool2d)
    layer_parity(torch, cls(k, s), in_shape, lambda x, q: fn(x, k, k if s is None else s))


def test_flatten_and_reshape(torch):
    layer_parity(torch, Flatten(), (2, 3, 4), lambda x, q: x.flatten(1))
    layer_parity(torch, Reshape((4, 6)), (2, 3, 4), lambda x, q: x.reshape(-1, 4, 6))
    layer_parity(torch, Reshape((2, 3, 4)), (24,), lambda x, q: x.reshape(-1, 2, 3, 4))


@pytest.mark.parametrize("in_shape", [(5,), (3, 4, 5)])
@pytest.mark.parametrize("momentum", [0.1, 0.3])
def test_batchnorm_train_and_eval(torch, in_shape, momentum):
    rng = np.random.default_rng(11)
    c = in_shape[0]
    layer = BatchNorm(momentum=momentum, eps=1e-5)
    layer.build(in_shape, rng, np.float32)
    layer.params["gamma"][:] = rng.uniform(0.5, 1.5, c)
    layer.params["beta"][:] = rng.uniform(-0.5, 0.5, c)
    cls = torch.nn.BatchNorm1d if len(in_shape) == 1 else torch.nn.BatchNorm2d
    tbn = cls(c, eps=1e-5, momentum=momentum)
    with torch.no_grad():
        tbn.weight.copy_(torch.tensor(layer.params["gamma"]))
        tbn.bias.copy_(torch.tensor(layer.params["beta"]))
    tbn.train()
    for step in range(3):  # running statistics accumulate over several batches
        x = (rng.standard_normal((6, *in_shape)) * 2 + step).astype(np.float32)
        y, cache = layer.forward(x, Context(train=True))
        dy = rng.standard_normal(y.shape).astype(np.float32)
        layer.zero_grad()
        dx = layer.backward(dy, cache)
        xt = torch.tensor(x, requires_grad=True)
        tbn.zero_grad()
        yt = tbn(xt)
        yt.backward(torch.tensor(dy))
        close(y, yt, what="train forward")
        close(dx, xt.grad, what="train d input")
        close(layer.grads["gamma"], tbn.weight.grad, what="d gamma")
        close(layer.grads["beta"], tbn.bias.grad, what="d beta")
        close(layer.buffers["running_mean"], tbn.running_mean, what="running mean")
        close(layer.buffers["running_var"], tbn.running_var, what="running var")
    tbn.eval()
    x = rng.standard_normal((4, *in_shape)).astype(np.float32)
    y, cache = layer.forward(x, Context(train=False))
    dy = rng.standard_normal(y.shape).astype(np.float32)
    layer.zero_grad()
    dx = layer.backward(dy, cache)
    xt = torch.tensor(x, requires_grad=True)
    tbn.zero_grad()
    yt = tbn(xt)
    yt.backward(torch.tensor(dy))
    close(y, yt, what="eval forward")
    close(dx, xt.grad, what="eval d input")
    close(layer.grads["gamma"], tbn.weight.grad, what="eval d gamma")
    close(layer.grads["beta"], tbn.bias.grad, what="eval d beta")
    close(layer.buffers["running_var"], tbn.running_var, what="eval leaves running var")


def test_dropout(torch):
    rng = np.random.default_rng(2)
    p = 0.3
    layer = Dropout(p)
    layer.build((50, 40), rng, np.float32)
    x = rng.standard_normal((8, 50, 40)).astype(np.float32)
    # eval: identity, gradient passes through
    y, cache = layer.forward(x, Context(train=False))
    assert np.array_equal(y, x)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    assert np.array_equal(layer.backward(dy, cache), dy)
    # train: compare with torch applying OUR mask
    y, cache = layer.forward(x, Context(train=True, rng=np.random.default_rng(9)))
    y2, _ = layer.forward(x, Context(train=True, rng=np.random.default_rng(9)))
    assert np.array_equal(y, y2)  # the mask comes from the context's rng only
    mask = (cache != 0).astype(np.float32)
    assert abs(1 - mask.mean() - p) < 0.02
    dx = layer.backward(dy, cache)
    xt = torch.tensor(x, requires_grad=True)
    yt = xt * torch.tensor(mask) / (1 - p)
    yt.backward(torch.tensor(dy))
    close(y, yt, what="forward")
    close(dx, xt.grad, what="d input")


@pytest.mark.parametrize(
    "activation,scale", [("linear", None), ("tanh", None), ("relu", 2.0), ("sigmoid", 0.5)]
)
def test_normdense(torch, activation, scale):
    act = torch_act(torch, activation)
    rng = np.random.default_rng(3)
    w = rng.uniform(-1.2, 1.2, (6, 5)).astype(np.float32)  # keep tan away from its poles

    def fn(x, q):
        y = act((x @ torch.tan(q["w"])) / 6)
        return y if scale is None else y * scale

    layer_parity(torch, NormDense(5, scale=scale, activation=activation), (6,), fn, params={"w": w})


@pytest.mark.parametrize(
    "k,s,p,d,activation,scale",
    [(3, 1, 1, 1, "linear", None), (3, 2, 0, 1, "tanh", 1.5), ((2, 3), 1, (1, 0), 2, "relu", None)],
)
def test_normconv2d(torch, k, s, p, d, activation, scale):
    F = torch.nn.functional
    act = torch_act(torch, activation)
    rng = np.random.default_rng(4)
    kh, kw = (k, k) if isinstance(k, int) else k
    w = rng.uniform(-1.2, 1.2, (3, 2, kh, kw)).astype(np.float32)
    n_in = 2 * kh * kw

    def fn(x, q):
        y = act(F.conv2d(x, torch.tan(q["w"]), None, stride=s, padding=p, dilation=d) / n_in)
        return y if scale is None else y * scale

    layer_parity(
        torch,
        NormConv2d(3, k, s, p, d, scale=scale, activation=activation),
        (2, 7, 7),
        fn,
        params={"w": w},
    )


# --------------------------------------------------------------------------- training


def test_cnn_one_epoch_adam_matches_torch(torch):
    F = torch.nn.functional
    rng = np.random.default_rng(0)
    n, bs = 256, 32
    x = rng.standard_normal((n, 1, 8, 8)).astype(np.float32)
    labels = rng.integers(0, 10, n)
    y = np.eye(10, dtype=np.float32)[labels]
    net = Network(
        [Conv2d(4, 3, padding=1, activation="relu"), MaxPool2d(2), Dense(10)], head="softmax"
    ).build((1, 8, 8), np.random.default_rng(1), np.float32)
    net.named_parameters()["layers.0.b"][:] = np.linspace(-0.1, 0.1, 4, dtype=np.float32)

    conv = torch.nn.Conv2d(1, 4, 3, padding=1)
    lin = torch.nn.Linear(64, 10)
    prm = net.named_parameters()
    with torch.no_grad():
        conv.weight.copy_(torch.tensor(prm["layers.0.w"]))
        conv.bias.copy_(torch.tensor(prm["layers.0.b"]))
        lin.weight.copy_(torch.tensor(prm["layers.2.w"].T.copy()))
        lin.bias.copy_(torch.tensor(prm["layers.2.b"]))
    model = torch.nn.Sequential(
        conv, torch.nn.ReLU(), torch.nn.MaxPool2d(2), torch.nn.Flatten(), lin
    )
    topt = torch.optim.Adam(model.parameters(), lr=1e-2, foreach=False)
    theirs = []
    for b in range(n // bs):
        topt.zero_grad()
        loss = F.cross_entropy(
            model(torch.tensor(x[b * bs : (b + 1) * bs])),
            torch.tensor(labels[b * bs : (b + 1) * bs]),
        )
        loss.backward()
        topt.step()
        theirs.append(loss.item())

    ours = []
    fit(
        net,
        CrossEntropy(),
        Adam(net.named_parameters(), lr=1e-2),
        x,
        y,
        None,
        None,
        TrainConfig(epochs=1, batch_size=bs, shuffle=False),
        np.random.default_rng(0),
        on_batch=lambda b, nb, loss: ours.append(loss),
    )
    assert len(ours) == n // bs
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-5)
    prm = net.named_parameters()
    close(prm["layers.0.w"], conv.weight, rtol=1e-4, atol=1e-5)
    close(prm["layers.0.b"], conv.bias, rtol=1e-4, atol=1e-5)
    close(prm["layers.2.w"], lin.weight.T, rtol=1e-4, atol=1e-5)
    close(prm["layers.2.b"], lin.bias, rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------- unrolled networks


def t_linear(torch, layer):
    w = layer.params["w"]
    lin = torch.nn.Linear(w.shape[0], w.shape[1], bias="b" in layer.params, dtype=torch.float64)
    with torch.no_grad():
        lin.weight.copy_(torch.from_numpy(w.T.copy()))
        if "b" in layer.params:
            lin.bias.copy_(torch.from_numpy(layer.params["b"].copy()))
    return lin


def t_conv(torch, layer):
    w = layer.params["w"]
    conv = torch.nn.Conv2d(
        w.shape[1],
        w.shape[0],
        layer.kernel_size,
        layer.stride,
        layer.padding,
        layer.dilation,
        bias="b" in layer.params,
        dtype=torch.float64,
    )
    with torch.no_grad():
        conv.weight.copy_(torch.from_numpy(w.copy()))
        if "b" in layer.params:
            conv.bias.copy_(torch.from_numpy(layer.params["b"].copy()))
    return conv


def pairs_for(prefix, module):
    """(our parameter name, torch parameter, stored transposed?) for a Linear or Conv2d."""
    out = [(f"{prefix}w", module.weight, module.weight.ndim == 2)]  # Linear: (out, in)
    if module.bias is not None:
        out.append((f"{prefix}b", module.bias, False))
    return out


def randomize_biases(net, rng):
    for k, v in net.named_parameters().items():
        if k.endswith(".b"):
            v[:] = rng.uniform(-0.5, 0.5, v.shape)


def check_unrolled(torch, net, fn, pairs, rng, *, grad_factor=None, n=3, steps=5, lr=1e-2):
    """Compare `net` with the torch function `fn`: forward, input and parameter gradients under a
    random upstream gradient, then `steps` Adam steps on an MSE loss. `grad_factor[name]`: our
    gradient equals torch's times this (mean coupling)."""
    grad_factor = grad_factor or {}
    params = net.named_parameters()
    assert sorted(params) == sorted(name for name, _, _ in pairs)
    tp = {name: (t, tr) for name, t, tr in pairs}
    x = rng.standard_normal((n, *net.input_shape))
    # forward and gradients
    net.zero_grad()
    y, tape = net.forward(x, Context(train=True, rng=np.random.default_rng(0)), record=True)
    dout = rng.standard_normal(y.shape)
    dx = net.backward(dout, tape)
    xt = torch.tensor(x, requires_grad=True)
    for t, _ in tp.values():
        t.grad = None
    yt = fn(xt)
    yt.backward(torch.from_numpy(dout))
    close(y, yt, what="forward")
    close(dx, xt.grad, what="d input")
    grads = net.named_grads()
    for name, (t, tr) in tp.items():
        g = _np(t.grad) * grad_factor.get(name, 1.0)
        close(grads[name], g.T if tr else g, what=f"d {name}")
    # Adam steps on an MSE loss
    F = torch.nn.functional
    target = rng.standard_normal(y.shape)
    opt = Adam(params, lr=lr)
    topt = torch.optim.Adam([t for t, _ in tp.values()], lr=lr, foreach=False)
    for step in range(steps):
        loss, _ = train_step(net, MSE(), opt, x, target, np.random.default_rng(0), TrainConfig())
        topt.zero_grad()
        tloss = F.mse_loss(fn(torch.from_numpy(x)), torch.from_numpy(target))
        tloss.backward()
        with torch.no_grad():
            for name, (t, _) in tp.items():
                t.grad *= grad_factor.get(name, 1.0)
        topt.step()
        np.testing.assert_allclose(loss, tloss.item(), rtol=1e-5, err_msg=f"loss, step {step}")
        for name, (t, tr) in tp.items():
            tv = _np(t)
            close(params[name], tv.T if tr else tv, what=f"{name} after step {step + 1}")


def mlp_loop(rng, loop, skips=()):
    layers = [Dense(4, activation="tanh") for _ in range(4)]
    net = Network(layers, skips=list(skips), loops=[loop]).build((5,), rng, np.float64)
    randomize_biases(net, rng)
    return net


def grad_scaled(t, s):
    """Forward value t, gradient multiplied by s (our Loop.scale)."""
    return t if s == 1.0 else t.detach() + s * (t - t.detach())


@pytest.mark.parametrize(
    "iterations,merge,inskip,scale",
    [
        (2, "mean", False, 1.0),
        (1, "add", False, 1.0),
        (2, "mean", True, 0.5),
        (3, "overwrite", False, 1.0),
    ],
)
def test_mlp_loop_equals_unrolled_torch(torch, iterations, merge, inskip, scale):
    rng = np.random.default_rng(21)
    loop = Loop(src=2, dst=1, iterations=iterations, merge=merge, inskip=inskip, scale=scale)
    net = mlp_loop(rng, loop)
    lins = [t_linear(torch, ly) for ly in net.layers]

    def fn(x):
        a0 = torch.tanh(lins[0](x))
        h, passes = a0, []
        for t in range(iterations + 1):
            if t > 0:
                h = grad_scaled(passes[-1], scale)
                if inskip:
                    h = h + a0
            h = torch.tanh(lins[2](torch.tanh(lins[1](h))))
            passes.append(h)
        if merge == "mean":
            v = torch.stack(passes).mean(0)
        elif merge == "add":
            v = torch.stack(passes).sum(0)
        else:  # overwrite: the last pass
            v = passes[-1]
        return torch.tanh(lins[3](v))

    pairs = [p for k, m in enumerate(lins) for p in pairs_for(f"layers.{k}.", m)]
    check_unrolled(torch, net, fn, pairs, rng)


def test_skip_spanning_a_loop_equals_unrolled_torch(torch):
    rng = np.random.default_rng(22)
    net = mlp_loop(rng, Loop(src=2, dst=1, iterations=2, merge="mean"), skips=[Skip(1, 3, "add")])
    lins = [t_linear(torch, ly) for ly in net.layers]

    def fn(x):
        a0 = torch.tanh(lins[0](x))
        h, passes = a0, []
        for _ in range(3):
            h = torch.tanh(lins[2](torch.tanh(lins[1](h))))
            passes.append(h)
        v = (passes[0] + passes[1] + passes[2]) / 3
        return torch.tanh(lins[3](v + a0))  # the skip carries the input of layer 1

    pairs = [p for k, m in enumerate(lins) for p in pairs_for(f"layers.{k}.", m)]
    check_unrolled(torch, net, fn, pairs, rng)


@pytest.mark.parametrize("coupling", ["sum", "mean", "none"])
@pytest.mark.parametrize(
    "inskips,outskips", [(False, False), (True, True), (True, False), (False, True)]
)
def test_feedback_equals_unrolled_torch(torch, coupling, inskips, outskips):
    rng = np.random.default_rng(23)
    loops = 3
    block = Feedback(
        [Dense(4, activation="tanh"), Dense(4, activation="sigmoid")],
        loops=loops,
        coupling=coupling,
        inskips=inskips,
        outskips=outskips,
        merge="mean",
    )
    net = Network([Dense(4, activation="tanh"), block, Dense(3)]).build((5,), rng, np.float64)
    randomize_biases(net, rng)
    first, last = t_linear(torch, net.layers[0]), t_linear(torch, net.layers[2])
    copies = [[t_linear(torch, ly) for ly in copy_] for copy_ in block.copies]
    if coupling != "none":  # tied: the same torch modules serve every copy
        copies = [copies[0]] * loops

    def fn(x):
        v = torch.tanh(first(x))
        h, outs = v, []
        for c in range(loops):
            if c > 0 and inskips:
                h = (h + v) / 2
            h = torch.sigmoid(copies[c][1](torch.tanh(copies[c][0](h))))
            outs.append(h)
        if outskips:
            h = torch.stack(outs).mean(0)
        return last(h)

    pairs = pairs_for("layers.0.", first) + pairs_for("layers.2.", last)
    factor = {}
    if coupling == "none":
        for c, mods in enumerate(copies):
            for q, m in enumerate(mods):
                pairs += pairs_for(f"layers.1.copies.{c}.{q}.", m)
    else:
        for q, m in enumerate(copies[0]):
            pairs += pairs_for(f"layers.1.body.{q}.", m)
        if coupling == "mean":  # ours = torch's (summed) gradient / loops
            factor = {name: 1.0 / loops for name, _, _ in pairs if ".body." in name}
    check_unrolled(torch, net, fn, pairs, rng, grad_factor=factor)


def test_cnn_loop_equals_unrolled_torch(torch):
    F = torch.nn.functional
    rng = np.random.default_rng(24)
    layers = [Conv2d(1, 3, padding=1, activation="relu") for _ in range(3)]
    layers += [MaxPool2d(2), Dense(3)]
    net = Network(layers, loops=[Loop(src=2, dst=0, iterations=2, merge="mean")])
    net.build((1, 6, 6), rng, np.float64)
    randomize_biases(net, rng)
    convs = [t_conv(torch, ly) for ly in net.layers[:3]]
    lin = t_linear(torch, net.layers[4])

    def fn(x):
        h, passes = x, []
        for _ in range(3):
            for conv in convs:
                h = torch.relu(conv(h))
            passes.append(h)
        v = torch.stack(passes).mean(0)
        return lin(F.max_pool2d(v, 2).flatten(1))

    pairs = [p for k, m in enumerate(convs) for p in pairs_for(f"layers.{k}.", m)]
    pairs += pairs_for("layers.4.", lin)
    check_unrolled(torch, net, fn, pairs, rng, n=4)
