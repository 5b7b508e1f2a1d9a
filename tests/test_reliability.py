"""Reliability, in process: non-finite values, damaged checkpoints, metrics that a kill cannot
corrupt, run-dir locks and resume checks, config preflight, bounded readers (with hypothesis
fuzzing: the IDX and CSV readers only ever raise DatasetError), and signals inside numba calls."""

import errno
import gzip
import json
import os
import signal
import struct
import subprocess
import sys
import textwrap
from contextlib import contextmanager, nullcontext
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf

from neurons import record as rec
from neurons import rundir
from neurons.config import ConfigError
from neurons.data import DatasetError, read_csv_dataset, read_idx
from neurons.layers import BuildError
from neurons.preflight import preflight
from neurons.train import NonFiniteLoss, TrainConfig, fit

ROOT = Path(__file__).resolve().parents[1]


def compose(*overrides: str):
    from hydra import compose as hcompose
    from hydra import initialize_config_dir

    from neurons.schema import register_schema

    register_schema()
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        return hcompose("config", overrides=list(overrides))


# ------------------------------------------------------------------------------ non-finite values
def _tiny(rng, lr=1e-2):
    from neurons.config import build_network
    from neurons.optim import make_optimizer

    arch = {"layers": [{"kind": "dense", "units": 4, "activation": "relu"}]}
    net = build_network(arch, (2,), 2, "classification", "cross_entropy", rng)
    from neurons.objectives import make_objective

    return (
        net,
        make_objective("cross_entropy"),
        make_optimizer("sgd", net.named_parameters(), lr=lr),
    )


def test_nonfinite_gradient_is_caught_before_the_step(rng, monkeypatch):
    net, obj, opt = _tiny(rng)
    x = rng.normal(size=(8, 2)).astype(np.float32)
    y = np.eye(2, dtype=np.float32)[rng.integers(0, 2, 8)]
    before = {k: v.copy() for k, v in net.named_parameters().items()}
    real = net.backward

    def poisoned(dout, tape):
        out = real(dout, tape)
        next(iter(net.named_grads().values()))[...] = np.nan
        return out

    monkeypatch.setattr(net, "backward", poisoned)
    with pytest.raises(NonFiniteLoss, match=r"gradient of .* is not finite at epoch 1, batch 1"):
        fit(net, obj, opt, x, y, x, y, TrainConfig(epochs=1, batch_size=8), rng)
    for k, v in net.named_parameters().items():  # the bad step was never taken
        np.testing.assert_array_equal(v, before[k])


def test_nonfinite_parameters_and_validation_are_caught(rng):
    x = rng.normal(size=(8, 2)).astype(np.float32)
    y = np.eye(2, dtype=np.float32)[rng.integers(0, 2, 8)]
    net, obj, opt = _tiny(rng)
    real = opt.step

    def overflowing_step(grads):  # what a huge lr does: finite loss and grads, inf weights
        real(grads)
        next(iter(net.named_parameters().values()))[0] = np.inf

    opt.step = overflowing_step
    with np.errstate(all="ignore"), pytest.raises(NonFiniteLoss, match="not finite after epoch 1"):
        fit(net, obj, opt, x, y, x, y, TrainConfig(epochs=1, batch_size=8), rng)
    net, obj, opt = _tiny(rng)
    x_val = np.full((4, 2), 3e38, dtype=np.float32)
    with np.errstate(all="ignore"), pytest.raises(NonFiniteLoss, match="validation loss"):
        fit(net, obj, opt, x, y, x_val, y[:4], TrainConfig(epochs=1, batch_size=8), rng)


def test_a_checkpoint_with_nonfinite_values_is_not_good(tmp_path):
    arrays = {"model.param.w": np.array([1.0, np.inf], np.float32), "optim.t": np.array(3)}
    assert rec.nonfinite_arrays(arrays) == ["model.param.w"]
    rec.save_checkpoint(tmp_path / "c.npz", arrays, {"epoch": 1, "train_state": {}, "rng": {}})
    with pytest.raises(rec.CheckpointError, match=r"c\.npz: holds non-finite values"):
        rec.load_run_checkpoint(tmp_path / "c.npz")


