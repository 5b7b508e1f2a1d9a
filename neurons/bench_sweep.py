"""Benchmark (not a test): the same Iris sweep run serially and with `hydra/launcher=parallel`.

    python -m neurons.bench_sweep                 # 8 jobs, 400 epochs each, n_jobs = cores
    python -m neurons.bench_sweep --jobs 2 --epochs 2     # a quick check that it runs

Each sweep is a fresh `python -m neurons -m` process in a temporary directory. Prints the wall
time of both sweeps and their ratio (aim: >= 1.7x on 2 cores), and the start-up overhead per job:
sweep wall time not spent inside the jobs' runs (`wall_seconds` in summary.json), per job.
Run it on a quiet machine; nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import json
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
    a = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="neurons-bench-sweep-") as tmp:
        serial, s_runs = run_sweep(Path(tmp) / "serial", a.jobs, a.epochs, a.batch_size, [])
        parallel, p_runs = run_sweep(
            Path(tmp) / "parallel",
            a.jobs,
            a.epochs,
            a.batch_size,
            ["hydra/launcher=parallel", f"hydra.launcher.n_jobs={a.n_jobs}"],
        )
    n = a.jobs
    workers = min(a.n_jobs, n)
    print(f"Iris sweep: {n} jobs x {a.epochs} epochs (batch {a.batch_size}), {cores()} cores")
    print(f"  serial   (basic launcher)          {serial:8.2f} s")
    print(f"  parallel (parallel, n_jobs={a.n_jobs:<2d})  {parallel:8.2f} s")
    print(f"  speed-up serial / parallel         {serial / parallel:8.2f}x  (aim >= 1.7x, 2 cores)")
    print(f"  mean run time per job, serial      {sum(s_runs) / n:8.3f} s")
    print(f"  mean run time per job, parallel    {sum(p_runs) / n:8.3f} s")
    print(f"  start-up overhead per job, serial  {(serial - sum(s_runs)) / n:8.3f} s")
    over = (parallel * workers - sum(p_runs)) / n
    print(f"  start-up overhead per job, parallel {over:7.3f} s  (worker-seconds outside runs)")


if __name__ == "__main__":
    main()
