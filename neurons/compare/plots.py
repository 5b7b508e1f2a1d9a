"""Comparison figures built from the frames of `neurons.compare.load.load_runs`.

Pure functions returning a matplotlib `Figure` (object-oriented API only): no pyplot state, no
backend selection and no file I/O; saving is the caller's job (see `neurons.compare.report`).
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator
from scipy import stats

from .frames import padded_matrix
from .styles import variant_styles
from .variants import SKIP_SUFFIX, ordered_variants

__all__ = ["BAND_LABELS", "METRIC_LABELS", "final_metric", "forest_plot", "learning_curves"]

ROWS = {
    "classification": (
        ("val_acc", "Avg. validation accuracy"),
        ("val_loss", "Avg. validation loss"),
        ("train_loss", "Avg. training loss"),
    ),
    "regression": (
        ("val_loss", "Avg. validation loss"),
        ("train_loss", "Avg. training loss"),
    ),
}
COLUMN_TITLES = {False: "Without bypassing skip", True: "With bypassing skip"}
X_LABELS = {"epoch": "Epoch", "wall": "Time-weighted epoch (approx. training seconds)"}
METRIC_LABELS = {
    "final.val_acc": "Final validation accuracy",
    "final.val_loss": "Final validation loss",
    "final.train_loss": "Final training loss",
    "final.train_acc": "Final training accuracy",
    "best.val_acc": "Validation accuracy at the best epoch",
    "best.val_loss": "Best validation loss",
    "seconds_per_epoch": "Seconds per epoch",
    "epochs_run": "Epochs run",
}


BAND_LABELS = {
    "ci": "95% confidence interval of the mean (t, per epoch)",
    "percentile": "20th-80th percentile",
    "std": "mean ± std",
}
VERDICT_COLOURS = {"better": "tab:green", "worse": "tab:red"}


def _finished(df: pd.DataFrame, include_incomplete: bool) -> pd.DataFrame:
    if include_incomplete or "complete" not in df or df.empty:
        return df
    return df[df["complete"].astype(bool)]


def _skip_of(df: pd.DataFrame) -> dict[str, bool]:
    if df.empty:
        return {}
    sub = df.drop_duplicates("variant")
    return {v: bool(s) for v, s in zip(sub["variant"], sub["skip"].fillna(False), strict=True)}


def _methods(df: pd.DataFrame) -> dict[str, str]:
    """Variant label -> legend label (the method name; the skip column/tick says the rest)."""
    if df.empty or "method" not in df:
        return {}
    return dict(zip(df["variant"], df["method"], strict=True))


def _nanstats(mat: np.ndarray, band: str | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Column-wise nanmean and band over the runs (rows) of `mat`: "ci" = the 95% t confidence
    interval of the mean (mean +- t_{0.975, n-1} std / sqrt(n), no band where n < 2),
    "percentile" = 20th-80th nanpercentile, "std" = mean +- std (ddof=1, 0 for a single run)."""
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = np.nanmean(mat, axis=0)
        if band == "percentile":
            lo, hi = np.nanpercentile(mat, [20, 80], axis=0)
        elif band == "ci":
            n = np.isfinite(mat).sum(axis=0)
            ss = np.nansum((mat - mean) ** 2, axis=0)
            sem = np.sqrt(ss / np.maximum(n - 1, 1) / np.maximum(n, 1))
            half = np.where(n > 1, stats.t.ppf(0.975, np.maximum(n - 1, 1)) * sem, np.nan)
            lo, hi = mean - half, mean + half
        elif band == "std":
            n = np.isfinite(mat).sum(axis=0)
            ss = np.nansum((mat - mean) ** 2, axis=0)
            std = np.where(n > 1, np.sqrt(ss / np.maximum(n - 1, 1)), 0.0)
            lo, hi = mean - std, mean + std
        else:
            lo = hi = mean
    return mean, lo, hi


