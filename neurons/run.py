"""One run, start to finish: build from config, fit, record, checkpoint, probe, resume.

`run_job(cfg, run_dir)` never raises for a failing run: it writes status `failed` (or
`interrupted` on Ctrl-C/SIGTERM, then re-raises so a sweep stops) and returns False, so one bad
job in a sweep leaves the others running. Hydra itself is only imported by `neurons.__main__`
(and its callback `neurons.guard`).
"""

from __future__ import annotations

import logging
import math
import platform
import signal
import sys
import time
import traceback
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from neurons import __version__, debug, rundir
from neurons import record as rec
from neurons.config import ConfigError, Experiment, build_experiment, build_loggers
from neurons.data import DatasetError
from neurons.layers import BuildError
from neurons.runtime import configure, signals_held
from neurons.train import NonFiniteLoss, TrainState, evaluate, fit

log = logging.getLogger("neurons")


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C."""


_caught: list[int] = []  # signals the handler has seen in this process (newest last)
_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def _on_signal(signum: int, frame: Any) -> None:
    _caught.append(signum)
    if signum == signal.SIGINT:
        raise KeyboardInterrupt(f"signal {signum}")
    raise Terminated(f"signal {signum}")


@contextmanager
def signals_as_interrupt():
    """SIGTERM raises Terminated and SIGINT KeyboardInterrupt inside the block (main thread)."""
    try:
        old = {s: signal.signal(s, _on_signal) for s in _SIGNALS}
    except ValueError:  # not the main thread (e.g. some launchers): leave signals alone
        yield
        return
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _interrupt_of(e: BaseException, n_seen: int) -> KeyboardInterrupt | None:
    """The interrupt behind `e`: itself, one in its cause/context chain (a signal landing in a
    numba call surfaces as `SystemError ... returned a result with an exception set`), or a
    signal the handler saw since the run started."""
    seen: set[int] = set()
    x: BaseException | None = e
    while x is not None and id(x) not in seen:
        if isinstance(x, KeyboardInterrupt):
            return x
        seen.add(id(x))
        x = x.__cause__ or x.__context__
    if len(_caught) > n_seen:
        sig = _caught[-1]
        return Terminated(f"signal {sig}") if sig == signal.SIGTERM else KeyboardInterrupt()
    return None


def _versions() -> dict[str, str]:
    import hydra
    import numba
    import omegaconf

    return {
        "neurons": __version__,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "numba": numba.__version__,
        "hydra": hydra.__version__,
        "omegaconf": omegaconf.__version__,
    }


class _Recorder:
    """The fit callback: metrics rows, in-memory snapshot, checkpoints, log lines."""

    def __init__(self, exp: Experiment, run_dir: Path, cfg: DictConfig, rows: list[dict]) -> None:
        self.exp, self.run_dir, self.cfg, self.rows = exp, run_dir, cfg, rows
        self.ckpt_dir = run_dir / rec.CHECKPOINTS
        self.wall0 = rows[-1]["wall"] if rows else 0.0
        self.snapshot: tuple[dict, dict] | None = None
        self._bytes: bytes | None = None  # the snapshot serialised (see snapshot_bytes)
        self.every = int(cfg.train.checkpoint_every)
        # at most one flush (metrics fsync, pending `best`, `last`) per this many seconds
        self.min_seconds = float(cfg.train.checkpoint_min_seconds)
        self.flushed_at = -math.inf  # time.monotonic() of the last flush
        self.unsynced = False  # metrics rows appended since the last fsync
        self.best: tuple[dict, dict] | None = None  # the best epoch's snapshot, not yet on disk
        self.checkpoints = True  # False under a debug preset with debug.checkpoints=false
        self.total = int(cfg.train.epochs)  # read once: a DictConfig lookup costs ~20 us

    def take_snapshot(self, state: TrainState) -> None:
        net, opt = self.exp.network, self.exp.optimizer
        self.snapshot = rec.run_checkpoint(
            net.state_dict(),
            opt.state_dict(),
            state.epoch,
            state.to_dict(),
            self.exp.rng.bit_generator.state,
        )
        self._bytes = None

    def snapshot_bytes(self) -> bytes:
        """The snapshot serialised once, however many checkpoints (best, last) it becomes."""
        if self._bytes is None:
            self._bytes = rec.checkpoint_bytes(*self.snapshot)  # type: ignore[misc]
        return self._bytes

    def write_last(self) -> None:
        """Flush: fsync the metrics rows, write a pending `best`, then `last` from the snapshot.

        Metrics first and `best` before `last`, so that whatever a crash leaves on disk agrees:
        `last`'s train state never names a best epoch newer than `best.npz`.
        """
        self.flushed_at = time.monotonic()
        if self.unsynced:
            rec.sync_metrics(self.run_dir)
            self.unsynced = False
        if self.snapshot is None or not self.checkpoints:
            return
        if self.best is not None:
            data = self.snapshot_bytes() if self.best is self.snapshot else None
            rec.save_checkpoint(self.ckpt_dir / rec.BEST, *self.best, data)
            self.best = None
        bad = rec.nonfinite_arrays(self.snapshot[0])
        if bad:  # never replace a good checkpoint with one holding NaN/Inf
            log.error("not saving a checkpoint with non-finite %s", ", ".join(bad[:3]))
            return
        rec.save_checkpoint(self.ckpt_dir / rec.LAST, *self.snapshot, self.snapshot_bytes())

    def __call__(self, state: TrainState, row: dict, improved: bool) -> None:
        self.wall0 += row["seconds"]
        row = dict(row, wall=self.wall0)
        self.rows.append(row)
        rec.append_metrics(self.run_dir, row, sync=False)  # fsynced by the next flush
        self.unsynced = True
        self.take_snapshot(state)
        if improved and self.checkpoints:  # written by the next flush (at the latest, the end)
            self.best = self.snapshot
        due = time.monotonic() - self.flushed_at >= self.min_seconds
        if self.every and state.epoch % self.every == 0 and due:
            self.write_last()
        acc = "" if np.isnan(row["train_acc"]) else f" train_acc {row['train_acc']:.4f}"
        vacc = "" if np.isnan(row["val_acc"]) else f" val_acc {row['val_acc']:.4f}"
        log.info(
            "epoch %d/%d  train_loss %.5g%s  val_loss %.5g%s  lr %.3g  %.2fs",
            state.epoch,
            self.total,
            row["train_loss"],
            acc,
            row["val_loss"],
            vacc,
            row["lr"],
            row["seconds"],
        )


def _newest_checkpoint(run_dir: Path) -> tuple[Path, dict, dict]:
    """The valid checkpoint with most epochs among `last` and `best`; says what was skipped."""
    ck = run_dir / rec.CHECKPOINTS
    found, problems = [], []
    for name in (rec.LAST, rec.BEST):
        if not (ck / name).exists():
            continue
        try:
            found.append((ck / name, *rec.load_run_checkpoint(ck / name)))
        except rec.CheckpointError as e:
            problems.append(str(e))
    if not found:
        raise rec.CheckpointError(
            "resume: no valid checkpoint: " + ("; ".join(problems) or f"none in {ck}")
        )
    path, arrays, meta = max(found, key=lambda f: int(f[2]["epoch"]))
    for p in problems:
        log.warning("%s; falling back to %s (epoch %d)", p, path, int(meta["epoch"]))
    return path, arrays, meta


def _restore(exp: Experiment, run_dir: Path) -> tuple[TrainState, list[dict]]:
    """Load the newest valid checkpoint into `exp`; returns the train state and metrics rows."""
    path, arrays, meta = _newest_checkpoint(run_dir)
    try:
        exp.network.load_state_dict(rec.model_state(arrays))
        exp.optimizer.load_state_dict(rec.optimizer_state(arrays))
        exp.rng.bit_generator.state = meta["rng"]
        ts = meta["train_state"]
        state = TrainState(
            epoch=ts["epoch"],
            step=ts["step"],
            best_value=float("nan") if ts["best_value"] is None else ts["best_value"],
            best_epoch=ts["best_epoch"],
            wait=ts["wait"],
            stopped_early=ts["stopped_early"],
        )
    except (KeyError, ValueError, TypeError) as e:
        raise rec.CheckpointError(f"{path}: does not match this run's network ({e})") from None
    if state.epoch > exp.train.epochs:
        raise ConfigError(
            f"resume: {path} already holds {state.epoch} epochs, more than train.epochs="
            f"{exp.train.epochs}"
        )
    es = exp.train.early_stopping
    best = run_dir / rec.CHECKPOINTS / rec.BEST
    if es is not None and es.restore_best and best.exists():
        try:
            b, _ = rec.load_run_checkpoint(best)
            state.best_state = rec.model_state(b)
        except rec.CheckpointError as e:
            log.warning("%s; restore_best will use the best epoch from here on", e)
    rows = [r for r in rec.read_metrics(run_dir) if r["epoch"] <= state.epoch]
    return state, rows


def _summary(
    exp: Experiment,
    cfg: DictConfig,
    state: TrainState,
    rows: list[dict],
    threads: dict,
    wall: float,
) -> dict[str, Any]:
    ds, net = exp.dataset, exp.network
    x_eval, y_eval, split = ds.x_val, ds.y_val, "val"
    if x_eval is None or len(x_eval) == 0:
        x_eval, y_eval, split = ds.x_test, ds.y_test, "test"
    probes: dict[str, Any] = {"no_feedback": None, "no_skip": None, "split": split}
    kw = {"classification": exp.classification, "batch_size": exp.train.eval_batch_size}
    if x_eval is not None and len(x_eval):
        if net.has_recurrence():
            loss, acc = evaluate(net, exp.objective, x_eval, y_eval, recurrent=False, **kw)
            probes["no_feedback"] = {"loss": loss, "acc": acc}
        if net.skips:
            loss, acc = evaluate(net, exp.objective, x_eval, y_eval, skips=False, **kw)
            probes["no_skip"] = {"loss": loss, "acc": acc}
    test = None
    if ds.x_test is not None and len(ds.x_test) and ds.x_test is not ds.x_val:
        loss, acc = evaluate(net, exp.objective, ds.x_test, ds.y_test, **kw)
        test = {"loss": loss, "acc": acc}
    last = rows[-1] if rows else {}
    best_row = next((r for r in rows if r["epoch"] == state.best_epoch), {})
    secs = [r["seconds"] for r in rows]
    return {
        "status": "completed",
        "task": ds.task,
        "epochs_run": state.epoch,
        "stopped_early": state.stopped_early,
        "final": {k: last.get(k) for k in ("train_loss", "train_acc", "val_loss", "val_acc")},
        "best": {
            "epoch": state.best_epoch,
            "monitor": exp.train.early_stopping.monitor if exp.train.early_stopping else "val_loss",
            "value": state.best_value,
            "val_loss": best_row.get("val_loss"),
            "val_acc": best_row.get("val_acc"),
        },
        "probes": probes,
        "test": test,
        "params": net.n_params(),
        "wall_seconds": wall,
        "train_seconds": float(sum(secs)),
        "seconds_per_epoch": float(np.mean(secs)) if secs else None,
        "threads": threads,
        "engine_path": state.engine_path or None,  # compiled | tape (neurons.plan)
        "engine_fallback": state.engine_fallback,
        "versions": _versions(),
        "seed": int(cfg.seed),
        "objective": exp.objective_name,
        "optimizer": str(cfg.optimizer.name),
        "arch": str(cfg.arch.get("name", "")),
        "dataset": ds.info(),
        "compat": exp.compat.record() if exp.compat is not None else None,
    }


def run_job(
    cfg: DictConfig,
    run_dir: Path,
    *,
    progress: bool | None = None,
    overrides: list[str] | None = None,
    job: dict | None = None,
) -> bool:
    """Run one job into `run_dir`; True when it completed. See the module docstring.

    With `cfg.resume` set, `run_dir` must be an interrupted or failed run (see
    `neurons.rundir.check_resumable`); its saved config is used, and `overrides` (the command
    line's) may only change settings that leave the epochs already run unchanged. A directory
    that is refused (another run's, locked, not resumable) is left untouched.
    `job`: what the launcher knows (mode, sweep_dir, num, choices, ...) for the loggers.
    """
    run_dir = Path(run_dir)
    resume = bool(cfg.get("resume"))
    n_seen = len(_caught)
    with signals_as_interrupt():
        try:
            if resume:
                rundir.check_resumable(run_dir)
                saved = _load_saved(run_dir)
                cfg = rundir.resume_config(saved, cfg, list(overrides or []))
            rundir.acquire(run_dir)
            for note in rundir.pop_notes(run_dir):
                log.warning("%s", note)
        except (rundir.RunDirError, ConfigError) as e:
            log.error("%s", e)
            return False
        try:
            if not resume:
                rundir.check_fresh(run_dir, hydra_written=True)
        except rundir.RunDirError as e:
            rundir.release(run_dir)
            log.error("%s", e)
            return False
        try:
            return _run_locked(cfg, run_dir, resume, progress, n_seen, job)
        finally:
            rundir.free_reserve(run_dir)
            rundir.release(run_dir)


def _load_saved(run_dir: Path) -> DictConfig:
    saved = run_dir / ".hydra" / "config.yaml"
    try:
        cfg = OmegaConf.load(saved)
    except Exception as e:  # a damaged YAML file: name it
        raise rundir.RunDirError(f"resume: cannot read {saved} ({type(e).__name__}: {e})") from None
    if not isinstance(cfg, DictConfig):
        raise rundir.RunDirError(f"resume: {saved} is not a config mapping")
    return cfg


def _run_locked(
    cfg: DictConfig,
    run_dir: Path,
    resume: bool,
    progress: bool | None,
    n_seen: int,
    job: dict | None,
) -> bool:
    t_start = time.perf_counter()
    recorder: _Recorder | None = None
    loggers = None
    try:
        if resume:
            rundir.clean_stale_temps(run_dir)
        rundir.reserve_space(run_dir)
        rec.write_status(run_dir, "running", resumed=resume)
        threads = configure(cfg.train.threads)
        exp = build_experiment(cfg)
        hooks = debug.prepare(cfg, exp, run_dir)
        state, rows = _restore(exp, run_dir) if resume else (TrainState(), [])
        if resume:
            log.info("resuming %s after epoch %d", run_dir, state.epoch)
        rec.write_metrics(run_dir, rows)  # the header (and on resume the rows kept), atomically
        recorder = _Recorder(exp, run_dir, cfg, rows)
        recorder.checkpoints = hooks.checkpoints
        loggers = build_loggers(cfg, run_dir, exp.network)
        loggers.start(cfg, job, state)
        recorder.take_snapshot(state)
        if not resume:  # epoch 0: a failure in the first epoch still leaves a loadable `last`
            recorder.write_last()
        show = progress if progress is not None else bool(cfg.train.progress)
        show = show and sys.stderr.isatty()
        with _progress(show, exp, state) as on_batch:
            state = fit(
                exp.network,
                exp.objective,
                exp.optimizer,
                exp.dataset.x_train,
                exp.dataset.y_train,
                exp.dataset.x_val,
                exp.dataset.y_val,
                exp.train,
                exp.rng,
                classification=exp.classification,
                schedule=exp.schedule,
                state=state,
                callbacks=[recorder, loggers, *hooks.callbacks],
                on_batch=loggers.on_batch(on_batch),
            )
        recorder.write_last()
        hooks.finish(state, recorder.rows)
        summary = _summary(exp, cfg, state, recorder.rows, threads, time.perf_counter() - t_start)
        rec.write_json(run_dir / rec.SUMMARY, summary)
        rec.write_status(run_dir, "completed")
        log.info("completed: %s", _brief(summary))
        return True
    except BaseException as e:
        return _end(e, run_dir, recorder, n_seen)
    finally:
        if loggers is not None:  # after status.json is final; never raises
            loggers.close()


_ONE_LINE = (
    ConfigError,
    BuildError,
    DatasetError,
    NonFiniteLoss,
    rec.RecordWriteError,
    rec.CheckpointError,
    rundir.RunDirError,
)


def _end(e: BaseException, run_dir: Path, recorder: _Recorder | None, n_seen: int) -> bool:
    """Record how a run ended early (interrupted or failed) and keep its last good checkpoint.

    Re-raises an interrupt (so a sweep stops) and anything that is not an Exception.
    """
    interrupt = _interrupt_of(e, n_seen)
    with signals_held(_SIGNALS):
        kept = ""
        if recorder is not None:
            try:
                recorder.write_last()
            except OSError as w:  # a full or read-only disk: the previous `last` stays valid
                kept = f"; the checkpoint on disk is the previous one ({w})"
        if interrupt is not None:
            what = "SIGTERM" if isinstance(interrupt, Terminated) else "Ctrl-C"
            status, message = "interrupted", f"interrupted by {what}"
            log.warning("interrupted by %s; last checkpoint kept in %s%s", what, run_dir, kept)
        elif isinstance(e, _ONE_LINE):
            status, message = "failed", str(e)
            log.error("%s%s", e, "; the last good checkpoint is kept" if recorder else "")
        elif isinstance(e, Exception):  # a bug or an unexpected failure: keep the traceback
            status, message = "failed", f"{type(e).__name__}: {e}"
            log.error("run failed: %s\n%s", message, traceback.format_exc())
        else:
            status, message = "failed", f"{type(e).__name__}: {e}"
        if kept and interrupt is None:
            log.error("%s", kept[2:])
        if not rundir.write_final_status(run_dir, status, message):
            print(
                f"neurons: cannot record status {status!r} in {run_dir / rec.STATUS} "
                f"(the disk is full or read-only); the run {status}: {message}",
                file=sys.stderr,
            )
    if interrupt is not None:
        raise interrupt from None
    if not isinstance(e, Exception):
        raise e
    return False


def _brief(s: dict[str, Any]) -> str:
    f = s["final"]
    parts = [f"{s['epochs_run']} epochs"]
    for k in ("val_loss", "val_acc"):
        if f.get(k) is not None and not (isinstance(f[k], float) and np.isnan(f[k])):
            parts.append(f"{k} {f[k]:.4f}")
    return ", ".join(parts)


@contextmanager
def _progress(show: bool, exp: Experiment, state: TrainState):
    """A tqdm bar over batches and epochs on a terminal; a no-op otherwise."""
    if not show:
        yield None
        return
    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    total = int(exp.train.epochs)
    epochs = tqdm(total=total, initial=state.epoch, desc="epochs", position=0, leave=False)
    batches = tqdm(desc="batches", position=1, leave=False)

    def on_batch(b: int, n: int, loss: float) -> None:
        if b == 1:
            batches.reset(total=n)
        batches.update(1)
        if b == n:
            epochs.update(1)
        if b % 20 == 0 or b == n:
            batches.set_postfix(loss=f"{loss:.4g}", refresh=False)

    with logging_redirect_tqdm():
        try:
            yield on_batch
        finally:
            batches.close()
            epochs.close()
