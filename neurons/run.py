"""One run, start to finish: build from config, fit, record, checkpoint, probe, resume.

`run_job(cfg, run_dir)` never raises for a failing run: it writes status `failed` (or
`interrupted` on Ctrl-C/SIGTERM, then re-raises so a sweep stops) and returns False, so one bad
job in a sweep leaves the others running. Hydra itself is only imported by `neurons.__main__`.
"""

from __future__ import annotations

import logging
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

from neurons import __version__
from neurons import record as rec
from neurons.config import ConfigError, Experiment, build_experiment
from neurons.data import DatasetError
from neurons.layers import BuildError
from neurons.runtime import configure
from neurons.train import NonFiniteLoss, TrainState, evaluate, fit

log = logging.getLogger("neurons")


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C."""


@contextmanager
def _sigterm_as_interrupt():
    def handler(signum: int, frame: Any) -> None:
        raise Terminated(f"signal {signum}")

    try:
        old = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread (e.g. some launchers): leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


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
        self.every = int(cfg.train.checkpoint_every)

    def take_snapshot(self, state: TrainState) -> None:
        net, opt = self.exp.network, self.exp.optimizer
        arrays = {f"model.{k}": v for k, v in net.state_dict().items()}
        arrays.update({f"optim.{k}": np.array(v, copy=True) for k, v in opt.state_dict().items()})
        meta = {
            "epoch": state.epoch,
            "train_state": state.to_dict(),
            "rng": self.exp.rng.bit_generator.state,
        }
        self.snapshot = (arrays, meta)

    def write_last(self) -> None:
        if self.snapshot is not None:
            rec.save_checkpoint(self.ckpt_dir / rec.LAST, *self.snapshot)

    def __call__(self, state: TrainState, row: dict, improved: bool) -> None:
        self.wall0 += row["seconds"]
        row = dict(row, wall=self.wall0)
        self.rows.append(row)
        rec.write_metrics(self.run_dir, self.rows)
        self.take_snapshot(state)
        if improved:
            rec.save_checkpoint(self.ckpt_dir / rec.BEST, *self.snapshot)  # type: ignore[misc]
        if self.every and state.epoch % self.every == 0:
            self.write_last()
        total = int(self.cfg.train.epochs)
        acc = "" if np.isnan(row["train_acc"]) else f" train_acc {row['train_acc']:.4f}"
        vacc = "" if np.isnan(row["val_acc"]) else f" val_acc {row['val_acc']:.4f}"
        log.info(
            "epoch %d/%d  train_loss %.5g%s  val_loss %.5g%s  lr %.3g  %.2fs",
            state.epoch,
            total,
            row["train_loss"],
            acc,
            row["val_loss"],
            vacc,
            row["lr"],
            row["seconds"],
        )


def _restore(exp: Experiment, run_dir: Path) -> tuple[TrainState, list[dict]]:
    """Load `last` into the experiment's objects; returns the train state and metrics rows."""
    path = run_dir / rec.CHECKPOINTS / rec.LAST
    if not path.exists():
        raise ConfigError(f"resume: {path} does not exist; nothing to resume from")
    arrays, meta = rec.load_checkpoint(path)
    exp.network.load_state_dict({k[6:]: v for k, v in arrays.items() if k.startswith("model.")})
    exp.optimizer.load_state_dict({k[6:]: v for k, v in arrays.items() if k.startswith("optim.")})
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
    es = exp.train.early_stopping
    best = run_dir / rec.CHECKPOINTS / rec.BEST
    if es is not None and es.restore_best and best.exists():
        b, _ = rec.load_checkpoint(best)
        state.best_state = {k[6:]: v for k, v in b.items() if k.startswith("model.")}
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
        "versions": _versions(),
        "seed": int(cfg.seed),
        "objective": exp.objective_name,
        "optimizer": str(cfg.optimizer.name),
        "arch": str(cfg.arch.get("name", "")),
        "dataset": ds.info(),
        "compat": exp.compat.record() if exp.compat is not None else None,
    }


def run_job(cfg: DictConfig, run_dir: Path, *, progress: bool | None = None) -> bool:
    """Run one job into `run_dir`; True when it completed. See the module docstring."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    resume = cfg.get("resume")
    t_start = time.perf_counter()
    recorder: _Recorder | None = None
    try:
        if resume:
            saved = run_dir / ".hydra" / "config.yaml"
            if not saved.exists():
                raise ConfigError(f"resume: {saved} not found; expected a run directory")
            status_file = run_dir / rec.STATUS
            if status_file.exists() and rec.read_json(status_file).get("status") == "completed":
                log.info("resume: %s already completed; nothing to do", run_dir)
                return True
            cfg = OmegaConf.load(saved)  # the run's own config, so it is reproduced exactly
            cfg.resume = None
        rec.write_status(run_dir, "running", resumed=bool(resume))
        threads = configure(cfg.train.threads)
        exp = build_experiment(cfg)
        state, rows = _restore(exp, run_dir) if resume else (TrainState(), [])
        if resume:
            log.info("resuming %s after epoch %d", run_dir, state.epoch)
        recorder = _Recorder(exp, run_dir, cfg, rows)
        recorder.take_snapshot(state)
        if not resume:  # epoch 0: a failure in the first epoch still leaves a loadable `last`
            recorder.write_last()
        show = progress if progress is not None else bool(cfg.train.progress)
        show = show and sys.stderr.isatty()
        with _sigterm_as_interrupt(), _progress(show, exp, state) as on_batch:
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
                callbacks=[recorder],
                on_batch=on_batch,
            )
        recorder.write_last()
        summary = _summary(exp, cfg, state, recorder.rows, threads, time.perf_counter() - t_start)
        rec.write_json(run_dir / rec.SUMMARY, summary)
        rec.write_status(run_dir, "completed")
        log.info("completed: %s", _brief(summary))
        return True
    except KeyboardInterrupt as e:
        if recorder is not None:
            recorder.write_last()
        what = "SIGTERM" if isinstance(e, Terminated) else "Ctrl-C"
        rec.write_status(run_dir, "interrupted", f"interrupted by {what}")
        log.warning("interrupted by %s; last checkpoint kept in %s", what, run_dir)
        raise
    except (ConfigError, BuildError, DatasetError) as e:
        rec.write_status(run_dir, "failed", str(e))
        log.error("%s", e)
        return False
    except NonFiniteLoss as e:
        if recorder is not None:
            recorder.write_last()
        rec.write_status(run_dir, "failed", str(e))
        log.error("%s; the last good checkpoint is kept", e)
        return False
    except Exception as e:  # a bug or an unexpected failure: keep the traceback in the log
        if recorder is not None:
            recorder.write_last()
        rec.write_status(run_dir, "failed", f"{type(e).__name__}: {e}")
        log.error("run failed: %s: %s\n%s", type(e).__name__, e, traceback.format_exc())
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
