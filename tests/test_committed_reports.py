"""The committed comparison reports under compare/ exist, name the commands that made them, and
their tables agree with the per-job data written beside them by the same command."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

REPORTS = Path(__file__).resolve().parents[1] / "compare"
EXPECTED = {"iris": ("experiment=compare_iris", 70), "fashion_mnist": ("dataset=fashion_mnist", 70)}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_report_is_complete_and_consistent(name):
    d = REPORTS / name
    marker, n_jobs = EXPECTED[name]
    readme = (d / "README.md").read_text()
    assert "python -m neurons -m experiment=" in readme and marker in readme
    assert (
        "python -m neurons.compare runs/multirun/" in readme and f"--out compare/{name}" in readme
    )
    for f in [
        "curves_epoch.png",
        "curves_wall.png",
        "final_val_acc.png",
        "summary.csv",
        "summary.md",
        "summary.tex",
        "curves.csv",
        "jobs.csv",
        "forest.png",
        "stats.csv",
        "comparison.csv",
        "comparison.md",
        "report.json",
    ]:
        assert (d / f).stat().st_size > 0, f
        if f.endswith(".png"):
            assert f in readme
    # the README opens with the generated summary and says how to regenerate from the tables
    assert readme.index("## In short") < readme.index("## Sources") < readme.index("## Summary")
    assert "no variant differs detectably" in readme or "than FFN" in readme
    assert "seeds per variant" in readme or "than FFN" in readme
    assert f"python -m neurons.compare compare/{name}\n" in readme
    jobs = pd.read_csv(d / "jobs.csv")
    curves = pd.read_csv(d / "curves.csv")
    table = pd.read_csv(d / "summary.csv")
    assert len(jobs) == n_jobs and jobs.complete.all()
    if name == "fashion_mnist":  # the thesis settings: 40 epochs, early stopping, >= 5 seeds
        assert set(jobs["train.epochs"]) == {40} and jobs.seed.nunique() >= 5
        assert set(jobs["train.early_stopping.enabled"]) == {True}
    assert table.n_runs.sum() == n_jobs
    for _, row in table.iterrows():
        runs = jobs[jobs.variant == row.variant]
        assert len(runs) == row.n_runs
        for col in ["final.val_acc", "final.val_loss", "epochs_run", "seconds_per_epoch"]:
            np.testing.assert_allclose(row[f"{col}.mean"], runs[col].mean(), rtol=1e-9)
            np.testing.assert_allclose(
                row[f"{col}.std"], runs[col].std(ddof=1), rtol=1e-9, atol=1e-12
            )
        # each run's final metric is its last logged epoch
        for _, job in runs.iterrows():
            last = curves[curves.job == job.job].sort_values("epoch").iloc[-1]
            np.testing.assert_allclose(job["final.val_acc"], last.val_acc, rtol=1e-9)
            assert last.epoch == job.epochs_run
