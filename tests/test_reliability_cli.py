"""Reliability through the real CLI (`python -m neurons` in subprocesses): NaN blow-ups, refused
configs, signals at every phase, concurrent runs on one directory, resume refusals, SIGKILL with
a torn checkpoint, and a disk that fills up (a real tmpfs, where we may mount one)."""

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from neurons.record import load_checkpoint, nonfinite_arrays, read_metrics

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "NUMBA_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
FAST = ["dataset=iris", "train.threads=1", "train.progress=false"]


def cli(*args, timeout=300):
    return subprocess.run(
        [sys.executable, "-m", "neurons", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=ENV,
        timeout=timeout,
    )


def start(*args, stderr=None):
    """A run in the background; its stderr goes to the file `stderr` (a pipe could fill up)."""
    return subprocess.Popen(
        [sys.executable, "-m", "neurons", *args],
        cwd=ROOT,
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL if stderr is None else open(stderr, "w"),  # noqa: SIM115
    )


def status(run: Path) -> dict:
    return json.loads((run / "status.json").read_text())


def wait_rows(run: Path, n: int, proc, limit: float = 120) -> None:
    deadline = time.time() + limit
    while time.time() < deadline and proc.poll() is None:
        m = run / "metrics.csv"
        if m.exists() and len(m.read_text().splitlines()) > n:
            return
        time.sleep(0.02)
    raise AssertionError(f"{run}: fewer than {n} epochs on disk (exit {proc.poll()})")


def files(d: Path) -> dict:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def test_lr_blowup_fails_and_keeps_only_finite_checkpoints(tmp_path):
    for epochs in (1, 5):
        run = tmp_path / f"e{epochs}"
        p = cli(
            *FAST,
            "optimizer=sgd",
            "optimizer.lr=1e38",
            "train.batch_size=200",
            f"train.epochs={epochs}",
            f"hydra.run.dir={run}",
        )
        assert p.returncode == 1, p.stderr
        st = status(run)
        assert st["status"] == "failed" and "not finite" in st["error"], st
        assert "Traceback" not in p.stderr
        for name in ("last.npz", "best.npz"):
            if (run / "checkpoints" / name).exists():
                arrays, _ = load_checkpoint(run / "checkpoints" / name)
                assert nonfinite_arrays(arrays) == [], name


def test_refused_configs_create_no_run_directory(tmp_path):
    cases = [
        (["arch.width=2.5"], "arch.width: expected an integer >= 1, found 2.5"),
        (["dataset.split_seed=-1"], "dataset.split_seed"),
        (["arch=mlp_looping", "arch.passes=abc"], "arch.passes"),
        (["arch.width=100000000"], "memory is available"),
    ]
    for k, (overrides, message) in enumerate(cases):
        run = tmp_path / f"r{k}"
        p = cli(*FAST, *overrides, f"hydra.run.dir={run}")
        assert p.returncode == 1 and message in p.stderr, p.stderr
        assert "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) == 1
        assert not run.exists()


DRIVER = textwrap.dedent("""
    import importlib, os, signal, sys, time
    module, name, sig = sys.argv[1], sys.argv[2], getattr(signal, sys.argv[3])
    mod = importlib.import_module(module)
    real = getattr(mod, name)
    def hit(*a, **k):  # the signal lands exactly in this phase
        os.kill(os.getpid(), sig)
        time.sleep(30)
        return real(*a, **k)
    setattr(mod, name, hit)
    sys.argv = ["neurons", *sys.argv[4:]]
    import runpy
    runpy.run_module("neurons", run_name="__main__", alter_sys=True)
""")


def signal_in(phase: str, sig: str, *args: str):
    module, name = phase.rsplit(".", 1)
    return subprocess.run(
        [sys.executable, "-c", DRIVER, module, name, sig, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=ENV,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("phase", "sig"),
    [
        pytest.param("neurons.run.configure", "SIGTERM", marks=pytest.mark.slow),  # at the start
        pytest.param("neurons.config.load_dataset", "SIGINT", marks=pytest.mark.slow),  # loading
        ("neurons.run._summary", "SIGTERM"),  # after the last epoch: probes and summary
    ],
)
def test_a_signal_in_any_phase_is_recorded_as_interrupted(tmp_path, phase, sig):
    run = tmp_path / "r"
    p = signal_in(phase, sig, *FAST, "train.epochs=2", f"hydra.run.dir={run}")
    assert p.returncode == 130, p.stderr
    what = "SIGTERM" if sig == "SIGTERM" else "Ctrl-C"
    assert status(run) == {
        **status(run),
        "status": "interrupted",
        "error": f"interrupted by {what}",
    }
    assert "Traceback" not in p.stderr
    assert not (run / "run.lock").exists()
    if phase.endswith("_summary"):  # resumable, and may be extended
        r = cli(f"resume={run}", "train.epochs=4")
        assert r.returncode == 0, r.stderr
        assert status(run)["status"] == "completed"
        assert [m["epoch"] for m in read_metrics(run)] == [1, 2, 3, 4]
        assert "train.epochs extended 2 -> 4" in (run / "run.log").read_text()


@pytest.mark.slow
def test_concurrent_runs_and_resume_refusals_on_one_directory(tmp_path):
    run = tmp_path / "shared"
    a = start(*FAST, "train.epochs=100000", f"hydra.run.dir={run}")
    try:
        wait_rows(run, 2, a)
        before = (run / ".hydra" / "config.yaml").read_bytes()
        b = cli(*FAST, "arch=mlp_skip", "train.epochs=3", f"hydra.run.dir={run}")
        assert b.returncode == 1 and f"in use by another live run (pid {a.pid}" in b.stderr
        assert (run / ".hydra" / "config.yaml").read_bytes() == before
        r = cli(f"resume={run}")
        assert r.returncode == 1 and "still running" in r.stderr, r.stderr
    finally:
        a.send_signal(signal.SIGTERM)
        a.wait(timeout=60)
    assert status(run)["status"] == "interrupted"
    snap = files(run)
    b = cli(*FAST, "train.epochs=3", f"hydra.run.dir={run}")
    assert b.returncode == 1 and "already holds another run" in b.stderr
    r = cli(f"resume={run}", "optimizer.lr=0.5", "train.batch_size=8")
    assert r.returncode == 1
    assert "optimizer.lr (0.001 -> 0.5)" in r.stderr and "train.batch_size (32 -> 8)" in r.stderr
    assert files(run) == snap  # refusals touch nothing
    sweep = tmp_path / "sweep"
    s = cli("-m", *FAST, "seed=0", "train.epochs=1", f"hydra.sweep.dir={sweep}")
    assert s.returncode == 0, s.stderr
    snap = files(sweep)
    r = cli(f"resume={sweep}")
    assert r.returncode == 1 and "is a sweep directory" in r.stderr
    r = cli(f"resume={tmp_path / 'nowhere'}")
    assert r.returncode == 1 and "no such directory" in r.stderr
    assert files(sweep) == snap and not (tmp_path / "nowhere").exists()


@pytest.mark.slow
def test_sigkill_leaves_a_resumable_run_and_a_torn_checkpoint_falls_back(tmp_path):
    run = tmp_path / "k"  # a checkpoint every epoch, so `best.npz` is on disk when it is killed
    args = [*FAST, "train.epochs=40", "train.checkpoint_min_seconds=0", f"hydra.run.dir={run}"]
    a = start(*args)
    wait_rows(run, 3, a)
    a.kill()
    a.wait()
    assert status(run)["status"] == "running"  # what SIGKILL leaves; the lock is stale
    ck = run / "checkpoints"
    (ck / ".last.npz.x7k2p9").write_bytes(b"half a checkpoint")
    (ck / "last.npz").write_bytes((ck / "last.npz").read_bytes()[:100])
    with (run / "metrics.csv").open("a") as f:
        f.write("99,1,0.1")  # a torn row
    r = cli(f"resume={run}")
    assert r.returncode == 0, r.stderr
    log = (run / "run.log").read_text()
    assert f"{ck / 'last.npz'}: truncated or corrupt checkpoint" in log
    assert f"falling back to {ck / 'best.npz'}" in log
    assert "stale lock of pid" in log and "stale temp file" in log
    assert not (ck / ".last.npz.x7k2p9").exists()
    assert status(run)["status"] == "completed"
    assert [m["epoch"] for m in read_metrics(run)] == list(range(1, 41))


def _tmpfs(path: Path, size: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or not shutil.which("mount"):
        return False
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)])
    return r.returncode == 0


