"""Experiment-tracking loggers (the `logger` config group): TensorBoard event files, MLflow runs.

A logger is a `fit` epoch callback with `start`, per-batch and `finish` hooks; `Loggers` fans
the calls out and turns any failure of one logger into a single warning in run.log, so a
tracking problem never fails a run. TensorBoard and MLflow are imported lazily, only when asked
for. The run's own records (metrics.csv, summary.json: the `csv` logger) are `neurons.run`'s.
"""

from __future__ import annotations

import fcntl
import importlib
import logging
import math
import os
import subprocess
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from neurons import record as rec
from neurons.runtime import signals_held

log = logging.getLogger(__name__)

EXTRAS = {"tensorboard": "tensorboard", "mlflow": "mlflow"}  # logger -> module it needs
MLFLOW_RUN = "mlflow.json"  # in the run directory: which MLflow run it is (reused on resume)
EPOCH_METRICS = ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds")


# ----------------------------------------------------------------------------- config schema
@dataclass
class CsvLoggerConfig:
    """metrics.csv + summary.json; always written, listed so `logger=[...]` reads complete."""

    enabled: bool = True


@dataclass
class TensorBoardLoggerConfig:
    enabled: bool = False  # true when `logger=[..., tensorboard]` selects it
    dir: str = "tensorboard"  # event files, relative to the run directory
    log_every_n_steps: int = 1  # per-step training loss every n optimizer steps (0 = off)
    histogram_every: int = 0  # weight and gradient histograms every k epochs (0 = off)
    flush_secs: int = 10  # seconds between flushes to disk (what a live TensorBoard sees)


@dataclass
class MlflowLoggerConfig:
    enabled: bool = False  # true when `logger=[..., mlflow]` selects it
    tracking_uri: str = "sqlite:///runs/mlflow.db"  # relative paths: from the launch directory
    experiment: str | None = None  # null = the sweep directory (multirun), else the job name
    artifact_location: str | None = None  # new experiments; null = runs/mlartifacts for local
    artifacts: bool = True  # upload the run directory's files when the run ends
    http_timeout: float | None = 15.0  # seconds per request to a server (null: MLflow's default)
    http_retries: int | None = 2  # retries per request (null: MLflow's default, 7)


@dataclass
class LoggerConfig:
    csv: CsvLoggerConfig = field(default_factory=CsvLoggerConfig)
    tensorboard: TensorBoardLoggerConfig = field(default_factory=TensorBoardLoggerConfig)
    mlflow: MlflowLoggerConfig = field(default_factory=MlflowLoggerConfig)


class MissingExtra(ImportError):
    """A logger was asked for but its optional dependency is not installed."""


def require(logger: str) -> Any:
    """Import the module `logger` needs, or raise MissingExtra naming the extra to install."""
    module = EXTRAS[logger]
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingExtra(
            f"logger={logger} needs the optional extra '{logger}': "
            f"pip install 'neurons-lab[{logger}]' (import {module} failed: {e})"
        ) from None


