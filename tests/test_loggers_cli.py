"""Tracking loggers through the real CLI: a 2-job sweep read back with TensorBoard's event reader
and MlflowClient equals each run's metrics.csv; an unwritable TensorBoard directory and an
unreachable MLflow server leave the run `completed` with warnings in run.log."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import sigterm_after_epochs

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "NUMBA_NUM_THREADS": os.environ.get("NUMBA_NUM_THREADS", "2")}
METRICS = ["train_loss", "train_acc", "val_loss", "val_acc", "lr"]


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "neurons", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=ENV,
        timeout=600,
    )


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens once the socket is closed


def test_unwritable_and_unreachable_destinations_are_warnings(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    run = tmp_path / "run"
    p = cli(
        "dataset=iris",
        "train.epochs=3",
        "train.threads=1",
        "logger=[csv,tensorboard,mlflow]",
        f"logger.tensorboard.dir={blocker}/tb",  # under a file: unwritable, even for root
        f"logger.mlflow.tracking_uri=http://127.0.0.1:{closed_port()}",
        "logger.mlflow.http_retries=0",
        "logger.mlflow.http_timeout=2",
        f"hydra.run.dir={run}",
    )
    assert p.returncode == 0, p.stderr
    assert json.loads((run / "status.json").read_text())["status"] == "completed"
    assert list(pd.read_csv(run / "metrics.csv").epoch) == [1, 2, 3]
    log = (run / "run.log").read_text()
    warnings = [line for line in log.splitlines() if "[WARNING]" in line]
    assert any("logger tensorboard: start failed" in w for w in warnings), log
    assert any("logger mlflow: start failed" in w for w in warnings), log
    assert "completed: 3 epochs" in log


@pytest.mark.slow
def test_two_job_sweep_tracked_per_run(tmp_path):
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    sweep, db = tmp_path / "sweep", tmp_path / "store" / "mlflow.db"
    p = cli(
        "-m",
        "dataset=iris",
        "arch=mlp_plain,mlp_skip",
        "train.epochs=3",
        "train.threads=1",
        "logger=[csv,tensorboard,mlflow]",
        f"logger.mlflow.tracking_uri=sqlite:///{db}",
        f"hydra.sweep.dir={sweep}",
    )
    assert p.returncode == 0, p.stderr
    jobs = sorted(d for d in sweep.iterdir() if d.is_dir())
    assert [j.name for j in jobs] == ["0_mlp_plain_iris_s0", "1_mlp_skip_iris_s0"]
    client = MlflowClient(tracking_uri=f"sqlite:///{db}")
    exp = client.get_experiment_by_name(str(sweep))  # the sweep is the experiment
    assert exp is not None
    runs = {r.info.run_name: r for r in client.search_runs([exp.experiment_id])}
    assert set(runs) == {j.name for j in jobs}  # one MLflow run per job
    for job in jobs:
        m = pd.read_csv(job / "metrics.csv")
        assert len(m) == 3
        assert "[WARNING]" not in (job / "run.log").read_text()
        ea = EventAccumulator(str(job / "tensorboard"), size_guidance={"scalars": 0})
        ea.Reload()
        r = runs[job.name]
        assert r.info.status == "FINISHED"
        for col in METRICS:
            tb = ea.Scalars(f"epoch/{col}")
            assert [e.step for e in tb] == list(m.epoch)
            np.testing.assert_allclose([e.value for e in tb], m[col], rtol=1e-6, err_msg=col)
            hist = client.get_metric_history(r.info.run_id, col)
            assert sorted(h.step for h in hist) == list(m.epoch)
            got = [h.value for h in sorted(hist, key=lambda h: h.step)]
            np.testing.assert_allclose(got, m[col], rtol=1e-12, err_msg=col)
        arch = job.name.split("_", 1)[1].rsplit("_iris", 1)[0]
        assert r.data.params["arch.name"] == arch and r.data.params["seed"] == "0"
        assert r.data.params["train.epochs"] == "3"
        assert r.data.tags["arch"] == arch and r.data.tags["dataset"] == "iris"
        assert r.data.tags["sweep"] == str(sweep)
        commit = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
        if commit:  # a git checkout (CI's clone is one)
            assert r.data.tags["mlflow.source.git.commit"] == commit
        s = json.loads((job / "summary.json").read_text())
        assert r.data.metrics["final.val_loss"] == pytest.approx(s["final"]["val_loss"], 1e-12)
        files = {a.path for a in client.list_artifacts(r.info.run_id)}
        assert {"metrics.csv", "summary.json", "run.log", "tensorboard"} <= files


@pytest.mark.slow
def test_run_logs_to_a_live_mlflow_server(tmp_path):
    """`mlflow server` from the extra starts on this stack (sqlalchemy<2) and a run given its
    http:// tracking URI by override lands there, read back through the server."""
    import signal
    import time
    import urllib.request

    from mlflow.tracking import MlflowClient

    port = closed_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            f"sqlite:///{tmp_path / 'server.db'}",
            "--artifacts-destination",
            str(tmp_path / "server-artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=open(tmp_path / "server.log", "w"),  # noqa: SIM115
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert server.poll() is None, (tmp_path / "server.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "mlflow server did not come up"
            time.sleep(1)
        run = tmp_path / "run"
        uri = f"http://127.0.0.1:{port}"
        p = cli(
            "dataset=iris",
            "train.epochs=2",
            "train.threads=1",
            "logger=[csv,mlflow]",
            f"logger.mlflow.tracking_uri={uri}",
            "logger.mlflow.experiment=live",
            f"hydra.run.dir={run}",
        )
        assert p.returncode == 0, p.stderr
        assert "[WARNING]" not in (run / "run.log").read_text()
        client = MlflowClient(tracking_uri=uri)
        exp = client.get_experiment_by_name("live")
        (r,) = client.search_runs([exp.experiment_id])
        assert r.info.status == "FINISHED" and r.info.run_name == "run"
        m = pd.read_csv(run / "metrics.csv")
        hist = sorted(client.get_metric_history(r.info.run_id, "val_loss"), key=lambda h: h.step)
        np.testing.assert_allclose([h.value for h in hist], m.val_loss, rtol=1e-12)
        assert "metrics.csv" in {a.path for a in client.list_artifacts(r.info.run_id)}
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)


@pytest.mark.slow
def test_resume_after_sigterm_continues_the_same_tracked_run(tmp_path):

    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cut, db = tmp_path / "cut", tmp_path / "m.db"
    args = [
        "dataset=digits",
        "arch=mlp_feedback",
        "train.epochs=8",
        "train.batch_size=8",
        "train.threads=1",
        "logger=[csv,tensorboard,mlflow]",
        f"logger.mlflow.tracking_uri=sqlite:///{db}",
    ]
    sigterm_after_epochs(args, cut, cwd=ROOT, env=ENV, epochs=2, wait=300, exit_wait=120)
    assert json.loads((cut / "status.json").read_text())["status"] == "interrupted"
    client = MlflowClient(tracking_uri=f"sqlite:///{db}")
    run_id = json.loads((cut / "mlflow.json").read_text())["run_id"]
    assert client.get_run(run_id).info.status == "KILLED"
    p = cli(f"resume={cut}")
    assert p.returncode == 0, p.stderr
    assert json.loads((cut / "status.json").read_text())["status"] == "completed"
    assert "logger" not in "".join(
        line for line in (cut / "run.log").read_text().splitlines() if "[WARNING]" in line
    )
    m = pd.read_csv(cut / "metrics.csv")
    assert list(m.epoch) == list(range(1, 9))
    exp = client.get_experiment_by_name("neurons")
    assert [r.info.run_id for r in client.search_runs([exp.experiment_id])] == [run_id]
    assert client.get_run(run_id).info.status == "FINISHED"
    hist = sorted(client.get_metric_history(run_id, "val_loss"), key=lambda h: h.step)
    assert [h.step for h in hist] == list(m.epoch)  # each epoch once, none lost at the kill
    np.testing.assert_allclose([h.value for h in hist], m.val_loss, rtol=1e-12)
    ea = EventAccumulator(str(cut / "tensorboard"), size_guidance={"scalars": 0})
    ea.Reload()
    tb = ea.Scalars("epoch/val_loss")
    assert [e.step for e in tb] == list(m.epoch)
    np.testing.assert_allclose([e.value for e in tb], m.val_loss, rtol=1e-6)
