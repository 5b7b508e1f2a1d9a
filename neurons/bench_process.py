"""Whole-process measurements for `python -m neurons.bench`: start-up time and peak memory.

Each measurement runs the CLI's `main` in a fresh child process from a temporary working
directory, the way a user starts a run. Cold start-up gets an empty numba cache (a fresh
install: pip compiles the bytecode when it installs); cached start-up runs the same job again.
Peak resident memory is the child's own high-water mark (VmHWM, read by the child as it exits:
on Linux a child's `ru_maxrss` starts at its parent's resident size). Asserts no speed.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

# the README's main job (embedded Iris data) and a CNN job that compiles the conv/pool kernels
STARTUP_JOBS: dict[str, list[str]] = {
    "mlp (iris, the README's main job)": ["train.epochs=1"],
    "cnn (digits, 64 samples)": [
        "arch=cnn_plain",
        "dataset=digits",
        "dataset.limit=64",
        "dataset.eval_limit=64",
        "train.epochs=1",
    ],
}
MEMORY_JOB = ["dataset=fashion_mnist", "dataset.download=false", "arch=mlp_plain", "train.epochs=1"]


# `python -m neurons ARGS`, plus the process's own peak resident memory written at exit
_MAIN = """
import atexit, sys
from pathlib import Path
out = Path(sys.argv.pop(1))
def _hwm():
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                out.write_text(str(int(line.split()[1]) * 1024))  # kB -> bytes
    except OSError:
        pass
atexit.register(_hwm)
sys.argv[0] = "neurons"
from neurons.__main__ import main
main()
"""


@dataclass
class ProcessRun:
    """One finished CLI run: wall time from launch to exit, its own peak RSS, its summary."""

    wall: float
    max_rss: int  # bytes
    summary: dict


def run_cli(overrides: list[str], env: dict[str, str] | None = None) -> ProcessRun:
    """`python -m neurons <overrides>` in a fresh temp cwd; raises SystemExit if it fails."""
    with tempfile.TemporaryDirectory(prefix="neurons-bench-proc-") as tmp:
        run_dir = Path(tmp) / "run"
        hwm = Path(tmp) / "vmhwm"
        args = [sys.executable, "-c", _MAIN, str(hwm), *overrides, "train.progress=false"]
        args.append(f"hydra.run.dir={run_dir}")
        err = Path(tmp) / "stderr.txt"
        with err.open("w") as err_f:
            t0 = time.perf_counter()
            proc = subprocess.Popen(
                args,
                cwd=tmp,
                env={**os.environ, **(env or {})},
                stdout=subprocess.DEVNULL,
                stderr=err_f,
            )
            _, status, usage = os.wait4(proc.pid, 0)  # the child's own rusage, not a sum
            wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            tail = err.read_text(errors="replace")[-3000:]
            raise SystemExit(f"{' '.join(overrides)}: exit {proc.returncode}\n{tail}")
        summary = json.loads((run_dir / "summary.json").read_text())
        peak = int(hwm.read_text()) if hwm.exists() else int(usage.ru_maxrss) * 1024
    return ProcessRun(wall, peak, summary)


def startup(rounds: int = 2) -> list[dict]:
    """Per start-up job: cold (empty numba cache) and cached wall time of a one-epoch run (s)."""
    out = []
    for title, job in STARTUP_JOBS.items():
        with tempfile.TemporaryDirectory(prefix="neurons-bench-cache-") as cache:
            env = {"NUMBA_CACHE_DIR": str(Path(cache) / "numba")}
            cold = run_cli(job, env)
            cached = sorted(run_cli(job, env).wall for _ in range(max(rounds, 1)))
        out.append(
            {
                "job": title,
                "cold": cold.wall,
                "cached": cached[len(cached) // 2],
                "train": cold.summary.get("train_seconds", math.nan),
            }
        )
    return out


def memory() -> dict:
    """Peak RSS of a one-epoch Fashion-MNIST run against the float32 dataset it holds."""
    base = run_cli(["train.epochs=1"])  # interpreter, libraries, kernels: the Iris main job
    run = run_cli(MEMORY_JOB)
    d = run.summary["dataset"]
    per_sample = math.prod(d["sample_shape"]) + d["n_outputs"]  # inputs + one-hot targets
    distinct = d["n_train"] + d["n_test"]  # validation is the test split (val_split=0)
    dataset = 4 * per_sample * distinct
    return {
        "peak": run.max_rss,
        "base": base.max_rss,
        "dataset": dataset,
        "samples": distinct,
        "ratio": run.max_rss / dataset,
        "over_base": (run.max_rss - base.max_rss) / dataset,
    }


def format_startup(rows: list[dict]) -> list[str]:
    lines = [
        "| start-up (one-epoch run, launch to exit) | cold: empty numba cache | cached | target |",
        "|---|---:|---:|---|",
    ]
    for r in rows:
        lines.append(f"| {r['job']} | {r['cold']:.2f} s | {r['cached']:.2f} s | ≤ 15 s / ≤ 1.5 s |")
    return lines


def format_memory(m: dict) -> list[str]:
    mb = 1024**2
    return [
        "| peak memory, Fashion-MNIST mlp_plain one epoch | MiB |",
        "|---|---:|",
        f"| float32 dataset ({m['samples']:,} samples, inputs + one-hot targets) "
        f"| {m['dataset'] / mb:.0f} |",
        f"| peak resident memory of the run | {m['peak'] / mb:.0f} "
        f"({m['ratio']:.2f}x the dataset; target ≤ 2x + working set) |",
        f"| peak of the Iris main job (interpreter, libraries, kernels) | {m['base'] / mb:.0f} |",
        f"| run peak above that base | {(m['peak'] - m['base']) / mb:.0f} "
        f"({m['over_base']:.2f}x the dataset) |",
    ]


def process_tables(rounds: int = 2) -> str:
    """Both tables as Markdown: start-up (cold, cached) and the Fashion-MNIST memory peak."""
    return "\n".join([*format_startup(startup(rounds)), "", *format_memory(memory())])
