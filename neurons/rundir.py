"""Run directories: who may write one, what state it is in, and whether it may be resumed.

A run holds an exclusive `flock` on `run.lock` (the file records the owner's pid and host), so two
live processes never share a directory, and a lock file left by a killed process is recognised as
stale. `inspect` reads a directory without writing anything; `check_fresh`, `check_resumable` and
`resume_config` turn what it finds into refusals. Used by the CLI guard, `run_job` and sweeps.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from neurons import record as rec

log = logging.getLogger("neurons")

LOCK = "run.lock"
RESERVE = ".space-reserve"  # freed to record the final status when the disk is full
RESERVE_BYTES = 64 * 1024
RESUMABLE = ("interrupted", "failed", "killed")
# Settings a resume may change: they cannot change the numbers of the epochs already run.
_ABSENT = object()
RESUME_SAFE = ("train.progress", "train.checkpoint_every", "train.checkpoint_min_seconds")
_ATOMIC_TARGETS = (rec.STATUS, rec.METRICS, rec.SUMMARY, rec.LAST, rec.BEST)


class RunDirError(Exception):
    """A run directory cannot be used as asked; the one-line message names it and why."""


@dataclass
class DirState:
    """What `inspect` found; `status` is `killed` for a `running` run whose process is gone."""

    path: Path
    kind: str  # missing | empty | run | sweep | other
    status: str | None = None  # running | completed | failed | interrupted | killed | None
    owner: int | None = None  # pid of the live process holding the lock
    records: list[str] = field(default_factory=list)  # run records present


def _read_lock(fd: int) -> dict[str, Any]:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        return json.loads(os.read(fd, 4096) or b"{}")
    except (OSError, ValueError):
        return {}


_HELD: dict[Path, int] = {}  # resolved run dir -> fd of the lock this process holds
_NOTES: dict[Path, list[str]] = {}  # resolved run dir -> notes for the run's log


def lock_owner(run_dir: Path) -> int | None:
    """The pid of the live process holding `run_dir`'s lock, or None (no lock or a stale one)."""
    run_dir = Path(run_dir)
    if run_dir.resolve() in _HELD:
        return os.getpid()
    path = run_dir / LOCK
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return int(_read_lock(fd).get("pid") or -1)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def acquire(run_dir: Path) -> None:
    """Create `run_dir` if needed and take its lock for this process (idempotent).

    Raises RunDirError naming the live owner's pid if another process holds it, or the cause if
    the lock file cannot be written (e.g. a read-only directory). A stale lock is taken over.
    """
    run_dir = Path(run_dir)
    path = run_dir / LOCK
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        key = run_dir.resolve()
        if key in _HELD:
            return
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                pid = _read_lock(fd).get("pid")
                os.close(fd)
                raise RunDirError(
                    f"{run_dir}: in use by another live run (pid {pid}, lock {path}); "
                    "choose another hydra.run.dir or wait for it to finish"
                ) from None
            try:  # the file may have been unlinked by a releasing owner: lock the current one
                same = os.path.samestat(os.fstat(fd), os.stat(path))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        old = _read_lock(fd)
        if old.get("pid"):
            _NOTES.setdefault(key, []).append(
                f"{run_dir}: stale lock of pid {old.get('pid')} ({old.get('host')}) taken over; "
                "that process is gone"
            )
        body = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(body).encode(), 0)
    except OSError as e:
        raise RunDirError(f"{path}: cannot take the run lock ({e.strerror or e})") from None
    _HELD[key] = fd


def pop_notes(run_dir: Path) -> list[str]:
    """What `acquire` found worth saying (a stale lock taken over), once, for the run's log."""
    return _NOTES.pop(Path(run_dir).resolve(), [])


def release(run_dir: Path) -> None:
    """Drop this process's lock on `run_dir` (removing the lock file); a no-op if not held."""
    fd = _HELD.pop(Path(run_dir).resolve(), None)
    if fd is None:
        return
    try:
        (Path(run_dir) / LOCK).unlink(missing_ok=True)
    except OSError:
        pass  # a read-only dir: the lock file stays and reads as stale once fd closes
    os.close(fd)


