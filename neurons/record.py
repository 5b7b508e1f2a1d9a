"""Run records: the files a run writes and the comparison module reads. Atomic writes only.

A run directory holds `.hydra/` (Hydra's), METRICS (one row per epoch, rewritten atomically
every epoch), SUMMARY (final/best/probe metrics, timing, threads, versions, data source),
STATUS (running | completed | failed | interrupted, with the error), LOG, and CHECKPOINTS/
{last,best}.npz (model, optimizer state, rng state, train state; `allow_pickle=False`).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import tempfile
import time
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


def write_atomic(path: Path, data: str | bytes) -> None:
    """Write to a temp file in the same directory, fsync, then rename over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
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


def write_metrics(run_dir: Path, rows: list[dict[str, float]]) -> None:
    """Rewrite METRICS with every row so far (small; atomic, so never half-written)."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=METRIC_COLUMNS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if _is_nan(r.get(k)) else r.get(k)) for k in METRIC_COLUMNS})
    write_atomic(Path(run_dir) / METRICS, buf.getvalue())


def _is_nan(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def read_metrics(run_dir: Path) -> list[dict[str, float]]:
    path = Path(run_dir) / METRICS
    if not path.exists():
        return []
    rows = []
    with path.open() as f:
        for r in csv.DictReader(f):
            rows.append(
                {k: (float(v) if v not in ("", None) else float("nan")) for k, v in r.items()}
            )
    for r in rows:
        r["epoch"], r["step"] = int(r["epoch"]), int(r["step"])
    return rows


def save_checkpoint(path: Path, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
    """np.savez of `arrays` plus `meta` as a JSON string, written to a temp file then renamed."""
    payload = dict(arrays)
    payload["__meta__"] = np.array(json.dumps(_clean(meta)))
    buf = io.BytesIO()
    np.savez(buf, **payload)
    write_atomic(path, buf.getvalue())


def load_checkpoint(path: Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files if k != "__meta__"}
        meta = json.loads(str(z["__meta__"])) if "__meta__" in z.files else {}
    return arrays, meta