def test_truncated_checkpoint_names_the_file(tmp_path):
    path = tmp_path / "last.npz"
    rec.save_checkpoint(path, {"a": np.zeros(1000)}, {"epoch": 1})
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(rec.CheckpointError, match=r"last\.npz: truncated or corrupt checkpoint"):
        rec.load_checkpoint(path)


# ------------------------------------------------------------------------------ metrics.csv
def test_metrics_are_appended_and_a_torn_row_is_not_an_epoch(tmp_path):
    rows = [{"epoch": e, "step": 2 * e, "train_loss": 0.5 / e} for e in (1, 2, 3)]
    rec.write_metrics(tmp_path, [])
    inode = (tmp_path / rec.METRICS).stat().st_ino
    for r in rows:
        rec.append_metrics(tmp_path, r)
    assert (tmp_path / rec.METRICS).stat().st_ino == inode  # appended in place, not rewritten
    assert [r["epoch"] for r in rec.read_metrics(tmp_path)] == [1, 2, 3]
    with (tmp_path / rec.METRICS).open("a") as f:  # what a kill mid-write can leave
        f.write("4,8,0.1,0.4,0.0")
    assert [r["epoch"] for r in rec.read_metrics(tmp_path)] == [1, 2, 3]


def test_a_failed_append_leaves_the_file_whole(tmp_path, monkeypatch):
    rec.write_metrics(tmp_path, [{"epoch": 1, "step": 1}])
    before = (tmp_path / rec.METRICS).read_bytes()
    real = os.write

    def full(fd, data):
        real(fd, data[:5])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(rec.RecordWriteError, match=r"cannot write .*metrics\.csv: No space left"):
        rec.append_metrics(tmp_path, {"epoch": 2, "step": 2})
    monkeypatch.undo()
    assert (tmp_path / rec.METRICS).read_bytes() == before


def test_write_atomic_failure_names_the_target_and_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "status.json"
    rec.write_atomic(path, "old")

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(rec.RecordWriteError) as e:
        rec.write_atomic(path, "new")
    assert str(e.value) == f"cannot write {path}: No space left on device"
    monkeypatch.undo()
    assert path.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == [
        "status.json"
    ]


# ------------------------------------------------------------------------------ run directories
def _fake_run(d: Path, status: str) -> Path:
    (d / ".hydra").mkdir(parents=True)
    (d / ".hydra" / "config.yaml").write_text("seed: 0\n")
    rec.write_status(d, status)
    rec.save_checkpoint(d / rec.CHECKPOINTS / rec.LAST, {"a": np.zeros(2)}, {"epoch": 1})
    return d


def _snapshot(d: Path) -> dict:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


@contextmanager
def lock_held_elsewhere(d: Path):
    """Another live process holding `d`'s lock; yields its pid."""
    code = (
        f"from neurons import rundir; import time; rundir.acquire({str(d)!r}); "
        "print('ok', flush=True); time.sleep(60)"
    )
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ok"
        yield holder.pid
    finally:
        holder.kill()
        holder.wait()


def test_lock_refuses_a_live_owner_and_takes_over_a_stale_one(tmp_path):
    d = tmp_path / "run"
    with lock_held_elsewhere(d) as pid:
        assert rundir.lock_owner(d) == pid
        with pytest.raises(rundir.RunDirError, match=f"in use by another live run \\(pid {pid}"):
            rundir.acquire(d)
    assert (d / rundir.LOCK).exists() and rundir.lock_owner(d) is None  # stale: owner gone
    rundir.acquire(d)
    assert json.loads((d / rundir.LOCK).read_text())["pid"] == os.getpid()
    rundir.release(d)
    assert not (d / rundir.LOCK).exists()


def test_a_running_status_without_a_live_owner_reads_as_killed(tmp_path):
    d = _fake_run(tmp_path / "r", "running")
    (d / rundir.LOCK).write_text(json.dumps({"pid": 999999}))
    assert rundir.inspect(d).status == "killed"
    assert rundir.resumable(d) == (True, "killed")


