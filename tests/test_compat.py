"""compat mode: the original crate's numbers replayed from its fixtures, each quirk a live switch,
the `compat` config group (none = today's engine, neurons = every quirk) and the run record."""

import io
import json
import os
from contextlib import redirect_stdout
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from neurons.compat import CompatConfig
from neurons.compat.__main__ import main as compat_main
from neurons.compat.objectives import CrateObjective, last_argmax
from neurons.compat.optim import CrateOptimizer
from neurons.compat.replay import FixtureError, differences, load_case, parse_network, replay
from neurons.compat.replay import set_weights as load_fixture_weights
from neurons.compat.stopping import CrateEarlyStopping
from neurons.config import ConfigError, build_experiment
from neurons.schema import register_schema
from neurons.train import fit

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
# the crate's reference numbers sit beside the clone (../shared/...); NEURONS_CRATE_FIXTURES
# may point elsewhere (e.g. a worktree whose parent has no shared/)
FIXTURES = Path(
    os.environ.get("NEURONS_CRATE_FIXTURES", ROOT / ".." / "shared" / "fixtures" / "neurons-crate")
).resolve()
register_schema()


def fixture_files() -> list[Path]:
    files = [
        p
        for d in (FIXTURES, FIXTURES / "small_init")
        for p in sorted(d.glob("*.json"))
        if p.name != "iris_data.json"
    ]
    return files


FILES = fixture_files()


def test_fixture_folder_is_there():
    assert FILES, f"no crate fixtures found under {FIXTURES}"
    assert any(p.parent.name == "small_init" for p in FILES)
    assert len(FILES) >= 18


