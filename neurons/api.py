"""A small Python API for notebooks: compose a config, train it, load a sweep for the comparison.

`compose` reads the same configs as the command line (user config dirs first, then the installed
`pkg://neurons.conf`; see `neurons.searchpath`); `fit` trains one job in-process through the same
`neurons.run.run_job` as `python -m neurons`, into a run directory of the same layout;
`load_sweep` reads run directories for `neurons.compare`. No second training loop lives here.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import DictConfig, OmegaConf, open_dict

from neurons import record as rec
from neurons.config import register_resolvers
from neurons.schema import register_schema
from neurons.searchpath import install, normalize_overrides, user_config_dirs

__all__ = ["Run", "RunFailed", "Sweep", "compose", "fit", "load_sweep"]

PathLike = str | os.PathLike


class RunFailed(RuntimeError):
    """`fit` finished without completing; the message names the run directory and the error."""

    def __init__(self, message: str, run_dir: Path) -> None:
        super().__init__(message)
        self.run_dir = run_dir


@dataclass
class Run:
    """A finished run: its directory, per-epoch metrics and `summary.json`."""

    run_dir: Path
    metrics: pd.DataFrame  # metrics.csv: epoch, step, seconds, wall, lr, train_*, val_*
    summary: dict[str, Any]  # summary.json: final, best, probes, test, params, timings, ...
    config: DictConfig = field(repr=False)


@dataclass
class Sweep:
    """One or more sweep (or run) directories loaded by `neurons.compare.load_runs`."""

    curves: pd.DataFrame  # one row per job x epoch
    jobs: pd.DataFrame  # one row per job (summary, status, choices, config)

    def table(self) -> pd.DataFrame:
        """Mean +- std of each variant's metrics (`neurons.compare.summary_table`)."""
        from neurons.compare import summary_table

        return summary_table(self.curves, self.jobs)


def _compose(
    overrides: Sequence[str], config_dir: PathLike | None, config_name: str
) -> tuple[DictConfig, list[str]]:
    """The composed config with its `hydra` node (run dir, group choices), and the overrides."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module

    register_resolvers()
    register_schema()
    if isinstance(overrides, str):
        raise TypeError(f"overrides: expected a list of strings, found the string {overrides!r}")
    overrides = normalize_overrides([str(o) for o in overrides])
    user_config_dirs(config_dir)  # a missing directory fails here, naming where it came from
    install(config_dir)
    try:
        with initialize_config_module(config_module="neurons.conf", version_base="1.3"):
            cfg = hydra_compose(
                config_name=config_name, overrides=overrides, return_hydra_config=True
            )
    finally:
        install(None)
    return cfg, overrides


def compose(
    overrides: Sequence[str] = (),
    *,
    config_dir: PathLike | None = None,
    config_name: str = "config",
) -> DictConfig:
    """Compose the run config from command-line style overrides, e.g. `["arch=mlp_skip"]`.

    `config_dir` is searched first, like `--config-dir` on the command line (then
    `$NEURONS_CONFIG_DIR`, `./conf` and the built-in groups). Bad overrides raise Hydra's error
    naming the key or the group's options.
    """
    cfg, _ = _compose(overrides, config_dir, config_name)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


def _write_hydra_dir(run_dir: Path, cfg: DictConfig, hydra: Any, overrides: list[str]) -> None:
    """`.hydra/` as the command line writes it: config.yaml, overrides.yaml and the parts of
    hydra.yaml that describe the job (group choices, overrides)."""
    d = run_dir / ".hydra"
    d.mkdir(parents=True, exist_ok=True)
    rec.write_atomic(d / "config.yaml", OmegaConf.to_yaml(cfg))
    rec.write_atomic(d / "overrides.yaml", OmegaConf.to_yaml(OmegaConf.create(list(overrides))))
    if hydra is not None:
        node = {
            "hydra": {
                "mode": "RUN",
                "runtime": {"choices": OmegaConf.to_container(hydra.runtime.choices)},
                "overrides": {"task": list(overrides)},
                "job": {"name": "neurons"},
            }
        }
        rec.write_atomic(d / "hydra.yaml", OmegaConf.to_yaml(OmegaConf.create(node)))


def fit(
    config: DictConfig | Sequence[str] = (),
    *,
    run_dir: PathLike | None = None,
    config_dir: PathLike | None = None,
) -> Run:
    """Train one run and return it; raises `RunFailed` when it fails.

    (Named `fit`, Keras-style, because `neurons.train` is the training-loop module.)

    `config` is either a list of overrides (composed as `compose` does; the group choices and
    overrides are recorded for `neurons.compare`) or a config returned by `compose`. `run_dir`
    defaults to `runs/<date>/<time>-<id>` under the current directory, as on the command line.
    The log goes to `run_dir/run.log` (and to any handler of the `neurons` logger).
    """
    from neurons.run import run_job

    if isinstance(config, DictConfig):
        cfg, hydra, overrides = config.copy(), None, []
        if "hydra" in cfg:
            hydra = cfg.hydra
            with open_dict(cfg):
                del cfg["hydra"]
        default_dir = cfg.get("resume") or _default_run_dir()
    else:
        cfg, overrides = _compose(config, config_dir, "config")
        hydra = cfg.hydra
        default_dir = str(hydra.run.dir)
        with open_dict(cfg):
            del cfg["hydra"]
    out = Path(run_dir if run_dir is not None else default_dir)
    if not cfg.get("resume"):
        _write_hydra_dir(out, cfg, hydra, overrides)
    out.mkdir(parents=True, exist_ok=True)
    log = logging.getLogger("neurons")
    handler = logging.FileHandler(out / "run.log", encoding="utf-8")
    handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
    old_level = log.level
    log.addHandler(handler)
    if log.getEffectiveLevel() > logging.INFO:
        log.setLevel(logging.INFO)
    try:
        ok = run_job(cfg, out, progress=False)
    finally:
        log.removeHandler(handler)
        handler.close()
        log.setLevel(old_level)
    status = rec.read_json(out / rec.STATUS)
    if not ok:
        raise RunFailed(
            f"run {out} ended with status {status.get('status')!r}: {status.get('error')}", out
        )
    saved = OmegaConf.load(out / ".hydra" / "config.yaml")
    return Run(
        run_dir=out,
        metrics=pd.read_csv(out / rec.METRICS),
        summary=rec.read_json(out / rec.SUMMARY),
        config=saved,  # type: ignore[arg-type]
    )


def _default_run_dir() -> str:
    from neurons.config import _run_dir

    return _run_dir()


def load_sweep(*dirs: PathLike) -> Sweep:
    """Load sweep (or single run) directories for `neurons.compare`'s plots and tables."""
    from neurons.compare import load_runs

    if not dirs:
        raise ValueError("load_sweep: expected at least one sweep or run directory, found none")
    curves, jobs = load_runs([Path(d) for d in dirs])
    return Sweep(curves=curves, jobs=jobs)
