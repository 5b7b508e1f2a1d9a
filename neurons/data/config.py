"""`DatasetConfig`: the typed `dataset:` config node, and `validate_config` that checks it
(general rules here, each dataset's own from its spec in `builtin.DATASETS`).

This module only describes and checks settings; it reads no files (see `builtin.py`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .builtin import DATASETS
from .errors import bad_value

TASKS: tuple[str, ...] = ("classification", "regression")
NORMALIZATIONS: tuple[str, ...] = ("none", "scale", "standardize", "minmax")
TARGET_NORMALIZATIONS: tuple[str, ...] = ("none", "standardize", "minmax")
SHUFFLES: tuple[str, ...] = ("numpy", "upstream")


@dataclass
class DatasetConfig:
    """One dataset and how to prepare it. Every field is a plain scalar or list (Hydra-friendly).

    `None` for `task`/`normalize` means "the dataset's default" (see `conf/dataset/*.yaml`).
    """

    name: str = "xor"  # a key of DATASETS (neurons/data/builtin.py)
    title: str | None = None  # name recorded in results (presets: "ftir", "bike"); None = name
    task: str | None = None  # classification | regression; None = dataset default
    path: str | None = None  # explicit file (csv) or directory (idx / cifar files)
    download: bool = True  # allow downloading from the public mirrors into the data dir
    normalize: str | None = None  # none | scale | standardize | minmax; None = dataset default
    normalize_targets: str = "none"  # regression targets: none | standardize | minmax (train stats)
    downsample: int = 1  # k x k average pooling of images (2: 28x28 -> 14x14)
    flatten: bool = False  # images (C,H,W) -> vectors (C*H*W,)
    limit: int | None = None  # use a seeded random subset of this many training samples
    eval_limit: int | None = None  # same for the validation and test splits
    val_split: float = 0.0  # fraction of train carved as validation; 0 = validate on the test split
    test_split: float = 0.2  # held-out test fraction for datasets without their own test split
    split_seed: int = 0  # seed of every shuffle / carve / subset (np.random.default_rng)
    shuffle: str = "numpy"  # shuffle before a fractional test split: numpy | upstream (minstd LCG)
    # --- csv only -------------------------------------------------------------------------------
    filename: str | None = None  # file looked up in the data directory when `path` is unset
    missing_hint: str | None = None  # where to get the file, shown when it is missing
    features: list[str] = field(default_factory=list)  # columns; "a..b" ranges; "#3" = 4th column
    exclude: list[str] = field(default_factory=list)  # columns never used as features
    targets: list[str] = field(default_factory=list)  # regression target column(s)
    class_column: str | None = None  # classification label column
    classes: list[str] = field(default_factory=list)  # allowed labels in order; [] = sorted found
    split_column: str | None = None  # column with Train / Val / Test per row
    delimiter: str = ","


def _one_of(key: str, value: object, allowed: tuple[str, ...], optional: bool) -> None:
    if value is None and optional:
        return
    if value not in allowed:
        raise bad_value(
            key, "one of " + ", ".join(allowed) + (" (or null)" if optional else ""), value
        )


def validate_config(cfg: DatasetConfig) -> None:
    """Check every value; raise `DatasetError` naming `dataset.<key>`, what is allowed and found."""
    _one_of("name", cfg.name, tuple(DATASETS), optional=False)
    _one_of("task", cfg.task, TASKS, optional=True)
    _one_of("normalize", cfg.normalize, NORMALIZATIONS, optional=True)
    _one_of("normalize_targets", cfg.normalize_targets, TARGET_NORMALIZATIONS, optional=False)
    _one_of("shuffle", cfg.shuffle, SHUFFLES, optional=False)
    for key in ("downsample", "split_seed"):
        value = getattr(cfg, key)
        if not isinstance(value, int) or isinstance(value, bool):
            raise bad_value(key, "an integer", value)
    if cfg.split_seed < 0:
        raise bad_value("split_seed", "an integer >= 0", cfg.split_seed)
    for key in ("val_split", "test_split"):
        value = getattr(cfg, key)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise bad_value(key, "a number", value)
    if cfg.downsample < 1:
        raise bad_value("downsample", "an integer >= 1 (1 = no pooling)", cfg.downsample)
    for key in ("limit", "eval_limit"):
        value = getattr(cfg, key)
        bad_type = not isinstance(value, int) or isinstance(value, bool)
        if value is not None and (bad_type or value < 1):
            raise bad_value(key, "null or an integer >= 1", value)
    if not 0.0 <= float(cfg.val_split) < 1.0:
        allowed = "a fraction in [0, 1) (0 = validate on the test split)"
        raise bad_value("val_split", allowed, cfg.val_split)
    if not 0.0 < float(cfg.test_split) < 1.0:
        raise bad_value("test_split", "a fraction in (0, 1)", cfg.test_split)
    if not isinstance(cfg.delimiter, str) or len(cfg.delimiter) != 1:
        raise bad_value("delimiter", "a single character", cfg.delimiter)
    spec = DATASETS[cfg.name]
    if not spec.reads_files and cfg.path is not None:
        allowed = f"null ({cfg.name} is generated or bundled, it reads no file)"
        raise bad_value("path", allowed, cfg.path)
    if spec.check is not None:
        spec.check(cfg)
    if cfg.task is None and spec.task is None:
        allowed = f"{' or '.join(spec.tasks)} ({cfg.name} has no default task)"
        raise bad_value("task", allowed, None)
    if cfg.task is not None and cfg.task not in spec.tasks:
        only = f"the only task of {cfg.name}" if len(spec.tasks) == 1 else f"{cfg.name}'s tasks"
        raise bad_value("task", f"{' or '.join(spec.tasks)} ({only})", cfg.task)
    if cfg.normalize == "scale" and spec.pixel_max is None:
        allowed = f"none, standardize or minmax ({cfg.name} has no nominal range)"
        raise bad_value("normalize", allowed, "scale")
