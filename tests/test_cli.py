"""End-to-end through the real CLI (`python -m neurons` in a subprocess): run records, sweeps,
bad overrides, resume after a kill, and a NaN run."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import sigterm_after_epochs

from neurons.record import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "NUMBA_NUM_THREADS": os.environ.get("NUMBA_NUM_THREADS", "2")}


def cli(*args, check=True, timeout=300):
    p = subprocess.run(
        [sys.executable, "-m", "neurons", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=ENV,
        timeout=timeout,
    )
    if check and p.returncode != 0:
        raise AssertionError(f"exit {p.returncode}\nstdout:\n{p.stdout}\nstderr:\n{p.stderr}")
    return p


def test_single_run_writes_every_record(tmp_path):
    run = tmp_path / "run"
    cli(
        "dataset=iris", "arch=mlp_skip", "train.epochs=3", "train.threads=1", f"hydra.run.dir={run}"
    )
    for f in [
        ".hydra/config.yaml",
        ".hydra/overrides.yaml",
        "metrics.csv",
        "summary.json",
        "status.json",
        "run.log",
        "checkpoints/last.npz",
        "checkpoints/best.npz",
    ]:
        assert (run / f).exists(), f
    m = pd.read_csv(run / "metrics.csv")
    assert list(m.columns) == [
        "epoch",
        "step",
        "seconds",
        "wall",
        "lr",
        "train_loss",
        "train_acc",
        "val_loss",
        "val_acc",
    ]
    assert list(m.epoch) == [1, 2, 3]
    assert list(m.step) == [4, 8, 12]  # 120 training samples, batch 32
    assert (m.seconds > 0).all() and np.all(np.diff(m.wall) > 0)
    assert m.val_acc.between(0, 1).all()
    s = json.loads((run / "summary.json").read_text())
    assert s["status"] == "completed" and s["epochs_run"] == 3
    assert s["params"] == 1425
    assert s["threads"]["numba"] == 1
    assert s["final"]["val_loss"] == pytest.approx(m.val_loss.iloc[-1])
    assert s["probes"]["no_skip"] is not None and s["probes"]["no_feedback"] is None
    assert s["dataset"]["name"] == "iris" and s["dataset"]["n_train"] == 120
    assert {"numpy", "numba", "hydra"} <= set(s["versions"])
    assert json.loads((run / "status.json").read_text())["status"] == "completed"
    log = (run / "run.log").read_text()
    assert "epoch 3/3" in log and "\r" not in log  # one line per epoch, no progress bars
    arrays, meta = load_checkpoint(run / "checkpoints" / "last.npz")
    assert meta["epoch"] == 3 and any(k.startswith("optim.") for k in arrays)


def test_multirun_two_jobs(tmp_path):
    sweep = tmp_path / "sweep"
    cli(
        "-m",
        "dataset=xor",
        "arch=mlp_plain,mlp_feedback",
        "train.epochs=2",
        "train.threads=1",
        f"hydra.sweep.dir={sweep}",
    )
    jobs = sorted(p.name for p in sweep.iterdir() if p.is_dir())
    assert jobs == ["0_mlp_plain_xor_s0", "1_mlp_feedback_xor_s0"]
    for j in jobs:
        s = json.loads((sweep / j / "summary.json").read_text())
        assert s["status"] == "completed"
    assert (sweep / "multirun.yaml").exists()


def test_a_failing_job_does_not_stop_the_sweep(tmp_path):
    sweep = tmp_path / "sweep"
    p = cli(
        "-m",
        "dataset=iris",
        "arch=cnn_plain,mlp_plain",
        "train.epochs=1",
        f"hydra.sweep.dir={sweep}",
        check=False,
    )
    assert p.returncode == 1
    st = {
        d.name: json.loads((d / "status.json").read_text()) for d in sweep.iterdir() if d.is_dir()
    }
    assert st["0_cnn_plain_iris_s0"]["status"] == "failed"
    assert "conv expects a (C, H, W) input" in st["0_cnn_plain_iris_s0"]["error"]
    assert st["1_mlp_plain_iris_s0"]["status"] == "completed"


@pytest.mark.parametrize(
    "override,message",
    [
        ("train.epochs=abc", "train.epochs"),
        ("optimizer.lr=-1", "optimizer.lr: expected a number > 0.0, found -1"),
        ("train.foo=1", "Key 'foo' not in 'TrainConfigSchema'"),
        ("arch=nope", "Could not find 'arch/nope'"),
        ("dataset.normalize=zscore", "dataset.normalize: expected one of"),
    ],
)
def test_bad_overrides_fail_cleanly(override, message, tmp_path):
    p = cli(override, f"hydra.run.dir={tmp_path / 'r'}", check=False)
    assert p.returncode != 0
    out = p.stdout + p.stderr
    assert message in out, out
    assert "Traceback" not in out, out


def test_help_and_cfg(tmp_path):
    p = cli("--help")
    assert "arch: " in p.stdout and "cnn_feedback" in p.stdout
    p = cli("--cfg", "job", "--resolve", "arch=mlp_looping", "arch.passes=3")
    assert "iterations: 2" in p.stdout
    p = cli("--info")
    assert "Hydra" in p.stdout and "Config search path" in p.stdout


def test_progress_bars_on_a_terminal_only(tmp_path):
    import fcntl
    import pty
    import struct
    import termios

    run = tmp_path / "tty"
    main, child = pty.openpty()
    # a new pty is 0x0, and tqdm draws nothing into zero columns: give it a real size
    fcntl.ioctl(child, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    proc = subprocess.Popen(
        [sys.executable, "-m", "neurons", "dataset=xor", "train.epochs=3", f"hydra.run.dir={run}"],
        cwd=ROOT,
        env=ENV,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=child,
    )
    os.close(child)
    chunks = []
    while True:
        try:
            data = os.read(main, 4096)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    proc.wait(timeout=120)
    os.close(main)
    shown = b"".join(chunks).decode(errors="replace")
    assert proc.returncode == 0, shown
    assert "batches" in shown and "epochs" in shown  # tqdm drew its bars on the terminal
    log = (run / "run.log").read_text()
    assert "epoch 3/3" in log and "batches" not in log and "it/s" not in log


def _weights(run: Path) -> dict:
    arrays, meta = load_checkpoint(run / "checkpoints" / "last.npz")
    return {k: v for k, v in arrays.items() if k.startswith(("model.", "optim."))}, meta


def test_resume_after_kill_equals_uninterrupted_run(tmp_path):
    args = [
        "dataset=digits",
        "arch=mlp_feedback",
        "train.epochs=30",
        "train.batch_size=8",
        "train.threads=1",
        "arch.width=64",
    ]
    full, cut = tmp_path / "full", tmp_path / "cut"
    cli(*args, f"hydra.run.dir={full}")
    # a row is appended before its epoch's checkpoint is written: once epoch 3's row is on disk,
    # epoch 2's checkpoint is too (a SIGTERM between the two resumes from the epoch before)
    sigterm_after_epochs(args, cut, cwd=ROOT, env=ENV, epochs=3)
    status = json.loads((cut / "status.json").read_text())
    assert status["status"] == "interrupted", status
    _, meta = _weights(cut)
    assert 2 <= meta["epoch"] < 30
    cli(f"resume={cut}")
    assert json.loads((cut / "status.json").read_text())["status"] == "completed"
    a, ma = _weights(full)
    b, mb = _weights(cut)
    assert ma["epoch"] == mb["epoch"] == 30 and ma["rng"] == mb["rng"]
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    ca, cb = pd.read_csv(full / "metrics.csv"), pd.read_csv(cut / "metrics.csv")
    cols = ["epoch", "step", "lr", "train_loss", "train_acc", "val_loss", "val_acc"]
    pd.testing.assert_frame_equal(ca[cols], cb[cols])


def test_nan_run_fails_and_keeps_a_loadable_checkpoint(tmp_path):
    run = tmp_path / "nan"
    p = cli(
        "dataset=iris",
        "optimizer=sgd",
        "optimizer.lr=1e30",
        "objective=mse",
        "train.epochs=5",
        f"hydra.run.dir={run}",
        check=False,
    )
    assert p.returncode == 1
    st = json.loads((run / "status.json").read_text())
    assert st["status"] == "failed"
    assert "training loss is" in st["error"] and "at epoch" in st["error"]
    assert "batch" in st["error"]
    arrays, meta = load_checkpoint(run / "checkpoints" / "last.npz")
    assert all(np.isfinite(v).all() for k, v in arrays.items() if k.startswith("model."))
    assert "Traceback" not in p.stderr