@pytest.mark.parametrize("status", ["completed", "running-live", "sweep", "missing", "plain"])
def test_resume_refuses_anything_but_an_interrupted_or_failed_run(tmp_path, status):
    d = tmp_path / "r"
    if status == "completed":
        _fake_run(d, "completed")
    elif status == "running-live":
        _fake_run(d, "running")
    elif status == "sweep":
        d.mkdir()
        (d / "multirun.yaml").write_text("hydra: {}\n")
        (d / "0_job").mkdir()
    elif status == "plain":
        d.mkdir()
        (d / "notes.txt").write_text("mine")
    before = _snapshot(d) if d.exists() else None
    with lock_held_elsewhere(d) if status == "running-live" else nullcontext():
        with pytest.raises(rundir.RunDirError) as e:
            rundir.check_resumable(d)
    msg = str(e.value)
    assert f"resume={d}" in msg and "\n" not in msg
    want = {
        "completed": "status is 'completed'",
        "running-live": "still running",
        "sweep": "is a sweep directory",
        "missing": "no such directory",
        "plain": "not a run directory",
    }[status]
    assert want in msg
    if status == "running-live":
        return  # (the holder's lock file changes)
    assert (_snapshot(d) if d.exists() else None) == before  # touched nothing


def test_a_fresh_run_refuses_another_runs_records(tmp_path):
    d = _fake_run(tmp_path / "r", "failed")
    with pytest.raises(rundir.RunDirError, match="already holds another run.*resume="):
        rundir.check_fresh(d)
    assert rundir.check_fresh(tmp_path / "new").kind == "missing"


def test_resume_config_names_the_differing_keys_and_allows_extending_epochs(tmp_path):
    saved = compose("dataset=iris", "train.epochs=3")
    given = compose("dataset=iris", "train.epochs=3", "optimizer.lr=0.5", "arch=mlp_skip")
    with pytest.raises(rundir.RunDirError) as e:
        rundir.resume_config(saved, given, ["resume=x", "optimizer.lr=0.5", "arch=mlp_skip"])
    assert "optimizer.lr (0.001 -> 0.5)" in str(e.value) and "arch (" in str(e.value)
    longer = compose("dataset=iris", "train.epochs=9")
    cfg = rundir.resume_config(saved, longer, ["resume=x", "train.epochs=9"])
    assert cfg.train.epochs == 9 and cfg.resume is None
    same = rundir.resume_config(saved, saved, ["resume=x", "train.epochs=3"])
    assert same.train.epochs == 3
    cosine = compose("dataset=iris", "train.epochs=3", "train.schedule.name=cosine")
    with pytest.raises(rundir.RunDirError, match="cosine schedule depends on it"):
        rundir.resume_config(cosine, longer, ["train.epochs=9"])


def test_stale_temp_files_are_removed(tmp_path):
    ck = tmp_path / rec.CHECKPOINTS
    ck.mkdir()
    for name in (".last.npz.ab12cd", ".metrics.csv.x1", "last.npz", "keep.txt"):
        (ck if "npz" in name else tmp_path).joinpath(name).write_bytes(b"x")
    removed = {p.name for p in rundir.clean_stale_temps(tmp_path)}
    assert removed == {".last.npz.ab12cd", ".metrics.csv.x1"}
    assert (ck / "last.npz").exists() and (tmp_path / "keep.txt").exists()


# ------------------------------------------------------------------------------ signals
def test_a_signal_inside_a_numba_call_is_an_interrupt(tmp_path, monkeypatch):
    """A SIGTERM landing in a numba call surfaces as SystemError with the interrupt as its
    context; the run is recorded as interrupted and the interrupt re-raised."""
    import neurons.run as run

    def fit_hit_by_signal(*a, **k):
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            signal.pause()
        except KeyboardInterrupt as e:
            msg = "<built-in function x> returned a result with an exception set"
            raise SystemError(msg) from e

    monkeypatch.setattr(run, "fit", fit_hit_by_signal)
    cfg = compose("dataset=xor", "train.epochs=1")
    with pytest.raises(KeyboardInterrupt):
        run.run_job(cfg, tmp_path / "r", progress=False)
    st_ = json.loads((tmp_path / "r" / rec.STATUS).read_text())
    assert st_["status"] == "interrupted" and st_["error"] == "interrupted by SIGTERM"
    assert not (tmp_path / "r" / rundir.LOCK).exists()