@pytest.mark.parametrize("path", FILES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_replay_matches_the_crate(path):
    case = load_case(path)
    d = differences(replay(case), case.raw)
    small = path.parent.name == "small_init"
    loss_tol, w_tol = (1e-5, 1e-5) if small else (2e-4, 1e-4)
    for key in ("train_loss", "val_loss"):
        assert d[key] <= loss_tol, (key, d[key])
    assert d["val_acc"] == 0
    assert d["epochs_run"] == 0
    assert d["final_weights"] <= w_tol
    assert d["before_training.test_predictions"] <= 1e-5  # the forward pass alone
    for key in ("before_training.val_loss", "before_training.train_loss"):
        assert d[key] <= loss_tol
    assert d["before_training.val_acc"] == d["before_training.train_acc"] == 0
    assert d["after_training.train_acc_eval"] == 0
    assert d["after_training.train_loss_eval"] <= loss_tol
    for key, v in d.items():
        if key.startswith("probes_after_training"):
            assert v <= (0 if key.endswith("acc") else loss_tol), (key, v)


# each quirk, switched off alone, moves the case that pins it by more than 1e-4
QUIRK_CASES = [
    ("softmax_backward", False, "regular_b1_e5"),
    ("grad_sum", False, "regular_sgd_b4_e3"),
    ("adam_step", "global", "regular_b4_e3"),
    ("skip_weight_grad", False, "regular_skip_b1_e5"),
    ("loop_backward", False, "fb1x2_b4_e3"),
    ("feedback_coupling", False, "fb2x2_b4_e3"),
]


@pytest.mark.parametrize(("quirk", "off", "stem"), QUIRK_CASES)
def test_each_quirk_is_a_live_switch(quirk, off, stem):
    case = load_case(FIXTURES / "small_init" / f"{stem}.json")
    flags = replace(CompatConfig.all_on(), **{quirk: off})
    assert quirk not in flags.on()
    d = differences(replay(case, flags), case.raw)
    assert max(d["train_loss"], d["val_loss"], d["final_weights"]) > 1e-4


def test_cli_json_uses_the_fixture_field_names():
    path = FIXTURES / "small_init" / "fb1x2_b4_e3.json"
    buf = io.StringIO()
    with redirect_stdout(buf):
        assert compat_main(["replay", str(path), "--json"]) == 0
    out = json.loads(buf.getvalue())
    fixture = json.loads(path.read_text())
    for key in ("train_loss", "val_loss", "val_acc", "before_training", "after_training"):
        assert key in out
    assert set(out["before_training"]) == set(fixture["before_training"])
    assert set(out["after_training"]) == set(fixture["after_training"])
    assert set(out["probes_after_training"]) == {"no_feedback"}
    assert [(w["layer"], w["shape_out_in"]) for w in out["final_weights"]] == [
        (w["layer"], w["shape_out_in"]) for w in fixture["final_weights"]
    ]
    assert np.allclose(out["val_loss"], fixture["val_loss"], atol=1e-5)


def test_cli_text_and_a_bad_fixture(tmp_path, capsys):
    assert compat_main(["replay", str(FIXTURES / "small_init" / "regular_b1_e1.json")]) == 0
    assert "train_loss" in capsys.readouterr().out
    bad = tmp_path / "bad.json"
    raw = json.loads((FIXTURES / "regular_b1_e1.json").read_text())
    raw["network"] = raw["network"].replace("Dense(25", "Convolution(25", 1)
    bad.write_text(json.dumps(raw))
    (tmp_path / "iris_data.json").write_text((FIXTURES / "iris_data.json").read_text())
    assert compat_main(["replay", str(bad)]) == 2
    assert "layer 0" in capsys.readouterr().err


def test_network_descriptions_beyond_the_given_files():
    text = (
        "input 4 -> Dense(8, Tanh, bias) [layer 0] -> FeedbackBlock[Dense(8, ReLU, no bias)] x "
        "loops=3, inskips=false, outskips=false, accumulation Mean [layer 1; unrolled] -> "
        "Dense(8, Sigmoid, no bias) [layer 2] -> Dense(3, Softmax, no bias) [layer 3]; skip: "
        "network.connect(1, L-1) with skip accumulation Add; loopback(from=2, into=2, "
        "iterations=2, scale(loops)=0.5, inskips=true), loop accumulation Add"
    )
    arch = parse_network(text)
    assert [ly["kind"] for ly in arch["layers"]] == ["dense", "feedback", "dense", "dense"]
    assert arch["layers"][0] == {"kind": "dense", "units": 8, "activation": "tanh", "bias": True}
    assert arch["layers"][1]["loops"] == 3 and len(arch["layers"][1]["layers"]) == 1
    assert arch["skips"] == [{"from": 1, "to": 3, "merge": "add"}]
    assert arch["loops"] == [
        {"from": 2, "to": 2, "iterations": 2, "scale": 0.5, "inskip": True, "merge": "add"}
    ]
    with pytest.raises(FixtureError, match="activation"):
        parse_network("input 4 -> Dense(3, Swish, no bias) [layer 0]")


def test_skip_and_loop_together_train_in_compat_mode():
    """A combination no fixture has: skip + loopback, batch 7, SGD, through the replay path."""
    case = load_case(FIXTURES / "small_init" / "fb1x2_b4_e3.json")
    case.arch["skips"] = [{"from": 1, "to": 3, "merge": "add"}]
    case.batch_size, case.optimizer = 7, ("sgd", {"lr": 1e-3, "weight_decay": 0.0})
    out = replay(case)
    assert len(out["train_loss"]) == case.epochs
    assert set(out["probes_after_training"]) == {"no_feedback", "no_skip"}
    assert all(np.isfinite(out["val_loss"]))


# --------------------------------------------------------------------------- pieces


def test_softmax_backward_constant_matches_the_crate_unit_test():
    """The crate's softmax unit test: z = [-2, -1, 0, 1, 2] gives 1.4051605 for every entry."""
    z = np.array([[-2, -1, 0, 1, 2]], np.float32)
    obj = CrateObjective("mse", CompatConfig(softmax_backward=True, grad_sum=True), "softmax")
    p = obj.loss_grad_logits(z, np.zeros_like(z))
    # with MSE, g = 2p/n; the crate's delta is (n - 2) * sum(p^2) * g
    factor = p[1] / (2 * np.exp(z - z.max()) / np.exp(z - z.max()).sum() / 5)
    np.testing.assert_allclose(factor, 1.4051605, rtol=1e-6)


def test_argmax_ties_go_to_the_last_index():
    a = np.array([[0.5, 0.5, 0.0], [0.2, 0.4, 0.4], [1, 0, 0]], np.float32)
    assert last_argmax(a).tolist() == [1, 2, 0]
    assert a.argmax(axis=1).tolist() == [0, 1, 0]


def test_crate_early_stopping_rule():
    class S:
        wait = 0

    es = CrateEarlyStopping(patience=3)
    seq = [5.0, 4.0, 4.5, 4.6]  # the last 3 losses rose at each of 2 steps: stop after epoch 4
    assert [es.should_stop(S(), v) for v in seq] == [False, False, False, True]
    es = CrateEarlyStopping(patience=3)  # rising from the start, but only once epoch > 3
    assert [es.should_stop(S(), v) for v in [1.0, 2.0, 3.0, 4.0]] == [False] * 3 + [True]
    es = CrateEarlyStopping(patience=3)
    assert not any(es.should_stop(S(), v) for v in [5.0, 4.0, 4.5, 4.5, 4.7])  # a tie breaks it


def test_epoch_step_counter():
    from neurons.optim import Adam

    p = {"w": np.zeros(2, np.float32)}
    opt = CrateOptimizer(Adam(p, lr=0.1), epoch_step=True)
    opt.start_epoch(1)
    for _ in range(3):
        opt.step({"w": np.ones(2, np.float32)})
        assert opt.t == 1
    opt.start_epoch(4)
    opt.step({"w": np.ones(2, np.float32)})
    assert opt.t == 4


def test_crate_sgdm_is_plain_sgd_through_epoch_one():
    from neurons.optim import SGDMomentum

    p = {"w": np.zeros(1, np.float32)}
    opt = CrateOptimizer(SGDMomentum(p, lr=1.0, momentum=0.5), epoch_step=True)
    opt.start_epoch(1)
    for _ in range(3):
        opt.step({"w": np.ones(1, np.float32)})
    assert p["w"][0] == -3.0  # three plain steps of -1
    opt.start_epoch(2)
    opt.step({"w": np.ones(1, np.float32)})  # v = 0.5 * 1 + 1
    assert p["w"][0] == -4.5


# --------------------------------------------------------------------------- config group


def cfg_of(*overrides):
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        return compose(config_name="config", overrides=list(overrides))


def test_compat_none_is_the_default_and_changes_nothing():
    exp = build_experiment(cfg_of("train.epochs=1"))
    assert exp.compat == CompatConfig() and exp.compat.on() == []
    assert type(exp.objective).__name__ == "CrossEntropy"
    assert type(exp.optimizer).__name__ == "Adam"


def test_compat_neurons_turns_every_quirk_on():
    exp = build_experiment(cfg_of("compat=neurons", "arch=mlp_feedback", "train.epochs=1"))
    assert set(exp.compat.on()) == set(CompatConfig.all_on().on())
    assert isinstance(exp.objective, CrateObjective) and isinstance(exp.optimizer, CrateOptimizer)
    assert exp.train.shuffle is False and exp.train.loss_average == "batch"
    w = exp.network.layers[0].params["w"]
    assert w.min() < -0.9 and w.max() > 0.9  # U(-1, 1), no fan-in scaling
    block = exp.network.layers[1]
    assert block.copies[0][0] is not block.copies[1][0]  # own copies, own optimizer state
    np.testing.assert_array_equal(block.copies[0][0].params["w"], block.copies[1][0].params["w"])


def test_one_quirk_off_and_bad_values():
    exp = build_experiment(cfg_of("compat=neurons", "compat.adam_step=global", "train.epochs=1"))
    assert "adam_step" not in exp.compat.on() and "grad_sum" in exp.compat.on()
    with pytest.raises(ConfigError, match="compat.adam_step"):
        build_experiment(cfg_of("compat.adam_step=step", "train.epochs=1"))
    with pytest.raises(ConfigError, match="dataset.shuffle"):
        build_experiment(cfg_of("compat=neurons", "dataset.shuffle=numpy", "train.epochs=1"))


@pytest.mark.parametrize("quirk", ["init", "adam_step", "loop_backward", "data"])
def test_ablate_turns_exactly_one_quirk_off(quirk):
    exp = build_experiment(cfg_of("compat=neurons", f"compat.ablate={quirk}", "train.epochs=1"))
    assert set(CompatConfig.all_on().on()) - set(exp.compat.on()) == {quirk}
    assert exp.compat.record()["ablate"] == quirk
    with pytest.raises(ConfigError, match="compat.ablate"):
        build_experiment(cfg_of("compat=neurons", "compat.ablate=speed", "train.epochs=1"))


def test_presets_compose():
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        grid = compose("config", ["experiment=compare_iris_compat"], return_hydra_config=True)
        abl = compose("config", ["experiment=compare_iris_ablation"], return_hydra_config=True)
    assert grid.compat.name == "neurons" and grid.train.batch_size == 1
    assert str(grid.hydra.sweeper.params.seed) == "range(0,20)"
    switches = str(abl.hydra.sweeper.params["compat.ablate"]).split(",")
    assert set(switches) <= set(CompatConfig.all_on().on()) and len(switches) >= 10


def test_runner_compat_mode_reproduces_the_crate():
    """compat=neurons through build_experiment (our iris loader, the original shuffle, the
    crate's two iris rows) + the fixture's initial weights = the crate's numbers."""
    case = load_case(FIXTURES / "small_init" / "regular_b4_e3.json")
    cfg = cfg_of(
        "compat=neurons",
        "experiment=compare_iris",
        "train.batch_size=4",
        f"train.epochs={case.epochs}",
    )
    exp = build_experiment(cfg)
    np.testing.assert_array_equal(exp.dataset.x_train, case.x_train)
    np.testing.assert_array_equal(exp.dataset.x_val, case.x_test)
    load_fixture_weights(exp.network, case.raw["initial_weights"], "initial_weights")
    rows = []
    ds = exp.dataset
    fit(
        exp.network,
        exp.objective,
        exp.optimizer,
        ds.x_train,
        ds.y_train,
        ds.x_val,
        ds.y_val,
        exp.train,
        exp.rng,
        callbacks=[lambda s, r, i: rows.append(r)],
    )
    np.testing.assert_allclose([r["train_loss"] for r in rows], case.raw["train_loss"], atol=1e-5)
    np.testing.assert_allclose([r["val_loss"] for r in rows], case.raw["val_loss"], atol=1e-5)
    assert [r["val_acc"] for r in rows] == pytest.approx(case.raw["val_acc"], abs=1e-7)


def _fake_job(root, name, arch, seed, acc, ablate=""):
    job = root / name
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "config.yaml").write_text(
        f"arch:\n  name: {arch}\n  skip: true\nseed: {seed}\n"
    )
    summary = {
        "status": "completed",
        "final": {"val_acc": acc, "val_loss": 1 - acc},
        "epochs_run": 100,
        "compat": {"ablate": ablate, "on": []},
    }
    (job / "summary.json").write_text(json.dumps(summary))


