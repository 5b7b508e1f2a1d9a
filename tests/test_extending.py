"""The README's "Extending" recipes, done inside the test: an optimizer and a dataset defined
here, registered for the test only, used through the config layer and a real run, unregistered;
and a layer kind whose config keys follow its `**kwargs` into its parents'.

Also: every registry entry has its YAML (and back), and a YAML's values are its class's defaults.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

import neurons
from neurons.config import (
    LAYERS,
    ConfigError,
    build_layer,
    build_schedule,
    check_optimizer,
    layer_parameters,
    validate,
)
from neurons.data import DATASETS, DatasetError, DatasetSpec, Raw, load_dataset
from neurons.data.spec import fraction_split
from neurons.layers import BuildError, Context, Dense, NormConv2d
from neurons.optim import OPTIMIZERS, REQUIRED, SCHEDULES, Number, Optimizer
from neurons.record import load_checkpoint, optimizer_state
from neurons.searchpath import ENV_VAR

ROOT = Path(__file__).resolve().parents[1]


class SignMomentum(Optimizer):
    """signSGD with momentum: m = beta * m + (1 - beta) * g; p -= lr * sign(m)."""

    name = "signum"
    hparams = {**Optimizer.hparams, "beta": Number(0.9, lo=0.0, hi=1.0, hi_open=True)}
    buffers = ("m",)

    def _update(self, key: str, p: np.ndarray, g: np.ndarray) -> None:
        m = self._buf("m", key, p)
        m *= self.beta
        m += (1 - self.beta) * g
        p -= self.lr * np.sign(m)


def rings(cfg) -> Raw:
    """Two noisy concentric rings in the plane (class = ring), seeded by dataset.split_seed."""
    rng = np.random.default_rng(cfg.split_seed)
    n = 200
    label = np.arange(n) % 2
    angle = rng.uniform(0, 2 * np.pi, n)
    radius = 1.0 + 1.5 * label + rng.normal(0, 0.15, n)
    x = np.stack([radius * np.cos(angle), radius * np.sin(angle)], axis=1).astype(np.float32)
    raw = Raw(x, label.astype(np.int64), None, None, "generated (two rings)", classes=["in", "out"])
    return fraction_split(raw, cfg, "rings")


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A user config dir with the two YAML files the recipes add, and the classes registered."""
    monkeypatch.delenv(ENV_VAR, raising=False)
    monkeypatch.chdir(tmp_path)
    conf = tmp_path / "conf"
    (conf / "optimizer").mkdir(parents=True)
    (conf / "dataset").mkdir()
    (conf / "optimizer" / "signum.yaml").write_text("name: signum\nlr: 0.01\nbeta: 0.9\n")
    (conf / "dataset" / "rings.yaml").write_text(
        "name: rings\ntask: classification\nnormalize: standardize\ntest_split: 0.25\n"
    )
    spec = DatasetSpec(rings, reads_files=False, shape=((2,), 2))
    with monkeypatch.context() as m:
        m.setitem(OPTIMIZERS, "signum", SignMomentum)
        m.setitem(DATASETS, "rings", spec)
        yield conf
    assert "signum" not in OPTIMIZERS and "rings" not in DATASETS  # unregistered again


def test_a_new_optimizer_and_dataset_through_config_and_a_run(project):
    overrides = ["optimizer=signum", "dataset=rings", "train.epochs=4", "train.threads=1"]
    cfg = neurons.compose(overrides, config_dir=project)
    validate(cfg)
    assert check_optimizer(cfg.optimizer) == {"lr": 0.01, "beta": 0.9}
    ds = load_dataset(cfg.dataset)
    assert (ds.n_train, ds.n_val, ds.sample_shape, ds.n_outputs) == (150, 50, (2,), 2)
    assert "standardize" in ds.preprocessing

    run = neurons.fit(overrides, run_dir="run", config_dir=project)
    assert run.summary["status"] == "completed" and len(run.metrics) == 4
    losses = run.metrics.train_loss.to_numpy()
    assert losses[-1] < losses[0]  # the new optimizer really trained the network
    arrays, meta = load_checkpoint(run.run_dir / "checkpoints" / "last.npz")
    state = optimizer_state(arrays)
    assert int(state["t"]) == meta["train_state"]["step"] > 0
    assert {k.partition(".")[0] for k in state} == {"t", "lr", "m"}  # its own buffer


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["optimizer.beta=1.5"], "optimizer.beta: expected a number in [0, 1), found 1.5"),
        (["+optimizer.momentum=0.5"], "optimizer.momentum: expected one of signum's"),
        (["optimizer.lr=0"], "optimizer.lr: expected a number > 0.0, found 0"),
    ],
)
def test_the_new_optimizers_keys_are_checked_where_it_is_defined(project, overrides, message):
    cfg = neurons.compose(["optimizer=signum", "dataset=rings", *overrides], config_dir=project)
    with pytest.raises(ConfigError) as e:
        validate(cfg)
    assert message in str(e.value)