def test_enospc_writing_a_checkpoint_ends_failed_in_one_line(tmp_path, monkeypatch, caplog):
    """An injected ENOSPC on the first `best.npz` write: status `failed` naming the file and the
    cause, no traceback, the earlier `last.npz` still loadable."""
    import neurons.run as run

    real = os.fsync

    def fsync(fd):
        if "best.npz" in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    d = tmp_path / "r"
    with np.errstate(all="ignore"):
        ok = run.run_job(compose("dataset=xor", "train.epochs=3"), d, progress=False)
    monkeypatch.undo()
    assert ok is False
    st_ = json.loads((d / rec.STATUS).read_text())
    assert st_["status"] == "failed"
    assert st_["error"] == f"cannot write {d / 'checkpoints' / 'best.npz'}: No space left on device"
    assert "Traceback" not in caplog.text
    arrays, meta = rec.load_checkpoint(d / "checkpoints" / "last.npz")
    assert not rec.nonfinite_arrays(arrays)
    assert not [p for p in (d / "checkpoints").iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("min_seconds", [0, 1e9])
def test_checkpoints_follow_the_cadence_and_best_agrees_with_last(
    tmp_path, monkeypatch, min_seconds
):
    """`train.checkpoint_min_seconds=0`: `last` (and the metrics fsync) every epoch; a cadence
    longer than the run: `last` at epoch 0 and the end only, the pending `best` written with it,
    and the metrics fsynced once. Either way `best.npz` holds the epoch `last` names as best."""
    import neurons.run as run

    written, synced = [], []
    save, fsync = rec.save_checkpoint, os.fsync

    def spy_save(path, arrays, meta, data=None):
        written.append((Path(path).name, meta["epoch"]))
        save(path, arrays, meta, data)

    def spy_fsync(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        fsync(fd)

    monkeypatch.setattr(rec, "save_checkpoint", spy_save)
    monkeypatch.setattr(os, "fsync", spy_fsync)
    d = tmp_path / "r"
    cfg = compose("dataset=xor", "train.epochs=5", f"train.checkpoint_min_seconds={min_seconds}")
    assert run.run_job(cfg, d, progress=False)
    monkeypatch.undo()
    last = [e for name, e in written if name == "last.npz"]
    metrics_syncs = sum(s.endswith("/metrics.csv") for s in synced)
    if min_seconds == 0:
        assert sorted(set(last)) == [0, 1, 2, 3, 4, 5] and metrics_syncs == 5
    else:
        assert last == [0, 5] and metrics_syncs == 1
        assert len([n for n, _ in written if n == "best.npz"]) == 1
    _, last_meta = rec.load_run_checkpoint(d / "checkpoints" / "last.npz")
    _, best_meta = rec.load_run_checkpoint(d / "checkpoints" / "best.npz")
    assert best_meta["epoch"] == last_meta["train_state"]["best_epoch"] >= 1
    assert [r["epoch"] for r in rec.read_metrics(d)] == [1, 2, 3, 4, 5]


def test_a_disk_turning_read_only_mid_run_says_so_in_one_line(tmp_path, monkeypatch, capsys):
    """Every write fails with EROFS after the first epoch: the status cannot be recorded, so
    one line on stderr names the file and the cause; the files on disk stay valid."""
    import neurons.run as run

    real, calls = os.fsync, []

    def fsync(fd):
        calls.append(os.readlink(f"/proc/self/fd/{fd}"))
        if any(c.endswith("metrics.csv") for c in calls[:-1]):  # after the first epoch's row
            raise OSError(errno.EROFS, "Read-only file system")
        return real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    d = tmp_path / "r"
    with np.errstate(all="ignore"):
        cfg = compose("dataset=xor", "train.epochs=3", "train.checkpoint_min_seconds=0")
        ok = run.run_job(cfg, d, progress=False)
    monkeypatch.undo()
    assert ok is False
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"cannot record status 'failed' in {d / 'status.json'}" in err[0]
    assert "Read-only file system" in err[0]
    assert json.loads((d / rec.STATUS).read_text())["status"] == "running"  # as last written
    assert [r["epoch"] for r in rec.read_metrics(d)] == [1]
    arrays, _ = rec.load_checkpoint(d / "checkpoints" / "last.npz")
    assert not rec.nonfinite_arrays(arrays)
    assert rundir.inspect(d).status == "killed"  # a resume sees the owner gone


# ------------------------------------------------------------------------------ config preflight
@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["arch.width=2.5"], "arch.width: expected an integer >= 1, found 2.5"),
        (["dataset.split_seed=-1"], "dataset.split_seed: expected an integer >= 0"),
        (["train.lsuv_batch=0", "arch.init=lsuv"], "train.lsuv_batch: expected an integer >= 1"),
        (["arch=mlp_looping", "arch.passes=abc"], "arch.passes: expected an integer >= 1"),
        (["+arch.layers.0.units=2.5"], "arch.layers[0].units: expected an integer, found 2.5"),
        (["+arch.layers.0.activation_param=x"], "arch.layers[0].activation_param: expected a"),
        (["optimizer=sgdm", "optimizer.dampening=2"], "optimizer.dampening: expected"),
        (["train.schedule.name=step", "train.schedule.gamma=-1"], "train.schedule.gamma"),
        (["arch.width=100000000"], "arch.layers[1] with 10,000,000,100,000,000"),
        (["arch=cnn_plain", "dataset=iris"], "arch.layers[0]: conv expects a (C, H, W) input"),
    ],
)
def test_preflight_names_the_key_before_any_data(overrides, message, monkeypatch):
    import neurons.config

    def no_data(*a, **k):
        raise AssertionError("preflight must not load data")

    monkeypatch.setattr(neurons.config, "load_dataset", no_data)
    if overrides[0].startswith("+arch.layers"):
        cfg = compose("dataset=iris")
        key, value = overrides[0][len("+arch.layers.0.") :].split("=")
        OmegaConf.set_struct(cfg, False)
        cfg.arch.layers[0][key] = 2.5 if value == "2.5" else value
    else:
        cfg = compose(*overrides)
    with pytest.raises((ConfigError, BuildError, DatasetError)) as e:
        preflight(cfg)
    assert message in str(e.value)


