"""File readers: IDX (raw or gzip), CIFAR-10 binary batches, and numeric CSV tables.

Each reader checks the file's integrity and raises a one-line `DatasetError` naming the file and the
problem. Readers return raw arrays; splitting, scaling and one-hot encoding live in `loaders.py`.
"""

from __future__ import annotations

import gzip
import math
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


MAX_DECODED_BYTES = 8 * 2**30  # the most one data file may decode to (a sane maximum)
DEFLATE_MAX_RATIO = 1032  # deflate cannot expand beyond ~1032:1; more means a lying header
_CHUNK = 1 << 20


def _open(path: Path):
    """(stream, compressed) for a raw or gzip file; DatasetError if it cannot be opened."""
    try:
        f = path.open("rb")
    except FileNotFoundError:
        raise DatasetError(f"{path}: file not found") from None
    except OSError as e:
        raise DatasetError(f"{path}: cannot read ({e.strerror or e})") from None
    if f.read(2) != b"\x1f\x8b":
        f.seek(0)
        return f, False
    f.seek(0)
    return gzip.GzipFile(fileobj=f, mode="rb"), True


def _readinto(stream, buf: memoryview, path: Path) -> int:
    """Fill `buf` from `stream` in chunks; returns the bytes read (fewer at the end of data)."""
    got = 0
    try:
        while got < len(buf):
            n = stream.readinto(buf[got : got + _CHUNK])
            if not n:
                break
            got += n
    except EOFError:
        raise DatasetError(
            f"{path}: truncated gzip file (ends before the end of the stream)"
        ) from None
    except (OSError, zlib.error) as e:
        raise DatasetError(f"{path}: corrupt gzip file ({e})") from None
    return got


def read_bytes(path: str | Path, limit: int = MAX_DECODED_BYTES) -> bytes:
    """The file's bytes, gunzipped (streamed) if it starts with the gzip magic.

    Bad gzip, or more than `limit` decoded bytes (a gzip bomb), -> DatasetError.
    """
    path = Path(path)
    stream, _ = _open(path)
    with stream:
        out = bytearray()
        block = bytearray(_CHUNK)
        while True:
            n = _readinto(stream, memoryview(block), path)
            out += block[:n]
            if len(out) > limit:
                raise DatasetError(f"{path}: decodes to more than {limit} bytes (the limit)")
            if n < len(block):
                return bytes(out)


def read_idx(
    path: str | Path, ndim: int | None = None, shape: Sequence[int | None] | None = None
) -> np.ndarray:
    """Read an IDX file (raw or .gz) into a native-endian array of its stored dtype.

    `ndim` / `shape` (None entries = any size) are checked against the header's dimensions.
    The data is streamed into one buffer of exactly the size the header promises (checked
    against the file size and `MAX_DECODED_BYTES` first), so a gzip bomb costs no more memory.
    """
    path = Path(path)
    stream, compressed = _open(path)
    with stream:
        return _read_idx(stream, compressed, path, ndim, shape)


