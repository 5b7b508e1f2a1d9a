"""`DatasetConfig`: the typed `dataset:` config node, and `validate_config` that checks it.

This module only describes and checks settings; it reads no files (see `loaders.py`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .errors import DatasetError

DATASETS: tuple[str, ...] = (
    "xor",
    "and",
    "iris",
    "digits",
    "mnist",
    "fashion_mnist",
    "cifar10",
    "csv",
)
TASKS: tuple[str, ...] = ("classification", "regression")
NORMALIZATIONS: tuple[str, ...] = ("none", "scale", "standardize", "minmax")
TARGET_NORMALIZATIONS: tuple[str, ...] = ("none", "standardize", "minmax")
SHUFFLES: tuple[str, ...] = ("numpy", "upstream")


@dataclass
class DatasetConfig:
    """One dataset and how to prepare it. Every field is a plain scalar or list (Hydra-friendly).

    `None` for `task`/`normalize` means "the dataset's default" (see `conf/dataset/*.yaml`).
    """

    name: str = "xor"  # one of DATASETS
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


def _bad(key: str, allowed: str, found: object) -> DatasetError:
    return DatasetError(f"dataset.{key}: expected {allowed}; got {found!r}")


def _one_of(key: str, value: object, allowed: tuple[str, ...], optional: bool) -> None:
    if value is None and optional:
        return
    if value not in allowed:
        raise _bad(key, "one of " + ", ".join(allowed) + (" (or null)" if optional else ""), value)


def validate_config(cfg: DatasetConfig) -> None:
    """Check every value; raise `DatasetError` naming `dataset.<key>`, what is allowed and found."""
    _one_of("name", cfg.name, DATASETS, optional=False)
    _one_of("task", cfg.task, TASKS, optional=True)
    _one_of("normalize", cfg.normalize, NORMALIZATIONS, optional=True)
    _one_of("normalize_targets", cfg.normalize_targets, TARGET_NORMALIZATIONS, optional=False)
    _one_of("shuffle", cfg.shuffle, SHUFFLES, optional=False)
    for key in ("downsample", "split_seed"):
        value = getattr(cfg, key)
        if not isinstance(value, int) or isinstance(value, bool):
            raise _bad(key, "an integer", value)
    if cfg.split_seed < 0:
        raise _bad("split_seed", "an integer >= 0", cfg.split_seed)
    for key in ("val_split", "test_split"):
        value = getattr(cfg, key)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _bad(key, "a number", value)
    if cfg.downsample < 1:
        raise _bad("downsample", "an integer >= 1 (1 = no pooling)", cfg.downsample)
    for key in ("limit", "eval_limit"):
        value = getattr(cfg, key)
        bad_type = not isinstance(value, int) or isinstance(value, bool)
        if value is not None and (bad_type or value < 1):
            raise _bad(key, "null or an integer >= 1", value)
    if not 0.0 <= float(cfg.val_split) < 1.0:
        allowed = "a fraction in [0, 1) (0 = validate on the test split)"
        raise _bad("val_split", allowed, cfg.val_split)
    if not 0.0 < float(cfg.test_split) < 1.0:
        raise _bad("test_split", "a fraction in (0, 1)", cfg.test_split)
    if not isinstance(cfg.delimiter, str) or len(cfg.delimiter) != 1:
        raise _bad("delimiter", "a single character", cfg.delimiter)
    if cfg.name in ("xor", "and", "iris", "digits") and cfg.path is not None:
        raise _bad("path", f"null ({cfg.name} is generated or bundled, it reads no file)", cfg.path)
    if cfg.name in ("xor", "and", "iris", "digits", "mnist", "fashion_mnist", "cifar10"):
        if cfg.task is not None and cfg.task != "classification" and cfg.name not in ("xor", "and"):
            raise _bad("task", f"classification (the only task of {cfg.name})", cfg.task)
    if cfg.name == "csv":
        if cfg.path is None and cfg.filename is None:
            allowed = "the CSV file to read (or dataset.filename in the data directory)"
            raise _bad("path", allowed, None)
        if cfg.task is None:
            raise _bad("task", "classification or regression (csv has no default task)", None)
        if cfg.task == "classification" and not cfg.class_column:
            raise _bad("class_column", "the label column (task=classification)", cfg.class_column)
        if cfg.task == "regression" and not cfg.targets:
            raise _bad("targets", "at least one target column (task=regression)", list(cfg.targets))
        if cfg.normalize == "scale":
            allowed = "none, standardize or minmax (csv has no nominal range)"
            raise _bad("normalize", allowed, "scale")
    elif cfg.name == "iris" and cfg.normalize == "scale":
        raise _bad("normalize", "none, standardize or minmax (iris has no nominal range)", "scale")
