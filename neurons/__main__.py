"""`python -m neurons`: the Hydra entry point (the only module that imports `hydra.main`).

Composes the installed config tree (`pkg://neurons.conf`, after any user config dirs: see
`neurons.searchpath`) into a config, hands it to `neurons.run.run_job` (a sweep's jobs through
`neurons.sweep.run_sweep_job`) and exits non-zero when a run, or any job of a sweep under any
launcher, failed, naming the jobs; failing jobs do not stop a sweep.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from neurons import sweep
from neurons.config import register_resolvers
from neurons.schema import register_schema
from neurons.searchpath import (
    ConfigDirError,
    install,
    normalize_overrides,
    split_config_dir,
    user_config_dirs,
)

register_resolvers()
register_schema()
sweep.register_sweep_resolvers()
_failed: list[str] = []


@hydra.main(version_base="1.3", config_path="pkg://neurons.conf", config_name="config")
def _job(cfg: DictConfig) -> float | None:
    from neurons.run import run_job

    hc = HydraConfig.get()
    if cfg.get("resume") and str(hc.mode) == "RunMode.MULTIRUN":
        logging.getLogger("neurons").error("resume: cannot be combined with --multirun")
        _failed.append("resume")
        return None
    run_dir = Path(hc.runtime.output_dir)
    if str(hc.mode) == "RunMode.MULTIRUN":  # outcomes collected by neurons.sweep.SweepCallback
        return sweep.run_sweep_job(cfg, run_dir, hc, job=_job_info(hc))
    if not run_job(cfg, run_dir, overrides=list(hc.overrides.task), job=_job_info(hc)):
        _failed.append(str(run_dir))
    return sweep.monitored_value(run_dir)


def _completion_config_dir() -> str | None:
    """Tab completion: `--config-dir` of the line being completed (COMP_LINE), if it exists."""
    try:
        found, _ = split_config_dir(os.environ.get("COMP_LINE", "").split()[1:])
    except ConfigDirError:  # `-cd` with nothing after it yet
        return None
    return found if found is not None and os.path.isdir(found) else None


def _job_info(hc: DictConfig) -> dict:
    """What the experiment-tracking loggers need from Hydra, as plain values."""
    multi = str(hc.mode) == "RunMode.MULTIRUN"
    return {
        "mode": "multirun" if multi else "run",
        "sweep_dir": str(hc.sweep.dir) if multi else None,
        "num": int(hc.job.num) if multi else None,
        "name": str(hc.job.name),
        "cwd": str(hc.runtime.cwd),
        "overrides": list(hc.overrides.task),
        "choices": {k: v for k, v in hc.runtime.choices.items() if not k.startswith("hydra/")},
    }


def main() -> None:
    from neurons.run import signals_as_interrupt

    logging.raiseExceptions = False  # a full disk under run.log must not print tracebacks
    bad = sweep.check_resume_args(sys.argv[1:])
    if bad:
        print(f"neurons: {bad}", file=sys.stderr)
        sys.exit(2)
    try:
        config_dir, rest = split_config_dir(sys.argv[1:])
        if config_dir is None and {"-sc", "--shell-completion"} & set(rest):
            config_dir = _completion_config_dir()
        user_config_dirs(config_dir)  # fail now, naming the flag or variable, if one is missing
        install(config_dir)
    except ConfigDirError as e:
        print(f"neurons: {e}", file=sys.stderr)
        sys.exit(2)
    sys.argv[1:] = normalize_overrides(rest)
    sweep.compose_each_job_once()
    try:
        with signals_as_interrupt():  # SIGTERM and Ctrl-C are interrupts from the very start
            _job()
    except KeyboardInterrupt:
        sys.exit(130)
    failed = sweep.failed_jobs()
    if failed:
        msg = sweep.describe_failures(failed, sweep.collected_sweep_dir(), sweep.total_jobs())
        print(msg, file=sys.stderr)
        sys.exit(1)
    if _failed:
        print(
            f"neurons: {len(_failed)} run(s) failed; see status.json in: " + ", ".join(_failed),
            file=sys.stderr,
        )
        sys.exit(1)


if __name__ == "__main__":
    main()
