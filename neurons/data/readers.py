"""File readers: IDX (raw or gzip), CIFAR-10 binary batches, and numeric CSV tables.

Each reader checks the file's integrity and raises a one-line `DatasetError` naming the file and the
problem. Readers return raw arrays; splitting, scaling and one-hot encoding live in `loaders.py`.
"""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import DatasetError

# IDX type codes -> big-endian numpy dtypes ("THE IDX FILE FORMAT", yann.lecun.com/exdb/mnist)
IDX_TYPES: dict[int, str] = {
    0x08: "u1",
    0x09: "i1",
    0x0B: ">i2",
    0x0C: ">i4",
    0x0D: ">f4",
    0x0E: ">f8",
}

CIFAR_RECORD = 1 + 3 * 32 * 32  # one label byte, then 1024 red, 1024 green, 1024 blue bytes


def read_bytes(path: str | Path) -> bytes:
    """The file's bytes, gunzipped if it starts with the gzip magic; bad gzip -> DatasetError."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DatasetError(f"{path}: file not found") from None
    except OSError as e:
        raise DatasetError(f"{path}: cannot read ({e.strerror or e})") from None
    if raw[:2] != b"\x1f\x8b":
        return raw
    try:
        return gzip.decompress(raw)
    except EOFError:
        raise DatasetError(
            f"{path}: truncated gzip file (ends before the end of the stream)"
        ) from None
    except (OSError, zlib.error) as e:
        raise DatasetError(f"{path}: corrupt gzip file ({e})") from None


def read_idx(
    path: str | Path, ndim: int | None = None, shape: Sequence[int | None] | None = None
) -> np.ndarray:
    """Read an IDX file (raw or .gz) into a native-endian array of its stored dtype.

    `ndim` / `shape` (None entries = any size) are checked against the header's dimensions.
    """
    path = Path(path)
    data = read_bytes(path)
    if len(data) < 4:
        raise DatasetError(f"{path}: not an IDX file (only {len(data)} bytes)")
    magic = int.from_bytes(data[:4], "big")
    code, nd = data[2], data[3]
    if data[:2] != b"\x00\x00" or code not in IDX_TYPES or nd == 0:
        raise DatasetError(
            f"{path}: bad IDX magic 0x{magic:08x} (expected 0x0000TTNN: 2 zero bytes, a type code "
            f"in {sorted(IDX_TYPES)}, and the number of dimensions; e.g. 0x00000803 for images)"
        )
    header = 4 + 4 * nd
    if len(data) < header:
        raise DatasetError(f"{path}: truncated IDX header ({len(data)} bytes, need {header})")
    dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(nd))
    if ndim is not None and nd != ndim:
        raise DatasetError(f"{path}: wrong IDX dimensions: {nd}-D {dims}, expected {ndim}-D")
    if shape is not None:
        ok = len(shape) == nd and all(
            s is None or s == d for s, d in zip(shape, dims, strict=False)
        )
        if not ok:
            want = "x".join("N" if s is None else str(s) for s in shape)
            got = "x".join(map(str, dims))
            raise DatasetError(f"{path}: wrong IDX dimensions {got}, expected {want}")
    dtype = np.dtype(IDX_TYPES[code])
    need = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    have = len(data) - header
    if have < need:
        raise DatasetError(
            f"{path}: truncated IDX data: header {dims} needs {need} bytes, found {have}"
        )
    if have > need:
        raise DatasetError(f"{path}: {have - need} unexpected bytes after the IDX data {dims}")
    arr = np.frombuffer(data, dtype=dtype, count=need // dtype.itemsize, offset=header)
    return arr.reshape(dims).astype(dtype.newbyteorder("="), copy=True)


def read_cifar_bin(path: str | Path, n_classes: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Read a CIFAR-10 binary batch: x uint8 (N, 3, 32, 32) and labels uint8 (N,)."""
    path = Path(path)
    data = read_bytes(path)
    if len(data) == 0 or len(data) % CIFAR_RECORD:
        raise DatasetError(
            f"{path}: wrong CIFAR record size: {len(data)} bytes is not a positive multiple of the "
            f"{CIFAR_RECORD}-byte record (1 label byte + 3072 pixel bytes)"
        )
    records = np.frombuffer(data, dtype=np.uint8).reshape(-1, CIFAR_RECORD)
    labels = records[:, 0].copy()
    bad = np.flatnonzero(labels >= n_classes)
    if bad.size:
        raise DatasetError(
            f"{path}: label out of range: record {bad[0]} has label {labels[bad[0]]} "
            f"(allowed 0..{n_classes - 1}; {bad.size} bad records)"
        )
    return records[:, 1:].reshape(-1, 3, 32, 32).copy(), labels


# ------------------------------------------------------------------------------------------------
# CSV


@dataclass
class CsvTable:
    """Columns picked out of a CSV file; `line` holds each row's 1-based line number in the file."""

    path: Path
    x: np.ndarray  # float32 (N, D)
    feature_names: list[str]
    targets: np.ndarray | None  # float32 (N, T) or None
    target_names: list[str]
    labels: np.ndarray | None  # str (N,) or None
    split: np.ndarray | None  # "train" | "val" | "test" (N,) or None
    line: np.ndarray  # int (N,)


