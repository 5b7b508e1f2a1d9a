"""Tracking loggers: the `logger` group composes, TensorBoard event files read back with
TensorBoard's own reader equal metrics.csv, a missing extra is named, and a failing logger is a
warning while the run completes."""

import errno
import json
import logging
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hydra import compose, initialize_config_dir

from neurons import loggers as lg
from neurons.config import ConfigError, build_loggers
from neurons.record import load_checkpoint
from neurons.run import run_job
from neurons.schema import register_schema

CONF = Path(__file__).resolve().parents[1] / "conf"
register_schema()


def cfg_of(*overrides: str):
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        return compose(config_name="config", overrides=list(overrides))


def events(logdir: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(logdir), size_guidance={"scalars": 0, "tensors": 0})
    ea.Reload()
    return ea


def test_logger_group_selects_several_and_csv_is_always_on(tmp_path):
    cfg = cfg_of()
    assert cfg.logger.csv.enabled and not cfg.logger.tensorboard.enabled
    assert not cfg.logger.mlflow.enabled
    assert build_loggers(cfg, tmp_path).loggers == []
    cfg = cfg_of("logger=[csv,tensorboard,mlflow]", "logger.tensorboard.histogram_every=3")
    built = build_loggers(cfg, tmp_path).loggers
    assert [x.name for x in built] == ["tensorboard", "mlflow"]
    assert built[0].every_hist == 3
    assert cfg.logger.mlflow.tracking_uri == "sqlite:///runs/mlflow.db"  # under runs/ by default
    cfg = cfg_of("logger=[tensorboard]")  # csv not listed: still on
    assert cfg.logger.csv.enabled and cfg.logger.tensorboard.enabled


@pytest.mark.parametrize(
    "override, key",
    [
        ("logger.tensorboard.histogram_every=-1", "logger.tensorboard.histogram_every"),
        ("logger.tensorboard.log_every_n_steps=-2", "logger.tensorboard.log_every_n_steps"),
        ("logger.mlflow.http_retries=-1", "logger.mlflow.http_retries"),
        ("logger.mlflow.http_timeout=0", "logger.mlflow.http_timeout"),
        ("logger.csv.enabled=false", "logger.csv.enabled"),
    ],
)
def test_bad_logger_values_name_the_key(tmp_path, override, key):
    cfg = cfg_of("logger=[csv,tensorboard,mlflow]", override)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        build_loggers(cfg, tmp_path)


@pytest.mark.parametrize("name", ["tensorboard", "mlflow"])
def test_missing_extra_is_named(tmp_path, monkeypatch, name):
    monkeypatch.setitem(sys.modules, name, None)  # `import name` now raises ImportError
    cfg = cfg_of(f"logger=[csv,{name}]", "dataset=xor", "train.epochs=1")
    with pytest.raises(ConfigError, match=rf"pip install 'neurons-lab\[{name}\]'"):
        build_loggers(cfg, tmp_path)
    assert run_job(cfg, tmp_path / "run", progress=False) is False
    status = json.loads((tmp_path / "run" / "status.json").read_text())
    assert status["status"] == "failed" and f"neurons-lab[{name}]" in status["error"]


def test_flatten_and_uri():
    flat = lg.flatten({"a": {"b": 1, "c": [0.9, 0.99]}, "l": [{"k": "x"}], "n": None})
    assert flat == {"a.b": 1, "a.c": "[0.9, 0.99]", "l.0.k": "x", "n": "None"}
    resolve = lg.MlflowLogger.resolve_uri  # relative stores: from the launch directory
    uri, store = resolve("sqlite:///runs/mlflow.db", Path("/w"))
    assert uri == "sqlite:////w/runs/mlflow.db" and store == Path("/w/runs")
    assert resolve("sqlite:////abs/m.sqlite", Path("/w")) == (
        "sqlite:////abs/m.sqlite",
        Path("/abs"),
    )
    assert resolve("mlruns", Path("/w")) == ("file:///w/mlruns", Path("/w/mlruns"))
    assert resolve("file:mlruns", Path("/w")) == ("file:///w/mlruns", Path("/w/mlruns"))
    assert resolve("file:///x/mlruns", Path("/w")) == ("file:///x/mlruns", Path("/x/mlruns"))
    assert resolve("http://h:5000", Path("/w")) == ("http://h:5000", None)


def test_experiment_is_the_sweep_and_tags_name_the_choices():
    job = {
        "mode": "multirun",
        "sweep_dir": "/w/runs/multirun/2026-01-01/10-00-00-abc",
        "num": 3,
        "cwd": "/w",
        "name": "neurons",
        "overrides": ["arch=mlp_skip", "seed=1"],
        "choices": {"arch": "mlp_skip", "dataset": "iris", "experiment": None},
    }
    info = lg.RunInfo(Path("/w/x/3_mlp_skip_iris_s1"), {"tag": "try"}, job)
    assert info.experiment == "runs/multirun/2026-01-01/10-00-00-abc"
    tags = info.tags()
    assert tags["arch"] == "mlp_skip" and tags["dataset"] == "iris" and "experiment" not in tags
    assert tags["job_num"] == "3" and tags["overrides"] == "arch=mlp_skip seed=1"
    assert tags["tag"] == "try" and tags["sweep"] == info.experiment
    single = lg.RunInfo(Path("/w/runs/r"), {}, {"mode": "run", "name": "neurons", "cwd": "/w"})
    assert single.experiment == "neurons"