needs_tmpfs = pytest.mark.skipif(
    os.geteuid() != 0, reason="mounting a tmpfs needs root (the injected-ENOSPC test runs anyway)"
)


@needs_tmpfs
@pytest.mark.slow
def test_a_disk_filling_up_mid_run_ends_failed_in_one_line(tmp_path):
    mnt = tmp_path / "mnt"
    if not _tmpfs(mnt, "4m"):
        pytest.skip("cannot mount a tmpfs here")
    try:
        run = mnt / "run"
        args = [*FAST, "train.epochs=100000", "train.checkpoint_min_seconds=0"]  # every epoch
        a = start(*args, f"hydra.run.dir={run}", stderr=tmp_path / "err")
        wait_rows(run, 2, a)
        fd = os.open(mnt / "filler", os.O_WRONLY | os.O_CREAT)
        try:  # fill the disk to the last byte
            while os.write(fd, b"\0" * 4096):
                pass
        except OSError:
            pass
        finally:
            os.close(fd)
        a.wait(timeout=60)
        err = (tmp_path / "err").read_text()
        assert a.returncode == 1, err
        st = status(run)
        assert st["status"] == "failed" and "No space left on device" in st["error"], st
        assert st["error"].startswith(f"cannot write {run}")
        assert "Traceback" not in err
        arrays, meta = load_checkpoint(run / "checkpoints" / "last.npz")
        assert nonfinite_arrays(arrays) == [] and meta["epoch"] >= 1
        assert [m["epoch"] for m in read_metrics(run)] == list(range(1, len(read_metrics(run)) + 1))
    finally:
        subprocess.run(["umount", "-l", str(mnt)])


@needs_tmpfs
def test_a_read_only_run_directory_is_refused_in_one_line(tmp_path):
    mnt = tmp_path / "ro"
    if not _tmpfs(mnt, "1m"):
        pytest.skip("cannot mount a tmpfs here")
    try:
        subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
        p = cli(*FAST, "train.epochs=1", f"hydra.run.dir={mnt}")
        assert p.returncode == 1
        assert f"{mnt / 'run.lock'}: cannot take the run lock (Read-only file system)" in p.stderr
        assert "Traceback" not in p.stderr
    finally:
        subprocess.run(["umount", "-l", str(mnt)])


def test_np_finite_guard():
    assert nonfinite_arrays({"a": np.array([1.0, np.nan])}) == ["a"]
