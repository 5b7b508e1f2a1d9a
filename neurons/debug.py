"""The `debug` presets (conf/debug/*.yaml) applied to a built experiment, before training.

`prepare(cfg, exp, run_dir)` narrows the data (`debug.limit_batches`, `debug.overfit_*`),
profiles a few steps (`debug.profile`) and returns the hooks `run.py` needs: whether to write
checkpoints, extra epoch callbacks (`debug.target_loss`) and a closing check. It never trains.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from neurons import record as rec
from neurons.config import ConfigError, Experiment
from neurons.train import EpochCallback, TrainState

log = logging.getLogger("neurons")
PROFILE_FILE = "profile.json"


@dataclass
class DebugHooks:
    """What the run loop does differently under a debug preset (nothing, by default)."""

    checkpoints: bool = True
    callbacks: list[EpochCallback] = field(default_factory=list)
    target_loss: float | None = None

    def finish(self, state: TrainState, rows: list[dict]) -> None:
        """Warn when `debug.target_loss` was set and the training loss never reached it."""
        if self.target_loss is None or not rows:
            return
        last = rows[-1]["train_loss"]
        if not last <= self.target_loss:
            log.warning(
                "debug.target_loss: train_loss is still %.4g after %d epochs (target %.4g); "
                "the model cannot fit a few fixed batches: check the architecture, the "
                "objective and optimizer.lr",
                last,
                state.epoch,
                self.target_loss,
            )


def _positive(key: str, value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{key}: expected an integer >= 1 or null, found {value!r}")
    return int(value)


def _stop_at(target: float) -> EpochCallback:
    def stop(state: TrainState, row: dict, improved: bool) -> None:
        if row["train_loss"] <= target:
            log.info(
                "debug.target_loss: train_loss %.4g <= %.4g at epoch %d; stopping",
                row["train_loss"],
                target,
                state.epoch,
            )
            state.stopped_early = True

    return stop


def prepare(cfg: Any, exp: Experiment, run_dir: Path) -> DebugHooks:
    """Apply `cfg.debug` (absent in configs saved before it existed: no-op) to `exp`."""
    d = cfg.get("debug") if hasattr(cfg, "get") else None
    if d is None:
        return DebugHooks()
    limit = _positive("debug.limit_batches", d.get("limit_batches"))
    overfit = _positive("debug.overfit_batches", d.get("overfit_batches"))
    if limit and overfit:
        raise ConfigError(
            "debug: expected at most one of limit_batches and overfit_batches, found both "
            f"(limit_batches={limit}, overfit_batches={overfit})"
        )
    target = d.get("target_loss")
    if target is not None and (
        isinstance(target, bool) or not isinstance(target, int | float) or not math.isfinite(target)
    ):
        raise ConfigError(f"debug.target_loss: expected a finite number or null, found {target!r}")
    ds, bs = exp.dataset, int(exp.train.batch_size)
    if overfit:
        repeats = _positive("debug.overfit_repeats", d.get("overfit_repeats", 1)) or 1
        n = min(overfit * bs, ds.n_train)
        ds.x_val, ds.y_val = ds.x_train[:n], ds.y_train[:n]
        # (n, ...) -> (repeats * n, ...): the same batches, in order, `repeats` times an epoch
        ds.x_train = np.concatenate([ds.x_val] * repeats)
        ds.y_train = np.concatenate([ds.y_val] * repeats)
        ds.validation = f"debug.overfit_batches: the {n} training samples"
        ds.preprocessing = ", ".join(p for p in (ds.preprocessing, f"overfit {n}x{repeats}") if p)
        log.info(
            "debug: overfitting %d fixed batch(es) (%d samples), %d pass(es) per epoch",
            overfit,
            n,
            repeats,
        )
    elif limit:
        n = min(limit * bs, ds.n_train)
        ds.x_train, ds.y_train = ds.x_train[:n], ds.y_train[:n]
        ds.preprocessing = ", ".join(p for p in (ds.preprocessing, f"limit_batches {limit}") if p)
        log.info("debug: %d training batch(es) per epoch (%d samples)", limit, n)
    if d.get("profile"):
        from neurons.profile import format_profile, profile_steps

        steps = _positive("debug.profile_steps", d.get("profile_steps", 5)) or 5
        rows = profile_steps(
            exp.network,
            exp.objective,
            exp.optimizer,
            ds.x_train,
            ds.y_train,
            exp.train,
            steps=steps,
        )
        rec.write_json(Path(run_dir) / PROFILE_FILE, rows)
        log.info("debug.profile: time per training step\n%s", format_profile(rows))
    hooks = DebugHooks(checkpoints=bool(d.get("checkpoints", True)), target_loss=target)
    if target is not None:
        hooks.callbacks.append(_stop_at(float(target)))
    return hooks