def seconds_per_epoch(sub: pd.DataFrame) -> float:
    """A variant's mean seconds per epoch: the mean over its runs of each run's mean `seconds`
    column (a run without it uses its last `wall` / last `epoch`). NaN when nothing is known."""
    per_run = []
    for _, run in sub.groupby("job", sort=False):
        s = pd.to_numeric(run["seconds"], errors="coerce").to_numpy(dtype=float)
        s = s[np.isfinite(s)]
        if s.size:
            per_run.append(s.mean())
            continue
        last = run.sort_values("epoch").iloc[-1]
        w = pd.to_numeric(pd.Series([last.get("wall")]), errors="coerce").iloc[0]
        if np.isfinite(w) and last["epoch"] > 0:
            per_run.append(float(w) / float(last["epoch"]))
    return float(np.mean(per_run)) if per_run else float("nan")


def learning_curves(
    curves: pd.DataFrame,
    *,
    x: str = "epoch",
    band: str | None = "ci",
    task: str = "classification",
    title: str | None = None,
    include_incomplete: bool = False,
) -> Figure:
    """Mean learning curves over seeds, one line per variant.

    Grid: rows = validation accuracy, validation loss, training loss (regression: the two loss
    rows only); columns = without / with bypassing skip (one column when no variant has
    skip=True). Per variant the runs are NaN-padded to its longest run and the line is the
    nanmean over runs per epoch; `band` adds a shaded region (alpha 0.1): "ci" = 95% t confidence
    interval of the mean, "percentile" = 20th-80th nanpercentile, "std" = mean +- std (ddof=1),
    None = no band.

    `x="epoch"`: the x axis is the (1-based) epoch. `x="wall"`: the "time-weighted" plot, x =
    epoch x the variant's mean seconds per epoch (`seconds_per_epoch`), so variants are compared
    at equal approximate training time; it never draws bands. Variants without timing are
    skipped there.

    Per axis: one Line2D per variant of that column with any finite value of that row's metric,
    and (x="epoch" with a band) as many PolyCollections. Incomplete (failed/unfinished) jobs are
    left out unless `include_incomplete`. The legend is in the bottom-left panel.
    """
    if x not in X_LABELS:
        raise ValueError(f"x must be 'epoch' or 'wall', not {x!r}")
    if band not in ("ci", "percentile", "std", None):
        raise ValueError(f"band must be 'ci', 'percentile', 'std' or None, not {band!r}")
    if task not in ROWS:
        raise ValueError(f"task must be 'classification' or 'regression', not {task!r}")
    if x == "wall":
        band = None
    data = _finished(curves, include_incomplete)
    skip_of = _skip_of(data)
    columns = [False, True] if any(skip_of.values()) else [False]
    rows = ROWS[task]
    styles = variant_styles(curves)
    methods = _methods(curves)
    order = ordered_variants(data)

    fig = Figure(figsize=(4.2 * len(columns) + 0.6, 2.3 * len(rows) + 0.8), layout="constrained")
    axes = fig.subplots(len(rows), len(columns), sharex="col", sharey="row", squeeze=False)
    row_top: dict[int, float] = {}
    with np.errstate(all="ignore"):
        for ci, skip in enumerate(columns):
            variants = [v for v in order if skip_of.get(v, False) == skip]
            for ri, (metric, ylabel) in enumerate(rows):
                ax = axes[ri, ci]
                nonneg = True
                line_max = -np.inf
                for v in variants:
                    sub = data[data["variant"] == v]
                    epochs, mat = padded_matrix(sub, metric)
                    if not np.isfinite(mat).any():
                        continue
                    xs = epochs.astype(float)
                    if x == "wall":
                        spe = seconds_per_epoch(sub)
                        if not np.isfinite(spe):
                            continue
                        xs = xs * spe
                    mean, lo, hi = _nanstats(mat, band)
                    nonneg &= bool(np.nanmin(mat) >= 0)
                    line_max = max(line_max, float(np.nanmax(mean)))
                    if metric.endswith("acc"):  # an interval never leaves [0, 1]
                        lo, hi = np.clip(lo, 0.0, 1.0), np.clip(hi, 0.0, 1.0)
                    elif nonneg:
                        lo = np.clip(lo, 0.0, None)
                    style = styles.get(v, {})
                    ax.plot(xs, mean, label=methods.get(v, v), linewidth=1.4, **style)
                    if band is not None:
                        ax.fill_between(
                            xs, lo, hi, color=style.get("color"), alpha=0.1, linewidth=0
                        )
                row_top[ri] = max(row_top.get(ri, -np.inf), line_max)
                if metric.endswith("loss") and nonneg and ax.lines:
                    ax.set_ylim(bottom=0)
                ax.grid(axis="y", alpha=0.4)
                if ci == 0:
                    ax.set_ylabel(ylabel)
                if ri == 0 and len(columns) > 1:
                    ax.set_title(COLUMN_TITLES[skip])
                if ri == len(rows) - 1:
                    ax.set_xlabel(X_LABELS[x])
                    if x == "epoch":
                        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    for ri, (metric, _) in enumerate(rows):
        # With a band the axes follow the mean lines; a band wider than them (few runs left at
        # the end of a curve) is cut at the frame rather than squashing the lines.
        top = row_top.get(ri, -np.inf)
        if band is None or not np.isfinite(top):
            continue
        cap = 1.02 if metric.endswith("acc") and top <= 1.0 else 1.1 * top if top > 0 else None
        if cap is not None and axes[ri, 0].get_ylim()[1] > cap:
            axes[ri, 0].set_ylim(top=cap)
    handles: dict[str, object] = {}
    for ax in axes.flat:
        for line in ax.lines:
            handles.setdefault(line.get_label(), line)
    if handles:
        axes[-1, 0].legend(list(handles.values()), list(handles), fontsize="small", loc="best")
    if title:
        fig.suptitle(title)
    return fig


