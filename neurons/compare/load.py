"""Load the job directories of one or more runner sweeps into two tidy pandas frames.

Reads files only (`.hydra/*.yaml`, `metrics.csv`, `summary.json`, `status.json`); it never imports
the training code and never writes. Variant names are `variants.py`'s, colours `styles.py`'s.
"""

from __future__ import annotations

import io
import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from neurons.record import METRIC_COLUMNS, METRICS, STATUS, SUMMARY

from .frames import as_int, dig, isna
from .integrity import metrics_damage
from .variants import assign_variants, varied_keys

__all__ = ["COMPLETED", "METRIC_COLUMNS", "NoRunsError", "find_job_dirs", "load_runs"]

COMPLETED = "completed"
# Summary fields that always get a column (NaN when absent or null), so downstream code can rely
# on them.
SUMMARY_COLUMNS = (
    "task",
    "epochs_run",
    "params",
    "wall_seconds",
    "seconds_per_epoch",
    "final.train_loss",
    "final.train_acc",
    "final.val_loss",
    "final.val_acc",
    "best.epoch",
    "best.monitor",
    "best.val_loss",
    "best.val_acc",
    "probes.no_feedback.loss",
    "probes.no_feedback.acc",
    "probes.no_skip.loss",
    "probes.no_skip.acc",
    "probes.split",
)
_MARKERS = (Path(".hydra") / "config.yaml", Path(METRICS), Path(STATUS))


class NoRunsError(ValueError):
    """A given directory holds no job directory."""


# --------------------------------------------------------------------------------------------
# discovery


def _is_job(d: Path) -> bool:
    return any((d / m).is_file() for m in _MARKERS)


def _natural_key(s: str) -> list:
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", s)]


def find_job_dirs(root: Path) -> list[Path]:
    """Job directories under `root` (or `root` itself): directories holding `.hydra/config.yaml`,
    `metrics.csv` or `status.json`. Hidden directories are not searched, nor are job directories'
    subdirectories. Naturally sorted by relative path (0_, 1_, ..., 10_)."""
    root = Path(root)
    if _is_job(root):
        return [root]
    found: list[Path] = []
    for cur, subdirs, _files in os.walk(root):
        subdirs[:] = [s for s in subdirs if not s.startswith(".")]
        p = Path(cur)
        if p != root and _is_job(p):
            found.append(p)
            subdirs[:] = []
    return sorted(found, key=lambda p: _natural_key(p.relative_to(root).as_posix()))


# --------------------------------------------------------------------------------------------
# reading one job


@dataclass
class _Job:
    name: str
    path: Path
    sweep: Path
    config: dict = field(default_factory=dict)
    choices: dict = field(default_factory=dict)
    overrides: dict = field(default_factory=dict)
    metrics: pd.DataFrame | None = None
    summary: dict | None = None
    status: str = "unknown"
    error: str | None = None
    problems: list[str] = field(default_factory=list)
    damage: list[str] = field(default_factory=list)  # why its numbers cannot be trusted
    base: tuple | None = None  # (family, passes, skip) from the arch config
    fields: dict = field(default_factory=dict)


def _read_yaml(path: Path, job: _Job, what: str) -> Any:
    if not path.is_file():
        job.problems.append(f"{what} missing")
        return None
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as e:
        job.problems.append(f"{what} unreadable: {_one_line(e)}")
        return None


def _read_json(path: Path, job: _Job, what: str) -> dict | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        job.problems.append(f"{what} unreadable: {_one_line(e)}")
        return None
    if not isinstance(data, dict):
        job.problems.append(f"{what} is not a JSON object")
        return None
    return data