def test_tensorboard_events_equal_metrics_csv(tmp_path):
    from tensorboard.plugins.hparams import plugin_data_pb2
    from tensorboard.util import tensor_util

    run = tmp_path / "run"
    cfg = cfg_of(
        "dataset=iris",
        "arch=mlp_skip",
        "train.epochs=4",
        "train.threads=1",
        "train.schedule.name=step",
        "train.schedule.step_size=2",
        "logger=[csv,tensorboard]",
        "logger.tensorboard.histogram_every=2",
    )
    assert run_job(cfg, run, progress=False)
    m = pd.read_csv(run / "metrics.csv")
    s = json.loads((run / "summary.json").read_text())
    ea = events(run / "tensorboard")
    for col in ["train_loss", "train_acc", "val_loss", "val_acc", "lr"]:
        got = ea.Scalars(f"epoch/{col}")
        assert [e.step for e in got] == list(m.epoch)
        np.testing.assert_allclose([e.value for e in got], m[col], rtol=1e-6, err_msg=col)
    assert len(set(m.lr)) == 2  # the schedule decayed: lr really is logged per epoch
    steps = ea.Scalars("batch/train_loss")
    assert [e.step for e in steps] == list(range(1, m.step.iloc[-1] + 1))
    sizes = np.array([32, 32, 32, 24])  # 120 training samples, batch 32
    per_epoch = np.array([e.value for e in steps]).reshape(len(m), 4)
    np.testing.assert_allclose(per_epoch @ sizes / 120, m.train_loss, rtol=1e-5)
    assert ea.Scalars("final/val_loss")[0].value == pytest.approx(s["final"]["val_loss"], 1e-6)
    no_skip = s["probes"]["no_skip"]
    assert ea.Scalars("probe/no_skip.acc")[0].value == pytest.approx(no_skip["acc"], 1e-6)
    text = tensor_util.make_ndarray(ea.Tensors("config")[0].tensor_proto).item().decode()
    assert "name: mlp_skip" in text and "epochs: 4" in text
    content = ea.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(next(iter(content.values())))
    hp = start.session_start_info.hparams
    assert hp["optimizer.lr"].number_value == pytest.approx(1e-3)
    assert hp["arch.name"].string_value == "mlp_skip" and hp["status"].string_value == "completed"
    hist_tags = [t for t in ea.Tags()["tensors"] if t.startswith(("weights/", "grads/"))]
    assert "weights/layers.0.w" in hist_tags and "grads/layers.0.w" in hist_tags
    h = ea.Tensors("weights/layers.0.w")
    assert [e.step for e in h] == [2, 4]
    buckets = tensor_util.make_ndarray(h[-1].tensor_proto)  # (bucket, [left, right, count])
    w = load_checkpoint(run / "checkpoints" / "last.npz")[0]["model.param.layers.0.w"]  # epoch 4
    assert buckets[:, 2].sum() == w.size
    np.testing.assert_allclose([buckets[0, 0], buckets[-1, 1]], [w.min(), w.max()], rtol=1e-6)


class _Boom(lg.RunLogger):
    name = "boom"

    def __init__(self) -> None:
        self.epochs: list[int] = []

    def start(self, info):
        pass

    def log_epoch(self, row):
        self.epochs.append(row["epoch"])
        if row["epoch"] == 2:
            raise OSError(errno.ENOSPC, "No space left on device")

    def finish(self, status, summary):
        pass


def test_full_disk_in_a_logger_is_a_warning_and_the_run_completes(tmp_path, monkeypatch, caplog):
    from tensorboard.summary.writer import event_file_writer

    real = event_file_writer.EventFileWriter.add_event
    calls = {"n": 0}

    def add_event(self, event):  # the disk fills up after a few events
        calls["n"] += 1
        if calls["n"] > 5:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(self, event)

    monkeypatch.setattr(event_file_writer.EventFileWriter, "add_event", add_event)
    boom = _Boom()
    real_build = build_loggers

    def with_boom(cfg, run_dir, network=None):
        group = real_build(cfg, run_dir, network)
        group.loggers.append(boom)
        return group

    monkeypatch.setattr("neurons.run.build_loggers", with_boom)
    run = tmp_path / "run"
    cfg = cfg_of("dataset=iris", "train.epochs=4", "train.threads=1", "logger=[csv,tensorboard]")
    with caplog.at_level(logging.WARNING, logger="neurons"):
        assert run_job(cfg, run, progress=False)
    assert json.loads((run / "status.json").read_text())["status"] == "completed"
    assert list(pd.read_csv(run / "metrics.csv").epoch) == [1, 2, 3, 4]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert sum("logger tensorboard" in w and "No space left" in w for w in warnings) == 1
    assert sum("logger boom: epoch 2 failed" in w for w in warnings) == 1
    assert boom.epochs == [1, 2]  # switched off after its failure, the run went on
