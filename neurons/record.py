"""Run records: the files a run writes and the comparison module reads. Atomic writes only.

A run directory holds `.hydra/` (Hydra's), METRICS (one row per epoch, appended with one
write per row and fsynced with each checkpoint; a torn last line is ignored), SUMMARY
(final/best/probe metrics, timing, threads, versions, data source),
STATUS (running | completed | failed | interrupted, with the error), LOG, and CHECKPOINTS/
{last,best}.npz. The checkpoint layout lives here alone: arrays `model.<state key>` and
`optim.<state key>`, and `__meta__` (JSON: epoch, train state, rng state); `allow_pickle=False`.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

METRICS = "metrics.csv"
SUMMARY = "summary.json"
STATUS = "status.json"
LOG = "run.log"
CHECKPOINTS = "checkpoints"
LAST = "last.npz"
BEST = "best.npz"
METRIC_COLUMNS = (
    "epoch",
    "step",
    "seconds",
    "wall",
    "lr",
    "train_loss",
    "train_acc",
    "val_loss",
    "val_acc",
)


MODEL_PREFIX = "model."  # checkpoint arrays of the network's state_dict
OPTIM_PREFIX = "optim."  # checkpoint arrays of the optimizer's state_dict
META_KEY = "__meta__"
RUN_META = ("epoch", "train_state", "rng")  # what a run checkpoint's meta must hold


class RecordWriteError(OSError):
    """A run record could not be written (full disk, read-only directory); names file and cause."""

    def __str__(self) -> str:
        return f"cannot write {self.filename}: {self.strerror}"


class CheckpointError(ValueError):
    """A checkpoint file is unreadable, truncated or holds non-finite values; names the file."""


def _write_error(path: Path, e: OSError) -> RecordWriteError:
    return RecordWriteError(e.errno, e.strerror or str(e), str(path))


def write_atomic(path: Path, data: str | bytes) -> None:
    """Write to a temp file in the same directory, fsync, then rename over `path`.

    On failure the temp file is removed and `path` keeps its previous content; an OSError is
    re-raised as RecordWriteError naming `path`.
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError) and not isinstance(e, RecordWriteError):
            raise _write_error(path, e) from None
        raise