def _read_metrics(path: Path, job: _Job) -> pd.DataFrame | None:
    if not path.is_file():
        job.problems.append("metrics.csv missing")
        return None
    try:
        text = path.read_text(encoding="utf-8")
        job.damage += metrics_damage(text)
        m = pd.read_csv(io.StringIO(text))
    except pd.errors.EmptyDataError:
        job.problems.append("metrics.csv empty")
        return None
    except (OSError, ValueError) as e:  # UnicodeDecodeError and pandas' ParserError included
        job.problems.append(f"metrics.csv unreadable: {_one_line(e)}")
        return None
    missing = [c for c in METRIC_COLUMNS if c not in m.columns]
    if "epoch" in missing:
        m["epoch"] = np.arange(1, len(m) + 1)
        missing.remove("epoch")
    if missing:
        job.problems.append("metrics.csv lacks " + ", ".join(missing))
    m = m.reindex(columns=list(METRIC_COLUMNS))
    for c in METRIC_COLUMNS:
        m[c] = pd.to_numeric(m[c], errors="coerce").astype(float)
    m = m[m["epoch"].notna()].reset_index(drop=True)
    if m.empty:
        job.problems.append("metrics.csv has no rows")
        return None
    m["epoch"] = m["epoch"].astype(int)
    return m


def _parse_overrides(items: Any) -> dict[str, str]:
    out: dict[str, str] = {}
    if not isinstance(items, list):
        return out
    for item in items:
        s = str(item)
        if "=" not in s:
            continue
        key, value = s.split("=", 1)
        key = key.lstrip("+~").strip()
        if key and not key.startswith("hydra"):
            out[key] = value.strip()
    return out


def _read_job(path: Path, name: str, sweep: Path) -> _Job:
    job = _Job(name=name, path=path, sweep=sweep)
    hydra_dir = path / ".hydra"
    cfg = _read_yaml(hydra_dir / "config.yaml", job, ".hydra/config.yaml")
    job.config = cfg if isinstance(cfg, dict) else {}
    if (hydra_dir / "hydra.yaml").is_file():
        hy = _read_yaml(hydra_dir / "hydra.yaml", job, ".hydra/hydra.yaml")
        choices = dig(hy, "hydra", "runtime", "choices")
        if isinstance(choices, dict):
            job.choices = {str(k): v for k, v in choices.items() if not str(k).startswith("hydra")}
    if (hydra_dir / "overrides.yaml").is_file():
        job.overrides = _parse_overrides(
            _read_yaml(hydra_dir / "overrides.yaml", job, ".hydra/overrides.yaml")
        )
    job.metrics = _read_metrics(path / METRICS, job)
    job.summary = _read_json(path / SUMMARY, job, SUMMARY)
    status = _read_json(path / STATUS, job, STATUS)

    if status is not None and status.get("status"):
        job.status = str(status["status"])
        job.error = None if status.get("error") is None else str(status["error"])
    elif job.summary is not None and job.summary.get("status"):
        job.status = str(job.summary["status"])
        job.problems.append("status.json missing")
    else:
        job.problems.append("status.json missing")
    if job.status != COMPLETED:
        job.problems.insert(0, f"status {job.status}")
    if job.summary is None:
        job.problems.append("summary.json missing")
    elif job.summary.get("status") not in (None, job.status):
        job.problems.append(
            f"summary.json says {job.summary.get('status')!r}, status.json {job.status!r}"
        )

    _judge_damage(job)
    arch = job.config.get("arch")
    if isinstance(arch, dict) and "family" in arch:
        passes = as_int(arch.get("passes"))
        job.base = (str(arch["family"]), passes if passes is not None else 1, _as_bool(arch))
    return job


def _judge_damage(job: _Job) -> None:
    """Add to `job.damage` what makes its records untrustworthy: any unreadable file, and for a
    run that says it completed, a missing config, metrics or summary file, or a summary whose
    epoch count disagrees with the metrics rows."""
    bad = ("unreadable", "is not a JSON object", "metrics.csv lacks")
    job.damage += [p for p in job.problems if any(b in p for b in bad)]
    if job.status != COMPLETED:
        return
    needed = (".hydra/config.yaml missing", "metrics.csv missing", "metrics.csv empty")
    job.damage += [p for p in job.problems if p in needed or p == "metrics.csv has no rows"]
    if job.summary is None and not any(SUMMARY in p for p in job.damage):
        job.damage.append("summary.json missing")
    epochs_run = as_int(job.summary.get("epochs_run")) if job.summary else None
    if epochs_run is not None and job.metrics is not None and epochs_run != len(job.metrics):
        job.damage.append(
            f"summary.json says {epochs_run} epochs, metrics.csv holds {len(job.metrics)}"
        )


