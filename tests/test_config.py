"""Config groups compose and build; value errors name the key; the original grid is expressible."""

from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from neurons.config import ConfigError, build_experiment, build_network, validate
from neurons.data import DatasetError
from neurons.layers import BuildError
from neurons.schema import register_schema

CONF = Path(__file__).resolve().parents[1] / "conf"
register_schema()


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def cfg_of(*overrides: str):
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        return compose(config_name="config", overrides=list(overrides))


def test_every_group_has_its_options():
    assert {"sgd", "sgdm", "adam", "adamw", "rmsprop"} <= set(options("optimizer"))
    assert {"ae", "mae", "mse", "rmse", "cross_entropy", "bce", "kld"} <= set(options("objective"))
    for a in ["mlp", "cnn"]:
        for f in ["plain", "skip", "looping", "feedback"]:
            assert f"{a}_{f}" in options("arch")


@pytest.mark.parametrize("arch", options("arch"))
def test_every_arch_composes_and_builds(arch):
    cfg = cfg_of(f"arch={arch}")
    validate(cfg)
    cnn = arch.startswith("cnn")
    shape, n_out = ((1, 28, 28), 10) if cnn else ((4,), 3)
    net = build_network(
        cfg.arch, shape, n_out, "classification", "cross_entropy", np.random.default_rng(0)
    )
    x = np.random.default_rng(1).standard_normal((2, *shape)).astype(np.float32)
    out = net.predict(x)
    assert out.shape == (2, n_out)
    np.testing.assert_allclose(out.sum(axis=1), 1, rtol=1e-5)


@pytest.mark.parametrize("opt", options("optimizer"))
@pytest.mark.parametrize("objective", options("objective"))
def test_every_optimizer_and_objective_builds(opt, objective):
    cfg = cfg_of(f"optimizer={opt}", f"objective={objective}", "train.epochs=1")
    exp = build_experiment(cfg)
    assert exp.optimizer.lr == pytest.approx(cfg.optimizer.lr)
    name = "cross_entropy" if objective == "auto" else objective
    assert exp.objective_name == name


@pytest.mark.parametrize("dataset", options("dataset"))
def test_every_dataset_composes_and_loads_or_says_why(dataset):
    cfg = cfg_of(f"dataset={dataset}", "dataset.download=false", "dataset.limit=64")
    ds_cfg = OmegaConf.to_object(cfg.dataset)
    from neurons.data import load_dataset

    try:
        ds = load_dataset(ds_cfg)
    except DatasetError as e:  # files that cannot exist on this machine: the message says where
        assert dataset in ("cifar10", "csv", "ftir", "bike"), str(e)
        assert "dataset." in str(e) or "NEURONS_DATA" in str(e) or "put" in str(e).lower()
        return
    arch = "cnn_plain" if len(ds.sample_shape) == 3 and ds.sample_shape[1] >= 8 else "mlp_plain"
    if len(ds.sample_shape) == 3 and ds.sample_shape[1] < 8:
        arch = "mlp_plain"
    exp = build_experiment(
        cfg_of(f"dataset={dataset}", "dataset.download=false", "dataset.limit=64", f"arch={arch}"),
        dataset=ds,
    )
    assert exp.network.output_shape == (ds.n_outputs,)


ORIGINAL_GRID = {
    "REGULAR": ("plain", []),
    "FB1x2": ("looping", []),
    "FB1x3": ("looping", ["arch.passes=3"]),
    "FB2x2": ("feedback", []),
    "FB2x3": ("feedback", ["arch.passes=3"]),
}


@pytest.mark.parametrize("family", ["mlp", "cnn"])
@pytest.mark.parametrize("variant", sorted(ORIGINAL_GRID))
@pytest.mark.parametrize("skip", [False, True])
def test_original_grid_is_one_choice_plus_overrides(family, variant, skip):
    kind, extra = ORIGINAL_GRID[variant]
    cfg = cfg_of(f"arch={family}_{kind}", f"arch.skip={str(skip).lower()}", *extra)
    shape, n_out = ((1, 28, 28), 10) if family == "cnn" else ((4,), 3)
    net = build_network(
        cfg.arch, shape, n_out, "classification", "cross_entropy", np.random.default_rng(0)
    )
    # parameter counts of the original comparison networks (reference section 4.3)
    assert net.n_params() == (1997 if family == "cnn" else 1425)
    assert bool(net.skips) == skip
    passes = 3 if "x3" in variant else (2 if kind != "plain" else 1)
    assert cfg.arch.passes == passes
    if kind == "looping":
        assert net.loops[0].iterations == passes - 1
    if kind == "feedback":
        assert any(getattr(ly, "loops", 0) == passes for ly in net.layers)
    assert net.has_recurrence() == (kind != "plain")


@pytest.mark.parametrize(
    "override,message",
    [
        ("optimizer.lr=-1", "optimizer.lr: expected a number > 0.0, found -1"),
        ("train.batch_size=0", "train.batch_size: expected an integer >= 1, found 0"),
        ("train.early_stopping.monitor=val_los", "train.early_stopping.monitor: expected one of"),
        ("optimizer.betas=[0.9,1.5]", "optimizer.betas: expected two numbers in [0, 1)"),
        ("train.schedule.name=linear", "train.schedule.name: expected one of constant"),
    ],
)
def test_bad_values_name_the_key(override, message):
    with pytest.raises(ConfigError) as e:
        validate(cfg_of(override))
    assert message in str(e.value)


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["arch.layers.0.kind=convv"], r"arch.layers\[0\].kind: expected one of dense, conv"),
        (["+arch.layers.0.unitz=3"], r"arch.layers\[0\]: unknown key\(s\) \['unitz'\]"),
        (["arch=cnn_plain"], r"arch.layers\[0\]: conv expects a \(C, H, W\) input"),
        (["arch=cnn_looping", "arch.filters=2"], r"arch.loops\[0\]: the output of layer 2"),
        (
            ["arch.skips.0.to=7", "arch.skip=true"],
            r"arch.skips\[0\].to: expected a layer index in \[-4, 3\]",
        ),
    ],
)
def test_build_errors_name_the_path(overrides, message):
    cfg = cfg_of(*overrides)
    with pytest.raises(BuildError, match=message):
        build_network(
            cfg.arch,
            (4,) if "cnn_looping" not in overrides[0] else (1, 8, 8),
            3,
            "classification",
            "cross_entropy",
            np.random.default_rng(0),
        )
