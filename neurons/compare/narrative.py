"""Plain-language summary of a comparison, generated from the statistics frames.

Turns `neurons.compare.stats` results into a few Markdown sentences and a compact Markdown table
for the top of a report's README. Text only: no statistics computed here beyond formatting.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from .plots import METRIC_LABELS
from .stats import BETTER, NO_DIFF, TOO_FEW, WORSE, Settings

__all__ = ["comparison_markdown", "stats_markdown", "summary_text"]


def _num(x: float, signed: bool = False) -> str:
    if not np.isfinite(x):
        return "–"
    if abs(x) >= 1000:
        return f"{x:+.2e}" if signed else f"{x:.2e}"
    return f"{x:+.4f}" if signed else f"{x:.4f}"


def _p(p: float) -> str:
    if not np.isfinite(p):
        return "–"
    return "< 0.0001" if p < 1e-4 else f"{p:.4f}"


def _seeds(n: float) -> str:
    if not np.isfinite(n):
        return "> 1000" if n == math.inf else "–"
    return str(int(n))


def _label(metric: str) -> str:
    return METRIC_LABELS.get(metric, metric).lower()


def summary_text(
    comparison: pd.DataFrame,
    vstats: pd.DataFrame,
    jobs: pd.DataFrame,
    primary: list[str],
    settings: Settings,
) -> str:
    """A short Markdown summary: which variants differ from the baseline on each primary metric,
    by how much, with what confidence; when the data cannot tell, the largest observed difference
    and how many seeds would be needed to detect it; caveats (few runs, coarse accuracy)."""
    if comparison.empty:
        return "There is only one variant, so there is nothing to compare.\n"
    baseline = str(comparison["baseline"].iloc[0])
    n_base = int(comparison["n_baseline"].max())
    paired_all = bool(comparison["paired"].all())
    paired_any = bool(comparison["paired"].any())
    m = int(comparison["m"].max())
    lines = []
    how = (
        "paired by seed (every variant ran the same seeds as the baseline, so whatever a seed"
        " does to all variants alike cancels out: paired t-test, Wilcoxon signed-rank)"
        if paired_all
        else "paired by seed where a variant ran exactly the baseline's seeds, unpaired (Welch's"
        " t-test, Mann-Whitney U) elsewhere"
        if paired_any
        else "unpaired (Welch's t-test, Mann-Whitney U), as the variants did not run the same"
        " set of seeds"
        if settings.pairing == "auto"
        else "unpaired (Welch's t-test, Mann-Whitney U), as asked (--pairing off)"
    )
    runs = f"{n_base} run" + ("" if n_base == 1 else "s")
    if m == 0:
        lines.append(
            f"Every variant is compared with the baseline **{baseline}** ({runs}), but a test"
            " needs at least 2 usable runs of each variant: run more seeds."
        )
    else:
        lines.append(
            f"Every variant is compared with the baseline **{baseline}** ({runs}); tests are"
            f" {how}, Holm-corrected over the {m} comparisons per metric, at the"
            f" {settings.alpha:.0%} level."
        )
    lines.append("")
    for metric in primary:
        sub = comparison[comparison["metric"] == metric]
        if sub.empty:
            continue
        label = _label(metric)
        direction = str(sub["direction"].iloc[0])
        better = sub[sub["verdict"] == BETTER]
        worse = sub[sub["verdict"] == WORSE]
        parts = []
        for name, group in (("better", better), ("worse", worse)):
            if group.empty:
                continue
            items = ", ".join(
                f"{r.variant} ({_num(r.diff, True)}, 95% CI {_num(r.ci_low, True)} to"
                f" {_num(r.ci_high, True)}, Holm p = {_p(r.p_holm)})"
                for r in group.itertuples()
            )
            parts.append(f"{name} than {baseline}: {items}")
        if parts:
            lines.append(f"- **{label.capitalize()}** ({direction}): " + "; ".join(parts) + ".")
        undecided = sub[sub["verdict"] == NO_DIFF]
        if not undecided.empty:
            biggest = undecided.loc[undecided["diff"].abs().idxmax()]
            prefix = (
                f"- **{label.capitalize()}** ({direction}): no variant differs detectably from"
                f" {baseline}"
                if not parts
                else f"  The other {len(undecided)} show no detectable difference"
            )
            lines.append(
                f"{prefix}. The largest observed difference is {biggest['variant']}"
                f" ({_num(biggest['diff'], True)}, 95% CI {_num(biggest['ci_low'], True)} to"
                f" {_num(biggest['ci_high'], True)}, Holm p = {_p(biggest['p_holm'])}); with the"
                f" observed spread, detecting a difference that size with"
                f" {settings.power:.0%} power would take about"
                f" {_seeds(biggest['seeds_needed'])} seeds per variant at {settings.alpha:.0%},"
                f" or {_seeds(biggest['seeds_needed_holm'])} to survive the Holm correction"
                f" (this sweep has {n_base})."
            )
        few = sub[sub["verdict"] == TOO_FEW]
        if not few.empty:
            lines.append(
                f"- {label.capitalize()}: too few runs to compare for "
                + ", ".join(few["variant"].astype(str))
                + "."
            )
    lines.append("")
    caveats = []
    mr = comparison["min_rank_p"].dropna() if "min_rank_p" in comparison else pd.Series()
    if len(mr) and float(mr.min()) * m >= settings.alpha:
        test = "Wilcoxon signed-rank" if paired_all else "rank"
        least = float(mr.min())
        why = (
            f"above {settings.alpha:g} even before the correction"
            if least >= settings.alpha
            else f"too large to survive Holm over {m} comparisons"
        )
        caveats.append(
            f"With {n_base} runs the smallest p-value the {test} test can give is {_p(least)},"
            f" {why}; it is a robustness check here, not a second chance."
        )
    for metric in primary:
        if not metric.endswith("acc"):
            continue
        n_val = pd.to_numeric(jobs.get("dataset.n_val"), errors="coerce")
        n_val = n_val[np.isfinite(n_val) & (n_val > 0)] if n_val is not None else []
        if len(n_val) and float(np.max(n_val)) <= 1000:  # coarse: a sample is >= 0.1 points
            step = 1.0 / float(np.max(n_val))
            caveats.append(
                f"Accuracy on {int(np.max(n_val))} validation samples moves in steps of"
                f" {step:.4f}: one sample more or less."
            )
        break
    if caveats:
        lines += ["Caveats: " + " ".join(caveats), ""]
    return "\n".join(lines)


def comparison_markdown(comparison: pd.DataFrame, metrics: list[str]) -> str:
    """Markdown tables of the differences to the baseline: per metric a bold heading line and one
    row per variant."""
    out = []
    for metric in metrics:
        sub = comparison[comparison["metric"] == metric] if not comparison.empty else comparison
        if sub.empty:
            continue
        r0 = sub.iloc[0]
        nb = int(r0["n_baseline"])
        out += [
            f"**{METRIC_LABELS.get(metric, metric)}** ({r0['direction']}; baseline"
            f" {r0['baseline']}, {nb} run{'' if nb == 1 else 's'})",
            "",
            "| Model | Runs | Δ vs baseline | 95% CI | test | p (Holm) | rank p (Holm) | effect |"
            " verdict | seeds needed (Holm) |",
            "|---|---:|---:|---|---|---:|---:|---:|---|---:|",
        ]
        for r in sub.itertuples():
            out.append(
                f"| {r.variant} | {r.n} | {_num(r.diff, True)} |"
                f" [{_num(r.ci_low, True)}, {_num(r.ci_high, True)}] | {r.test} |"
                f" {_p(r.p)} ({_p(r.p_holm)}) | {_p(r.p_rank)} ({_p(r.p_rank_holm)}) |"
                f" {r.effect_kind} {_num(r.effect, True)} | {r.verdict} |"
                f" {_seeds(r.seeds_needed)} ({_seeds(r.seeds_needed_holm)}) |"
            )
        out.append("")
    return "\n".join(out)


def stats_markdown(vstats: pd.DataFrame, metrics: list[str]) -> str:
    """A Markdown table: one row per variant, per metric "mean ± std [CI low, CI high]"."""
    heads = [METRIC_LABELS.get(m, m) for m in metrics]
    lines = [
        "| Model | Runs | " + " | ".join(heads) + " |",
        "|---|---:|" + "---:|" * len(metrics),
    ]
    if vstats.empty:
        return "\n".join(lines) + "\n"
    for v, sub in vstats.groupby("variant", sort=False):
        by = sub.set_index("metric")
        cells = []
        for m in metrics:
            if m not in by.index or not np.isfinite(by.loc[m, "mean"]):
                cells.append("–")
                continue
            r = by.loc[m]
            std = f" ± {_num(r['std'])}" if np.isfinite(r["std"]) else ""
            ci = f" [{_num(r['ci_low'])}, {_num(r['ci_high'])}]" if np.isfinite(r["ci_low"]) else ""
            cells.append(f"{_num(r['mean'])}{std}{ci}")
        lines.append(f"| {v} | {int(sub['n'].max())} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
