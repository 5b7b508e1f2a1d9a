"""ONNX export: for every architecture family the graph run in onnxruntime equals the engine.

Networks are built from the conf/arch presets and from hand-written archs that use every layer
kind, activation, pooling and merge mode; weights, biases and batchnorm statistics are random
(not trained), inputs are real iris / digits samples, compared to 1e-5 after the checker passes.
"""

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from neurons.config import build_network, resolve_objective
from neurons.data import load_dataset
from neurons.export import IR_VERSION, OPSET, ExportError, build_onnx
from neurons.graph import MERGES
from neurons.inference import ModelCard, Predictor, Preprocessing
from neurons.kernels.activations import ACTIVATIONS
from neurons.schema import register_schema

CONF = Path(__file__).resolve().parents[1] / "conf"
register_schema()
_DATA: dict = {}


def dataset(name: str, **kw):
    key = (name, tuple(sorted(kw.items())))
    if key not in _DATA:
        _DATA[key] = load_dataset({"name": name, **kw})
    return _DATA[key]


def raw_samples(name: str, n: int = 64) -> np.ndarray:
    """Real samples as stored before any preparation (digits 0..16 images, iris features)."""
    from sklearn.datasets import load_digits, load_iris

    if name == "digits":
        x = load_digits().images[:, None].astype(np.float32)
    elif name == "iris":
        x = load_iris().data.astype(np.float32)
    else:
        x = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=np.float32)
    idx = np.random.default_rng(0).choice(len(x), size=min(n, len(x)), replace=False)
    return x[idx]


def predictor(
    arch: dict, name: str, objective: str = "auto", dtype: str = "float32", **dkw
) -> Predictor:
    ds = dataset(name, **dkw)
    obj = resolve_objective(objective, ds.task)
    rng = np.random.default_rng(0)
    net = build_network(arch, ds.sample_shape, ds.n_outputs, ds.task, obj, rng, dtype)
    for _, layer in net.unique_layers():  # zero-initialised biases and fresh BN stats hide bugs
        for k in ("b", "beta", "gamma"):
            if k in layer.params:
                layer.params[k][...] = rng.normal(
                    1.0 if k == "gamma" else 0.0, 0.3, layer.params[k].shape
                )
        if "running_var" in layer.buffers:
            layer.buffers["running_mean"][...] = rng.normal(
                0, 0.5, layer.buffers["running_mean"].shape
            )
            layer.buffers["running_var"][...] = rng.uniform(
                0.5, 2.0, layer.buffers["running_var"].shape
            )
    card = ModelCard(arch, ds.sample_shape, ds.n_outputs, ds.task, obj, dtype, ds.classes, name)
    prep = Preprocessing.of_dataset(ds, dkw.get("downsample", 1), dkw.get("flatten", False))
    return Predictor(net, card, Path(f"{arch.get('name', 'arch')}"), preprocessing=prep)


def check(p: Predictor, name: str, probe: str = "none") -> onnx.ModelProto:
    model = build_onnx(p, probe)
    onnx.checker.check_model(model, full_check=True)
    assert model.opset_import[0].version == OPSET and model.ir_version == IR_VERSION
    x = raw_samples(name)
    kw = {"recurrent": probe != "no_feedback", "skips": probe != "no_skip"}
    want = p.outputs(x, **kw)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"input": x})
    np.testing.assert_allclose(got[0], want, rtol=1e-5, atol=1e-5)
    if p.classification:
        assert got[0].shape == (len(x), len(p.classes))
        np.testing.assert_array_equal(got[1], p.predict(x, **kw))
    return model


def preset(arch: str, *overrides: str) -> dict:
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        cfg = compose(config_name="config", overrides=[f"arch={arch}", *overrides])
    return OmegaConf.to_container(cfg.arch, resolve=True)


ARCHES = sorted(p.stem for p in (CONF / "arch").glob("*.yaml"))


