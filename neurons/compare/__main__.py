"""Command line: ``python -m neurons.compare <sweep dir> [more dirs] [--out DIR] ...``.

Builds a comparison report folder from finished runner sweeps (see `neurons.compare.report`), or
regenerates one from a report folder's own tables. It only reads run directories and report
tables; it never starts training.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from .load import NoRunsError
from .report import make_report
from .stats import ALPHA


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m neurons.compare",
        description="Compare the variants of one or more sweeps: statistics against a baseline,"
        " plots, tables and a README. Given a report folder (or --from-report), regenerate it"
        " from its own jobs.csv, curves.csv and report.json.",
    )
    p.add_argument(
        "dirs", nargs="+", type=Path, help="sweep directories (or single job dirs, or a report)"
    )
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="report folder (default: DIR1/report; for a report folder: the folder itself)",
    )
    p.add_argument(
        "--from-report",
        action="store_true",
        help="read DIR as a report folder (its jobs.csv, curves.csv) instead of run directories",
    )
    p.add_argument(
        "--baseline",
        default=None,
        help="variant every other is compared with (default: the plain network, FFN)",
    )
    p.add_argument(
        "--band",
        choices=("ci", "percentile", "std"),
        default=None,
        help="learning-curve band: 95%% confidence interval of the mean (default), 20th-80th"
        " percentile, or mean +- std",
    )
    p.add_argument(
        "--alpha", type=float, default=None, help=f"significance level (default {ALPHA})"
    )
    p.add_argument(
        "--pairing",
        choices=("auto", "off"),
        default=None,
        help="auto (default): paired tests when variants ran the same seeds; off: unpaired",
    )
    p.add_argument("--title", default=None, help="figure and README title")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns 0 when a report was written (even if some jobs failed), 2 when a
    directory is missing or holds no job, or an option is invalid (one-line message on
    stderr)."""
    try:
        args = _parser().parse_args(None if argv is None else list(argv))
    except SystemExit as e:  # --help or a usage error; argparse already printed
        return e.code if isinstance(e.code, int) else 2
    for d in args.dirs:
        if not d.is_dir():
            print(f"error: no such directory: {d}", file=sys.stderr)
            return 2
    try:
        out, jobs = make_report(
            args.dirs,
            args.out,
            title=args.title,
            band=args.band,
            baseline=args.baseline,
            alpha=args.alpha,
            pairing=args.pairing,
            from_report=True if args.from_report else None,
        )
    except (FileNotFoundError, NoRunsError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    damaged = jobs["damaged"].astype(bool)
    bad = jobs[~jobs["complete"].astype(bool) & ~damaged]
    if not bad.empty:
        listing = ", ".join(f"{r.job} ({r.status})" for r in bad.itertuples())
        print(
            f"warning: {len(bad)} of {len(jobs)} jobs did not complete: {listing}",
            file=sys.stderr,
        )
    if damaged.any():
        listing = "; ".join(f"{r.job} ({r.damage})" for r in jobs[damaged].itertuples())
        print(
            f"warning: {int(damaged.sum())} of {len(jobs)} jobs are damaged and left out:"
            f" {listing}",
            file=sys.stderr,
        )
    print(f"report written to {out / 'README.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