# ----------------------------------------------------------------------------- helpers
def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts (and lists of dicts) to dotted keys: `arch.layers.0.units`; scalars kept,
    lists of scalars and None as text."""
    out: dict[str, Any] = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.update(flatten(v, f"{prefix}{k}."))
    elif isinstance(obj, list | tuple) and any(isinstance(v, dict | list) for v in obj):
        for i, v in enumerate(obj):
            out.update(flatten(v, f"{prefix}{i}."))
    elif prefix:
        key = prefix[:-1]
        if isinstance(obj, bool | int | float | str):
            out[key] = obj
        else:
            out[key] = "None" if obj is None else str(list(obj) if isinstance(obj, tuple) else obj)
    return out


def _finite(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def final_metrics(summary: dict[str, Any] | None) -> dict[str, float]:
    """Scalar end-of-run metrics from summary.json: final.*, best.*, test.*, probe.*.*."""
    if not summary:
        return {}
    out: dict[str, float] = {}
    for k, v in (summary.get("final") or {}).items():
        out[f"final.{k}"] = v
    for k in ("value", "val_loss", "val_acc", "epoch"):
        out[f"best.{k}"] = (summary.get("best") or {}).get(k)
    for k, v in (summary.get("test") or {}).items():
        out[f"test.{k}"] = v
    for probe, res in (summary.get("probes") or {}).items():
        if isinstance(res, dict):
            for k, v in res.items():
                out[f"probe.{probe}.{k}"] = v
    return {k: float(v) for k, v in out.items() if _finite(v)}


def git_commit(where: Path) -> str | None:
    """HEAD of the git checkout holding `where`, '+dirty' when it has local changes."""
    try:
        head = subprocess.run(
            ["git", "-C", str(where), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        if head.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "-C", str(where), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


@dataclass
class RunInfo:
    """What a logger gets at the start: the run directory, the resolved config, and what the
    launcher knows (`job`: mode, sweep_dir, num, name, choices, cwd, overrides; may be empty)."""

    run_dir: Path
    config: dict[str, Any]
    job: dict[str, Any] = field(default_factory=dict)
    epoch: int = 0  # epochs already done (resume)
    step: int = 0  # optimizer steps already taken (resume)

    @property
    def cwd(self) -> Path:
        return Path(self.job.get("cwd") or os.getcwd())

    @property
    def experiment(self) -> str:
        """The sweep directory (relative to the launch directory when inside it) for a
        multirun, the job name for a single run."""
        sweep = self.job.get("sweep_dir")
        if self.job.get("mode") == "multirun" and sweep:
            p = Path(sweep)
            if p.is_absolute():
                try:
                    return str(p.relative_to(self.cwd))
                except ValueError:
                    return str(p)
            return str(p)
        return str(self.job.get("name") or "neurons")

    def tags(self) -> dict[str, str]:
        """Group choices, overrides, sweep and job number, free-form tag, git commit."""
        tags = {g: str(c) for g, c in (self.job.get("choices") or {}).items() if c is not None}
        if self.config.get("tag"):
            tags["tag"] = str(self.config["tag"])
        if self.job.get("overrides"):
            tags["overrides"] = " ".join(self.job["overrides"])
        if self.job.get("mode") == "multirun":
            tags["sweep"] = self.experiment
            tags["job_num"] = str(self.job.get("num"))
        commit = git_commit(Path(__file__).resolve().parent)
        if commit:
            tags["git_commit"] = commit
            tags["mlflow.source.git.commit"] = commit.removesuffix("+dirty")
        return tags


# ----------------------------------------------------------------------------- loggers
class RunLogger(ABC):
    """One tracking destination. Exceptions are fine: `Loggers` catches them."""

    name: str = ""

    @abstractmethod
    def start(self, info: RunInfo) -> None: ...

    def log_step(self, step: int, loss: float) -> None:  # noqa: B027 (optional hook)
        """The training loss of optimizer step `step` (1-based, counted over the whole run)."""

    @abstractmethod
    def log_epoch(self, row: dict[str, float]) -> None: ...

    @abstractmethod
    def finish(self, status: str, summary: dict[str, Any] | None) -> None: ...


class TensorBoardLogger(RunLogger):
    """Event files in `<run dir>/<dir>`: `batch/train_loss` per step; `epoch/*` (losses,
    accuracies, lr, seconds) per epoch; `config` as text; hparams with `final/*`, `test/*`,
    `probe/*` at the end; `weights/*` and `grads/*` histograms every `histogram_every` epochs
    (grads: the epoch's last minibatch)."""

    name = "tensorboard"

    def __init__(
        self,
        dir: str = "tensorboard",
        log_every_n_steps: int = 1,
        histogram_every: int = 0,
        flush_secs: int = 10,
        network: Any = None,
    ) -> None:
        self.dir, self.every_step, self.every_hist = dir, log_every_n_steps, histogram_every
        self.flush_secs, self.network = flush_secs, network
        self.writer: Any = None
        self.epoch = 0

    def start(self, info: RunInfo) -> None:
        from omegaconf import OmegaConf
        from tensorboard.plugins.text.summary_v2 import text_pb
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        self.info, self.epoch = info, info.epoch
        logdir = info.run_dir / self.dir
        logdir.mkdir(parents=True, exist_ok=True)
        logged = _logged_epochs(logdir) if info.epoch else set()
        self.writer = EventFileWriter(str(logdir), flush_secs=self.flush_secs)
        for row in rec.read_metrics(info.run_dir) if info.epoch else ():
            if row["epoch"] <= info.epoch and row["epoch"] not in logged:  # resume: recorded
                epoch_metrics = {f"epoch/{k}": row[k] for k in EPOCH_METRICS if k in row}
                self._scalars(epoch_metrics, int(row["epoch"]))  # but not sent before the stop
        text = OmegaConf.to_yaml(OmegaConf.create(info.config))
        body = "    " + text.replace("\n", "\n    ")  # markdown code block
        self._write(text_pb("config", body), info.epoch)
        self.writer.flush()

    def _write(self, summary: Any, step: int) -> None:
        from tensorboard.compat.proto.event_pb2 import Event

        self.writer.add_event(Event(wall_time=time.time(), step=int(step), summary=summary))

    def _scalars(self, values: dict[str, float], step: int) -> None:
        from tensorboard.compat.proto.summary_pb2 import Summary

        vals = [Summary.Value(tag=k, simple_value=v) for k, v in values.items() if _finite(v)]
        if vals:
            self._write(Summary(value=vals), step)

    def log_step(self, step: int, loss: float) -> None:
        if self.every_step and step % self.every_step == 0:
            self._scalars({"batch/train_loss": loss}, step)

    def log_epoch(self, row: dict[str, float]) -> None:
        from tensorboard.plugins.histogram.summary_v2 import histogram_pb

        self.epoch = epoch = int(row["epoch"])
        self._scalars({f"epoch/{k}": row[k] for k in EPOCH_METRICS if k in row}, epoch)
        if self.every_hist and self.network is not None and epoch % self.every_hist == 0:
            for kind, arrays in (
                ("weights", self.network.named_parameters()),
                ("grads", self.network.named_grads()),
            ):
                for name, a in arrays.items():
                    data = np.asarray(a, dtype=np.float64).ravel()
                    self._write(histogram_pb(f"{kind}/{name}", data, buckets=30), epoch)

    def finish(self, status: str, summary: dict[str, Any] | None) -> None:
        from tensorboard.plugins.hparams.summary_v2 import hparams_pb

        if self.writer is None:
            return
        try:
            final = final_metrics(summary)
            self._scalars({k.replace(".", "/", 1): v for k, v in final.items()}, self.epoch)
            hparams = {k: v for k, v in flatten(self.info.config).items() if k != "resume"}
            hparams["status"] = status
            self._write(hparams_pb(hparams, trial_id=self.info.run_dir.name), 0)
        finally:
            self.writer.close()
            self.writer = None


def _logged_epochs(logdir: Path) -> set[int]:
    """Steps of `epoch/train_loss` already in the event files of `logdir`."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    steps: set[int] = set()
    for path in sorted(logdir.glob("events.out.tfevents.*")):
        for event in EventFileLoader(str(path)).Load():
            if any(v.tag == "epoch/train_loss" for v in event.summary.value):
                steps.add(int(event.step))
    return steps


class MlflowLogger(RunLogger):
    """One MLflow run per job: params = the flattened config, tags = group choices, git commit
    and sweep, metrics per epoch (step = epoch), final/test/probe metrics and the run
    directory's files as artifacts at the end. Talks through `MlflowClient` only (no global
    active run), so jobs sharing a process (a serial sweep) stay apart."""

    name = "mlflow"

    def __init__(
        self,
        tracking_uri: str = "sqlite:///runs/mlflow.db",
        experiment: str | None = None,
        artifact_location: str | None = None,
        artifacts: bool = True,
        http_timeout: float | None = 15.0,
        http_retries: int | None = 2,
    ) -> None:
        self.uri, self.experiment = tracking_uri, experiment
        self.artifact_location = artifact_location
        self.artifacts, self.http_timeout, self.http_retries = artifacts, http_timeout, http_retries
        self.client: Any = None
        self.run_id: str | None = None

    @staticmethod
    def resolve_uri(uri: str, cwd: Path) -> tuple[str, Path | None]:
        """A relative `sqlite:///path`, `file:path` or plain path made absolute against `cwd`
        (the launch directory, the same for every job of a sweep). Returns the URI and the
        local store's directory (None for a server)."""
        if uri.startswith("sqlite:///"):
            path = Path(uri[len("sqlite:///") :])
            path = path if path.is_absolute() else cwd / path
            return f"sqlite:///{path}", path.parent
        if "://" in uri and not uri.startswith("file://"):
            return uri, None
        path = Path(uri.removeprefix("file://").removeprefix("file:"))
        path = path if path.is_absolute() else cwd / path
        return path.as_uri(), path

    def start(self, info: RunInfo) -> None:
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        if self.http_timeout is not None:
            os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(int(math.ceil(self.http_timeout)))
        if self.http_retries is not None:
            os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = str(self.http_retries)
        self.info, self.epoch = info, info.epoch
        uri, store = self.resolve_uri(self.uri, info.cwd)
        artifacts = self.artifact_location
        if artifacts is None and store is not None:
            artifacts = (store / "mlartifacts").as_uri()
        name = self.experiment or info.experiment
        with _store_lock(store):
            self.client = client = MlflowClient(tracking_uri=uri)
            exp = client.get_experiment_by_name(name)
            if exp is not None:
                exp_id = exp.experiment_id
            else:
                exp_id = client.create_experiment(name, artifact_location=artifacts)
        saved = info.run_dir / MLFLOW_RUN
        previous = rec.read_json(saved) if saved.exists() else {}
        if previous.get("tracking_uri") == uri and previous.get("run_id"):  # resume
            self.run_id = previous["run_id"]
            client.update_run(self.run_id, status="RUNNING")
            logged = {m.step for m in client.get_metric_history(self.run_id, "train_loss")}
            for row in rec.read_metrics(info.run_dir):  # epochs the interrupted run had not sent
                if row["epoch"] <= info.epoch and row["epoch"] not in logged:
                    self.log_epoch(row)
            return
        run = client.create_run(exp_id, run_name=info.run_dir.name, tags=info.tags())
        self.run_id = run.info.run_id
        rec.write_json(saved, {"tracking_uri": uri, "experiment": name, "run_id": self.run_id})
        params = [Param(k, str(v)[:6000]) for k, v in flatten(info.config).items()]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
            client.log_batch(self.run_id, params=params[i : i + 100])

    def _metrics(self, values: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        ms = [Metric(k, float(v), now, int(step)) for k, v in values.items() if _finite(v)]
        if ms:
            self.client.log_batch(self.run_id, metrics=ms)

    def log_epoch(self, row: dict[str, float]) -> None:
        self.epoch = int(row["epoch"])
        self._metrics({k: row[k] for k in EPOCH_METRICS if k in row}, self.epoch)

    def finish(self, status: str, summary: dict[str, Any] | None) -> None:
        if self.run_id is None:
            return
        self._metrics(final_metrics(summary), self.epoch)
        if self.artifacts:
            try:
                self.client.log_artifacts(self.run_id, str(self.info.run_dir))
            except Exception as e:  # still mark the run as ended
                log.warning("logger mlflow: uploading the run directory failed: %s", _why(e))
        state = {"completed": "FINISHED", "interrupted": "KILLED"}.get(status, "FAILED")
        self.client.set_terminated(self.run_id, status=state)


@contextmanager
def _store_lock(store: Path | None):
    """Serialise the first use of a local store (a directory) by jobs running at once: SQLite
    table creation and get-or-create of the experiment are not safe to race."""
    if store is None:
        yield
        return
    store.mkdir(parents=True, exist_ok=True)
    lock = store / ".neurons-mlflow.lock"
    with open(lock, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _why(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text[:300]}"


# ----------------------------------------------------------------------------- the group
class Loggers:
    """Every configured logger behind one `fit` callback. A logger that raises is switched off
    with one warning in run.log; the run and the other loggers go on."""

    def __init__(self, loggers: list[RunLogger], run_dir: Path) -> None:
        self.loggers, self.run_dir = list(loggers), Path(run_dir)
        self.step0 = 0
        self.started = False

    def _call(self, lg: RunLogger, what: str, fn: Callable[..., None], *args: Any) -> None:
        if lg not in self.loggers:
            return
        try:
            with signals_held():  # an interrupt inside an SQLite write locks the store
                fn(*args)
        except Exception as e:
            self.loggers.remove(lg)
            log.warning(
                "logger %s: %s failed (%s); this logger is off for the rest of the run, "
                "the run and its own files go on",
                lg.name,
                what,
                _why(e),
            )
            if what != "finish":
                self._call_finish_quietly(lg)

    @staticmethod
    def _call_finish_quietly(lg: RunLogger) -> None:
        try:
            lg.finish("failed", None)
        except Exception:  # already warned once for this logger
            pass

    def start(self, cfg: Any, job: dict | None, state: Any) -> None:
        """Start every logger: `cfg` the run's config, `job` the launcher's facts (see
        `RunInfo`), `state` the TrainState the run starts from (epoch/step > 0 on resume)."""
        from omegaconf import OmegaConf

        config = OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else cfg
        info = RunInfo(self.run_dir, dict(config), dict(job or {}), state.epoch, state.step)
        self.step0, self.started = state.step, True
        for lg in list(self.loggers):
            self._call(lg, "start", lg.start, info)

    def __call__(self, state: Any, row: dict[str, float], improved: bool) -> None:
        """The epoch callback of `fit`."""
        self.step0 = int(row["step"])
        for lg in list(self.loggers):
            self._call(lg, f"epoch {row['epoch']}", lg.log_epoch, row)

    def on_batch(
        self, inner: Callable[[int, int, float], None] | None
    ) -> Callable[[int, int, float], None] | None:
        """`fit`'s per-batch hook: `inner` (e.g. a progress bar) plus per-step logging."""
        if not self.loggers:
            return inner

        def hook(b: int, n: int, loss: float) -> None:
            if inner is not None:
                inner(b, n, loss)
            for lg in list(self.loggers):
                self._call(lg, f"step {self.step0 + b}", lg.log_step, self.step0 + b, loss)

        return hook

    def close(self) -> None:
        """End every logger with the run's final status and summary (read from its records)."""
        if not self.started:
            return
        status, summary = "failed", None
        try:
            status = rec.read_json(self.run_dir / rec.STATUS).get("status", "failed")
            if (self.run_dir / rec.SUMMARY).exists() and status == "completed":
                summary = rec.read_json(self.run_dir / rec.SUMMARY)
        except (OSError, ValueError):
            pass
        for lg in list(self.loggers):
            self._call(lg, "finish", lg.finish, status, summary)
        self.loggers.clear()
