"""Benchmark (not a test): the same Iris sweep run serially and with `hydra/launcher=parallel`.

    python -m neurons.bench_sweep                 # 8 jobs, 400 epochs each, n_jobs = cores
    python -m neurons.bench_sweep --epochs 4000   # 2-s jobs: where launch overhead is small
    python -m neurons.bench_sweep --jobs 2 --epochs 2 --rounds 1   # a quick check that it runs

Each sweep is a fresh `python -m neurons -m` process in a temporary directory; `--rounds`
interleaves serial and parallel sweeps and reports medians (single runs here vary by +-10%;
the speed-up is the median of each round's own serial/parallel ratio).
Prints the wall time of both sweeps and their ratio (aim: >= 1.7x on 2 cores), and the start-up
overhead per job: sweep wall time not spent inside the jobs' runs (`wall_seconds` in
summary.json), per job. Run it on a quiet machine; nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from neurons.runtime import cores

ROOT = Path(__file__).resolve().parents[1]


def run_sweep(
    sweep_dir: Path, jobs: int, epochs: int, batch: int, launcher: list[str]
) -> tuple[float, list[float]]:
    """Wall time of one sweep and each job's own `wall_seconds`."""
    args = [
        sys.executable,
        "-m",
        "neurons",
        "-m",
        "dataset=iris",
        "arch=mlp_plain",
        f"train.epochs={epochs}",
        f"train.batch_size={batch}",
        "train.progress=false",
        "seed=" + ",".join(str(s) for s in range(jobs)),
        f"hydra.sweep.dir={sweep_dir}",
        *launcher,
    ]
    t0 = time.perf_counter()
    p = subprocess.run(args, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"sweep failed (exit {p.returncode}):\n{p.stderr[-4000:]}")
    runs = [json.loads(f.read_text())["wall_seconds"] for f in sweep_dir.glob("*/summary.json")]
    if len(runs) != jobs:
        raise SystemExit(f"expected {jobs} completed jobs in {sweep_dir}, found {len(runs)}")
    return wall, runs


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=8, help="jobs in the sweep (seeds)")
    ap.add_argument("--epochs", type=int, default=400, help="epochs per job")
    ap.add_argument("--batch-size", type=int, default=4, help="train.batch_size")
    ap.add_argument("--n-jobs", type=int, default=cores(), help="parallel jobs (default: cores)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (medians)")
    a = ap.parse_args(argv)
    parallel_args = ["hydra/launcher=parallel", f"hydra.launcher.n_jobs={a.n_jobs}"]
    serial: list[float] = []
    parallel: list[float] = []
    s_runs: list[float] = []
    p_runs: list[float] = []
    with tempfile.TemporaryDirectory(prefix="neurons-bench-sweep-") as tmp:
        for r in range(max(1, a.rounds)):
            wall, runs = run_sweep(Path(tmp) / f"serial{r}", a.jobs, a.epochs, a.batch_size, [])
            serial.append(wall)
            s_runs.append(sum(runs))
            wall, runs = run_sweep(
                Path(tmp) / f"parallel{r}", a.jobs, a.epochs, a.batch_size, parallel_args
            )
            parallel.append(wall)
            p_runs.append(sum(runs))
    n = a.jobs
    workers = min(a.n_jobs, n)
    med = statistics.median
    ser, par = med(serial), med(parallel)
    ratios = sorted(s / p for s, p in zip(serial, parallel, strict=True))
    print(f"Iris sweep: {n} jobs x {a.epochs} epochs (batch {a.batch_size}), {cores()} cores,")
    print(f"  medians of {len(serial)} interleaved rounds")
    print(f"  serial   (basic launcher)          {ser:8.2f} s")
    print(f"  parallel (parallel, n_jobs={a.n_jobs:<2d})  {par:8.2f} s")
    speed_up = med(ratios)  # of each round's own pair: drift between rounds cancels
    print(f"  speed-up serial / parallel         {speed_up:8.2f}x  (aim >= 1.7x, 2 cores)")
    print("  speed-up of the rounds, sorted     " + ", ".join(f"{x:.2f}x" for x in ratios))
    print(f"  mean run time per job, serial      {med(s_runs) / n:8.3f} s")
    print(f"  mean run time per job, parallel    {med(p_runs) / n:8.3f} s")
    print(f"  start-up overhead per job, serial  {(ser - med(s_runs)) / n:8.3f} s")
    over = (par * workers - med(p_runs)) / n
    print(f"  start-up overhead per job, parallel {over:7.3f} s  (worker-seconds outside runs)")


if __name__ == "__main__":
    main()
