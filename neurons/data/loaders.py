"""`load_dataset(cfg) -> Dataset`: a dataset's source (its spec in `builtin.DATASETS`), then the
pipeline split -> limit -> prepare inputs -> encode targets. No global RNG is touched.

Where sources look for files and how they read them is `builtin.py`'s; this module prepares.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .builtin import DATASETS
from .config import DatasetConfig, validate_config
from .errors import DatasetError
from .spec import Raw

log = logging.getLogger("neurons.data")


@dataclass
class Dataset:
    """Arrays ready for training: x float32 (N, *sample_shape), y float32 (N, n_outputs).

    Images are (C, H, W), tabular samples (D,). Classification targets are one-hot; regression
    targets are float columns (scaled as `(t - target_shift) / target_scale` when normalised).
    """

    name: str
    task: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray | None
    y_test: np.ndarray | None
    sample_shape: tuple[int, ...]
    n_outputs: int
    classes: list[str] | None
    source: str
    validation: str = ""  # where x_val comes from (own split, carved from train, the test split)
    preprocessing: str = ""  # e.g. "normalize=scale(/255), downsample=2"
    target_shift: np.ndarray | None = None
    target_scale: np.ndarray | None = None
    feature_names: list[str] | None = field(default=None, repr=False)
    # inputs are prepared as `(downsample(x) - x_shift) / x_scale` (train statistics); images
    # arrive with values in 0..pixel_max (None for tabular data)
    x_shift: np.ndarray | None = field(default=None, repr=False)
    x_scale: np.ndarray | None = field(default=None, repr=False)
    pixel_max: float | None = None
    raw_shape: tuple[int, ...] | None = None  # one sample as read, before downsample/flatten

    @property
    def n_train(self) -> int:
        return int(self.x_train.shape[0])

    @property
    def n_val(self) -> int:
        return int(self.x_val.shape[0])

    @property
    def n_test(self) -> int:
        return 0 if self.x_test is None else int(self.x_test.shape[0])

    def info(self) -> dict[str, Any]:
        """JSON-ready summary for a run's summary.json."""
        return {
            "name": self.name,
            "task": self.task,
            "source": self.source,
            "n_train": self.n_train,
            "n_val": self.n_val,
            "n_test": self.n_test,
            "sample_shape": list(self.sample_shape),
            "n_outputs": self.n_outputs,
            "classes": None if self.classes is None else list(self.classes),
            "validation": self.validation,
            "preprocessing": self.preprocessing,
        }


@dataclass
class _Split:
    x: np.ndarray
    y: np.ndarray