def _as_bool(arch: dict) -> bool:
    v = arch.get("skip", False)
    if isinstance(v, str):
        return v.strip().lower() in ("true", "1", "yes")
    return bool(v)


# --------------------------------------------------------------------------------------------
# per-job fields


def _summary_fields(job: _Job) -> dict[str, Any]:
    f: dict[str, Any] = dict.fromkeys(SUMMARY_COLUMNS, np.nan)
    if job.summary is not None:
        flat = _flatten(job.summary)
        if "status" in flat:
            flat["summary_status"] = flat.pop("status")
        f.update(flat)
    m = job.metrics
    if job.summary is None and job.status == COMPLETED and m is not None:
        # Completed run without summary.json: reconstruct what the metrics allow.
        last = m.iloc[-1]
        f["epochs_run"] = len(m)
        for k in ("train_loss", "train_acc", "val_loss", "val_acc"):
            f[f"final.{k}"] = last[k]
        if m["val_loss"].notna().any():
            best = m.loc[m["val_loss"].idxmin()]
            f.update(
                {
                    "best.epoch": int(best["epoch"]),
                    "best.monitor": "val_loss",
                    "best.val_loss": best["val_loss"],
                    "best.val_acc": best["val_acc"],
                }
            )
        f["wall_seconds"] = last["wall"]
        f["seconds_per_epoch"] = _nanmean(m["seconds"].to_numpy())
    if isna(f.get("task")):
        if m is not None:
            f["task"] = "classification" if m["val_acc"].notna().any() else "regression"
        else:
            f["task"] = None
    return f


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = _cell(v)
    return out


def _config_fields(job: _Job) -> dict[str, Any]:
    if not job.config:
        return {}
    flat = pd.json_normalize(job.config, sep=".").iloc[0].to_dict()
    return {k: _cell(v) for k, v in flat.items()}


def _cell(v: Any) -> Any:
    """Scalars as they are; lists/dicts as compact JSON text (hashable, CSV-friendly)."""
    if isinstance(v, list | tuple | dict):
        return json.dumps(v, default=str, separators=(",", ":"))
    return np.nan if v is None else v


def _unique_names(found: list[tuple[Path, Path]]) -> list[str]:
    names = [j.name for _s, j in found]
    if len(set(names)) == len(names):
        return names
    names = [f"{s.name}/{j.relative_to(s).as_posix()}" if j != s else j.name for s, j in found]
    seen: dict[str, int] = {}
    out = []
    for n in names:
        seen[n] = seen.get(n, 0) + 1
        out.append(n if seen[n] == 1 else f"{n}#{seen[n]}")
    return out


# --------------------------------------------------------------------------------------------
# public entry point

_ID_COLUMNS = ["job", "variant", "method", "family", "passes", "skip", "extra", "seed"]