def test_memory_estimate_uses_the_available_memory(monkeypatch):
    import neurons.preflight as pf

    cfg = compose("dataset=iris", "arch.width=2000")
    pf.preflight(cfg)  # ~8M parameters: fits
    monkeypatch.setattr(pf, "available_memory", lambda: 100 * 2**20)
    with pytest.raises(ConfigError, match=r"needs about .* but only 100.0 MiB"):
        pf.preflight(cfg)


# ------------------------------------------------------------------------------ readers
def idx_header(code: int, dims: tuple[int, ...]) -> bytes:
    return bytes([0, 0, code, len(dims)]) + b"".join(struct.pack(">I", d) for d in dims)


def test_idx_header_whose_size_overflows_int64(tmp_path):
    path = tmp_path / "x.idx"
    path.write_bytes(idx_header(0x0E, (0xFFFFFFFF,) * 4) + b"\0" * 64)
    with pytest.raises(DatasetError, match="promises .* bytes of data, more than"):
        read_idx(path)
    path.write_bytes(gzip.compress(idx_header(0x08, (1000, 1000, 100)) + b"\0" * 64))
    with pytest.raises(DatasetError, match="more than a .*-byte gzip file can hold"):
        read_idx(path)


def test_gzip_bomb_under_a_memory_ceiling(tmp_path):
    """1 GiB of zeros behind a header promising 60000x28x28 bytes, read in a process limited
    to 1 GiB of address space: refused with the project's error, not a MemoryError."""
    path = tmp_path / "bomb.gz"
    member = gzip.compress(b"\0" * (1 << 24), compresslevel=9)  # a gzip file may have members
    path.write_bytes(gzip.compress(idx_header(0x08, (60000, 28, 28))) + member * 64)
    assert path.stat().st_size < 8 * 2**20
    code = textwrap.dedent(f"""
        import resource
        from neurons.data import DatasetError, read_idx
        resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
        try:
            read_idx({str(path)!r})
        except DatasetError as e:
            print("refused:", e)
    """)
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert p.returncode == 0, p.stderr
    assert "refused:" in p.stdout and "unexpected bytes after the IDX data" in p.stdout


