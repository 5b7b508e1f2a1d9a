"""Sweeps under any Hydra launcher or sweeper: per-job threads, sweep resume, outcomes, search.

`run_sweep_job` wraps `neurons.run.run_job` for one job of `python -m neurons -m`: it picks the
job's default threads from the launcher (cores ÷ parallel jobs), honours `+sweep_resume=true`
(skip `completed`, resume `interrupted`, re-run `failed` only with `+sweep_rerun_failed=true`),
writes the job's outcome to `<sweep dir>/.neurons-job-<num>.json` and returns the monitored
metric (what Optuna optimises). `SweepCallback` runs in the launching process: it collects every
job's outcome (so the exit code is right even when jobs ran in other processes) and writes an
Optuna search's `trials.csv` and `best.json`. Nothing here trains; the run stays in neurons.run.
"""

from __future__ import annotations

import copy
import csv
import io
import logging
import math
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import yaml
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict

from neurons import record as rec
from neurons.runtime import cores, set_job_default

log = logging.getLogger("neurons")

SWEEP_KEYS = ("sweep_resume", "sweep_rerun_failed")
OUTCOME = ".neurons-job-{num}.json"  # in the sweep dir; hidden files, so no job dir is added
SWEEP_OUTCOMES = ".neurons-sweep.json"
PREVIOUS = ".previous"  # a re-run failed job's old records, moved aside
TRIALS = "trials.csv"
BEST = "best.json"
_collected: dict[str, Any] = {}


# --------------------------------------------------------------------------------- resolvers
def direction(enabled: Any, monitor: Any, mode: Any) -> str:
    """Optuna direction of the metric a run returns (the one early stopping and "best" use)."""
    if not enabled:  # without early stopping the run tracks the best val_loss
        return "minimize"
    mode = str(mode)
    if mode == "auto":
        mode = "max" if "acc" in str(monitor) else "min"
    return "maximize" if mode == "max" else "minimize"


def register_sweep_resolvers() -> None:
    """`${neurons_direction:enabled,monitor,mode}`, used by the conf/hparams_search presets."""
    if not OmegaConf.has_resolver("neurons_direction"):
        OmegaConf.register_new_resolver("neurons_direction", direction)