@dataclass
class _Splits:
    """train / val / test as the pipeline goes; `val` is None while validation is `val_from`
    "train" or "test" (then it is that split, the same arrays, also after limits)."""

    train: _Split
    val: _Split | None
    test: _Split | None
    val_from: str  # "own" | "carved" | "train" | "test"
    validation: str  # what the run records say about it
    notes: list[str] = field(default_factory=list)  # preprocessing, in order

    def prepared(
        self, part: str, train: np.ndarray, prep: Callable[[np.ndarray], np.ndarray]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """(train, val, test) of `part` ("x" or "y"): `train` as given (prepared already), the
        others through `prep`; a validation that is another split shares its prepared arrays."""
        test = None if self.test is None else prep(getattr(self.test, part))
        if self.val_from == "test":
            val = test
        elif self.val_from == "train":
            val = train
        else:
            assert self.val is not None
            val = prep(getattr(self.val, part))
        assert val is not None
        return train, val, test


# ------------------------------------------------------------------------------------------------
# preparation helpers


def downsampled_shape(name: str, shape: tuple[int, ...], k: int) -> tuple[int, ...]:
    """One sample's shape after k x k average pooling; DatasetError unless (C, H, W) images with
    H and W multiples of k."""
    if k == 1:
        return tuple(shape)
    if len(shape) != 3:
        raise DatasetError(
            f"dataset.downsample={k}: {name} samples are vectors of shape {tuple(shape)}, "
            "not (C, H, W) images (use downsample: 1)"
        )
    c, h, w = shape
    if h % k or w % k:
        raise DatasetError(
            f"dataset.downsample={k}: the {h}x{w} images are not divisible into {k}x{k} blocks"
        )
    return (c, h // k, w // k)


def downsample(x: np.ndarray, k: int) -> np.ndarray:
    """k x k average pooling of (N, C, H, W) images (H and W must be multiples of k), float32."""
    n, c, h, w = x.shape
    downsampled_shape("the dataset", x.shape[1:], k)
    pooled = x.reshape(n, c, h // k, k, w // k, k).astype(np.float32)  # (N, C, H/k, k, W/k, k)
    return pooled.mean(axis=(3, 5), dtype=np.float32)


def _stats_axes(x: np.ndarray) -> tuple[int, ...]:
    """Per feature for vectors, per channel for images (C, H, W)."""
    return (0,) if x.ndim == 2 else (0, *range(2, x.ndim))


def _safe_divisor(d: np.ndarray) -> np.ndarray:
    return np.where(d > 0, d, np.float32(1.0)).astype(np.float32)


def _fit_normalizer(method: str, x: np.ndarray, pixel_max: float | None):
    """(shift, divisor) fitted on the training split only; x_norm = (x - shift) / divisor."""
    if method == "none":
        return np.float32(0.0), np.float32(1.0), "none"
    if method == "scale":
        assert pixel_max is not None
        return np.float32(0.0), np.float32(pixel_max), f"scale(/{pixel_max:g})"
    axes = _stats_axes(x)
    if method == "standardize":
        mean = x.mean(axis=axes, keepdims=True, dtype=np.float64).astype(np.float32)
        std = x.std(axis=axes, keepdims=True, dtype=np.float64).astype(np.float32)
        return mean[0], _safe_divisor(std)[0], "standardize(train mean/std)"
    lo = x.min(axis=axes, keepdims=True).astype(np.float32)
    hi = x.max(axis=axes, keepdims=True).astype(np.float32)
    return lo[0], _safe_divisor(hi - lo)[0], "minmax(train min/max)"


def _one_hot(labels: np.ndarray, n_classes: int) -> np.ndarray:
    out = np.zeros((labels.shape[0], n_classes), dtype=np.float32)
    out[np.arange(labels.shape[0]), labels] = 1.0
    return out


def _as_config(cfg: Any) -> DatasetConfig:
    if isinstance(cfg, DatasetConfig):
        return cfg
    from omegaconf import OmegaConf

    merged = OmegaConf.merge(OmegaConf.structured(DatasetConfig), cfg)
    return OmegaConf.to_object(merged)  # type: ignore[return-value]


def _subset(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    return np.sort(rng.choice(n, size=size, replace=False))


# ------------------------------------------------------------------------------------------------
# the pipeline


def split(raw: Raw, cfg: DatasetConfig, rng: np.random.Generator, name: str) -> _Splits:
    """The validation split: the source's own, carved from train (`val_split`), else the test
    split, else (generated data) the training set."""
    train = _Split(raw.x_train, raw.y_train)
    test = None if raw.x_test is None else _Split(raw.x_test, raw.y_test)
    if raw.x_val is not None:
        return _Splits(train, _Split(raw.x_val, raw.y_val), test, "own", "own validation split")
    if cfg.val_split > 0:
        n = train.x.shape[0]
        n_val = int(np.floor(cfg.val_split * n))
        if n_val < 1 or n_val >= n:
            raise DatasetError(
                f"{name}: empty split: dataset.val_split={cfg.val_split} of {n} training samples "
                f"gives {n_val} validation samples"
            )
        perm = rng.permutation(n)
        va, tr = np.sort(perm[:n_val]), np.sort(perm[n_val:])
        carved = (
            f"{n_val} samples carved from train (val_split={cfg.val_split}, seed {cfg.split_seed})"
        )
        val = _Split(train.x[va], train.y[va])
        return _Splits(_Split(train.x[tr], train.y[tr]), val, test, "carved", carved)
    if test is not None:
        return _Splits(train, None, test, "test", "the test split (val_split=0)")
    generated = "the training set (generated data has no held-out samples)"
    return _Splits(train, None, test, "train", generated)


def limit(splits: _Splits, cfg: DatasetConfig, rng: np.random.Generator) -> None:
    """Seeded subsets for quick runs: `limit` training samples, `eval_limit` val/test samples."""
    train = splits.train
    if cfg.limit is not None and cfg.limit < train.x.shape[0]:
        keep = _subset(rng, train.x.shape[0], cfg.limit)
        splits.train = _Split(train.x[keep], train.y[keep])
        splits.notes.append(f"limit={cfg.limit}")
    if cfg.eval_limit is not None:
        n = cfg.eval_limit
        test, val = splits.test, splits.val
        if test is not None and n < test.x.shape[0]:
            keep = _subset(rng, test.x.shape[0], n)
            splits.test = _Split(test.x[keep], test.y[keep])
        if val is not None and n < val.x.shape[0]:
            keep = _subset(rng, val.x.shape[0], n)
            splits.val = _Split(val.x[keep], val.y[keep])
        splits.notes.append(f"eval_limit={n}")


def prepare_inputs(splits: _Splits, cfg: DatasetConfig, name: str) -> dict[str, Any]:
    """Pool (`downsample`), normalise with statistics of the pooled training split only, and
    flatten (`flatten`); validation that is another split shares its prepared arrays. Returns
    the `Dataset` fields x_train, x_val, x_test, x_shift, x_scale."""
    factor = cfg.downsample
    downsampled_shape(name, splits.train.x.shape[1:], factor)
    if factor > 1:
        splits.notes.append(f"downsample={factor}")
    spec = DATASETS[cfg.name]
    method = cfg.normalize or spec.normalize
    train = splits.train.x
    # statistics straight from the source dtype (e.g. uint8 pixels): no float copy to fit on
    if factor > 1:
        pooled_train = downsample(train, factor)
    elif train.dtype in (np.uint8, np.float32):
        pooled_train = train
    else:  # statistics of the float32 values the network sees, as before any copy
        pooled_train = train.astype(np.float32)
    shift, div, how = _fit_normalizer(method, pooled_train, spec.pixel_max)
    splits.notes.insert(0, f"normalize={how}")
    if cfg.flatten:
        splits.notes.append("flatten")

    def prep(s: np.ndarray, pooled: bool = False) -> np.ndarray:
        if factor > 1:
            out = s if pooled else downsample(s, factor)  # a new float32 array either way
        else:
            out = s.astype(np.float32)  # our own copy, normalised in place: one float32 array
        out -= shift
        out /= div
        return out.reshape(out.shape[0], -1) if cfg.flatten else out  # (N, ...) -> (N, D)

    x_train, x_val, x_test = splits.prepared("x", prep(pooled_train, pooled=True), prep)
    scale = {"x_shift": np.asarray(shift, np.float32), "x_scale": np.asarray(div, np.float32)}
    return {"x_train": x_train, "x_val": x_val, "x_test": x_test, **scale}


def encode_targets(
    splits: _Splits, task: str, raw: Raw, cfg: DatasetConfig, name: str
) -> dict[str, Any]:
    """Classification: one-hot over the source's classes. Regression: float columns, scaled by
    `normalize_targets` with training statistics. Returns the `Dataset` fields y_train, y_val,
    y_test, n_outputs, target_shift, target_scale."""
    shift = scale = None
    if task == "classification":
        if raw.classes is None:
            raise DatasetError(f"dataset.task: {name} has no class labels; got 'classification'")
        n_classes = len(raw.classes)

        def enc(y: np.ndarray) -> np.ndarray:
            return _one_hot(np.asarray(y, dtype=np.int64), n_classes)

        n_out = n_classes
    else:
        y_tr = np.asarray(splits.train.y, dtype=np.float32).reshape(len(splits.train.y), -1)
        if cfg.normalize_targets != "none":
            shift, scale, how = _fit_normalizer(cfg.normalize_targets, y_tr, None)
            splits.notes.append(f"targets={how}")

        def enc(y: np.ndarray) -> np.ndarray:
            out = np.asarray(y, dtype=np.float32).reshape(len(y), -1)  # (N,) -> (N, 1)
            if shift is not None:
                out = ((out - shift) / scale).astype(np.float32)
            return out

        n_out = y_tr.shape[1]
    y_train, y_val, y_test = splits.prepared("y", enc(splits.train.y), enc)
    return {
        "y_train": y_train,
        "y_val": y_val,
        "y_test": y_test,
        "n_outputs": int(n_out),
        "target_shift": None if shift is None else np.asarray(shift, dtype=np.float32),
        "target_scale": None if scale is None else np.asarray(scale, dtype=np.float32),
    }


def _check_finite(inputs: dict[str, Any], name: str, notes: list[str]) -> None:
    for part in ("train", "val", "test"):
        arr = inputs[f"x_{part}"]
        if arr is not None and not np.isfinite(arr).all():
            r = int(np.argwhere(~np.isfinite(arr.reshape(len(arr), -1)))[0][0])
            raise DatasetError(
                f"{name}: the {part} split holds non-finite values after preprocessing "
                f"({', '.join(notes)}), first in sample {r}: values too large for float32"
            )


def load_dataset(cfg: DatasetConfig) -> Dataset:
    """Load, split, subset, pool, normalise and encode the dataset `cfg` describes.

    Deterministic given `cfg` (all shuffles use `np.random.default_rng(cfg.split_seed)`).
    Raises `DatasetError` with a one-line message for any bad value, missing or corrupt file.
    """
    cfg = _as_config(cfg)
    validate_config(cfg)
    spec = DATASETS[cfg.name]
    raw = spec.load(cfg)
    name = cfg.title or cfg.name
    task = cfg.task or spec.task
    assert task is not None  # validate_config: a dataset without a default task needs one
    rng = np.random.default_rng(cfg.split_seed)
    splits = split(raw, cfg, rng, name)
    limit(splits, cfg, rng)
    inputs = prepare_inputs(splits, cfg, name)
    targets = encode_targets(splits, task, raw, cfg, name)
    _check_finite(inputs, name, splits.notes)
    ds = Dataset(
        name=name,
        task=task,
        **inputs,
        **targets,
        sample_shape=tuple(int(d) for d in inputs["x_train"].shape[1:]),
        classes=list(raw.classes) if task == "classification" else None,  # type: ignore[arg-type]
        source=raw.source,
        validation=splits.validation,
        preprocessing=", ".join(splits.notes),
        feature_names=raw.feature_names,
        pixel_max=spec.pixel_max,
        raw_shape=tuple(int(d) for d in splits.train.x.shape[1:]),
    )
    log.info(
        "dataset %s: %d train / %d val / %d test, shape %s, from %s",
        name,
        ds.n_train,
        ds.n_val,
        ds.n_test,
        ds.sample_shape,
        ds.source,
    )
    return ds
