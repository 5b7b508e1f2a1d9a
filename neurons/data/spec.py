"""What a dataset is to `load_dataset`: a `DatasetSpec` (its source function, default
preprocessing, tasks, whether it reads files, its shape when known) and `Raw`, what a source
returns; plus the split helpers sources share. Reads no files; the table is `builtin.DATASETS`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .errors import DatasetError

if TYPE_CHECKING:
    from .config import DatasetConfig


@dataclass
class Raw:
    """What a source yields before the common preparation (labels are ints or float targets)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray | None
    y_test: np.ndarray | None
    source: str
    classes: list[str] | None = None
    x_val: np.ndarray | None = None
    y_val: np.ndarray | None = None
    task: str = "classification"
    feature_names: list[str] | None = None


@dataclass(frozen=True)
class DatasetSpec:
    """One dataset: `load(cfg) -> Raw` and what the config layer may assume before reading it."""

    load: Callable[[DatasetConfig], Raw]
    tasks: tuple[str, ...] = ("classification",)  # the tasks `dataset.task` may name
    task: str | None = "classification"  # the default task; None: `dataset.task` is required
    normalize: str = "none"  # the default `dataset.normalize`
    pixel_max: float | None = None  # nominal maximum of the values (`normalize: scale` needs it)
    reads_files: bool = True  # False: generated or bundled, `dataset.path` must stay null
    shape: tuple[tuple[int, ...], int] | None = None  # (sample shape, classes) known unread
    check: Callable[[DatasetConfig], None] | None = None  # further rules on its config keys


# ------------------------------------------------------------------------------------------------
# splitting helpers for sources


def upstream_permutation(n: int, seed: int) -> np.ndarray:
    """The original crate's shuffle: minstd LCG (x <- 48271 x mod 2^31-1), f32 maths, swap(i, j)."""
    idx = np.arange(n)
    x = int(seed) % (2**31 - 1) or 1
    denom, fn = np.float32(2**31 - 2), np.float32(n)
    for i in range(n):
        x = (48271 * x) % (2**31 - 1)
        j = min(int(np.floor(np.float32(np.float32(x) / denom) * fn)), n - 1)
        idx[i], idx[j] = idx[j], idx[i]
    return idx


def fraction_split(raw: Raw, cfg: DatasetConfig, what: str) -> Raw:
    """Shuffle (numpy or upstream) and hold out the last `test_split` fraction as the test split."""
    n = raw.x_train.shape[0]
    if cfg.shuffle == "upstream":
        perm = upstream_permutation(n, cfg.split_seed)
    else:
        perm = np.random.default_rng(cfg.split_seed).permutation(n)
    n_train = int(np.floor((1.0 - cfg.test_split) * n))
    if n_train < 1 or n_train >= n:
        raise DatasetError(
            f"{what}: dataset.test_split={cfg.test_split} leaves an empty split "
            f"({n_train} train / {n - n_train} test of {n} samples)"
        )
    tr, te = perm[:n_train], perm[n_train:]
    raw.x_test, raw.y_test = raw.x_train[te], raw.y_train[te]
    raw.x_train, raw.y_train = raw.x_train[tr], raw.y_train[tr]
    raw.source += f"; shuffled ({cfg.shuffle}, seed {cfg.split_seed}) {n_train}/{n - n_train} split"
    return raw
