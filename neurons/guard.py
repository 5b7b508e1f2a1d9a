"""The CLI's Hydra callback: refuse a bad config or an unusable run directory before Hydra
writes anything (`.hydra/`, `run.log`), and take the run directory's lock.

Only `python -m neurons` uses it (named in `conf/config.yaml` under `hydra.callbacks`); a
refusal prints one line and exits 1. The checks themselves live in `neurons.rundir` and
`neurons.preflight`, which `neurons.run.run_job` repeats for callers without Hydra.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from neurons import rundir
from neurons.config import ConfigError
from neurons.data import DatasetError
from neurons.layers import BuildError


def check_run(config: DictConfig) -> Path:
    """Check a single run's config and directory, then lock the directory; returns it."""
    overrides = list(OmegaConf.select(config, "hydra.overrides.task", default=[]) or [])
    if config.get("resume"):
        from neurons.run import _load_saved

        run_dir = Path(str(config.resume))
        rundir.check_resumable(run_dir)
        rundir.resume_config(_load_saved(run_dir), config, overrides)
    else:
        from neurons.preflight import preflight

        preflight(config)
        run_dir = Path(str(OmegaConf.select(config, "hydra.run.dir")))
        rundir.check_fresh(run_dir)
    rundir.acquire(run_dir)
    return run_dir


class RunGuard(Callback):
    """`on_run_start`: `check_run`, or print the refusal and exit 1."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            check_run(config)
        except (rundir.RunDirError, ConfigError, BuildError, DatasetError) as e:
            print(f"neurons: {e}", file=sys.stderr)
            raise SystemExit(1) from None
