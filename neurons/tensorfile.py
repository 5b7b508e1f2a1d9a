"""The safetensors file format, read and written in plain numpy (no pickle, no extra package).

Layout: an 8-byte little-endian u64 header length N, N bytes of UTF-8 JSON (`{name: {dtype,
shape, data_offsets}, "__metadata__": {str: str}}`), then the raw little-endian tensor bytes.
Every offset, dtype and size is checked; a bad file raises `TensorFileError` naming it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from neurons.record import write_atomic

DTYPES: dict[str, str] = {
    "F64": "<f8",
    "F32": "<f4",
    "F16": "<f2",
    "I64": "<i8",
    "I32": "<i4",
    "I16": "<i2",
    "I8": "i1",
    "U8": "u1",
    "BOOL": "?",
}
_CODES = {np.dtype(v).str: k for k, v in DTYPES.items()}
MAX_HEADER = 100_000_000  # the reference implementation's limit


class TensorFileError(ValueError):
    """A safetensors file cannot be read; the message names the file and the problem."""


def encode(tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None) -> bytes:
    """The bytes of a safetensors file holding `tensors` (sorted by name) and `metadata`."""
    header: dict[str, object] = {}
    if metadata:
        bad = [k for k, v in metadata.items() if not isinstance(v, str)]
        if bad:
            raise TypeError(f"safetensors metadata values must be strings; not {bad}")
        header["__metadata__"] = dict(metadata)
    chunks, offset = [], 0
    for name in sorted(tensors):
        a = np.ascontiguousarray(tensors[name])
        le = a.astype(a.dtype.newbyteorder("<"), copy=False)
        code = _CODES.get(le.dtype.str)
        if code is None:
            raise TypeError(f"{name}: dtype {a.dtype} has no safetensors code")
        raw = le.tobytes()
        header[name] = {
            "dtype": code,
            "shape": list(a.shape),
            "data_offsets": [offset, offset + len(raw)],
        }
        chunks.append(raw)
        offset += len(raw)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned
    return len(text).to_bytes(8, "little") + text + b"".join(chunks)


def save(
    path: Path, tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None
) -> None:
    """Write a safetensors file atomically (temp file + rename)."""
    write_atomic(Path(path), encode(tensors, metadata))


def load(path: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """(tensors, metadata) of a safetensors file; every structural problem is a TensorFileError."""
    path = Path(path)
    try:
        blob = path.read_bytes()
    except OSError as e:
        raise TensorFileError(f"{path}: cannot read ({e.strerror})") from None
    return decode(blob, str(path))


def decode(blob: bytes, name: str = "<bytes>") -> tuple[dict[str, np.ndarray], dict[str, str]]:
    if len(blob) < 8:
        raise TensorFileError(f"{name}: truncated: {len(blob)} bytes, a safetensors file has >= 8")
    n = int.from_bytes(blob[:8], "little")
    if n > MAX_HEADER or 8 + n > len(blob):
        raise TensorFileError(
            f"{name}: truncated or not safetensors: header length {n} but the file has "
            f"{len(blob)} bytes"
        )
    try:
        header = json.loads(blob[8 : 8 + n].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise TensorFileError(f"{name}: corrupt header (not JSON: {e})") from None
    if not isinstance(header, dict):
        raise TensorFileError(f"{name}: corrupt header: expected a JSON object")
    meta = header.pop("__metadata__", None) or {}
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise TensorFileError(f"{name}: __metadata__ must map strings to strings")
    data = memoryview(blob)[8 + n :]
    out: dict[str, np.ndarray] = {}
    spans = []
    for key, info in header.items():
        try:
            dtype = np.dtype(DTYPES[info["dtype"]])
            shape = tuple(int(s) for s in info["shape"])
            start, end = (int(v) for v in info["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise TensorFileError(f"{name}: tensor {key!r}: bad header entry {info!r}") from None
        size = math.prod(shape) * dtype.itemsize
        if min(shape, default=1) < 0 or not 0 <= start <= end <= len(data) or end - start != size:
            raise TensorFileError(
                f"{name}: tensor {key!r}: {info['dtype']}{list(shape)} needs {size} bytes, the "
                f"header gives offsets {start}..{end} in a data section of {len(data)} bytes "
                f"(truncated or tampered)"
            )
        spans.append((start, end))
        out[key] = np.frombuffer(data[start:end], dtype=dtype).reshape(shape).copy()
    pos = 0
    for start, end in sorted(spans):
        if start != pos:
            raise TensorFileError(f"{name}: tensor data overlaps or leaves gaps at byte {pos}")
        pos = end
    if pos != len(data):
        raise TensorFileError(
            f"{name}: {len(data) - pos} trailing bytes after the last tensor (tampered)"
        )
    return out, dict(meta)