def _read_idx(stream, compressed: bool, path: Path, ndim, shape) -> np.ndarray:
    head = bytearray(4)
    got = _readinto(stream, memoryview(head), path)
    if got < 4:
        raise DatasetError(f"{path}: not an IDX file (only {got} bytes)")
    magic = int.from_bytes(head, "big")
    code, nd = head[2], head[3]
    if head[:2] != b"\x00\x00" or code not in IDX_TYPES or nd == 0:
        raise DatasetError(
            f"{path}: bad IDX magic 0x{magic:08x} (expected 0x0000TTNN: 2 zero bytes, a type code "
            f"in {sorted(IDX_TYPES)}, and the number of dimensions; e.g. 0x00000803 for images)"
        )
    header = 4 + 4 * nd
    raw_dims = bytearray(4 * nd)
    got = _readinto(stream, memoryview(raw_dims), path)
    if got < len(raw_dims):
        raise DatasetError(f"{path}: truncated IDX header ({4 + got} bytes, need {header})")
    dims = tuple(int.from_bytes(raw_dims[4 * i : 4 * i + 4], "big") for i in range(nd))
    if ndim is not None and nd != ndim:
        raise DatasetError(f"{path}: wrong IDX dimensions: {nd}-D {dims}, expected {ndim}-D")
    if shape is not None:
        ok = len(shape) == nd and all(
            s is None or s == d for s, d in zip(shape, dims, strict=False)
        )
        if not ok:
            want = "x".join("N" if s is None else str(s) for s in shape)
            got_dims = "x".join(map(str, dims))
            raise DatasetError(f"{path}: wrong IDX dimensions {got_dims}, expected {want}")
    dtype = np.dtype(IDX_TYPES[code])
    need = math.prod(dims) * dtype.itemsize  # Python ints: no overflow
    size = path.stat().st_size
    if need > MAX_DECODED_BYTES:
        raise DatasetError(
            f"{path}: IDX header {dims} promises {need} bytes of data, more than the "
            f"{MAX_DECODED_BYTES}-byte limit"
        )
    if not compressed and size - header < need:
        raise DatasetError(
            f"{path}: truncated IDX data: header {dims} needs {need} bytes, found {size - header}"
        )
    if compressed and need > DEFLATE_MAX_RATIO * size:
        raise DatasetError(
            f"{path}: truncated IDX data: header {dims} needs {need} bytes, more than a "
            f"{size}-byte gzip file can hold"
        )
    try:
        buf = np.empty(need, dtype=np.uint8)
    except MemoryError:
        raise DatasetError(f"{path}: IDX data {dims} needs {need} bytes of memory") from None
    have = _readinto(stream, memoryview(buf), path)
    if have < need:
        raise DatasetError(
            f"{path}: truncated IDX data: header {dims} needs {need} bytes, found {have}"
        )
    extra = _readinto(stream, memoryview(bytearray(_CHUNK)), path)
    if extra:
        more = "" if extra < _CHUNK else "at least "
        raise DatasetError(f"{path}: {more}{extra} unexpected bytes after the IDX data {dims}")
    arr = buf.view(dtype).reshape(dims)  # (d0, d1, ...) as stored, big-endian
    if dtype.byteorder == ">" and dtype.itemsize > 1:
        arr = arr.byteswap(inplace=True).view(dtype.newbyteorder("="))
    return arr