def inspect(run_dir: Path) -> DirState:
    """Classify `run_dir` without writing anything."""
    run_dir = Path(run_dir)
    if not run_dir.exists():
        return DirState(run_dir, "missing")
    if not run_dir.is_dir():
        return DirState(run_dir, "other")
    if (run_dir / "multirun.yaml").exists():
        return DirState(run_dir, "sweep")
    names = [
        n
        for n in (".hydra", rec.STATUS, rec.METRICS, rec.SUMMARY, rec.CHECKPOINTS, rec.LOG)
        if (run_dir / n).exists()
    ]
    owner = lock_owner(run_dir)
    status = None
    if (run_dir / rec.STATUS).exists():
        try:
            status = str(rec.read_json(run_dir / rec.STATUS).get("status"))
        except (OSError, ValueError, AttributeError):
            status = "unreadable"
        if status == "running" and owner in (None, os.getpid()):
            status = "killed"  # its process is gone (this process has not written a status yet)
    others = [p.name for p in run_dir.iterdir() if p.name not in (*names, LOCK, RESERVE)]
    if not names:
        return DirState(run_dir, "other" if others else "empty", None, owner)
    return DirState(run_dir, "run", status, owner, names)


def check_fresh(run_dir: Path, *, hydra_written: bool = False) -> DirState:
    """Refuse a directory that holds another run's records or is locked by a live process.

    `hydra_written`: Hydra has already written this run's `.hydra/` and `run.log` (so those do
    not count as another run's records).
    """
    st = inspect(run_dir)
    if st.owner is not None and st.owner != os.getpid():
        raise RunDirError(f"{run_dir}: in use by another live run (pid {st.owner})")
    ignore = {".hydra", rec.LOG} if hydra_written else set()
    found = [n for n in st.records if n not in ignore]
    if st.kind == "sweep":
        raise RunDirError(f"{run_dir}: is a sweep directory; a run needs its own directory")
    if found:
        what = f"status {st.status!r}" if st.status else "records"
        raise RunDirError(
            f"{run_dir}: already holds another run ({what}: {', '.join(found)}); use a new "
            f"hydra.run.dir, or resume={run_dir} to continue that run"
        )
    return st


def check_resumable(run_dir: Path) -> DirState:
    """Refuse (touching nothing) anything but an interrupted, failed or killed run directory."""
    run_dir = Path(run_dir)
    st = inspect(run_dir)
    if st.kind == "missing":
        raise RunDirError(f"resume={run_dir}: no such directory")
    if st.kind == "sweep":
        raise RunDirError(
            f"resume={run_dir}: is a sweep directory, not a run; resume one of its job "
            "directories, or re-run the sweep"
        )
    if st.kind != "run" or not (run_dir / ".hydra" / "config.yaml").exists():
        raise RunDirError(f"resume={run_dir}: not a run directory (no .hydra/config.yaml)")
    if st.owner is not None and st.owner != os.getpid():
        raise RunDirError(f"resume={run_dir}: still running (pid {st.owner} holds its lock)")
    if st.status not in RESUMABLE:
        raise RunDirError(
            f"resume={run_dir}: status is {st.status!r}; only an interrupted or failed run "
            "can be resumed"
        )
    ck = run_dir / rec.CHECKPOINTS
    if not any((ck / n).exists() for n in (rec.LAST, rec.BEST)):
        raise RunDirError(f"resume={run_dir}: no checkpoint in {ck} to resume from")
    return st


def resumable(run_dir: Path) -> tuple[bool, str]:
    """(True, status) if `run_dir` can be resumed, else (False, the reason); writes nothing."""
    try:
        return True, str(check_resumable(run_dir).status)
    except RunDirError as e:
        return False, str(e)


