"""Helpers shared by the tests (plain functions; pytest puts tests/ on sys.path)."""

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def sigterm_after_epochs(
    args: list[str],
    run_dir: Path,
    *,
    cwd: Path,
    env: dict,
    epochs: int = 2,
    wait: float = 120,
    exit_wait: float = 60,
) -> None:
    """Start `python -m neurons ARGS hydra.run.dir=RUN_DIR`, send SIGTERM once `epochs` epochs
    are in its metrics.csv (or after `wait` seconds), and wait up to `exit_wait` s
    for it to exit."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "neurons", *args, f"hydra.run.dir={run_dir}"],
        cwd=cwd,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + wait
    while time.time() < deadline:
        m = run_dir / "metrics.csv"
        if m.exists() and len(m.read_text().splitlines()) >= epochs + 1:  # + the header
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=exit_wait)


@contextmanager
def conv_strategy(name: str) -> Iterator[None]:
    """Force every conv call onto one code path, "direct" or "im2col" (the shape-based
    dispatch is a speed choice; tests cover both)."""
    from neurons.kernels import conv

    old = conv.DIRECT_MAX_TAPS
    conv.DIRECT_MAX_TAPS = 10**9 if name == "direct" else -1
    try:
        yield
    finally:
        conv.DIRECT_MAX_TAPS = old