def final_metric(
    jobs: pd.DataFrame,
    metric: str = "final.val_acc",
    *,
    title: str | None = None,
    include_incomplete: bool = False,
) -> Figure:
    """Box plot of a per-run metric (a `jobs` column) per variant, with the runs overlaid as a
    jittered strip (fixed jitter, reproducible). Whiskers at 1.5 IQR, no flier markers (every
    run is drawn by the strip anyway).

    One axis; only variants with at least one finite value are drawn, each with exactly 7 Line2D
    (box, 2 whiskers, 2 caps, median, strip) and no PolyCollection. Incomplete jobs are left out
    unless `include_incomplete`."""
    data = _finished(jobs, include_incomplete)
    styles = variant_styles(jobs)
    skip_of = _skip_of(jobs)
    methods = _methods(jobs)
    series: list[tuple[str, np.ndarray]] = []
    if metric in data:
        for v in ordered_variants(data):
            vals = pd.to_numeric(data.loc[data["variant"] == v, metric], errors="coerce")
            vals = vals.to_numpy(dtype=float)
            vals = vals[np.isfinite(vals)]
            if vals.size:
                series.append((v, vals))

    fig = Figure(figsize=(max(4.5, 1.2 * len(series) + 1.5), 4.2), layout="constrained")
    ax = fig.subplots()
    ax.set_ylabel(METRIC_LABELS.get(metric, metric))
    ax.grid(axis="y", alpha=0.4)
    if title:
        ax.set_title(title)
    if not series:
        ax.text(0.5, 0.5, f"no finished run has {metric}", ha="center", transform=ax.transAxes)
        return fig
    positions = np.arange(len(series), dtype=float)
    with np.errstate(all="ignore"):
        bp = ax.boxplot(
            [vals for _, vals in series],
            positions=positions,
            widths=0.5,
            showfliers=False,
            patch_artist=False,
        )
        rng = np.random.default_rng(0)
        for i, (v, vals) in enumerate(series):
            colour = styles.get(v, {}).get("color", "black")
            for part in ("whiskers", "caps"):
                for artist in bp[part][2 * i : 2 * i + 2]:
                    artist.set_color(colour)
            bp["boxes"][i].set_color(colour)
            bp["medians"][i].set_color(colour)
            jitter = rng.uniform(-0.12, 0.12, size=vals.size)
            ax.plot(
                positions[i] + jitter,
                vals,
                linestyle="none",
                marker="o",
                markersize=4,
                alpha=0.75,
                color=colour,
            )
    labels = [methods.get(v, v) + (f"\n{SKIP_SUFFIX}" if skip_of.get(v) else "") for v, _ in series]
    ax.set_xticks(positions, labels, rotation=30 if len(series) > 4 else 0, ha="center")
    return fig


