"""The measuring tools behind the benchmarks: whole-process runs (start-up, peak memory) and the
joblib worker warm-up that overlaps the sweep's config composition."""

from __future__ import annotations

import os

import pytest
from joblib import Parallel, delayed
from omegaconf import OmegaConf

from neurons import bench_process
from neurons.sweep import warm_workers

JOBLIB = "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"


def test_run_cli_reports_its_own_wall_time_peak_memory_and_summary():
    import numpy as np

    big = np.ones(40_000_000)  # 320 MB here: a child's ru_maxrss would start at least this high
    run = bench_process.run_cli(["train.epochs=1"])
    assert big.nbytes > run.max_rss
    assert run.summary["status"] == "completed"
    assert run.summary["epochs_run"] == 1
    assert run.wall > run.summary["wall_seconds"] > 0  # launch to exit includes the start-up
    # the child's own peak (numpy, numba and hydra loaded), not the benchmark's or a sum
    assert 40 * 2**20 < run.max_rss


def test_run_cli_names_a_failing_job():
    with pytest.raises(SystemExit, match=r"dataset=nope: exit 1"):
        bench_process.run_cli(["dataset=nope"])


def test_memory_rows_relate_the_peak_to_the_dataset():
    m = {"peak": 400 * 2**20, "base": 100 * 2**20, "dataset": 200 * 2**20, "samples": 70000}
    m.update(ratio=2.0, over_base=1.5)
    text = "\n".join(bench_process.format_memory(m))
    assert "| 200 |" in text and "400 (2.00x the dataset" in text and "300 (1.50x" in text


def _pid() -> int:
    return os.getpid()


def test_warmed_workers_are_the_ones_the_launcher_then_uses():
    launcher = OmegaConf.create({"_target_": JOBLIB, "n_jobs": 2, "prefer": "processes"})
    t = warm_workers(launcher)
    assert t is not None
    t.join(timeout=120)
    assert len(t.pids) == 2 and os.getpid() not in t.pids
    # the launcher's own call (same arguments) reuses the executor: same worker processes
    cfg = {"n_jobs": 2, "prefer": "processes", "backend": "loky"}
    used = set(Parallel(**cfg)(delayed(_pid)() for _ in range(6)))
    assert used <= set(t.pids)


def test_no_warm_up_for_other_launchers_or_one_job():
    assert warm_workers(OmegaConf.create({"_target_": "hydra._internal.BasicLauncher"})) is None
    assert warm_workers(OmegaConf.create({"_target_": JOBLIB, "n_jobs": 1})) is None


def test_bench_sweep_interleaves_rounds_and_reports_medians(capsys):
    from neurons import bench_sweep

    bench_sweep.main(["--jobs", "2", "--epochs", "1", "--rounds", "2"])
    out = capsys.readouterr().out
    assert "medians of 2 interleaved rounds" in out
    rounds = next(line for line in out.splitlines() if "speed-up of the rounds, sorted" in line)
    ratios = [float(r.strip().rstrip("x")) for r in rounds.split("sorted", 1)[1].split(",")]
    assert len(ratios) == 2 and all(r > 0 for r in ratios)
    median = next(line for line in out.splitlines() if "speed-up serial / parallel" in line)
    assert float(median.split()[4].rstrip("x")) > 0