@pytest.mark.parametrize("arch", ARCHES)
def test_every_preset_matches_onnxruntime(arch):
    skip = [] if arch.endswith("plain") else ["arch.skip=true"]
    if arch.startswith("cnn"):
        model = check(predictor(preset(arch, *skip), "digits"), "digits")
    else:
        model = check(predictor(preset(arch, *skip), "iris", normalize="standardize"), "iris")
    ops = [n.op_type for n in model.graph.node if n.op_type in ("Conv", "MatMul")]
    weights = [i for i in model.graph.initializer if i.name.endswith(".w")]
    if "looping" in arch or "feedback" in arch:  # unrolled passes reuse one initializer each
        assert len(ops) > len(weights)
    else:
        assert len(ops) == len(weights)
    if "skip" in arch or skip:
        assert "Add" in {n.op_type for n in model.graph.node}


@pytest.mark.parametrize("arch", ["mlp_looping", "mlp_feedback", "cnn_looping", "cnn_feedback"])
@pytest.mark.parametrize("probe", ["no_feedback", "no_skip"])
def test_probing_variants_match(arch, probe):
    name = "digits" if arch.startswith("cnn") else "iris"
    p = predictor(preset(arch, "arch.skip=true", "arch.passes=3"), name)
    full = build_onnx(p)
    model = check(p, name, probe)
    assert len(model.graph.node) < len(full.graph.node)  # a real variant, not the full graph


def _dense(units, act="relu", **kw):
    return {"kind": "dense", "units": units, "activation": act, **kw}


@pytest.mark.parametrize("act", sorted(ACTIVATIONS))
def test_every_activation(act):
    param = {"leaky_relu": 0.2, "elu": 0.7}.get(act)
    layers = [
        _dense(6, act, activation_param=param) if param else _dense(6, act),
        {"kind": "activation", "activation": act},
    ]
    arch = {"name": f"act_{act}", "layers": layers, "output": {"kind": "dense", "bias": True}}
    check(predictor(arch, "iris", normalize="standardize"), "iris")


@pytest.mark.parametrize("merge", MERGES)
def test_every_merge_mode_in_skips_loops_and_feedback(merge):
    arch = {
        "name": f"merge_{merge}",
        "layers": [
            _dense(8, "tanh", bias=True),
            _dense(8, "tanh", bias=True),
            _dense(8, "tanh", bias=True),
            {
                "kind": "feedback",
                "loops": 3,
                "coupling": "mean",
                "inskips": True,
                "outskips": True,
                "merge": merge,
                "layers": [_dense(8, "sigmoid", bias=True)],
            },
        ],
        "skips": [{"from": 1, "to": 4, "merge": merge}, {"from": 2, "to": 3, "merge": merge}],
        "loops": [{"from": 2, "to": 1, "iterations": 2, "merge": merge, "inskip": True}],
        "output": {"kind": "dense", "bias": True},
    }
    p = predictor(arch, "iris", normalize="minmax")
    model = check(p, "iris")
    ops = {n.op_type for n in model.graph.node}
    want = {"add": "Add", "subtract": "Sub", "multiply": "Mul", "mean": "Mean"}.get(merge)
    if want:
        assert want in ops
    check(p, "iris", "no_feedback")
    check(p, "iris", "no_skip")


@pytest.mark.parametrize("coupling", ["mean", "sum", "none"])
def test_feedback_copies_share_initializers_unless_uncoupled(coupling):
    arch = {
        "name": "fb",
        "layers": [
            _dense(8, "relu", bias=True),
            {"kind": "feedback", "loops": 3, "coupling": coupling, "layers": [_dense(8, "elu")]},
        ],
    }
    p = predictor(arch, "iris")
    if coupling == "none":  # copies start equal; make them differ so sharing would be caught
        for prefix, layer in p.network.unique_layers():
            if ".copies." in prefix:
                layer.params["w"] += np.float32(0.1) * int(prefix.split(".")[3])
    model = check(p, "iris")
    weights = [i.name for i in model.graph.initializer if i.name.endswith(".w")]
    assert len(weights) == (5 if coupling == "none" else 3)  # in, body (x1 or x3), output