def _override_keys(overrides: list[str]) -> list[str]:
    keys = []
    for o in overrides:
        key = o.split("=", 1)[0].lstrip("+~").strip()
        key = key.split("@", 1)[0].replace("/", ".")
        if key and key != "resume" and not key.startswith("hydra"):
            keys.append(key)
    return keys


def _value(cfg: DictConfig, key: str) -> Any:
    node = OmegaConf.select(cfg, key, default=None)
    if isinstance(node, DictConfig) or OmegaConf.is_list(node):
        return OmegaConf.to_container(node, resolve=True)
    return node


def resume_config(saved: DictConfig, given: DictConfig, overrides: list[str]) -> DictConfig:
    """The config a resume runs: the saved one, plus only the overrides that cannot change results.

    `train.epochs` may grow (extending the run) unless the learning-rate schedule depends on it;
    `train.progress`, `train.checkpoint_every` and `train.checkpoint_min_seconds` may change.
    Any other override that differs from the saved value raises RunDirError naming every
    differing key.
    """
    cfg = saved.copy()
    changed: list[str] = []
    notes: list[str] = []
    for key in RESUME_SAFE:  # a run saved before such a key existed takes today's value
        if OmegaConf.select(saved, key, default=_ABSENT) is _ABSENT:
            OmegaConf.update(cfg, key, OmegaConf.select(given, key), merge=False)
    for key in _override_keys(overrides):
        old, new = _value(saved, key), _value(given, key)
        if old == new:
            continue
        if key in RESUME_SAFE:
            OmegaConf.update(cfg, key, new, merge=False)
            notes.append(f"{key} {old} -> {new}")
        elif key == "train.epochs" and isinstance(new, int) and isinstance(old, int) and new > old:
            if _value(saved, "train.schedule.name") == "cosine":
                changed.append(f"train.epochs ({old} -> {new}; the cosine schedule depends on it)")
                continue
            OmegaConf.update(cfg, key, new, merge=False)
            notes.append(f"train.epochs extended {old} -> {new}")
        else:
            changed.append(f"{key} ({old!r} -> {new!r})")
    if changed:
        raise RunDirError(
            "resume: refusing overrides that change the experiment: "
            + ", ".join(changed)
            + "; resume with the run's own settings (only train.epochs may grow) or start anew"
        )
    for n in notes:
        log.info("resume: %s (does not change the epochs already run)", n)
    cfg.resume = None
    return cfg


def clean_stale_temps(run_dir: Path) -> list[Path]:
    """Remove temp files left by atomic writes that a kill interrupted; returns what was removed."""
    run_dir = Path(run_dir)
    removed = []
    for folder in (run_dir, run_dir / rec.CHECKPOINTS):
        if not folder.is_dir():
            continue
        for p in folder.iterdir():
            stale = any(p.name.startswith(f".{t}.") for t in _ATOMIC_TARGETS)
            if (stale or p.name == RESERVE) and p.is_file():
                p.unlink(missing_ok=True)
                removed.append(p)
    for p in removed:
        if p.name != RESERVE:
            log.info("removed a stale temp file left by an interrupted write: %s", p)
    return removed


def reserve_space(run_dir: Path) -> None:
    """Set aside a little disk space so the final status can still be written on a full disk."""
    try:
        with open(Path(run_dir) / RESERVE, "wb") as f:
            f.write(b"\0" * RESERVE_BYTES)
            f.flush()
            os.fsync(f.fileno())
    except OSError:
        (Path(run_dir) / RESERVE).unlink(missing_ok=True)


def free_reserve(run_dir: Path) -> None:
    (Path(run_dir) / RESERVE).unlink(missing_ok=True)


def write_final_status(run_dir: Path, status: str, error: str | None = None, **extra: Any) -> bool:
    """Write STATUS, freeing the space reserve and retrying on a full disk; False if impossible."""
    for attempt in range(2):
        try:
            rec.write_status(run_dir, status, error, **extra)
            return True
        except OSError as e:
            if attempt == 0 and e.errno in (errno.ENOSPC, errno.EDQUOT):
                free_reserve(run_dir)
                continue
            return False
    return False