def test_csv_value_beyond_float32_names_file_line_and_column(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("a,b,y,s\n1,2,0,Train\n3,4,1,Train\n5,1e39,0,Test\n")
    with pytest.raises(DatasetError) as e:
        read_csv_dataset(path, features=["a", "b"], class_column="y", split_column="s")
    assert str(e.value).startswith(f"{path}: value 1e+39 at line 4, column 'b'")
    assert "float32" in str(e.value)


def test_csv_reading_has_bounded_memory_overhead(tmp_path):
    """A ~24 MB numeric CSV: the reader's peak resident memory stays within 3x the file."""
    rng = np.random.default_rng(0)
    path = tmp_path / "big.csv"
    data = rng.normal(size=(200_000, 12))
    with path.open("w") as f:
        f.write(",".join(f"c{i}" for i in range(12)) + ",label\n")
        lines = "\n".join(",".join(f"{v:.6f}" for v in row) + ",x" for row in data[:50_000])
        for _ in range(4):
            f.write(lines + "\n")
    size = path.stat().st_size
    code = textwrap.dedent(f"""
        import resource
        import pandas, numpy
        from neurons.data import read_csv_dataset
        def rss():
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        base = rss()
        t = read_csv_dataset({str(path)!r}, class_column="label")
        print(t.x.shape[0], rss() - base)
    """)
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    rows, peak = map(int, p.stdout.split())
    assert rows == 200_000
    assert peak < 3 * size, f"peak {peak / 2**20:.0f} MiB for a {size / 2**20:.0f} MiB file"


_FUZZ = settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@st.composite
def idx_files(draw):
    dims = draw(st.lists(st.integers(0, 6), min_size=0, max_size=4))
    code = draw(st.sampled_from([0x08, 0x09, 0x0B, 0x0C, 0x0D, 0x0E, 0x00, 0x07]))
    body = draw(st.binary(max_size=400))
    data = bytearray(idx_header(code, tuple(dims)) + body)
    for _ in range(draw(st.integers(0, 3))):  # flip bytes, incl. in the header
        if data:
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    data = bytes(data[: draw(st.integers(0, len(data)))])
    return gzip.compress(data) if draw(st.booleans()) else data


@_FUZZ
@given(blob=idx_files())
def test_fuzz_idx_reader_only_raises_dataset_error(tmp_path, blob):
    path = tmp_path / "f.idx"
    path.write_bytes(blob)
    try:
        arr = read_idx(path)
    except DatasetError as e:
        assert str(e).startswith(str(path)) and "\n" not in str(e)
    else:
        assert arr.ndim >= 1


_CELL = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers(-(10**40), 10**40).map(str),
    st.text(alphabet=' ,"\n\r\t;ab.-+e0123456789', max_size=6),
    st.sampled_from(["", "nan", "inf", "1e39", "-1e39", "Train", "Test", "Val"]),
)


@_FUZZ
@given(
    header=st.lists(st.sampled_from(["a", "b", "y", "s", " a", "b "]), min_size=0, max_size=4),
    rows=st.lists(st.lists(_CELL, min_size=0, max_size=5), max_size=6),
    junk=st.binary(max_size=8),
)
def test_fuzz_csv_reader_only_raises_dataset_error(tmp_path, header, rows, junk):
    path = tmp_path / "f.csv"
    text = ",".join(header) + "\n" + "\n".join(",".join(r) for r in rows)
    path.write_bytes(text.encode() + junk)
    try:
        t = read_csv_dataset(path, exclude=["y", "s"])
    except DatasetError as e:
        assert str(e).startswith(str(path))
    else:
        assert t.x.dtype == np.float32 and np.isfinite(t.x).all()


def test_signals_held_also_defers_a_signal_another_thread_takes():
    """A process signal may be taken by any thread that does not block it (TensorBoard's and
    MLflow's writers run some); its Python handler would then run in the main thread in the
    middle of the held block. It runs once, after the block."""
    import os
    import signal
    import threading
    import time

    from neurons.runtime import signals_held

    got: list[int] = []
    old = signal.signal(signal.SIGTERM, lambda s, f: got.append(s))
    try:

        def unblocked_thread() -> None:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGTERM])
            time.sleep(0.3)

        with signals_held():
            t = threading.Thread(target=unblocked_thread)
            t.start()
            time.sleep(0.05)
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.2)
            inside = list(got)
        t.join()
        assert inside == []
        assert got == [signal.SIGTERM]
    finally:
        signal.signal(signal.SIGTERM, old)
