"""Structured-config schema: typed dataclasses for every config group but `arch` and `optimizer`.

Hydra merges the YAML groups into these, so a wrong type (`train.epochs=abc`) or an unknown key
fails at compose time with the key named. Value ranges, the recursive `arch` mapping and the
optimizer (whose class in `neurons.optim` declares its keys) are checked by `neurons.config`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from neurons.compat.flags import CompatConfig
from neurons.data.config import DatasetConfig
from neurons.loggers import LoggerConfig
from neurons.optim import CosineLR, Schedule, StepLR


@dataclass
class ObjectiveConfig:
    name: str = "auto"  # auto = cross_entropy for classification, mse for regression


@dataclass
class EarlyStoppingConfig:
    enabled: bool = False
    patience: int = 10  # evaluations without improvement before stopping
    min_delta: float = 0.0
    monitor: str = "val_loss"  # val_loss | val_acc | train_loss | train_acc
    mode: str = "auto"  # min | max | auto
    restore_best: bool = False  # load the best weights when training ends


def _default(schedule: type[Schedule], key: str) -> Any:
    return schedule.hparams[key].default


@dataclass
class ScheduleConfig:
    """`train.schedule`: the keys of every schedule in SCHEDULES (each uses its own, see optim)."""

    name: str = "constant"  # constant | step | exponential | cosine
    step_size: int = 10  # step: epochs between decays
    gamma: float = _default(StepLR, "gamma")  # step / exponential: decay factor
    min_lr: float = _default(CosineLR, "min_lr")  # cosine: final learning rate
    warmup_epochs: int = _default(Schedule, "warmup_epochs")  # linear warm-up epochs first
    warmup_start_factor: float = _default(Schedule, "warmup_start_factor")  # starts at lr * this


@dataclass
class TrainConfigSchema:
    epochs: int = 10
    batch_size: int = 32
    shuffle: bool = True  # reshuffle the training split every epoch (seeded)
    eval_every: int = 1  # epochs between validation passes
    eval_batch_size: int = 512
    clip_value: float | None = None  # clamp the output gradient to [-v, v]
    clip_norm: float | None = None  # clip parameter gradients to this global L2 norm
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    threads: int | None = None  # numba and BLAS threads; null = all cores
    checkpoint_every: int = 1  # epochs between `last` checkpoints (0 = only at the end)
    checkpoint_min_seconds: float = 1.0  # at most one checkpoint per this many seconds
    progress: bool = True  # tqdm bars (only when stderr is a terminal)
    dtype: str = "float32"  # float32 | float64
    lsuv_batch: int = 512  # samples used by LSUV initialisation (layers with init: lsuv)


@dataclass
class DebugConfig:
    """Set by the `debug` presets (conf/debug/*.yaml); applied by `neurons.debug`."""

    limit_batches: int | None = None  # train only the first N batches of each epoch
    overfit_batches: int | None = None  # train and validate on the same first N batches
    overfit_repeats: int = 1  # passes over those batches per epoch (fewer, longer epochs)
    target_loss: float | None = None  # stop once train_loss <= this
    checkpoints: bool = True  # false: write no checkpoints
    profile: bool = False  # time a few steps per layer (forward, backward) and log the table
    profile_steps: int = 5  # timed steps (after one warm-up step)


@dataclass
class Config:
    arch: Any = MISSING  # a mapping checked by neurons.config (layers, skips, loops, output)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    # an optimizer/ config: `name` (a key of neurons.optim.OPTIMIZERS) and its class's hparams
    optimizer: dict[str, Any] = field(default_factory=lambda: {"name": "adam"})
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    train: TrainConfigSchema = field(default_factory=TrainConfigSchema)
    compat: CompatConfig = field(default_factory=CompatConfig)  # the original crate's quirks
    seed: int = 0  # seeds the one np.random.Generator of the run (init, shuffles, dropout)
    resume: str | None = None  # a run directory to continue from its last checkpoint
    tag: str | None = None  # free-form label recorded with the run
    debug: DebugConfig = field(default_factory=DebugConfig)  # see conf/debug/
    logger: LoggerConfig = field(default_factory=LoggerConfig)  # conf/logger: csv, tensorboard, ...


def register_schema() -> None:
    """Store the schema as `schema` for `conf/config.yaml`'s defaults list."""
    ConfigStore.instance().store(name="schema", node=Config)
