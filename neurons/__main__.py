"""`python -m neurons`: the Hydra entry point (the only module that imports `hydra.main`).

Composes conf/ into a config, hands it to `neurons.run.run_job` with the run directory, and
exits non-zero when a run (or any job of a sweep) failed; failing jobs do not stop a sweep.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from neurons.config import register_resolvers
from neurons.schema import register_schema

register_resolvers()
register_schema()
_failed: list[str] = []


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def _job(cfg: DictConfig) -> None:
    from neurons.run import run_job

    hc = HydraConfig.get()
    if cfg.get("resume") and str(hc.mode) == "RunMode.MULTIRUN":
        logging.getLogger("neurons").error("resume: cannot be combined with --multirun")
        _failed.append("resume")
        return
    run_dir = Path(hc.runtime.output_dir)
    if not run_job(cfg, run_dir, overrides=list(hc.overrides.task)):
        _failed.append(str(run_dir))


def main() -> None:
    from neurons.run import signals_as_interrupt

    logging.raiseExceptions = False  # a full disk under run.log must not print tracebacks
    try:
        with signals_as_interrupt():  # SIGTERM and Ctrl-C are interrupts from the very start
            _job()
    except KeyboardInterrupt:
        sys.exit(130)
    if _failed:
        print(
            f"neurons: {len(_failed)} run(s) failed; see status.json in: " + ", ".join(_failed),
            file=sys.stderr,
        )
        sys.exit(1)


if __name__ == "__main__":
    main()