def test_ablation_reading_pairs_jobs_by_arch_and_seed(tmp_path):
    grid, abl = tmp_path / "grid", tmp_path / "abl"
    for seed, acc in enumerate([0.6, 0.7, 0.8]):
        _fake_job(grid, f"g{seed}", "mlp_plain", seed, acc)
        _fake_job(abl, f"a{seed}", "mlp_plain", seed, acc + 0.1, ablate="init")
    _fake_job(abl, "unpaired", "mlp_plain", 9, 0.0, ablate="init")  # no baseline: left out
    out = tmp_path / "reading.md"
    buf = io.StringIO()
    with redirect_stdout(buf):
        assert compat_main(["ablation", str(grid), str(abl), "--out", str(out)]) == 0
    row = next(line for line in out.read_text().splitlines() if line.startswith("| `init`"))
    cells = [c.strip() for c in row.split("|")]
    assert cells[2] == "3"  # three pairs
    assert cells[3] == "+0.100 ± 0.000"  # every pair gained exactly 0.1
    assert cells[4] == "-0.100 ± 0.000"


def test_crate_objective_with_its_switches_off_is_the_textbook_gradient(rng):
    from neurons.kernels.activations import softmax_backward, softmax_forward
    from neurons.objectives import MSE, CrossEntropy

    z = rng.standard_normal((6, 3)).astype(np.float32)
    y = np.eye(3, dtype=np.float32)[rng.integers(0, 3, 6)]
    off = CompatConfig()
    loss, dz = CrateObjective("cross_entropy", off, "softmax").loss_grad_logits(z, y)
    ref_loss, ref_dz = CrossEntropy().loss_grad_logits(z, y)
    np.testing.assert_allclose(dz, ref_dz, atol=1e-7)
    assert loss == pytest.approx(ref_loss, abs=1e-6)
    _, dz = CrateObjective("mse", off, "softmax").loss_grad_logits(z, y)
    p, cache = softmax_forward(z)
    ref = softmax_backward(MSE().loss_grad(p, y)[1], cache)
    np.testing.assert_allclose(dz, ref, atol=1e-7)
    summed = CrateObjective("mse", CompatConfig(grad_sum=True), "softmax").loss_grad_logits(z, y)
    np.testing.assert_allclose(summed[1], ref * 6, atol=1e-6)
