"""Small helpers over the cells and frames of `load_runs`: missing values, ints, nested lookups,
and per-run matrices of a curves column. No file I/O, no naming or styling rules.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd


def dig(d: Any, *keys: str) -> Any:
    """d[keys[0]][keys[1]]..., or None where a level is missing or not a mapping."""
    for k in keys:
        if not isinstance(d, dict):
            return None
        d = d.get(k)
    return d


def isna(v: Any) -> bool:
    """None, pd.NA or a float NaN."""
    if v is None or v is pd.NA:
        return True
    try:
        return bool(isinstance(v, float) and math.isnan(v))
    except TypeError:
        return False


def as_int(v: Any) -> int | None:
    """`v` as an int, or None when missing, a bool or not a number."""
    if isna(v) or isinstance(v, bool):
        return None
    try:
        return int(v)
    except (TypeError, ValueError):
        return None


def padded_matrix(sub: pd.DataFrame, column: str) -> tuple[np.ndarray, np.ndarray]:
    """(epochs 1..E, runs x E matrix) of `column` for the jobs in `sub` (curves rows), each run
    NaN-padded to the longest one (E = the largest epoch in `sub`); rows in job order."""
    sub = sub[sub["epoch"].notna() & (sub["epoch"] >= 1)]
    if sub.empty:
        return np.arange(1, 1), np.full((0, 0), np.nan)
    n_epochs = int(sub["epoch"].max())
    jobs = list(dict.fromkeys(sub["job"]))
    mat = np.full((len(jobs), n_epochs), np.nan)
    rows = sub["job"].map({j: i for i, j in enumerate(jobs)}).to_numpy(dtype=int)
    cols = sub["epoch"].to_numpy(dtype=int) - 1
    values = pd.to_numeric(sub[column], errors="coerce") if column in sub else np.nan
    mat[rows, cols] = np.asarray(values, dtype=float)
    return np.arange(1, n_epochs + 1), mat
