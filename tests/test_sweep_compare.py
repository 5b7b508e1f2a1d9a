"""Slow end-to-end: a real 2x2 sweep through `python -m neurons -m`, then `python -m
neurons.compare` on it; every report file exists and the tables equal the runs' own metrics."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def test_real_sweep_then_compare(tmp_path):
    sweep = tmp_path / "sweep"
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "neurons",
            "-m",
            "dataset=iris",
            "arch=mlp_plain,mlp_feedback",
            "arch.skip=false,true",
            "train.epochs=4",
            "train.threads=1",
            f"hydra.sweep.dir={sweep}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert p.returncode == 0, p.stderr
    jobs = sorted(d for d in sweep.iterdir() if d.is_dir())
    assert len(jobs) == 4
    out = tmp_path / "report"
    p = subprocess.run(
        [sys.executable, "-m", "neurons.compare", str(sweep), "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert p.returncode == 0, p.stderr
    for f in [
        "README.md",
        "curves_epoch.png",
        "curves_wall.png",
        "summary.csv",
        "summary.md",
        "summary.tex",
        "curves.csv",
        "jobs.csv",
    ]:
        assert (out / f).exists() and (out / f).stat().st_size > 0, f
    table = pd.read_csv(out / "summary.csv")
    assert len(table) == 4 and set(table.n_runs) == {1}
    labels = set(table.variant)
    assert any("FFN" in v for v in labels) and any("COUPLE x2" in v for v in labels)
    for job in jobs:
        m = pd.read_csv(job / "metrics.csv")
        s = json.loads((job / "summary.json").read_text())
        cfg = (job / ".hydra" / "config.yaml").read_text()
        family = "COUPLE x2" if "family: feedback" in cfg else "FFN"
        skip = "skip: true" in cfg
        row = table[table.variant.str.startswith(family) & (table.skip == skip)]
        assert len(row) == 1, (family, skip, list(table.variant))
        row = row.iloc[0]
        np.testing.assert_allclose(row["final.val_acc.mean"], m.val_acc.iloc[-1])
        np.testing.assert_allclose(row["final.val_loss.mean"], m.val_loss.iloc[-1], rtol=1e-9)
        np.testing.assert_allclose(row["epochs_run.mean"], len(m))
        if skip:
            np.testing.assert_allclose(
                row["probes.no_skip.acc.mean"], s["probes"]["no_skip"]["acc"]
            )
        if family.startswith("COUPLE"):
            np.testing.assert_allclose(
                row["probes.no_feedback.loss.mean"], s["probes"]["no_feedback"]["loss"]
            )
    readme = (out / "README.md").read_text()
    assert "curves_epoch.png" in readme and "`../sweep` (4 jobs)" in readme
    assert str(tmp_path) not in readme  # sources named relative to the report, never absolute
