"""Read a written comparison report back (its own `jobs.csv`, `curves.csv`, `report.json`), so
a committed report can be regenerated from what is committed; and name paths for reports
relative to the repository, never as absolute paths of the machine that made them.

Reads files only; writing stays in `neurons.compare.report`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pandas as pd

__all__ = [
    "META",
    "display_path",
    "is_report_dir",
    "load_report",
    "path_base",
    "repo_root",
    "slim_curves",
]

META = "report.json"
TABLES = ("jobs.csv", "curves.csv")
_BOOL = ("complete", "skip", "early_stopped", "damaged")
_TEXT = ("extra", "problem", "damage", "error", "method", "variant")


def is_report_dir(d: Path) -> bool:
    """A folder written by `write_report` (it holds `jobs.csv` and `curves.csv`)."""
    return all((Path(d) / t).is_file() for t in TABLES)


def repo_root(start: Path) -> Path | None:
    """The nearest ancestor of `start` (itself included) holding `.git` or `pyproject.toml`."""
    p = Path(os.path.abspath(start))
    for d in (p, *p.parents):
        if (d / ".git").exists() or (d / "pyproject.toml").is_file():
            return d
    return None


def path_base(anchor: Path | str) -> tuple[Path, str]:
    """The folder report paths are relative to, and how a README says so: the repository
    holding the report folder `anchor`, else that folder itself."""
    root = repo_root(Path(anchor))
    if root is not None:
        return root, "the repository root"
    return Path(os.path.abspath(anchor)), "the report folder"


def display_path(path: Path | str, anchor: Path | str) -> str:
    """`path` as a report in folder `anchor` names it: relative (POSIX) to `path_base(anchor)`;
    outside a repository relative to the report folder (e.g. ".."); a path outside the
    repository holding the report is named by its last component with " (outside the
    repository)". Never absolute."""
    p = Path(os.path.abspath(path))
    base, _ = path_base(anchor)
    try:
        return p.relative_to(base).as_posix() or "."
    except ValueError:
        pass
    if repo_root(Path(anchor)) is None:
        return Path(os.path.relpath(p, base)).as_posix()
    return f"{p.name} (outside the repository)"


# Floats must read back exactly as written for a regenerated report to match: pandas 3 parses
# round-trip by default (and deprecates the option), pandas 2 needs it asked for.
_EXACT = {} if int(pd.__version__.split(".")[0]) >= 3 else {"float_precision": "round_trip"}


def _read_csv(path: Path) -> pd.DataFrame:
    try:
        return pd.read_csv(path, low_memory=False, **_EXACT)
    except (OSError, ValueError) as e:
        raise ValueError(f"{path.name} in {path.parent} is not a readable table: {e}") from e


def _restore(df: pd.DataFrame) -> pd.DataFrame:
    for c in _BOOL:
        if c in df:
            df[c] = df[c].map(
                lambda v: str(v).strip().lower() in ("true", "1", "1.0") if pd.notna(v) else False
            )
    for c in _TEXT:
        if c in df:
            df[c] = df[c].where(df[c].notna(), "")
            df[c] = df[c].astype(object).map(lambda v: v if isinstance(v, str) else str(v))
    for c in ("seed", "passes"):
        if c in df:
            df[c] = pd.to_numeric(df[c], errors="coerce").astype("Int64")
    for c in ("family",):
        if c in df:
            df[c] = df[c].where(df[c].notna(), None)
    return df


def load_report(d: Path | str) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """``(curves, jobs, meta)`` of a report folder: the frames as `load_runs` returned them when
    the report was written (types restored: flags as bool, seeds as Int64, empty text as ""),
    and its `report.json` (title, baseline, band, sources, sweep commands; {} when absent). A
    report written before ``damaged`` existed gets ``damaged = False``."""
    d = Path(d)
    missing = [t for t in TABLES if not (d / t).is_file()]
    if missing:
        raise FileNotFoundError(f"{d} is not a report folder: {', '.join(missing)} missing")
    jobs = _restore(_read_csv(d / "jobs.csv"))
    curves = _restore(_read_csv(d / "curves.csv"))
    for col in ("variant", "complete", "job"):
        if col not in jobs:
            raise ValueError(f"jobs.csv in {d} lacks the column {col!r}")
    if "damaged" not in jobs:
        jobs["damaged"], jobs["damage"] = False, ""
    if "problem" not in jobs:
        jobs["problem"] = ""
    meta: dict[str, Any] = {}
    if (d / META).is_file():
        try:
            meta = json.loads((d / META).read_text(encoding="utf-8"))
        except ValueError as e:
            raise ValueError(f"{META} in {d} is not valid JSON: {e}") from e
        if not isinstance(meta, dict):
            raise ValueError(f"{META} in {d} must hold a JSON object, found {type(meta).__name__}")
    varied = meta.get("varied", [])
    config = [c for c in jobs.columns if c not in curves.columns]
    if config:  # the per-job columns `slim_curves` left to jobs.csv, back on every epoch row
        curves = curves.merge(jobs[["job", *config]], on="job", how="left", validate="m:1")
    for df in (jobs, curves):
        df.attrs["varied"] = list(varied)
    return curves, jobs, meta


CURVE_KEYS = ("job", "variant", "method", "family", "passes", "skip", "extra", "seed", "status")


def slim_curves(curves: pd.DataFrame, jobs: pd.DataFrame) -> pd.DataFrame:
    """`curves` without the per-job columns (the flattened config, choices) that `jobs` holds
    once per job: `curves.csv` stays one row per job × epoch of metrics plus the keys in
    `CURVE_KEYS`; `load_report` joins the rest back from `jobs.csv`."""
    drop = [c for c in curves.columns if c in jobs.columns and c not in CURVE_KEYS]
    drop = [c for c in drop if c not in ("complete", "task")]
    return curves.drop(columns=drop)