# --------------------------------------------------------------------------------- threads
def job_threads(hc: Any) -> tuple[int | None, str | None]:
    """Default numba/BLAS threads of one job from its launcher: never more than its share of the
    cores. None = the launcher runs jobs one at a time (then a job uses every core)."""
    target = str(hc.launcher.get("_target_", ""))
    total = cores()
    if "joblib" in target.lower():
        n_jobs = int(hc.launcher.get("n_jobs") or -1)
        par = n_jobs if n_jobs > 0 else max(1, total + 1 + n_jobs)  # joblib: -1 = all cores
        return max(1, total // par), f"{total} cores / {par} parallel jobs (joblib launcher)"
    if "submitit" in target.lower():
        env = os.environ.get("SLURM_CPUS_PER_TASK")
        if env and env.isdigit() and int(env) > 0:
            return int(env), f"SLURM_CPUS_PER_TASK={env}"
        cpt = hc.launcher.get("cpus_per_task")
        if cpt:
            return int(cpt), f"hydra.launcher.cpus_per_task={cpt}"
        if "local" in target.lower():  # every job starts at once
            return 1, "submitit_local without hydra.launcher.cpus_per_task: 1 thread per job"
        return total, f"all {total} cores of the allocation"
    return None, None


# --------------------------------------------------------------------------------- composing
_MEMO_MAX = 256  # composed job configs kept between the sweeper's validation and the launch
_MEMO_LAUNCHERS = ("BasicLauncher", "JoblibLauncher")  # those that compose in this process
_memo: dict[tuple, tuple[Any, DictConfig, DictConfig]] = {}


def compose_each_job_once() -> bool:
    """Hydra's sweepers compose every job's config to validate the batch, then an in-process
    launcher composes the same job again (same master config, same overrides): about 0.2 s a
    job, half of a short job's overhead. This keeps a copy of the first result and hands it to
    the second call. Only for the basic (in-process) launcher and the joblib launcher as
    `ship_composed_configs` makes it compose (here, sending the config); at most `_MEMO_MAX`
    configs are held (each with its loader and master config, so no id is reused while it is),
    a config is handed out once (a repeated trial composes anew), and `SweepCallback` empties
    the memo at the start and end of every multirun. Idempotent; False when Hydra's loader has no
    `load_sweep_config` (nothing patched)."""
    from hydra._internal.config_loader_impl import ConfigLoaderImpl

    orig = getattr(ConfigLoaderImpl, "load_sweep_config", None)
    if orig is None:
        return False
    if getattr(orig, "_neurons_memo", False):
        return True

    def load_sweep_config(self: Any, master_config: DictConfig, sweep_overrides: list) -> Any:
        key = (id(self), id(master_config), tuple(str(o) for o in sweep_overrides))
        hit = _memo.pop(key, None)
        if hit is not None and hit[0] is self and hit[1] is master_config:
            return hit[2]
        cfg = orig(self, master_config, sweep_overrides)
        target = str(OmegaConf.select(master_config, "hydra.launcher._target_") or "")
        if target.endswith(_MEMO_LAUNCHERS) and len(_memo) < _MEMO_MAX:
            _memo[key] = (self, master_config, copy.deepcopy(cfg))  # the caller owns `cfg`
        return cfg

    load_sweep_config._neurons_memo = True  # type: ignore[attr-defined]
    ConfigLoaderImpl.load_sweep_config = load_sweep_config  # type: ignore[method-assign]
    return True


def ship_composed_configs() -> bool:
    """Make Hydra's joblib launcher compose each job's config in the launching process (where
    the sweeper's validation already did: `compose_each_job_once` hands that copy over) and send
    the composed config to its worker, instead of every worker composing it again (0.2-0.3 s of
    a worker's time per job). The rest of the launch is the plugin's own: the same joblib
    arguments, job ids and numbers, `run_job` call and return values. Idempotent; False when the
    plugin is not installed (nothing patched)."""
    try:
        from hydra_plugins.hydra_joblib_launcher import _core
    except ImportError:
        return False
    if getattr(_core.launch, "_neurons_ships", False):
        return True

    def launch(launcher: Any, job_overrides: Any, initial_job_idx: int) -> Any:
        from hydra.core.singleton import Singleton
        from hydra.core.utils import configure_log, filter_overrides, setup_globals
        from joblib import Parallel, delayed

        setup_globals()
        configure_log(launcher.config.hydra.hydra_logging, launcher.config.hydra.verbose)
        sweep_dir = Path(str(launcher.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        joblib_cfg = launcher.joblib
        joblib_cfg["backend"] = "loky"
        _core.process_joblib_cfg(joblib_cfg)
        args = ",".join(f"{k}={v}" for k, v in joblib_cfg.items())
        _core.log.info(f"Joblib.Parallel({args}) is launching {len(job_overrides)} jobs")
        _core.log.info(f"Launching jobs, sweep output dir : {sweep_dir}")
        for idx, overrides in enumerate(job_overrides):
            _core.log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}")
        loader = launcher.hydra_context.config_loader
        configs = [loader.load_sweep_config(launcher.config, list(o)) for o in job_overrides]
        state = Singleton.get_state()
        runs = Parallel(**joblib_cfg)(
            delayed(_execute_composed)(
                initial_job_idx + idx, cfg, launcher.hydra_context, launcher.task_function, state
            )
            for idx, cfg in enumerate(configs)
        )
        return list(runs)

    launch._neurons_ships = True  # type: ignore[attr-defined]
    _core.launch = launch
    return True


def _execute_composed(
    idx: int, sweep_config: DictConfig, hydra_context: Any, task_function: Any, state: Any
) -> Any:
    """The joblib plugin's `execute_job` for a config composed in the launching process."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.singleton import Singleton
    from hydra.core.utils import run_job, setup_globals

    setup_globals()
    Singleton.set_state(state)
    with open_dict(sweep_config):
        sweep_config.hydra.job.id = f"{sweep_config.hydra.job.name}_{idx}"
        sweep_config.hydra.job.num = idx
    HydraConfig.instance().set_config(sweep_config)
    return run_job(
        hydra_context=hydra_context,
        config=sweep_config,
        task_function=task_function,
        job_dir_key="hydra.sweep.dir",
        job_subdir_key="hydra.sweep.subdir",
    )


# --------------------------------------------------------------------------------- workers
def _import_engine() -> int:
    """Run in a joblib worker before its first job: the imports every job needs."""
    import neurons.run  # noqa: F401  (hydra, numpy, numba and every engine module)

    return os.getpid()


def warm_workers(launcher: Any) -> threading.Thread | None:
    """Start the joblib launcher's worker processes now, in a background thread, so their
    imports overlap Hydra composing every job's config in the launching process (the sweeper
    validates the whole batch before the launcher runs). The launcher's own `Parallel` call
    then reuses the same loky executor (same arguments). None for other launchers."""
    if "joblib" not in str(launcher.get("_target_", "")).lower():
        return None
    from hydra_plugins.hydra_joblib_launcher._core import process_joblib_cfg
    from joblib import Parallel, delayed

    cfg = {k: v for k, v in OmegaConf.to_container(launcher, resolve=True).items()}
    cfg.pop("_target_", None)
    cfg["backend"] = "loky"  # as the launcher does, so that it reuses this executor
    process_joblib_cfg(cfg)
    n = int(cfg.get("n_jobs") or -1)
    n = n if n > 0 else max(1, cores() + 1 + n)
    if n < 2:
        return None

    pids: list[int] = []

    def start() -> None:
        try:
            pids.extend(Parallel(**cfg)(delayed(_import_engine)() for _ in range(n)))
        except Exception as e:  # the launcher reports anything real when it runs the jobs
            log.debug("warming joblib workers failed: %s", e)

    t = threading.Thread(target=start, name="neurons-warm-workers", daemon=True)
    t.pids = pids  # type: ignore[attr-defined]  (the warmed workers, for tests)
    t.start()
    return t


# --------------------------------------------------------------------------------- one job
def monitored_value(run_dir: Path) -> float:
    """The run's best monitored value from summary.json; NaN when it did not complete."""
    try:
        summary = rec.read_json(Path(run_dir) / rec.SUMMARY)
        status = rec.read_json(Path(run_dir) / rec.STATUS).get("status")
    except (OSError, ValueError):
        return float("nan")
    value = (summary.get("best") or {}).get("value")
    if status != "completed" or value is None:
        return float("nan")
    return float(value)


def _status(run_dir: Path) -> dict[str, Any] | None:
    try:
        return rec.read_json(run_dir / rec.STATUS)
    except (OSError, ValueError):
        return None


def _strip(cfg: DictConfig) -> DictConfig:
    out = copy.deepcopy(cfg)
    with open_dict(out):
        for k in SWEEP_KEYS:
            out.pop(k, None)
    return out


def _task_overrides(hc: Any) -> list[str]:
    keep = []
    for o in hc.overrides.task:
        key = str(o).split("=", 1)[0].lstrip("+~")
        if key not in SWEEP_KEYS:
            keep.append(str(o))
    return keep


def _write_hydra_dir(cfg: DictConfig, run_dir: Path, hc: Any) -> None:
    """What Hydra writes into `.hydra/` (it does not under sweep resume, so that the records of
    jobs that already ran are never overwritten)."""
    from hydra.core.hydra_config import HydraConfig

    out = run_dir / ".hydra"
    rec.write_atomic(out / "config.yaml", OmegaConf.to_yaml(cfg))
    rec.write_atomic(out / "hydra.yaml", OmegaConf.to_yaml(HydraConfig.instance().cfg))
    rec.write_atomic(out / "overrides.yaml", OmegaConf.to_yaml(_task_overrides(hc)))


def _move_aside(run_dir: Path) -> Path:
    """Move a failed job's records under `.previous/<n>/` so it can start afresh."""
    n = 1
    while (run_dir / PREVIOUS / str(n)).exists():
        n += 1
    dest = run_dir / PREVIOUS / str(n)
    dest.mkdir(parents=True)
    for name in (rec.STATUS, rec.SUMMARY, rec.METRICS, rec.CHECKPOINTS):
        if (run_dir / name).exists():
            shutil.move(str(run_dir / name), str(dest / name))
    return dest


def _resume_plan(run_dir: Path, rerun_failed: bool) -> str:
    """fresh | skip | resume | rerun | keep-failed, from what the job dir holds."""
    if not (run_dir / ".hydra" / "config.yaml").exists():
        return "new"
    st = _status(run_dir)
    if st is None:
        return "fresh"  # launched, killed before its first record
    status = st.get("status")
    if status == "completed":
        return "skip"
    if status in ("interrupted", "running"):  # `running`: its process was killed
        return "resume" if (run_dir / rec.CHECKPOINTS / rec.LAST).exists() else "rerun"
    return "rerun" if rerun_failed else "keep-failed"


def run_sweep_job(
    cfg: DictConfig, run_dir: Path, hc: Any, job: dict[str, Any] | None = None
) -> float:
    """One job of a multirun (see the module docstring); returns its monitored metric or NaN."""
    from neurons.run import run_job

    set_job_default(*job_threads(hc))
    sweep_resume = bool(cfg.get("sweep_resume"))
    rerun_failed = bool(cfg.get("sweep_rerun_failed"))
    cfg = _strip(cfg)
    outcome: dict[str, Any] = {"status": "interrupted", "error": "interrupted"}
    try:
        plan = _resume_plan(run_dir, rerun_failed) if sweep_resume else "fresh"
        if plan == "new":
            _write_hydra_dir(cfg, run_dir, hc)
        if plan == "skip":
            log.info("sweep resume: %s already completed; skipped", run_dir)
        elif plan == "keep-failed":
            log.info(
                "sweep resume: %s failed before; not re-run (+sweep_rerun_failed=true)", run_dir
            )
        elif plan == "resume":
            st = _status(run_dir) or {}
            if st.get("status") == "running":  # no live process: the sweep was killed
                rec.write_status(run_dir, "interrupted", "killed while running (found by resume)")
            log.info("sweep resume: resuming %s from its last checkpoint", run_dir)
            rcfg = copy.deepcopy(cfg)
            rcfg.resume = str(run_dir)
            run_job(rcfg, run_dir, job=job)
        else:
            if plan == "rerun":
                log.info("sweep resume: re-running %s (old records in %s)", run_dir, PREVIOUS)
                _move_aside(run_dir)
            run_job(cfg, run_dir, job=job)
        st = _status(run_dir) or {"status": "failed", "error": f"no {rec.STATUS} written"}
        outcome = {"status": st.get("status"), "error": st.get("error")}
    finally:
        _write_outcome(run_dir, hc, outcome)
    return monitored_value(run_dir)


def _write_outcome(run_dir: Path, hc: Any, outcome: dict[str, Any]) -> None:
    sweep_dir = Path(hc.sweep.dir)
    value = monitored_value(run_dir)
    try:
        monitor = rec.read_json(run_dir / rec.SUMMARY)["best"]["monitor"]
    except (OSError, ValueError, KeyError, TypeError):
        monitor = None
    body = {
        "num": int(hc.job.num),
        "job": _rel(run_dir, sweep_dir),
        "overrides": _task_overrides(hc),
        "monitor": monitor,
        "value": None if math.isnan(value) else value,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
        **outcome,
    }
    rec.write_json(sweep_dir / OUTCOME.format(num=int(hc.job.num)), body)


def _rel(path: Path, root: Path) -> str:
    try:
        return Path(path).resolve().relative_to(Path(root).resolve()).as_posix()
    except ValueError:
        return Path(path).as_posix()


# --------------------------------------------------------------------------------- the sweep
def collect(sweep_dir: Path) -> list[dict[str, Any]]:
    """Every job's outcome in `sweep_dir`: the jobs' own records (`.neurons-job-*.json`), plus job
    directories with a status.json and no outcome (their process died), sorted by job number."""
    sweep_dir = Path(sweep_dir)
    jobs: dict[str, dict[str, Any]] = {}
    for p in sorted(sweep_dir.glob(OUTCOME.format(num="*"))):
        try:
            o = rec.read_json(p)
        except (OSError, ValueError):
            continue
        jobs[o["job"]] = o
    for cur, subdirs, files in os.walk(sweep_dir):
        subdirs[:] = [s for s in subdirs if not s.startswith(".")]
        if rec.STATUS in files:
            job = _rel(Path(cur), sweep_dir)
            if job not in jobs:
                st = _status(Path(cur)) or {}
                status = st.get("status") or "unknown"
                if status == "running":
                    status, st["error"] = "failed", "status `running`: its process died"
                jobs[job] = {"job": job, "num": None, "status": status, "error": st.get("error")}
            subdirs[:] = []
    return sorted(jobs.values(), key=lambda o: (o.get("num") is None, o.get("num") or 0, o["job"]))


def failed_jobs() -> list[dict[str, Any]]:
    """Jobs of the sweep this process launched that did not complete (for the exit code)."""
    return [o for o in _collected.get("jobs", []) if o.get("status") != "completed"]


def collected_sweep_dir() -> Path | None:
    return _collected.get("sweep_dir")


def _param_keys(config: DictConfig) -> list[str]:
    params = OmegaConf.select(config, "hydra.sweeper.params") or {}
    return [str(k) for k in params]


def write_search_results(sweep_dir: Path, jobs: list[dict[str, Any]], config: DictConfig) -> None:
    """`trials.csv` (one row per trial: params, status, value) and `best.json` for a search."""
    keys = _param_keys(config)
    dirn = str(OmegaConf.select(config, "hydra.sweeper.direction") or "minimize")
    rows = []
    for o in jobs:
        ov = dict(str(s).lstrip("+").split("=", 1) for s in o.get("overrides", []) if "=" in s)
        row = {"trial": o.get("num"), "job": o["job"], "status": o.get("status")}
        row.update({k: ov.get(k) for k in keys})
        row.update({"monitor": o.get("monitor"), "value": o.get("value")})
        rows.append(row)
    buf = io.StringIO()
    fields = ["trial", "job", "status", *keys, "monitor", "value"]
    w = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    w.writeheader()
    w.writerows({k: ("" if v is None else v) for k, v in r.items()} for r in rows)
    rec.write_atomic(Path(sweep_dir) / TRIALS, buf.getvalue())
    done = [r for r in rows if r["status"] == "completed" and r["value"] is not None]
    if not done:
        return
    pick = max if dirn == "maximize" else min
    best = pick(done, key=lambda r: r["value"])
    body = {
        "direction": dirn,
        "monitor": best["monitor"],
        "value": best["value"],
        "params": {k: yaml.safe_load(str(best[k])) for k in keys},
        "trial": best["trial"],
        "job": best["job"],
        "trials": len(rows),
        "completed": len(done),
    }
    rec.write_json(Path(sweep_dir) / BEST, body)


class SweepCallback(Callback):
    """Hydra callback (conf/config.yaml `hydra.callbacks`): collects job outcomes in the
    launching process after a multirun, and writes the search results of an Optuna sweep."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        _collected.clear()
        _memo.clear()
        _collected["sweep_dir"] = Path(str(config.hydra.sweep.dir))
        if "joblib" in str(config.hydra.launcher.get("_target_", "")).lower():
            ship_composed_configs()  # here, not at start-up: importing joblib costs ~0.1 s
        warm_workers(config.hydra.launcher)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        _memo.clear()
        sweep_dir = Path(str(config.hydra.sweep.dir))
        jobs = collect(sweep_dir)
        _collected.update(sweep_dir=sweep_dir, jobs=jobs)
        target = str(OmegaConf.select(config, "hydra.sweeper._target_") or "")
        if "optuna" in target.lower():
            write_search_results(sweep_dir, jobs, config)
        rec.write_json(sweep_dir / SWEEP_OUTCOMES, {"jobs": jobs})
        bad = [o for o in jobs if o.get("status") != "completed"]
        log.info("sweep: %d of %d jobs completed in %s", len(jobs) - len(bad), len(jobs), sweep_dir)


def check_resume_args(argv: list[str]) -> str | None:
    """An error message when `+sweep_resume=true` is not given an existing sweep directory (it
    would otherwise start the whole sweep over in a new one); None when all is well."""
    flags = {a.split("=", 1)[0].lstrip("+"): a.split("=", 1)[1] for a in argv if "=" in a}
    if str(flags.get("sweep_resume", "false")).lower() not in ("true", "1", "yes"):
        return None
    where = flags.get("hydra.sweep.dir")
    if where is None:
        return "sweep_resume: expected hydra.sweep.dir=<the sweep's directory>, found none"
    if not Path(where).is_dir():
        return f"sweep_resume: expected hydra.sweep.dir to be an existing sweep, found {where!r}"
    return None


def describe_failures(failed: list[dict[str, Any]], sweep_dir: Path | None, total: int) -> str:
    """The one message `python -m neurons -m` prints when jobs failed."""
    where = f" in {sweep_dir}" if sweep_dir else ""
    lines = [f"neurons: {len(failed)} of {total} job(s) did not complete{where}:"]
    for o in failed:
        err = str(o.get("error") or "").strip().splitlines()
        lines.append(f"  {o['job']}: {o.get('status')}" + (f": {err[0]}" if err else ""))
    return "\n".join(lines)


def total_jobs() -> int:
    return len(_collected.get("jobs", []))


__all__ = [
    "SweepCallback",
    "collect",
    "describe_failures",
    "direction",
    "failed_jobs",
    "job_threads",
    "monitored_value",
    "register_sweep_resolvers",
    "run_sweep_job",
    "write_search_results",
]
