"""Per-variant summary statistics of a sweep, and plain-text Markdown/LaTeX writers for them.

Works on the frames of `neurons.compare.load.load_runs`; no file I/O (CSV is `df.to_csv`) and no
dependency on the optional `tabulate`/`jinja2` packages behind pandas' own writers.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from .frames import padded_matrix
from .variants import ordered_variants

__all__ = ["STAT_METRICS", "format_number", "summary_table", "to_latex", "to_markdown"]

# Per-run quantities averaged over a variant's completed runs: (jobs column, display header).
STAT_METRICS = (
    ("final.val_acc", "Final val acc"),
    ("final.val_loss", "Final val loss"),
    ("final.train_loss", "Final train loss"),
    ("best.val_acc", "Best-epoch val acc"),
    ("best.val_loss", "Best-epoch val loss"),
    ("epochs_run", "Epochs run"),
    ("seconds_per_epoch", "s / epoch"),
    ("probes.no_feedback.loss", "Feedback off loss"),
    ("probes.no_feedback.acc", "Feedback off acc"),
    ("probes.no_skip.loss", "Skip off loss"),
    ("probes.no_skip.acc", "Skip off acc"),
)
LAST_INDEX_METRICS = (
    ("val_acc", "Last-index val acc"),
    ("val_loss", "Last-index val loss"),
)
DDOF = 1


def _mean_std(values: object) -> tuple[float, float]:
    """Mean and sample std (ddof=1) of the finite values; std is NaN for fewer than 2."""
    a = pd.to_numeric(pd.Series(values, dtype=object), errors="coerce").to_numpy(dtype=float)
    a = a[np.isfinite(a)]
    if a.size == 0:
        return math.nan, math.nan
    mean = float(a.mean())
    std = float(np.sqrt(((a - mean) ** 2).sum() / (a.size - DDOF))) if a.size > DDOF else math.nan
    return mean, std


def summary_table(curves: pd.DataFrame, jobs: pd.DataFrame) -> pd.DataFrame:
    """One row per variant, in `ordered_variants` order (all skip=False rows first, then all
    skip=True rows; within each: FFN, COMBINE xN by N, COUPLE xN by N, others).

    Columns: ``variant, method, family, passes, skip, extra, n_runs`` (completed jobs),
    ``n_failed`` (status "failed"), ``n_unfinished`` (any other non-completed status), then for
    every `STAT_METRICS` column and ``best.epoch``: ``<col>.mean`` and ``<col>.std``, the mean
    and sample standard deviation (ddof=1, NaN for a single run) over the completed runs of each
    run's own value
    (final = the run's last epoch as reported in summary.json; best = the epoch with the best
    monitored val_loss; probes = the network evaluated with feedback / skip switched off).

    For comparison with the original thesis tables also the "last-index" statistic:
    ``last_index.epoch`` (the variant's longest run length), ``last_index.n`` (runs reaching it)
    and ``last_index.<metric>.mean/.std``: nanmean and sample std (ddof=1) at the last epoch index
    of the NaN-padded curves, i.e. only over the longest runs (the original used ddof=0).
    """
    rows = []
    done_curves = curves
    if "complete" in curves and not curves.empty:
        done_curves = curves[curves["complete"].astype(bool)]
    ident = ["variant", "method", "family", "passes", "skip", "extra"]
    info = jobs.reindex(columns=ident).drop_duplicates("variant").set_index("variant")
    for v in ordered_variants(jobs):
        vj = jobs[jobs["variant"] == v]
        done = vj[vj["complete"].astype(bool)]
        n_failed = int((vj["status"] == "failed").sum())
        row: dict[str, object] = {"variant": v, **info.loc[v].to_dict()}
        row.update(n_runs=len(done), n_failed=n_failed, n_unfinished=len(vj) - len(done) - n_failed)
        for col in [c for c, _ in STAT_METRICS] + ["best.epoch"]:
            mean, std = _mean_std(done[col] if col in done else [])
            row[f"{col}.mean"], row[f"{col}.std"] = mean, std
        epochs, mat = padded_matrix(done_curves[done_curves["variant"] == v], "epoch")
        row["last_index.epoch"] = int(epochs[-1]) if epochs.size else 0
        row["last_index.n"] = int(np.isfinite(mat[:, -1]).sum()) if epochs.size else 0
        for metric, _ in LAST_INDEX_METRICS:
            _, mat = padded_matrix(done_curves[done_curves["variant"] == v], metric)
            mean, std = _mean_std(mat[:, -1] if mat.size else [])
            row[f"last_index.{metric}.mean"], row[f"last_index.{metric}.std"] = mean, std
        rows.append(row)
    out = pd.DataFrame(rows)
    for c in ("passes",):
        if c in out:
            out[c] = pd.to_numeric(out[c], errors="coerce").astype("Int64")
    return out


# --------------------------------------------------------------------------------------------
# formatting


def format_number(x: object, *, nan: str = "–") -> str:
    """4 decimals, or ``x.xxe+yy`` when |x| >= 1000; `nan` for missing values."""
    try:
        v = float(x)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return str(x)
    if not math.isfinite(v):
        return nan
    return f"{v:.2e}" if abs(v) >= 1000 else f"{v:.4f}"


def _cells(df: pd.DataFrame, pm: str, nan: str) -> tuple[list[str], list[list[str]]]:
    """Display headers and cells: "Runs" = completed runs (+ failed, + unfinished), statistics as
    "mean ± std" (just the mean when std is undefined). Statistic columns missing for every
    variant are dropped (e.g. accuracies for regression); the CSV keeps every column."""
    stats = [*STAT_METRICS, *((f"last_index.{m}", h) for m, h in LAST_INDEX_METRICS)]
    stats = [
        (c, h)
        for c, h in stats
        if f"{c}.mean" in df and pd.to_numeric(df[f"{c}.mean"], errors="coerce").notna().any()
    ]
    headers = ["Model", "Runs"] + [h for _, h in stats]
    if "last_index.n" in df:
        headers.append("Last-index runs @ epoch")
    rows = []
    for _, r in df.iterrows():
        runs = str(r["n_runs"])
        pairs = (("n_failed", "failed"), ("n_unfinished", "unfinished"))
        extra = [f"+{r[c]} {word}" for c, word in pairs if r[c]]
        if extra:
            runs += f" ({', '.join(extra)})"
        cells = [str(r["variant"]), runs]
        for c, _ in stats:
            mean = format_number(r[f"{c}.mean"], nan=nan)
            std = r[f"{c}.std"]
            ok = mean != nan and pd.notna(std) and math.isfinite(float(std))
            cells.append(f"{mean} {pm} {format_number(std, nan=nan)}" if ok else mean)
        if "last_index.n" in df:
            cells.append(f"{r['last_index.n']} @ {r['last_index.epoch']}")
        rows.append(cells)
    return headers, rows


def to_markdown(df: pd.DataFrame) -> str:
    """GitHub-flavoured Markdown table of a `summary_table` frame."""
    headers, rows = _cells(df, "±", "–")

    def esc(s: str) -> str:
        return s.replace("|", "\\|").replace("\n", " ")

    lines = [
        "| " + " | ".join(esc(h) for h in headers) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(headers) - 1)) + "|",
    ]
    lines += ["| " + " | ".join(esc(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}


def _latex_escape(s: str) -> str:
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in s)


def to_latex(df: pd.DataFrame, *, caption: str | None = None, label: str | None = None) -> str:
    """A LaTeX ``table`` (booktabs rules) of a `summary_table` frame."""
    headers, rows = _cells(df, "\x00", "--")
    n = int(df["n_runs"].max()) if len(df) else 0
    if caption is None:
        caption = (
            "Mean $\\pm$ standard deviation (ddof=1) over the completed runs of each variant"
            f" (up to {n}); last-index columns only over the longest runs."
        )

    def cell(s: str) -> str:
        return "$\\pm$".join(_latex_escape(p) for p in s.split("\x00")).replace("–", "--")

    out = [
        "\\begin{table}[ht]",
        "\\centering",
        "\\small",
        "\\begin{tabular}{l" + "r" * (len(headers) - 1) + "}",
        "\\toprule",
        " & ".join(_latex_escape(h) for h in headers) + " \\\\",
        "\\midrule",
    ]
    out += [" & ".join(cell(c) for c in row) + " \\\\" for row in rows]
    out += ["\\bottomrule", "\\end{tabular}", f"\\caption{{{caption}}}"]
    if label:
        out.append(f"\\label{{{label}}}")
    out.append("\\end{table}")
    return "\n".join(out) + "\n"