def load_runs(dirs: Iterable[Path | str] | Path | str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Load every job under the given sweep (or single job) directories.

    Returns ``(curves, jobs)``:

    * ``curves``: one row per job x epoch, columns ``job, variant, method, family, passes, skip,
      extra, seed, status, complete, task`` + the ``metrics.csv`` columns + the flattened config
      (``arch.family``, ``optimizer.lr``, ...) + ``choice.<group>``. Rows of unfinished or failed
      jobs are kept, flagged by ``complete == False``.
    * ``jobs``: one row per job with ``path, sweep, status, error, complete, early_stopped,
      n_epochs, problem`` and the flattened ``summary.json`` (``final.*``, ``best.*``,
      ``probes.*``, ``dataset.*``, ...), then ``choice.*`` and config columns. ``problem`` is a
      "; "-joined list of what is missing or wrong ("" when fine). A completed job without a
      summary gets its final/best/epochs fields from ``metrics.csv``.
    * ``damaged`` / ``damage``: the job's records cannot be trusted (a ``metrics.csv`` cut
      mid-write or with unparsable rows, an unreadable file, or a completed run missing its
      config, metrics or summary) and why. ``complete`` is False for a damaged job, so it is
      never averaged in.

    Both frames carry ``attrs["varied"]``: the override keys whose values differ across jobs.
    Raises ``FileNotFoundError`` for a missing directory and ``NoRunsError`` when a directory
    holds no job.
    """
    if isinstance(dirs, str | Path):
        dirs = [dirs]
    roots = [Path(d) for d in dirs]
    if not roots:
        raise NoRunsError("no directory given")
    found: list[tuple[Path, Path]] = []
    for root in roots:
        if not root.is_dir():
            raise FileNotFoundError(f"no such directory: {root}")
        job_dirs = find_job_dirs(root)
        if not job_dirs:
            raise NoRunsError(
                f"no job directories (with .hydra/config.yaml or metrics.csv) in {root}"
            )
        found += [(root, j) for j in job_dirs]

    names = _unique_names(found)
    jobs = [_read_job(j, n, s) for (s, j), n in zip(found, names, strict=True)]
    varied = varied_keys(jobs)
    assign_variants(jobs, varied)

    job_rows, curve_parts = [], []
    for j in jobs:
        seed = j.config.get("seed")
        if seed is None and j.summary is not None:
            seed = j.summary.get("seed")
        if seed is None:
            seed = j.overrides.get("seed")
        ident = {"job": j.name, **j.fields, "seed": as_int(seed)}
        summ = _summary_fields(j)
        cfg = _config_fields(j)
        choices = {f"choice.{k}": _cell(v) for k, v in j.choices.items()}
        configured = as_int(dig(j.config, "train", "epochs"))
        n_epochs = 0 if j.metrics is None else len(j.metrics)
        epochs_run = as_int(summ.get("epochs_run"))
        complete = j.status == COMPLETED and not j.damage
        row = {
            **ident,
            "path": str(j.path),
            "sweep": str(j.sweep),
            "status": j.status,
            "error": j.error,
            "complete": complete,
            "early_stopped": bool(
                complete
                and configured is not None
                and (epochs_run if epochs_run is not None else n_epochs) < configured
            ),
            "n_epochs": n_epochs,
            "problem": "; ".join(j.problems),
            "damaged": bool(j.damage),
            "damage": "; ".join(dict.fromkeys(j.damage)),
            **summ,
            **choices,
        }
        for k, v in cfg.items():
            row.setdefault(k, v)
        job_rows.append(row)
        if j.metrics is not None:
            part = j.metrics.copy()
            lead = {
                **ident,
                "status": j.status,
                "complete": complete,
                "task": summ.get("task"),
            }
            for k, v in reversed(list(lead.items())):
                part.insert(0, k, [v] * len(part))
            extra_cols = {k: v for k, v in {**cfg, **choices}.items() if k not in part.columns}
            if extra_cols:
                part = pd.concat(
                    [part, pd.DataFrame({k: [v] * len(part) for k, v in extra_cols.items()})],
                    axis=1,
                )
            curve_parts.append(part)

    jobs_df = pd.DataFrame(job_rows)
    lead_cols = [*_ID_COLUMNS, "status", "complete", "task", *METRIC_COLUMNS]
    if curve_parts:
        curves = pd.concat(curve_parts, ignore_index=True, sort=False)
    else:
        curves = pd.DataFrame(columns=lead_cols)
    for df in (jobs_df, curves):
        for c in ("seed", "passes"):
            if c in df:
                df[c] = pd.to_numeric(df[c], errors="coerce").astype("Int64")
        df.attrs["varied"] = list(varied)
    return curves, jobs_df


# --------------------------------------------------------------------------------------------
# small helpers


def _nanmean(a: np.ndarray) -> float:
    a = np.asarray(a, dtype=float)
    a = a[np.isfinite(a)]
    return float(a.mean()) if a.size else float("nan")


def _one_line(e: BaseException) -> str:
    s = str(e).strip().splitlines()
    return s[-1] if s else type(e).__name__