def test_cnn_with_every_layer_kind_and_inner_preprocessing():
    arch = {
        "name": "cnn_all",
        "layers": [
            {"kind": "conv", "filters": 3, "kernel_size": 3, "padding": 1, "activation": "relu"},
            {"kind": "batchnorm"},
            {"kind": "dropout", "p": 0.3},
            {
                "kind": "deconv",
                "filters": 2,
                "kernel_size": 3,
                "stride": 2,
                "padding": 1,
                "output_padding": 1,
                "activation": "leaky_relu",
            },
            {
                "kind": "conv",
                "filters": 2,
                "kernel_size": [3, 2],
                "stride": [2, 1],
                "dilation": [1, 2],
                "padding": [1, 0],
                "activation": "elu",
            },
            {
                "kind": "normconv",
                "filters": 2,
                "kernel_size": 3,
                "padding": 1,
                "scale": 2.5,
                "activation": "tanh",
            },
            {"kind": "avgpool", "kernel_size": 2},
            {"kind": "maxpool", "kernel_size": [2, 1], "stride": 1},
            {"kind": "flatten"},
            {"kind": "batchnorm"},
            {"kind": "normdense", "units": 7, "activation": "sigmoid", "scale": 0.5},
            {"kind": "reshape", "shape": [7, 1, 1]},
            {"kind": "activation", "activation": "softmax"},
        ],
        "skips": [{"from": 5, "to": 6, "merge": "add"}],
        "output": {"kind": "dense", "bias": True},
    }
    p = predictor(arch, "digits", normalize="standardize")
    ops = {n.op_type for n in check(p, "digits").graph.node}
    assert {"Conv", "ConvTranspose", "BatchNormalization", "AveragePool", "MaxPool"} <= ops
    # downsampled + flattened input, pooling and normalisation inside the graph
    mlp = {"name": "flat", "layers": [_dense(10, "relu", bias=True)]}
    p2 = predictor(mlp, "digits", downsample=2, flatten=True, normalize="standardize")
    assert p2.preprocessing.raw_shape == (1, 8, 8) and p2.network.input_shape == (16,)
    check(p2, "digits")


def test_preprocessing_reproduces_the_loader():
    """Raw sklearn rows prepared by the Predictor equal the loader's prepared test split."""
    from sklearn.datasets import load_digits

    ds = dataset("digits", downsample=2, flatten=True, normalize="standardize")
    raw = load_digits().images[:, None].astype(np.float32)
    perm = np.random.default_rng(0).permutation(len(raw))
    test = perm[int(np.floor(0.8 * len(raw))) :]
    prep = Preprocessing.of_dataset(ds, 2, True)
    np.testing.assert_allclose(prep(raw[test]), ds.x_test, rtol=1e-6, atol=1e-6)


def test_regression_outputs_are_decoded_in_the_graph():
    arch = {"name": "reg", "layers": [_dense(5, "tanh", bias=True)], "output": {"bias": True}}
    p = predictor(arch, "xor", task="regression", normalize_targets="standardize")
    assert p.preprocessing.target_scale is not None
    model = check(p, "xor")
    assert [o.name for o in model.graph.output] == ["outputs"]


def test_bce_sigmoid_head():
    arch = {"name": "bce", "layers": [_dense(6, "relu", bias=True)]}
    p = predictor(arch, "iris", objective="bce")
    assert p.network.head == "sigmoid"
    check(p, "iris")


def test_float64_networks():
    p = predictor(preset("mlp_feedback", "arch.skip=true"), "iris", dtype="float64")
    model = check(p, "iris")
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.DOUBLE
    cnn = predictor(preset("cnn_plain"), "digits", dtype="float64")
    with pytest.raises(ExportError, match=r"arch.layers\[0\]: train.dtype=float64"):
        build_onnx(cnn)