SPLIT_NAMES: dict[str, str] = {
    "train": "train",
    "training": "train",
    "trn": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
    "testing": "test",
    "tst": "test",
}


def resolve_columns(specs: Sequence[str], header: Sequence[str], path: Path) -> list[str]:
    """Expand column specs: a header name, '#k' (0-based position), or an inclusive range 'a..b'."""

    def index(spec: str) -> int:
        spec = spec.strip()
        if spec in header:
            return header.index(spec)
        if spec.startswith("#") and spec[1:].isdigit() and int(spec[1:]) < len(header):
            return int(spec[1:])
        shown = ", ".join(header[:8]) + (", ..." if len(header) > 8 else "")
        raise DatasetError(
            f"{path}: missing column {spec!r} ({len(header)} columns: {shown}; "
            f"use a header name, '#k' for the k-th (0-based) column, or 'first..last')"
        )

    out: list[str] = []
    for spec in specs:
        spec = str(spec)
        if ".." in spec and spec not in header:
            a, b = spec.split("..", 1)
            i, j = index(a), index(b)
            if j < i:
                raise DatasetError(f"{path}: empty column range {spec!r} ({b} comes before {a})")
            out.extend(header[i : j + 1])
        else:
            out.append(header[index(spec)])
    return out


def _numeric(frame, columns: list[str], path: Path) -> np.ndarray:
    """float32 (N, len(columns)); the first missing or non-numeric cell -> DatasetError."""
    import pandas as pd

    if not columns:
        return np.zeros((len(frame), 0), dtype=np.float32)
    block = frame[columns]
    values = block.apply(lambda s: pd.to_numeric(s.str.strip(), errors="coerce"))
    arr = values.to_numpy(dtype=np.float64, na_value=np.nan)
    bad = ~np.isfinite(arr)
    if bad.any():
        r, c = np.argwhere(bad)[0]
        cell = str(block.iat[r, c]).strip()
        what = "missing value" if cell == "" else f"non-numeric value {cell!r}"
        raise DatasetError(
            f"{path}: {what} at line {r + 2}, column {columns[c]!r} "
            f"({int(bad.sum())} bad cells in the used columns)"
        )
    return arr.astype(np.float32)


def read_csv_dataset(
    path: str | Path,
    *,
    features: Sequence[str] = (),
    targets: Sequence[str] = (),
    class_column: str | None = None,
    split_column: str | None = None,
    exclude: Sequence[str] = (),
    delimiter: str = ",",
) -> CsvTable:
    """Read a CSV with a header row into numeric features, optional targets, labels and splits.

    `features` empty = every column not named as a target, class, split or excluded column.
    """
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: file not found")
    try:
        frame = pd.read_csv(
            path, sep=delimiter, dtype=str, keep_default_na=False, skipinitialspace=True
        )
    except pd.errors.EmptyDataError:
        raise DatasetError(f"{path}: empty CSV file (no header row)") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as e:
        first = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        raise DatasetError(f"{path}: malformed CSV ({first})") from None
    header = [str(c).strip() for c in frame.columns]
    frame.columns = header
    if len(frame) == 0:
        raise DatasetError(f"{path}: no data rows after the header")
    target_names = resolve_columns(targets, header, path)
    label_col = resolve_columns([class_column], header, path)[0] if class_column else None
    split_col = resolve_columns([split_column], header, path)[0] if split_column else None
    dropped = set(resolve_columns(exclude, header, path))
    if features:
        feature_names = resolve_columns(features, header, path)
    else:
        used = set(target_names) | {label_col, split_col} | dropped
        feature_names = [c for c in header if c not in used]
    if not feature_names:
        raise DatasetError(f"{path}: no feature columns selected")
    x = _numeric(frame, feature_names, path)
    y = _numeric(frame, target_names, path) if target_names else None
    labels = None
    if label_col is not None:
        labels = frame[label_col].str.strip().to_numpy(dtype=object)
        empty = np.flatnonzero(labels == "")
        if empty.size:
            raise DatasetError(
                f"{path}: missing value at line {empty[0] + 2}, column {label_col!r}"
            )
    split = None
    if split_col is not None:
        raw = frame[split_col].str.strip()
        mapped = raw.str.lower().map(SPLIT_NAMES)
        unknown = np.flatnonzero(mapped.isna().to_numpy())
        if unknown.size:
            r = unknown[0]
            values = sorted(set(raw.iloc[unknown]))[:5]
            raise DatasetError(
                f"{path}: unknown value {raw.iloc[r]!r} in split column {split_col!r} at line "
                f"{r + 2} (allowed: Train, Val, Test, case-insensitive; unknown values: {values})"
            )
        split = mapped.to_numpy(dtype=object)
    lines = np.arange(2, len(frame) + 2)
    return CsvTable(path, x, feature_names, y, target_names, labels, split, lines)
