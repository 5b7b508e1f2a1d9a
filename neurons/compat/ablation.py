"""Paired reading of a compat ablation: each quirk switched off vs every quirk on, same seeds.

`python -m neurons.compat ablation <grid sweep> <ablation sweep> --out FILE.md` reads the job
directories (summary.json and .hydra/config.yaml only), pairs every ablation job with the
all-quirks job of the same arch, skip and seed, and writes a Markdown table per quirk: the
mean paired change in final validation accuracy / loss with a 95% t-interval, the spread, and
the ranking of the variants. Reads files; never trains.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from scipy import stats

LABELS = {
    "mlp_plain": "FFN",
    "mlp_looping": "COMBINE x2",
    "mlp_looping_x3": "COMBINE x3",
    "mlp_looping_x4": "COMBINE x4",
    "mlp_feedback": "COUPLE x2",
    "mlp_feedback_x3": "COUPLE x3",
    "mlp_feedback_x4": "COUPLE x4",
}


# switches that only act on one family (elsewhere the runs are identical to the baseline)
APPLIES_TO = {"loop_backward": "looping", "feedback_coupling": "feedback"}


def load_jobs(sweep: Path) -> list[dict[str, Any]]:
    """Completed jobs of a sweep: arch, skip, seed, ablated switch, final val acc and loss."""
    out = []
    for job in sorted(p for p in Path(sweep).iterdir() if p.is_dir()):
        summary, config = job / "summary.json", job / ".hydra" / "config.yaml"
        if not summary.is_file() or not config.is_file():
            continue
        s = json.loads(summary.read_text())
        if s.get("status") != "completed":
            continue
        cfg = yaml.safe_load(config.read_text())
        compat = s.get("compat") or {}
        out.append(
            {
                "arch": str(cfg["arch"]["name"]),
                "skip": bool(cfg["arch"].get("skip", False)),
                "seed": int(cfg["seed"]),
                "ablate": compat.get("ablate") or "",
                "on": tuple(compat.get("on") or ()),
                "acc": float(s["final"]["val_acc"]),
                "loss": float(s["final"]["val_loss"]),
                "epochs": int(s["epochs_run"]),
            }
        )
    return out


def _ci(d: np.ndarray) -> tuple[float, float, float]:
    """Mean and 95% t-interval half-width (nan for fewer than 2 values)."""
    m = float(np.mean(d)) if len(d) else math.nan
    if len(d) < 2:
        return m, math.nan, len(d)
    h = float(stats.t.ppf(0.975, len(d) - 1) * np.std(d, ddof=1) / math.sqrt(len(d)))
    return m, h, len(d)


def _fmt(m: float, h: float, digits: int = 3) -> str:
    if math.isnan(m):
        return "–"
    return f"{m:+.{digits}f}" + ("" if math.isnan(h) else f" ± {h:.{digits}f}")


def _variant(arch: str, skip: bool) -> str:
    return LABELS.get(arch, arch) + (" w. skip" if skip else "")


def _ranking(rows: list[dict[str, Any]]) -> str:
    by: dict[str, list[float]] = defaultdict(list)
    for r in rows:
        by[_variant(r["arch"], r["skip"])].append(r["acc"])
    order = sorted(by, key=lambda v: -float(np.mean(by[v])))
    return " > ".join(f"{v} ({np.mean(by[v]):.3f})" for v in order)


def report(grid: list[dict[str, Any]], ablation: list[dict[str, Any]]) -> str:
    """The Markdown reading of an ablation against its all-quirks grid."""
    base = {(r["arch"], r["skip"], r["seed"]): r for r in grid if not r["ablate"]}
    quirks = sorted({r["ablate"] for r in ablation if r["ablate"]}, key=str)
    variants = sorted({(r["arch"], r["skip"]) for r in ablation})
    lines = [
        "| quirk off | pairs | Δ final val acc (95% CI) | Δ final val loss (95% CI) | "
        "sd acc: off / all on | Δ epochs run | ranking with the quirk off (mean acc) |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    seeds_used: set[int] = set()
    for q in quirks:
        only = APPLIES_TO.get(q)  # a switch that changes nothing elsewhere is read where it acts
        rows = [r for r in ablation if r["ablate"] == q and (only is None or only in r["arch"])]
        pairs = [
            (r, base[(r["arch"], r["skip"], r["seed"])])
            for r in rows
            if (r["arch"], r["skip"], r["seed"]) in base
        ]
        seeds_used |= {r["seed"] for r, _ in pairs}
        dacc = np.array([a["acc"] - b["acc"] for a, b in pairs])
        dloss = np.array([a["loss"] - b["loss"] for a, b in pairs])
        dep = np.array([a["epochs"] - b["epochs"] for a, b in pairs], dtype=float)
        sd_off = np.std([a["acc"] for a, _ in pairs], ddof=1) if len(pairs) > 1 else math.nan
        sd_on = np.std([b["acc"] for _, b in pairs], ddof=1) if len(pairs) > 1 else math.nan
        ma, ha, n = _ci(dacc)
        ml, hl, _ = _ci(dloss)
        me = float(np.mean(dep)) if len(dep) else math.nan
        lines.append(
            f"| `{q}` | {n} | {_fmt(ma, ha)} | {_fmt(ml, hl)} | {sd_off:.3f} / {sd_on:.3f} | "
            f"{me:+.1f} | {_ranking([a for a, _ in pairs])} |"
        )
    base_rows = [b for (a, s, seed), b in base.items() if (a, s) in variants and seed in seeds_used]
    head = [
        f"Baseline (every quirk on), same variants and seeds ({len(base_rows)} runs): "
        f"{_ranking(base_rows)}.",
        "",
        "Δ = (quirk off) − (all quirks on) for the same arch, skip and seed (same data order "
        "and, except for `init`, the same initial weights), averaged over the pairs; ± is the "
        "half-width of a 95% t-interval over the pairs. *sd acc* is the spread of the final "
        "validation accuracy over those runs. `loop_backward` is read on the COMBINE runs and "
        "`feedback_coupling` on the COUPLE runs only (elsewhere they change nothing).",
        "",
    ]
    return "\n".join(head + lines) + "\n"


def _stat(v: list[float]) -> str:
    m, h, n = _ci(np.asarray(v, dtype=float))
    if not n:
        return "–"
    sd = float(np.std(v, ddof=1)) if n > 1 else math.nan
    ci = "" if math.isnan(h) else f" [{m - h:.3f}, {m + h:.3f}]"
    return f"{m:.3f}{ci} (sd {sd:.3f}, min {min(v):.3f})"


def grid_report(grid: list[dict[str, Any]], reference: Path | None = None) -> str:
    """Per variant: final val acc mean [95% CI] (sd, min) under compat vs a reference jobs.csv
    (e.g. compare/iris/jobs.csv, our engine with compat=none), and both rankings."""
    import pandas as pd

    ref: dict[str, list[float]] = defaultdict(list)
    if reference is not None:
        df = pd.read_csv(reference)
        df = df[df["complete"].astype(bool)]
        for v, acc in zip(df["variant"], df["final.val_acc"], strict=True):
            ref[str(v).replace(" w. bypassing skip", " w. skip")].append(float(acc))
    runs: dict[str, list[float]] = defaultdict(list)
    order: list[str] = []
    for skip in (False, True):
        for arch in LABELS:
            v = _variant(arch, skip)
            accs = [r["acc"] for r in grid if r["arch"] == arch and r["skip"] == skip]
            if accs:
                runs[v] = accs
                order.append(v)
    lines = [
        "| variant | runs | compat=neurons: final val acc mean [95% CI] (sd, min) | "
        "runs | compat=none (reference) |",
        "|---|---:|---:|---:|---:|",
    ]
    for v in order:
        lines.append(
            f"| {v} | {len(runs[v])} | {_stat(runs[v])} | {len(ref[v])} | {_stat(ref[v])} |"
        )

    def rank(d: dict[str, list[float]]) -> str:
        keys = [k for k in order if d.get(k)]
        keys.sort(key=lambda k: -float(np.mean(d[k])))
        return " > ".join(f"{k} ({np.mean(d[k]):.3f})" for k in keys)

    lines += ["", f"Ranking under compat=neurons: {rank(runs)}."]
    if ref:
        lines += ["", f"Ranking under compat=none: {rank(ref)}."]
    return "\n".join(lines) + "\n"


def write(grid_dir: Path, ablation_dir: Path, out: Path, reference: Path | None = None) -> Path:
    """Write the reading to `out` (atomically) and return it."""
    grid = load_jobs(grid_dir)
    text = "## The grid\n\n" + grid_report(grid, reference) + "\n## One quirk off at a time\n\n"
    text += report(grid, load_jobs(ablation_dir))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    tmp.write_text(text)
    tmp.replace(out)
    return out