def read_cifar_bin(path: str | Path, n_classes: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Read a CIFAR-10 binary batch: x uint8 (N, 3, 32, 32) and labels uint8 (N,)."""
    path = Path(path)
    data = read_bytes(path, limit=CIFAR_RECORD * 100_000)
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


F32_MAX = float(np.finfo(np.float32).max)
CSV_CHUNK_ROWS = 100_000  # rows per chunk on the text path (bounds its memory)


def _check_values(arr: np.ndarray, columns: list[str], path: Path, first_line: int) -> None:
    """Every cell finite and within float32 range, else DatasetError naming line and column."""
    bad = ~np.isfinite(arr)
    big = np.abs(np.where(bad, 0.0, arr)) > F32_MAX
    if bad.any() or big.any():
        r, c = np.argwhere(bad | big)[0]
        v = arr[r, c]
        where = f"at line {r + first_line}, column {columns[c]!r}"
        if bad[r, c]:
            raise DatasetError(f"{path}: non-finite value {v} {where} (cells must be finite)")
        raise DatasetError(
            f"{path}: value {v:g} {where} does not fit in float32 (|x| <= {F32_MAX:.4g}); "
            f"{int(big.sum())} such cells"
        )


def _numeric_text(frame, columns: list[str], path: Path, first_line: int) -> np.ndarray:
    """float32 (N, len(columns)) from text cells; the first missing or non-numeric cell or
    out-of-range value -> DatasetError naming its line and column."""
    import pandas as pd

    if not columns:
        return np.zeros((len(frame), 0), dtype=np.float32)
    block = frame[columns]
    values = block.apply(lambda s: pd.to_numeric(s.str.strip(), errors="coerce"))
    arr = values.to_numpy(dtype=np.float64, na_value=np.nan)
    bad = np.isnan(arr)
    if bad.any():
        r, c = np.argwhere(bad)[0]
        cell = str(block.iat[r, c]).strip()
        if cell.lower() not in ("nan", "+nan", "-nan"):
            what = "missing value" if cell == "" else f"non-numeric value {cell!r}"
            raise DatasetError(
                f"{path}: {what} at line {r + first_line}, column {columns[c]!r} "
                f"({int(bad.sum())} bad cells in the used columns of this part of the file)"
            )
    _check_values(arr, columns, path, first_line)
    return arr.astype(np.float32)


def _numeric_typed(frame, columns: list[str], path: Path) -> np.ndarray:
    """float32 (N, len(columns)) from float64 columns, one column at a time (bounded copies)."""
    out = np.empty((len(frame), len(columns)), dtype=np.float32)
    for j, c in enumerate(columns):
        col = frame[c].to_numpy(dtype=np.float64)[:, None]
        _check_values(col, [c], path, 2)
        out[:, j] = col[:, 0]
    return out


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
    Only the used columns are read: numeric ones by pandas' C parser straight into float64
    (then float32, a column at a time); if a cell does not parse, the file is re-read as text
    in chunks of `CSV_CHUNK_ROWS` rows to name the bad cell. Values beyond float32's range are
    refused, naming line and column.
    """
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: file not found")
    opts: dict = {"sep": delimiter, "skipinitialspace": True, "keep_default_na": False}

    def malformed(e: Exception) -> DatasetError:
        first = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        return DatasetError(f"{path}: malformed CSV ({first})")

    try:
        head = pd.read_csv(path, nrows=0, **opts)
    except pd.errors.EmptyDataError:
        raise DatasetError(f"{path}: empty CSV file (no header row)") from None
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as e:
        raise malformed(e) from None
    header = [str(c).strip() for c in head.columns]
    if len(set(header)) != len(header):
        dup = sorted({c for c in header if header.count(c) > 1})
        raise DatasetError(f"{path}: duplicate column name(s) {dup[:5]} in the header")
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
    numeric = list(dict.fromkeys([*feature_names, *target_names]))
    text = [c for c in dict.fromkeys([label_col, split_col]) if c and c not in numeric]
    read = {"header": 0, "names": header, "usecols": [*numeric, *text], **opts}
    dtypes = {**dict.fromkeys(numeric, "float64"), **dict.fromkeys(text, str)}
    try:
        frame = pd.read_csv(path, dtype=dtypes, **read)
        x = _numeric_typed(frame, feature_names, path)
        y = _numeric_typed(frame, target_names, path) if target_names else None
    except DatasetError:
        raise
    except (pd.errors.ParserError, UnicodeDecodeError) as e:
        raise malformed(e) from None
    except (ValueError, TypeError):  # a cell that is not a number: find it on the text path
        xs, ys, frames, line = [], [], [], 2
        try:
            for chunk in pd.read_csv(path, dtype=str, chunksize=CSV_CHUNK_ROWS, **read):
                xs.append(_numeric_text(chunk, feature_names, path, line))
                ys.append(_numeric_text(chunk, target_names, path, line))
                frames.append(chunk[text])
                line += len(chunk)
        except DatasetError:
            raise
        except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as e:
            # e.g. "Number of passed names did not match ...": a row longer than the header
            raise malformed(e) from None
        if not frames:
            raise DatasetError(f"{path}: no data rows after the header") from None
        x = np.concatenate(xs)
        y = np.concatenate(ys) if target_names else None
        frame = pd.concat(frames)
    if len(frame) == 0:
        raise DatasetError(f"{path}: no data rows after the header")
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
