"""Damage checks for one job directory: a `metrics.csv` cut mid-write, rows that do not parse,
files a completed run must have but lacks or cannot read.

Pure checks on text already read from disk (no pandas, no writing). A damaged job is reported as
such by `neurons.compare` and never averaged into a statistic; this module only says why.
"""

from __future__ import annotations

import csv
import io
import math

__all__ = ["metrics_damage"]


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def metrics_damage(text: str) -> list[str]:
    """What is wrong with the raw text of a `metrics.csv` ([] when it is intact).

    The runner ends every line with a newline, so a non-empty file whose last character is not
    one was cut mid-write. Also damage: a data row with more or fewer fields than the header, a
    non-empty cell that is not a number, epochs that do not strictly increase."""
    if not text:
        return []
    problems: list[str] = []
    lines = text.split("\n")
    n_lines = len(lines)
    cut = not text.endswith("\n")
    if cut:
        problems.append(
            f"metrics.csv line {n_lines} was cut mid-write (no line end): {lines[-1][:60]!r}"
        )
    rows = list(csv.reader(io.StringIO(text)))
    header = rows[0] if rows else []
    epoch_col = header.index("epoch") if "epoch" in header else None
    last_epoch = -math.inf
    for i, row in enumerate(rows[1:], start=2):
        if not row or (cut and i == n_lines):  # the cut line is reported once, above
            continue
        if len(row) != len(header):
            problems.append(
                f"metrics.csv line {i} has {len(row)} fields, the header has {len(header)}"
            )
            continue
        bad = [h for h, c in zip(header, row, strict=True) if c.strip() and not _is_number(c)]
        if bad:
            problems.append(f"metrics.csv line {i}: not a number in column {bad[0]}")
            continue
        if epoch_col is not None and row[epoch_col].strip():
            epoch = float(row[epoch_col])
            if not epoch > last_epoch:
                problems.append(
                    f"metrics.csv line {i}: epoch {row[epoch_col]} after epoch {last_epoch:g}"
                )
            last_epoch = epoch
    return problems
