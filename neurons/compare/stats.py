"""Statistics of a comparison: per-variant means with bootstrap intervals, and each variant's
difference to a baseline with a t-test and a rank test, Holm correction, effect size, a verdict
and a power estimate (seeds needed). Everything numeric comes from scipy.stats.

The array functions work along the last axis, so many synthetic sweeps are tested in one call;
the frame functions apply them to a `load_runs` jobs frame. No plotting, no file I/O.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from .variants import ordered_variants

__all__ = [
    "ALPHA",
    "BOOTSTRAP_METHOD",
    "CONFIDENCE",
    "DIRECTIONS",
    "N_RESAMPLES",
    "POWER",
    "Settings",
    "bootstrap_ci",
    "compare_arrays",
    "compare_to_baseline",
    "default_baseline",
    "holm",
    "min_rank_p",
    "seeds_needed",
    "stat_metrics",
    "variant_stats",
]

CONFIDENCE = 0.95
ALPHA = 0.05
N_RESAMPLES = 9999
BOOTSTRAP_METHOD = "BCa"
BOOTSTRAP_SEED = 0
POWER = 0.8
MAX_SEEDS = 1000
# +1: higher is better, -1: lower is better.
DIRECTIONS = {
    "final.val_acc": 1,
    "final.val_loss": -1,
    "best.val_acc": 1,
    "best.val_loss": -1,
    "final.train_loss": -1,
}
BETTER, WORSE, NO_DIFF, TOO_FEW = "better", "worse", "no detectable difference", "too few runs"


@dataclass(frozen=True)
class Settings:
    """How a comparison is computed; every field is stated in the report."""

    alpha: float = ALPHA
    confidence: float = CONFIDENCE
    n_resamples: int = N_RESAMPLES
    method: str = BOOTSTRAP_METHOD
    seed: int = BOOTSTRAP_SEED
    power: float = POWER
    pairing: str = "auto"  # "auto": pair runs by seed when every seed matches; "off": never


def stat_metrics(task: str) -> list[str]:
    """Per-run metrics that get intervals and tests: accuracy and loss at the final and the best
    epoch (regression: the losses)."""
    if task == "classification":
        return ["final.val_acc", "final.val_loss", "best.val_acc", "best.val_loss"]
    return ["final.val_loss", "best.val_loss"]


# --------------------------------------------------------------------------------------------
# array statistics (last axis = runs)


def bootstrap_ci(x: np.ndarray, settings: Settings = Settings()) -> tuple[np.ndarray, np.ndarray]:
    """Bootstrap confidence interval of the mean over the last axis (`settings.method`, default
    BCa, `n_resamples` resamples, seeded). Where every run has the same value the interval is
    that value; where BCa is undefined the percentile interval is used; NaN for < 2 runs."""
    x = np.asarray(x, dtype=float)
    lead = x.shape[:-1]
    lo, hi = np.full(lead, np.nan), np.full(lead, np.nan)
    if x.shape[-1] < 2:
        return lo, hi
    flat = x.reshape(-1, x.shape[-1])  # (samples, runs)
    flo, fhi = lo.reshape(-1), hi.reshape(-1)
    const = np.ptp(flat, axis=-1) == 0
    flo[const] = fhi[const] = flat[const, 0]
    todo = ~const
    if todo.any():
        rng = np.random.default_rng(settings.seed)
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            res = stats.bootstrap(
                (flat[todo],),
                np.mean,
                axis=-1,
                vectorized=True,
                confidence_level=settings.confidence,
                n_resamples=settings.n_resamples,
                method=settings.method,
                rng=rng,
            )
            a, b = (
                np.atleast_1d(res.confidence_interval.low),
                np.atleast_1d(res.confidence_interval.high),
            )
            bad = ~(np.isfinite(a) & np.isfinite(b))
            if bad.any() and settings.method != "percentile":
                res = stats.bootstrap(
                    (flat[todo][bad],),
                    np.mean,
                    axis=-1,
                    vectorized=True,
                    confidence_level=settings.confidence,
                    n_resamples=settings.n_resamples,
                    method="percentile",
                    rng=rng,
                )
                a[bad] = res.confidence_interval.low
                b[bad] = res.confidence_interval.high
        flo[todo], fhi[todo] = a, b
    return flo.reshape(lead), fhi.reshape(lead)


def holm(p: np.ndarray) -> np.ndarray:
    """Holm-adjusted p-values along the last axis (NaNs ignored, kept NaN): the k-th smallest of
    m p-values becomes max over j <= k of min(1, (m - j + 1) p_(j))."""
    p = np.asarray(p, dtype=float)
    order = np.argsort(np.where(np.isnan(p), np.inf, p), axis=-1)
    ps = np.take_along_axis(p, order, axis=-1)
    m = np.isfinite(ps).sum(axis=-1, keepdims=True)
    k = np.arange(p.shape[-1])
    adj = np.minimum(1.0, (m - k) * ps)
    adj = np.where(np.isnan(ps), np.nan, adj)
    adj = np.fmax.accumulate(adj, axis=-1)
    adj = np.where(np.isnan(ps), np.nan, adj)
    out = np.empty_like(adj)
    np.put_along_axis(out, order, adj, axis=-1)
    return out


def _rank_p(a: np.ndarray, b: np.ndarray, paired: bool) -> tuple[np.ndarray, np.ndarray]:
    """(statistic, two-sided p) of Wilcoxon signed-rank (paired) or Mann-Whitney U, per row."""
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        if paired:
            d = a - b
            stat, p = np.full(d.shape[:-1], np.nan), np.full(d.shape[:-1], np.nan)
            nz = np.any(d != 0, axis=-1)
            if nz.any():
                r = stats.wilcoxon(d[nz], axis=-1, zero_method="wilcox")
                stat[nz], p[nz] = r.statistic, r.pvalue
            p[~nz & np.all(np.isfinite(d), axis=-1)] = 1.0  # identical runs: nothing to detect
            return stat, p
        r = stats.mannwhitneyu(a, b, alternative="two-sided", axis=-1)
        return np.asarray(r.statistic, float), np.asarray(r.pvalue, float)


def min_rank_p(n_a: int, n_b: int, paired: bool) -> float:
    """The smallest two-sided p-value the rank test can give with these run counts (exact
    distribution, perfectly separated runs): below `alpha` only with enough runs."""
    if paired:
        n = min(n_a, n_b)
        if n < 1:
            return math.nan
        return float(stats.wilcoxon(np.arange(1.0, n + 1), method="exact").pvalue)
    if n_a < 1 or n_b < 1:
        return math.nan
    a, b = np.arange(n_a, dtype=float), np.arange(n_a, n_a + n_b, dtype=float)
    return float(stats.mannwhitneyu(a, b, method="exact").pvalue)


def compare_arrays(
    variant: np.ndarray, base: np.ndarray, *, paired: bool, settings: Settings = Settings()
) -> dict[str, np.ndarray]:
    """Difference variant - baseline along the last axis (runs), per leading index.

    Unpaired: Welch's t-test, its Welch-Satterthwaite t interval for the difference of means,
    Mann-Whitney U, Hedges' g (pooled sd, small-sample corrected). Paired (rows aligned by
    seed): paired t-test and interval for the mean difference, Wilcoxon signed-rank, d_z (mean
    difference / sd of differences). p-values are two-sided and not yet Holm-corrected."""
    a, b = np.asarray(variant, float), np.asarray(base, float)
    na, nb = a.shape[-1], b.shape[-1]
    lead = np.broadcast_shapes(a.shape[:-1], b.shape[:-1])
    out: dict[str, np.ndarray] = {}
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        if paired:
            if na != nb:
                raise ValueError(f"paired comparison needs equal run counts, got {na} and {nb}")
            r = stats.ttest_rel(a, b, axis=-1)
            d = a - b
            diff = d.mean(axis=-1)
            sd = d.std(axis=-1, ddof=1)
            effect = diff / sd
            d_power = effect
        else:
            r = stats.ttest_ind(a, b, axis=-1, equal_var=False)
            diff = a.mean(axis=-1) - b.mean(axis=-1)
            va, vb = a.var(axis=-1, ddof=1), b.var(axis=-1, ddof=1)
            sp = np.sqrt(((na - 1) * va + (nb - 1) * vb) / (na + nb - 2))
            d_power = diff / sp
            effect = d_power * (1 - 3 / (4 * (na + nb) - 9))
        ci = r.confidence_interval(confidence_level=settings.confidence)
        lo, hi = np.asarray(ci.low, float), np.asarray(ci.high, float)
        p = np.asarray(r.pvalue, float)
        # Both variants without spread: the t-test is undefined; equal means are no difference.
        same = np.broadcast_to(np.isclose(diff, 0, atol=1e-12, rtol=0), lead)
        p = np.where(np.isnan(p) & same, 1.0, p)
        lo = np.where(np.isnan(lo) & same, 0.0, lo)
        hi = np.where(np.isnan(hi) & same, 0.0, hi)
    rank_stat, rank_p = _rank_p(a, b, paired)
    out.update(
        diff=np.broadcast_to(diff, lead),
        ci_low=np.broadcast_to(lo, lead),
        ci_high=np.broadcast_to(hi, lead),
        t=np.broadcast_to(np.asarray(r.statistic, float), lead),
        df=np.broadcast_to(np.asarray(r.df, float), lead),
        p=np.broadcast_to(p, lead),
        rank_stat=np.broadcast_to(rank_stat, lead),
        p_rank=np.broadcast_to(rank_p, lead),
        effect=np.broadcast_to(effect, lead),
        d_power=np.broadcast_to(d_power, lead),
    )
    return out


def seeds_needed(
    d: np.ndarray | float,
    *,
    paired: bool,
    alpha: float = ALPHA,
    power: float = POWER,
    n_max: int = MAX_SEEDS,
) -> np.ndarray:
    """Smallest number of seeds (runs per variant; pairs when paired) for which a two-sided t-test
    at level `alpha` detects a standardised difference `d` with probability >= `power`:
    noncentral t (scipy.stats.nct) with df = n - 1, nc = |d| sqrt(n) (paired) or df = 2n - 2,
    nc = |d| sqrt(n / 2) (two equal groups). NaN when d is 0 or undefined; inf above `n_max`."""
    d = np.abs(np.asarray(d, dtype=float))
    n = np.arange(2, n_max + 1, dtype=float)
    df = n - 1 if paired else 2 * n - 2
    scale = np.sqrt(n) if paired else np.sqrt(n / 2)
    tc = stats.t.ppf(1 - alpha / 2, df)
    flat = d.reshape(-1)
    out = np.full(flat.shape, np.nan)
    for i, di in enumerate(flat):
        if not np.isfinite(di) or di == 0:
            continue
        nc = di * scale
        pw = stats.nct.sf(tc, df, nc) + stats.nct.cdf(-tc, df, nc)
        hit = np.flatnonzero(pw >= power)
        out[i] = n[hit[0]] if hit.size else np.inf
    return out.reshape(d.shape)


# --------------------------------------------------------------------------------------------
# frames


def _values(done: pd.DataFrame, variant: str, metric: str) -> pd.DataFrame:
    sub = done.loc[done["variant"] == variant, ["seed", metric]].copy()
    sub[metric] = pd.to_numeric(sub[metric], errors="coerce")
    return sub[np.isfinite(sub[metric].to_numpy(dtype=float))]


def _usable(jobs: pd.DataFrame) -> pd.DataFrame:
    if "complete" not in jobs:
        return jobs
    return jobs[jobs["complete"].astype(bool)]


def variant_stats(
    jobs: pd.DataFrame, metrics: Sequence[str], settings: Settings = Settings()
) -> pd.DataFrame:
    """One row per variant x metric over the usable (completed, undamaged) runs: ``n, mean,
    std`` (ddof=1), ``ci_low, ci_high`` (bootstrap interval of the mean), ``ci_method``."""
    done = _usable(jobs)
    rows = []
    for v in ordered_variants(jobs):
        for metric in metrics:
            vals = _values(done, v, metric)[metric].to_numpy(dtype=float) if metric in done else []
            vals = np.asarray(vals, dtype=float)
            lo, hi = bootstrap_ci(vals, settings) if vals.size else (np.nan, np.nan)
            rows.append(
                {
                    "variant": v,
                    "metric": metric,
                    "n": int(vals.size),
                    "mean": float(vals.mean()) if vals.size else math.nan,
                    "std": float(vals.std(ddof=1)) if vals.size > 1 else math.nan,
                    "ci_low": float(lo),
                    "ci_high": float(hi),
                    "ci_method": (
                        f"{settings.method} bootstrap of the mean, {settings.n_resamples}"
                        f" resamples, {settings.confidence:.0%}"
                    ),
                }
            )
    return pd.DataFrame(rows)


def default_baseline(jobs: pd.DataFrame) -> str:
    """The plain network: the first variant (table order) of family "plain" without bypassing
    skip; else the first variant."""
    order = ordered_variants(jobs)
    if not order:
        raise ValueError("no variants to compare")
    info = jobs.drop_duplicates("variant").set_index("variant")
    for v in order:
        fam, skip = info.loc[v].get("family"), info.loc[v].get("skip")
        if str(fam) == "plain" and not (isinstance(skip, bool | np.bool_) and skip):
            return v
    return order[0]


def _pair(base: pd.DataFrame, var: pd.DataFrame, settings: Settings) -> bool:
    """Pair by seed when both variants ran exactly the same set of distinct seeds (>= 2)."""
    if settings.pairing == "off":
        return False
    sb, sv = base["seed"], var["seed"]
    if sb.isna().any() or sv.isna().any() or sb.duplicated().any() or sv.duplicated().any():
        return False
    return len(sb) >= 2 and set(sb) == set(sv)


def compare_to_baseline(
    jobs: pd.DataFrame,
    baseline: str,
    metrics: Sequence[str],
    settings: Settings = Settings(),
    directions: Mapping[str, int] = DIRECTIONS,
) -> pd.DataFrame:
    """One row per metric x non-baseline variant: the difference (variant - baseline) with its t
    interval, t-test and rank-test p-values, both Holm-corrected over the variants compared on
    that metric, the effect size, the verdict (better / worse / no detectable difference at
    `settings.alpha` after Holm, direction-aware: a lower loss, a higher accuracy is better),
    whether the runs were paired by seed, and the seeds needed to detect the observed difference
    with `settings.power` (at `alpha`, and at `alpha / m`, the level that survives Holm for any
    rank among the m comparisons)."""
    order = ordered_variants(jobs)
    if baseline not in order:
        raise ValueError(
            f"baseline {baseline!r} is not a variant of this sweep; variants: {', '.join(order)}"
        )
    done = _usable(jobs)
    rows = []
    for metric in metrics:
        if metric not in done:
            continue
        base = _values(done, baseline, metric)
        block = []
        for v in order:
            if v == baseline:
                continue
            var = _values(done, v, metric)
            paired = _pair(base, var, settings)
            row = {
                "metric": metric,
                "variant": v,
                "baseline": baseline,
                "direction": "higher is better"
                if directions.get(metric, -1) > 0
                else "lower is better",
                "n": len(var),
                "n_baseline": len(base),
                "paired": paired,
                "test": "paired t" if paired else "Welch t",
                "rank_test": "Wilcoxon signed-rank" if paired else "Mann-Whitney U",
                "effect_kind": "d_z" if paired else "Hedges g",
            }
            if len(var) >= 2 and len(base) >= 2:
                if paired:
                    bs = base.set_index("seed")[metric]
                    vs = var.set_index("seed")[metric].reindex(bs.index)
                    a, b = vs.to_numpy(float), bs.to_numpy(float)
                else:
                    a, b = var[metric].to_numpy(float), base[metric].to_numpy(float)
                res = compare_arrays(a, b, paired=paired, settings=settings)
                row.update({k: float(v_) for k, v_ in res.items()})
                row["min_rank_p"] = min_rank_p(len(a), len(b), paired)
            block.append(row)
        if not block:
            continue
        frame = pd.DataFrame(block)
        for c in ("diff", "ci_low", "ci_high", "p", "p_rank", "effect", "d_power", "min_rank_p"):
            if c not in frame:
                frame[c] = np.nan
        frame["p_holm"] = holm(frame["p"].to_numpy(float))
        frame["p_rank_holm"] = holm(frame["p_rank"].to_numpy(float))
        m = int(frame["p"].notna().sum())
        sign = directions.get(metric, -1)
        verdicts = []
        for r in frame.itertuples():
            if not np.isfinite(r.diff) or r.n < 2 or r.n_baseline < 2:
                verdicts.append(TOO_FEW)
            elif np.isfinite(r.p_holm) and r.p_holm < settings.alpha:
                verdicts.append(BETTER if sign * r.diff > 0 else WORSE)
            else:
                verdicts.append(NO_DIFF)
        frame["verdict"] = verdicts
        frame["m"] = m
        for col, level in (("seeds_needed", settings.alpha), ("seeds_needed_holm", None)):
            vals = []
            for r in frame.itertuples():
                lv = level if level is not None else settings.alpha / max(m, 1)
                vals.append(
                    float(
                        seeds_needed(
                            r.d_power, paired=bool(r.paired), alpha=lv, power=settings.power
                        )
                    )
                )
            frame[col] = vals
        rows.append(frame)
    if not rows:
        return pd.DataFrame()
    return pd.concat(rows, ignore_index=True)
