"""Tests for `neurons.compare.stats`: numbers equal scipy's, and on many synthetic sweeps with a
known effect the shifted variant is flagged, identical ones are not (at the stated error rates),
and intervals cover the true difference at about the nominal rate. All repeats are vectorised."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from neurons.compare.plots import _nanstats, forest_plot
from neurons.compare.stats import (
    Settings,
    bootstrap_ci,
    compare_arrays,
    compare_to_baseline,
    default_baseline,
    holm,
    min_rank_p,
    seeds_needed,
    variant_stats,
)

R = 4000  # synthetic sweeps per check
ALPHA = 0.05


def _binomial_band(p: float, n: int, z: float = 4.0) -> tuple[float, float]:
    """p +- z standard errors of a proportion over n repeats (z = 4: a false alarm ~ 1e-4)."""
    se = np.sqrt(p * (1 - p) / n)
    return p - z * se, p + z * se


# ------------------------------------------------------------------------ agreement with scipy


def test_holm_matches_its_definition():
    rng = np.random.default_rng(0)
    p = rng.uniform(0, 0.2, size=(50, 6))
    p[3, 2] = np.nan
    got = holm(p)
    for row, adj in zip(p, got, strict=True):
        finite = np.flatnonzero(np.isfinite(row))
        m = finite.size
        order = finite[np.argsort(row[finite])]
        want = np.full(row.shape, np.nan)
        running = 0.0
        for k, i in enumerate(order):
            running = max(running, min(1.0, (m - k) * row[i]))
            want[i] = running
        np.testing.assert_allclose(adj, want, rtol=1e-12, equal_nan=True)
    np.testing.assert_allclose(holm(np.array([0.01, 0.04, 0.03])), [0.03, 0.06, 0.06])


@pytest.mark.parametrize("paired", [False, True])
def test_compare_arrays_equals_scipy(paired):
    rng = np.random.default_rng(1)
    a, b = rng.normal(0.3, 1.0, size=(7, 6)), rng.normal(0.0, 0.7, size=(7, 6))
    res = compare_arrays(a, b, paired=paired)
    for i in range(len(a)):
        if paired:
            t = stats.ttest_rel(a[i], b[i])
            rank = stats.wilcoxon(a[i] - b[i])
            d = a[i] - b[i]
            effect = d.mean() / d.std(ddof=1)
        else:
            t = stats.ttest_ind(a[i], b[i], equal_var=False)
            rank = stats.mannwhitneyu(a[i], b[i], alternative="two-sided")
            sp = np.sqrt((a[i].var(ddof=1) + b[i].var(ddof=1)) / 2)
            effect = (a[i].mean() - b[i].mean()) / sp * (1 - 3 / (4 * 12 - 9))
        ci = t.confidence_interval(0.95)
        assert res["p"][i] == pytest.approx(t.pvalue, rel=1e-12)
        assert res["t"][i] == pytest.approx(t.statistic, rel=1e-12)
        assert (res["ci_low"][i], res["ci_high"][i]) == pytest.approx((ci.low, ci.high))
        assert res["p_rank"][i] == pytest.approx(rank.pvalue, rel=1e-12)
        assert res["diff"][i] == pytest.approx(a[i].mean() - b[i].mean())
        assert res["effect"][i] == pytest.approx(effect)


def test_bootstrap_ci_equals_scipy_and_handles_ties():
    x = np.array([0.1, 0.4, 0.35, 0.8, 0.62, 0.2])
    lo, hi = bootstrap_ci(x)
    ref = stats.bootstrap(
        (x,), np.mean, n_resamples=9999, method="BCa", rng=np.random.default_rng(0)
    ).confidence_interval
    assert (float(lo), float(hi)) == pytest.approx((ref.low, ref.high))
    # all runs equal: the interval is the value; one run: undefined
    assert tuple(map(float, bootstrap_ci(np.full(5, 0.9667)))) == (0.9667, 0.9667)
    assert np.isnan(bootstrap_ci(np.array([1.0]))[0])
    # batched rows equal one-row calls with the same seed
    rows = np.random.default_rng(2).normal(size=(3, 8))
    blo, bhi = bootstrap_ci(rows)
    assert blo.shape == (3,) and np.all(blo < rows.mean(1)) and np.all(rows.mean(1) < bhi)


def test_seeds_needed_matches_tables_and_simulation():
    # textbook two-sample values (two-sided 5%, 80% power): d = 0.5 -> 64, d = 1 -> 17 per group
    assert seeds_needed(np.array([0.5, 1.0]), paired=False).tolist() == [64.0, 17.0]
    assert np.isnan(seeds_needed(0.0, paired=True)) and seeds_needed(1e-3, paired=True) == np.inf
    # simulated: at n the test rejects ~80% of the time, at n - 1 less
    d = 1.2
    n = int(seeds_needed(d, paired=True))
    rng = np.random.default_rng(3)
    for k, lo, hi in ((n, 0.78, 0.9), (n - 1, 0.6, 0.8)):
        diffs = rng.normal(d, 1.0, size=(R, k))
        rate = (stats.ttest_1samp(diffs, 0.0, axis=-1).pvalue < ALPHA).mean()
        assert lo < rate < hi, (k, rate)


def test_min_rank_p():
    assert min_rank_p(5, 5, paired=True) == pytest.approx(2 / 2**5)
    assert min_rank_p(5, 5, paired=False) == pytest.approx(2 / 252)


# ------------------------------------------------------------------- synthetic sweeps, repeats


def _sweep_arrays(rng, n, shift, *, seed_sd=0.0):
    """R synthetic sweeps of n runs: baseline, an identical variant and one shifted by `shift`.
    `seed_sd` adds a per-seed effect shared by every variant (what pairing removes)."""
    seed = rng.normal(0, seed_sd, size=(R, n))
    base = seed + rng.normal(0, 1.0, size=(R, n))
    same = seed + rng.normal(0, 1.0, size=(R, n))
    shifted = seed + rng.normal(shift, 1.0, size=(R, n))
    return base, same, shifted


@pytest.mark.parametrize("paired", [False, True])
def test_error_rates_and_coverage_over_synthetic_sweeps(paired):
    rng = np.random.default_rng(10 + paired)
    n, shift = 8, 1.6
    base, same, shifted = _sweep_arrays(rng, n, shift, seed_sd=2.0 if paired else 0.0)
    res_same = compare_arrays(same, base, paired=paired)
    res_shift = compare_arrays(shifted, base, paired=paired)
    p_holm = holm(np.stack([res_same["p"], res_shift["p"]], axis=-1))
    flagged_same = p_holm[:, 0] < ALPHA
    flagged_shift = p_holm[:, 1] < ALPHA

    # identical variant: flagged at most at the family-wise rate alpha
    assert flagged_same.mean() <= _binomial_band(ALPHA, R)[1]
    # the shifted variant: flagged at least as often as the power at alpha / 2 (Holm's first
    # step) predicts, and at most as often as at alpha
    sd_d = np.sqrt(2.0)  # sd of a difference of two unit-variance runs
    d = shift / sd_d if paired else shift
    power = {}
    for level in (ALPHA / 2, ALPHA):
        df = n - 1 if paired else 2 * n - 2
        nc = d * np.sqrt(n) if paired else d * np.sqrt(n / 2)
        tc = stats.t.ppf(1 - level / 2, df)
        power[level] = stats.nct.sf(tc, df, nc)
    assert _binomial_band(power[ALPHA / 2], R)[0] <= flagged_shift.mean()
    assert flagged_shift.mean() <= _binomial_band(power[ALPHA], R)[1]
    assert power[ALPHA / 2] > 0.6  # the check has teeth

    # the 95% intervals cover the true difference (0 and shift) at about the nominal rate
    for res, true in ((res_same, 0.0), (res_shift, shift)):
        cover = (res["ci_low"] <= true) & (true <= res["ci_high"])
        lo, hi = _binomial_band(0.95, R)
        assert lo <= cover.mean() <= hi, cover.mean()


def test_pairing_gains_power_when_seeds_move_variants_together():
    rng = np.random.default_rng(12)
    base, _, shifted = _sweep_arrays(rng, 5, 1.5, seed_sd=3.0)
    paired = (compare_arrays(shifted, base, paired=True)["p"] < ALPHA).mean()
    unpaired = (compare_arrays(shifted, base, paired=False)["p"] < ALPHA).mean()
    assert paired > 0.4 and unpaired < 0.15, (paired, unpaired)


def test_bootstrap_coverage_near_nominal():
    rng = np.random.default_rng(13)
    x = rng.normal(2.0, 1.0, size=(600, 30))
    lo, hi = bootstrap_ci(x, Settings(n_resamples=999))
    cover = ((lo <= 2.0) & (2.0 <= hi)).mean()
    assert 0.90 <= cover <= 0.98, cover


# ---------------------------------------------------------------------------------- frames


def _jobs(values: dict[str, np.ndarray], seeds: dict[str, list[int]] | None = None):
    rows = []
    for v, vals in values.items():
        fam = "plain" if v.startswith("FFN") else "feedback"
        for i, x in enumerate(vals):
            seed = seeds[v][i] if seeds else i
            rows.append(
                {
                    "job": f"{v}-{seed}",
                    "variant": v,
                    "method": v,
                    "family": fam,
                    "passes": 1 if fam == "plain" else int(v[-1]),
                    "skip": False,
                    "extra": "",
                    "seed": seed,
                    "complete": True,
                    "final.val_acc": x,
                    "final.val_loss": 1.0 - x,
                }
            )
    return pd.DataFrame(rows)


def test_compare_to_baseline_verdicts_direction_and_pairing():
    rng = np.random.default_rng(20)
    n = 10
    seed_effect = rng.normal(0, 0.02, n)
    vals = {
        "FFN": 0.80 + seed_effect + rng.normal(0, 0.005, n),
        "COUPLE x2": 0.80 + seed_effect + rng.normal(0, 0.005, n),
        "COUPLE x3": 0.83 + seed_effect + rng.normal(0, 0.005, n),
        "COUPLE x4": 0.77 + seed_effect + rng.normal(0, 0.005, n),
    }
    jobs = _jobs(vals)
    assert default_baseline(jobs) == "FFN"
    comp = compare_to_baseline(jobs, "FFN", ["final.val_acc", "final.val_loss"])
    v = comp.set_index(["metric", "variant"])["verdict"]
    assert v["final.val_acc", "COUPLE x3"] == "better" and v["final.val_loss", "COUPLE x3"] == (
        "better"
    )  # higher accuracy and lower loss are both better
    assert v["final.val_acc", "COUPLE x4"] == "worse" and v["final.val_loss", "COUPLE x4"] == (
        "worse"
    )
    assert v["final.val_acc", "COUPLE x2"] == "no detectable difference"
    assert comp["paired"].all() and set(comp["test"]) == {"paired t"}
    # numbers: the paired t-test on seed-aligned runs, Holm over the three variants
    acc = comp[comp.metric == "final.val_acc"].set_index("variant")
    ps = [stats.ttest_rel(vals[k], vals["FFN"]).pvalue for k in acc.index]
    np.testing.assert_allclose(acc["p"], ps, rtol=1e-12)
    np.testing.assert_allclose(acc["p_holm"], holm(np.array(ps)), rtol=1e-12)

    # shuffled seeds are still paired by seed, not by row order
    perm = {k: list(rng.permutation(n)) for k in vals}
    shuffled = _jobs({k: np.asarray(vals[k])[perm[k]] for k in vals}, seeds=perm)
    comp2 = compare_to_baseline(shuffled, "FFN", ["final.val_acc"])
    np.testing.assert_allclose(comp2["p"], ps, rtol=1e-12)

    # different seeds: unpaired; and pairing="off" forces it
    other = _jobs(vals, seeds={k: [s + (100 if k != "FFN" else 0) for s in range(n)] for k in vals})
    comp3 = compare_to_baseline(other, "FFN", ["final.val_acc"])
    assert not comp3["paired"].any() and set(comp3["test"]) == {"Welch t"}
    comp4 = compare_to_baseline(jobs, "FFN", ["final.val_acc"], Settings(pairing="off"))
    ref = stats.ttest_ind(vals["COUPLE x3"], vals["FFN"], equal_var=False).pvalue
    assert comp4.set_index("variant").loc["COUPLE x3", "p"] == pytest.approx(ref)

    with pytest.raises(ValueError, match="baseline 'nope' is not a variant.*FFN, COUPLE x2"):
        compare_to_baseline(jobs, "nope", ["final.val_acc"])

    fig = forest_plot(comp, ["final.val_acc", "final.val_loss"])
    assert len(fig.axes) == 2
    assert all(len(ax.lines) == 2 * 3 + 1 for ax in fig.axes)  # interval + dot each, zero line
    colours = {ln.get_color() for ln in fig.axes[0].lines}
    assert {"tab:green", "tab:red", "tab:gray"} <= colours


def test_variant_stats_and_incomplete_runs_left_out():
    vals = {"FFN": np.array([0.8, 0.82, 0.81, 0.79]), "COUPLE x2": np.array([0.9, 0.91, 0.92])}
    jobs = _jobs(vals)
    jobs.loc[jobs.job == "FFN-3", "complete"] = False
    vs = variant_stats(jobs, ["final.val_acc"]).set_index("variant")
    assert vs.loc["FFN", "n"] == 3 and vs.loc["FFN", "mean"] == pytest.approx(0.81)
    assert vs.loc["FFN", "std"] == pytest.approx(np.std([0.8, 0.82, 0.81], ddof=1))
    lo, hi = bootstrap_ci(np.array([0.8, 0.82, 0.81]))
    assert (vs.loc["FFN", "ci_low"], vs.loc["FFN", "ci_high"]) == pytest.approx(
        (float(lo), float(hi))
    )
    assert "BCa bootstrap of the mean, 9999 resamples" in vs.loc["FFN", "ci_method"]


def test_ci_band_is_the_t_interval_of_the_mean():
    mat = np.array([[1.0, 2.0, np.nan], [2.0, 4.0, 5.0], [4.0, 3.0, np.nan]])
    mean, lo, hi = _nanstats(mat, "ci")
    for j in range(2):
        col = mat[:, j]
        half = stats.t.ppf(0.975, 2) * stats.sem(col)
        assert (lo[j], hi[j]) == pytest.approx((col.mean() - half, col.mean() + half))
    assert np.isnan(lo[2]) and mean[2] == 5.0  # one run: no band