def forest_plot(
    comparison: pd.DataFrame,
    metrics: list[str],
    *,
    title: str | None = None,
) -> Figure:
    """Differences to the baseline with their confidence intervals, one panel per metric: a
    horizontal interval and a dot per variant (green better, red worse, grey no detectable
    difference), a vertical line at 0. Per panel: two Line2D per variant with a difference (the
    interval, the dot) plus the zero line; no PolyCollection.

    `comparison` is a `neurons.compare.stats.compare_to_baseline` frame."""
    metrics = [m for m in metrics if not comparison.empty and (comparison["metric"] == m).any()]
    n_rows = 0 if comparison.empty else int(comparison["variant"].nunique())
    fig = Figure(
        figsize=(4.4 * max(len(metrics), 1) + 2.2, 0.36 * n_rows + 1.6), layout="constrained"
    )
    axes = fig.subplots(1, max(len(metrics), 1), sharey=True, squeeze=False)[0]
    if not metrics:
        axes[0].text(0.5, 0.5, "no comparison", ha="center", transform=axes[0].transAxes)
        return fig
    variants = list(dict.fromkeys(comparison["variant"]))
    ypos = {v: len(variants) - 1 - i for i, v in enumerate(variants)}
    baseline = str(comparison["baseline"].iloc[0])
    for ax, metric in zip(axes, metrics, strict=True):
        sub = comparison[comparison["metric"] == metric]
        ax.axvline(0.0, color="black", linewidth=0.8)
        for r in sub.itertuples():
            if not np.isfinite(r.diff):
                continue
            colour = VERDICT_COLOURS.get(r.verdict, "tab:gray")
            y = ypos[r.variant]
            lo = r.ci_low if np.isfinite(r.ci_low) else r.diff
            hi = r.ci_high if np.isfinite(r.ci_high) else r.diff
            ax.plot([lo, hi], [y, y], color=colour, linewidth=2.0, solid_capstyle="butt")
            ax.plot([r.diff], [y], "o", color=colour, markersize=5)
        paired = bool(sub["paired"].all()) if len(sub) else False
        direction = str(sub["direction"].iloc[0]) if len(sub) else ""
        ax.set_xlabel(
            f"Δ {METRIC_LABELS.get(metric, metric).lower()}\n(variant − {baseline}; {direction})"
        )
        ax.set_title(("paired by seed" if paired else "unpaired") + ", 95% CI", fontsize="small")
        ax.grid(axis="x", alpha=0.4)
        ax.xaxis.set_major_locator(MaxNLocator(nbins=5))
    keys = [("tab:green", "better"), ("tab:red", "worse"), ("tab:gray", "no detectable difference")]
    fig.legend(
        [Line2D([], [], color=c, marker="o", linewidth=2.0) for c, _ in keys],
        [k for _, k in keys],
        loc="outside lower center",
        ncols=3,
        fontsize="small",
        frameon=False,
    )
    axes[0].set_yticks([ypos[v] for v in variants], variants)
    axes[0].set_ylim(-0.7, len(variants) - 0.3)
    if title:
        fig.suptitle(title)
    return fig