def _clean(obj: Any) -> Any:
    """JSON-safe: NaN/Inf -> None, numpy scalars -> Python."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_json(path: Path, obj: Any) -> None:
    write_atomic(path, json.dumps(_clean(obj), indent=2, allow_nan=False) + "\n")


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


def write_status(run_dir: Path, status: str, error: str | None = None, **extra: Any) -> None:
    body = {"status": status, "error": error, "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
    body.update(extra)
    write_json(Path(run_dir) / STATUS, body)


def _metrics_text(rows: list[dict[str, float]], header: bool) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=METRIC_COLUMNS, extrasaction="ignore", lineterminator="\n")
    if header:
        w.writeheader()
    for r in rows:
        w.writerow({k: ("" if _is_nan(r.get(k)) else r.get(k)) for k in METRIC_COLUMNS})
    return buf.getvalue()


def write_metrics(run_dir: Path, rows: list[dict[str, float]]) -> None:
    """Rewrite METRICS atomically with the header and `rows` (at a run's start or a resume)."""
    write_atomic(Path(run_dir) / METRICS, _metrics_text(rows, header=True))


def append_metrics(run_dir: Path, row: dict[str, float], sync: bool = True) -> None:
    """Append one row to METRICS with a single write, then fsync unless `sync=False` (O(1) per
    epoch; the runner syncs with `sync_metrics` when it writes a checkpoint).

    A kill can at worst leave a torn last line without its newline, which `read_metrics`
    ignores; a failed write (full disk) is truncated back so the file stays whole.
    """
    path = Path(run_dir) / METRICS
    if not path.exists():
        write_metrics(run_dir, [])
    data = _metrics_text([row], header=False).encode()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    except OSError as e:
        raise _write_error(path, e) from None
    try:
        size = os.fstat(fd).st_size
        try:
            done = 0
            while done < len(data):  # a short write: the next one raises the cause (ENOSPC)
                k = os.write(fd, data[done:])
                if k == 0:
                    raise OSError(28, "No space left on device")
                done += k
            if sync:
                os.fsync(fd)
        except OSError as e:
            try:
                os.ftruncate(fd, size)
            except OSError:
                pass
            raise _write_error(path, e) from None
    finally:
        os.close(fd)


def sync_metrics(run_dir: Path) -> None:
    """fsync METRICS (rows appended with `sync=False`); RecordWriteError names the file."""
    path = Path(run_dir) / METRICS
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return
    except OSError as e:
        raise _write_error(path, e) from None
    try:
        os.fsync(fd)
    except OSError as e:
        raise _write_error(path, e) from None
    finally:
        os.close(fd)


def _is_nan(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def read_metrics(run_dir: Path) -> list[dict[str, float]]:
    """METRICS as rows of floats (epoch, step as ints); a torn last line is not an epoch.

    Reading stops at the first row that does not parse (what a crash can leave), so the rows
    returned are always whole epochs in order.
    """
    path = Path(run_dir) / METRICS
    if not path.exists():
        return []
    rows = []
    text = path.read_text(errors="replace")
    if text and not text.endswith("\n"):  # a row torn by a kill mid-append: not an epoch
        text = text[: text.rfind("\n") + 1]
    with io.StringIO(text) as f:
        for r in csv.DictReader(f):
            try:
                row = {k: (float(v) if v not in ("", None) else float("nan")) for k, v in r.items()}
                row["epoch"], row["step"] = int(row["epoch"]), int(row["step"])
            except (TypeError, ValueError, KeyError):
                break
            rows.append(row)
    return rows


def checkpoint_bytes(arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> bytes:
    """The bytes `save_checkpoint` writes: np.savez of `arrays` plus `meta` as a JSON string."""
    payload = dict(arrays)
    payload[META_KEY] = np.array(json.dumps(_clean(meta)))
    buf = io.BytesIO()
    np.savez(buf, **payload)
    return buf.getvalue()


def save_checkpoint(
    path: Path, arrays: dict[str, np.ndarray], meta: dict[str, Any], data: bytes | None = None
) -> None:
    """`checkpoint_bytes(arrays, meta)` (or `data`, those bytes made earlier) written to a temp
    file then renamed."""
    write_atomic(path, checkpoint_bytes(arrays, meta) if data is None else data)


def load_checkpoint(path: Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Arrays and meta of a checkpoint; CheckpointError naming the file if it is damaged."""
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files if k != META_KEY}
            meta = json.loads(str(z[META_KEY])) if META_KEY in z.files else {}
    except FileNotFoundError:
        raise CheckpointError(f"{path}: checkpoint not found") from None
    except (zipfile.BadZipFile, EOFError, OSError, KeyError) as e:
        raise CheckpointError(f"{path}: truncated or corrupt checkpoint ({e})") from None
    except ValueError as e:  # object arrays refused by allow_pickle=False, bad headers or JSON
        raise CheckpointError(f"{path}: tampered or corrupt checkpoint ({e})") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: tampered or corrupt checkpoint (meta is not a mapping)")
    return arrays, meta


def run_checkpoint(
    model: dict[str, np.ndarray],
    optimizer: dict[str, np.ndarray],
    epoch: int,
    train_state: dict[str, Any],
    rng_state: dict[str, Any],
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """(arrays, meta) of a run checkpoint from the network's and optimizer's state_dicts (the
    optimizer's arrays copied) and the train and rng states; for `save_checkpoint`."""
    arrays = {f"{MODEL_PREFIX}{k}": v for k, v in model.items()}
    arrays.update({f"{OPTIM_PREFIX}{k}": np.array(v, copy=True) for k, v in optimizer.items()})
    return arrays, {"epoch": epoch, "train_state": train_state, "rng": rng_state}


def model_state(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The network's state_dict held by checkpoint `arrays` (the `model.` entries, unprefixed)."""
    return _unprefixed(arrays, MODEL_PREFIX)


def optimizer_state(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The optimizer's state_dict held by checkpoint `arrays` (the `optim.` entries)."""
    return _unprefixed(arrays, OPTIM_PREFIX)


def _unprefixed(arrays: dict[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    return {k[len(prefix) :]: v for k, v in arrays.items() if k.startswith(prefix)}


def load_run_checkpoint(path: Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """A run checkpoint that is whole and finite with its RUN_META, or CheckpointError naming the
    file and the fault."""
    arrays, meta = load_checkpoint(path)
    lacking = sorted(set(RUN_META) - set(meta))
    if lacking:
        raise CheckpointError(f"{path}: corrupt checkpoint (its meta lacks {lacking})")
    bad = nonfinite_arrays(arrays)
    if bad:
        raise CheckpointError(f"{path}: holds non-finite values in {', '.join(bad[:3])}")
    return arrays, meta


def nonfinite_arrays(arrays: dict[str, np.ndarray]) -> list[str]:
    """Names of the floating-point arrays holding NaN or Inf (a good checkpoint has none)."""
    return [
        k
        for k, v in arrays.items()
        if np.issubdtype(np.asarray(v).dtype, np.floating) and not np.isfinite(v).all()
    ]
