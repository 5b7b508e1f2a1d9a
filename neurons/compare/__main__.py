"""Command line: ``python -m neurons.compare <sweep dir> [more dirs] [--out DIR] ...``.

Builds a comparison report folder from finished runner sweeps (see `neurons.compare.report`).
It only reads run directories; it never starts training.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from .load import NoRunsError, load_runs
from .report import write_report_frames


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m neurons.compare",
        description="Compare the variants of one or more sweeps: plots, tables and a README.",
    )
    p.add_argument("dirs", nargs="+", type=Path, help="sweep directories (or single job dirs)")
    p.add_argument("--out", type=Path, default=None, help="report folder (default: DIR1/report)")
    p.add_argument(
        "--band",
        choices=("percentile", "std"),
        default="percentile",
        help="learning-curve band: 20th-80th percentile (default) or mean +- std",
    )
    p.add_argument("--title", default=None, help="figure and README title")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns 0 when a report was written (even if some jobs failed), 2 when a
    directory is missing or holds no job (one-line message on stderr)."""
    try:
        args = _parser().parse_args(None if argv is None else list(argv))
    except SystemExit as e:  # --help or a usage error; argparse already printed
        return e.code if isinstance(e.code, int) else 2
    for d in args.dirs:
        if not d.is_dir():
            print(f"error: no such directory: {d}", file=sys.stderr)
            return 2
    out = args.out if args.out is not None else args.dirs[0] / "report"
    try:
        curves, jobs = load_runs(args.dirs)
        write_report_frames(curves, jobs, args.dirs, out, title=args.title, band=args.band)
    except (FileNotFoundError, NoRunsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    bad = jobs[~jobs["complete"].astype(bool)]
    if not bad.empty:
        listing = ", ".join(f"{r.job} ({r.status})" for r in bad.itertuples())
        print(
            f"warning: {len(bad)} of {len(jobs)} jobs did not complete: {listing}",
            file=sys.stderr,
        )
    print(f"report written to {out / 'README.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