def test_the_new_datasets_spec_is_checked_before_reading(project):
    cfg = neurons.compose(["dataset=rings", "dataset.task=regression"], config_dir=project)
    with pytest.raises(DatasetError, match=r"dataset.task: expected classification \(the only"):
        load_dataset(cfg.dataset)
    cfg = neurons.compose(["dataset=rings", "dataset.path=x.csv"], config_dir=project)
    with pytest.raises(DatasetError, match="dataset.path: expected null"):
        load_dataset(cfg.dataset)


def _yaml(group: str) -> dict[str, dict]:
    return {p.stem: yaml.safe_load(p.read_text()) for p in (ROOT / "conf" / group).glob("*.yaml")}


def test_every_optimizer_has_its_yaml_and_the_yaml_restates_its_defaults():
    files = _yaml("optimizer")
    assert set(files) == set(OPTIMIZERS)
    for stem, node in files.items():
        cls = OPTIMIZERS[stem]
        assert node["name"] == stem == cls.name
        hp = {k: v for k, v in node.items() if k != "name"}
        assert set(hp) == set(cls.hparams), stem  # every key overridable without `+`
        for key, value in hp.items():
            default = cls.hparams[key].default
            if default is not REQUIRED:
                assert tuple(value) == default if key == "betas" else value == default, key


def test_every_dataset_has_its_yaml():
    names = {node["name"] for node in _yaml("dataset").values()}
    assert names == set(DATASETS)


def test_the_warmup_default_is_defined_once_and_is_what_a_run_uses():
    cfg = neurons.compose(["train.schedule.warmup_epochs=2", "train.epochs=5"])
    sched = build_schedule(cfg.train, 1.0)
    assert sched.warmup_start_factor == SCHEDULES["constant"].hparams["warmup_start_factor"].default
    assert [sched(e) for e in range(3)] == pytest.approx([0.1, 0.55, 1.0])


class ScaledDense(Dense):
    """A layer kind that adds one key and forwards the rest with **kwargs."""

    kind = "scaled_dense"

    def __init__(self, factor: float = 2.0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.factor = float(factor)

    def forward(self, x, ctx):
        y, cache = super().forward(x, ctx)
        return y * self.factor, cache

    def backward(self, dy, cache, gscale=1.0):
        return super().backward(dy * self.factor, cache, gscale)


def test_a_new_layer_kind_lists_only_its_own_keys(monkeypatch):
    own, dense, affine = ["factor"], ["units", "bias"], ["activation", "activation_param"]
    assert list(layer_parameters(ScaledDense)) == [*own, *dense, *affine, "init", "init_args"]
    assert "scale" in layer_parameters(NormConv2d) and "filters" in layer_parameters(NormConv2d)
    monkeypatch.setitem(LAYERS, "scaled_dense", ScaledDense)
    spec = {"kind": "scaled_dense", "units": 3, "factor": 0.5, "activation": "tanh"}
    layer = build_layer(spec, "arch.layers[0]")
    layer.build((4,), np.random.default_rng(0), np.float64)
    x = np.random.default_rng(1).standard_normal((2, 4))
    y, _ = layer.forward(x, Context())
    np.testing.assert_allclose(y, 0.5 * np.tanh(x @ layer.params["w"] + layer.params["b"]))
    with pytest.raises(BuildError, match=r"arch.layers\[0\]: kind scaled_dense needs units"):
        build_layer({"kind": "scaled_dense"}, "arch.layers[0]")
    with pytest.raises(BuildError, match=r"unknown key\(s\) \['fator'\].*allowed: factor, units"):
        build_layer({"kind": "scaled_dense", "units": 3, "fator": 1}, "arch.layers[0]")


def test_an_unknown_initializer_names_the_layers_init_key():
    layer = build_layer({"kind": "dense", "units": 2, "init": "he"}, "arch.layers[1]")
    with pytest.raises(BuildError, match=r"arch.layers\[1\].init: expected one of \[.*'lsuv'"):
        layer.build((3,), np.random.default_rng(0), np.float32)
