"""The `debug` presets: fast, overfit, limit and profile do what they say (run in-process through
`neurons.fit`), profiling leaves the run untouched, and an unknown preset fails listing the
allowed ones, through the API and through the CLI, before any run directory exists."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from hydra.errors import MissingConfigException

import neurons
from neurons.config import build_experiment
from neurons.profile import format_profile, profile_steps
from neurons.searchpath import ENV_VAR

PRESETS = ["fast", "limit", "overfit", "profile"]


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    monkeypatch.chdir(tmp_path)


def test_fast_runs_two_batches_of_one_epoch_without_checkpoints(tmp_path):
    run = neurons.fit(["debug=fast", "train.threads=1"], run_dir=tmp_path / "r")
    assert list(run.metrics.epoch) == [1] and list(run.metrics.step) == [2]
    assert not (run.run_dir / "checkpoints").exists()
    assert run.summary["status"] == "completed" and run.summary["dataset"]["n_val"] == 30
    assert "limit_batches 2" in run.summary["dataset"]["preprocessing"]


def test_limit_uses_small_subsets(tmp_path):
    run = neurons.fit(["debug=limit", "dataset=digits", "train.threads=1"], run_dir=tmp_path / "r")
    d = run.summary["dataset"]
    assert (d["n_train"], d["n_val"]) == (512, 128)
    assert list(run.metrics.epoch) == [1, 2, 3] and run.metrics.step.iloc[-1] == 3 * 16
    assert (run.run_dir / "checkpoints" / "last.npz").exists()  # limit keeps checkpoints


def test_overfit_drives_the_loss_of_fixed_batches_near_zero(tmp_path):
    run = neurons.fit(["debug=overfit", "optimizer.lr=0.01", "train.threads=1"], run_dir="r")
    m, s = run.metrics, run.summary
    assert m.train_loss.iloc[-1] <= 0.01 < m.train_loss.iloc[0]
    assert s["stopped_early"] and s["epochs_run"] < 200
    assert s["dataset"]["n_val"] == 64 and s["dataset"]["n_train"] == 64 * 25
    assert list(m.step) == [50 * e for e in m.epoch]  # 2 batches x 25 passes per epoch
    assert abs(m.val_loss.iloc[-1] - m.train_loss.iloc[-1]) < 0.01  # validates on the same data


def test_overfit_warns_when_the_target_is_not_reached(tmp_path, caplog):
    caplog.set_level("WARNING", logger="neurons")
    overrides = ["debug=overfit", "train.epochs=2", "debug.overfit_repeats=1", "train.threads=1"]
    run = neurons.fit(overrides, run_dir="r")
    assert run.summary["epochs_run"] == 2 and not run.summary["stopped_early"]
    assert any("debug.target_loss" in r.getMessage() for r in caplog.records)


def test_profile_times_every_layer_and_leaves_training_untouched(tmp_path):
    base = ["arch=mlp_feedback", "train.threads=1"]
    prof = neurons.fit([*base, "debug=profile"], run_dir="p")
    plain = neurons.fit([*base, "train.epochs=1", "debug.checkpoints=false"], run_dir="q")
    rows = json.loads((prof.run_dir / "profile.json").read_text())
    layers = [r for r in rows if r["layer"].startswith("layers.")]
    names = [r["layer"] for r in layers]
    assert names == ["layers.0", "layers.1.body.0", "layers.1.body.1", "layers.2"]
    assert all(r["forward_ms"] > 0 and r["backward_ms"] > 0 for r in layers)
    by = {r["layer"]: r for r in rows}
    assert by["optimizer"]["total_ms"] > 0 and by["loss"]["total_ms"] > 0
    parts = sum(r["total_ms"] for r in rows if r["layer"] != "step")
    assert parts <= by["step"]["total_ms"] * 1.001  # the pieces fit inside the measured step
    assert "debug.profile" in (prof.run_dir / "run.log").read_text()
    # profiling restored parameters, buffers and optimizer state: the epoch is bit-identical
    np.testing.assert_array_equal(prof.metrics.train_loss, plain.metrics.train_loss)
    np.testing.assert_array_equal(prof.metrics.val_loss, plain.metrics.val_loss)


def test_profile_steps_counts_shared_feedback_layers_once():
    cfg = neurons.compose(["arch=mlp_feedback", "arch.passes=3"])
    exp = build_experiment(cfg)
    before = {k: v.copy() for k, v in exp.network.state_dict().items()}
    rows = profile_steps(
        exp.network,
        exp.objective,
        exp.optimizer,
        exp.dataset.x_train,
        exp.dataset.y_train,
        exp.train,
        steps=2,
    )
    for k, v in exp.network.state_dict().items():
        np.testing.assert_array_equal(v, before[k], err_msg=k)
    table = format_profile(rows)
    assert table.count("layers.1.body.0") == 1 and "step" in table
    with pytest.raises(ValueError, match="debug.profile_steps"):
        profile_steps(exp.network, exp.objective, exp.optimizer, exp.dataset.x_train,
                      exp.dataset.y_train, exp.train, steps=0)  # fmt: skip


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("prefix", ["", "+"])
def test_every_preset_composes_with_or_without_plus(preset, prefix):
    cfg = neurons.compose([f"{prefix}debug={preset}"])
    assert cfg.debug is not None and cfg.arch.name == "mlp_plain"


@pytest.mark.parametrize("override", ["debug=nope", "+debug=nope", "++debug=nope"])
def test_unknown_preset_names_the_allowed_ones(override):
    with pytest.raises(MissingConfigException) as e:
        neurons.compose([override])
    msg = str(e.value)
    assert "debug/nope" in msg and all(p in msg for p in PRESETS)


def test_cli_unknown_preset_fails_before_any_work(tmp_path):
    run = tmp_path / "would-be-run"
    env = {**os.environ, "NUMBA_NUM_THREADS": "1"}
    p = subprocess.run(
        [sys.executable, "-m", "neurons", "+debug=nope", f"hydra.run.dir={run}"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert p.returncode != 0
    assert "debug/nope" in p.stderr and all(f"\t{x}" in p.stderr for x in PRESETS)
    assert not run.exists()


def test_debug_values_are_checked():
    with pytest.raises(neurons.RunFailed, match=r"debug.limit_batches: expected an integer >= 1"):
        neurons.fit(["debug=fast", "debug.limit_batches=0"], run_dir="bad")
