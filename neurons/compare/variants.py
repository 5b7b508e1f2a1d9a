"""Variant names and order: the thesis names (FFN / COMBINE xN / COUPLE xN, "w. bypassing skip")
of the jobs `load_runs` reads, from their arch config and the overrides that vary in a sweep.

Works on loaded jobs (their config, Hydra choices and overrides); no file I/O, no colours.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
import pandas as pd

from .frames import as_int, dig, isna

FAMILY_NAMES = {"plain": "FFN", "looping": "COMBINE", "feedback": "COUPLE"}
FAMILY_RANK = {"plain": 0, "looping": 1, "feedback": 2}
SKIP_SUFFIX = "w. bypassing skip"


class Job(Protocol):
    """What naming needs of a loaded job (`neurons.compare.load`)."""

    config: dict
    choices: dict
    overrides: dict
    base: tuple | None  # (family, passes, skip) from the arch config
    fields: dict  # set here: variant, method, family, passes, skip, extra


def method_label(family: Any, passes: Any) -> str:
    """Thesis name of a method: plain -> "FFN", looping -> "COMBINE", feedback -> "COUPLE",
    with " xN" appended when N = passes > 1 (never for plain)."""
    fam = str(family)
    name = FAMILY_NAMES.get(fam, fam.upper())
    n = as_int(passes)
    if fam != "plain" and n is not None and n > 1:
        name += f" x{n}"
    return name


def _variant_key(family: Any, passes: Any, skip: Any, extra: Any, label: str) -> tuple:
    fam = None if isna(family) else str(family)
    rank = FAMILY_RANK.get(fam, 3 if fam is not None else 4)
    n = as_int(passes)
    return (
        bool(skip) if not isna(skip) else False,
        rank,
        fam or "",
        n if n is not None else 0,
        "" if isna(extra) else str(extra),
        label,
    )


def ordered_variants(df: pd.DataFrame) -> list[str]:
    """Variant labels of `df` (curves or jobs) in table/legend order: every skip=False variant
    before every skip=True one; within each block FFN, then COMBINE xN by N, then COUPLE xN by N,
    then any other family, then fallback (override-named) variants; ties by extra keys, label."""
    if df.empty or "variant" not in df:
        return []
    cols = ["family", "passes", "skip", "extra", "variant"]
    sub = df.reindex(columns=cols).drop_duplicates("variant")
    keys = {
        r.variant: _variant_key(r.family, r.passes, r.skip, r.extra, r.variant)
        for r in sub.itertuples(index=False)
    }
    return sorted(keys, key=keys.__getitem__)


def varied_keys(jobs: Sequence[Job]) -> list[str]:
    """The override keys whose values differ across `jobs`, in first-seen order."""
    keys: list[str] = []
    for j in jobs:
        keys += [k for k in j.overrides if k not in keys]
    return [k for k in keys if len({j.overrides.get(k) for j in jobs}) > 1]


def assign_variants(jobs: Sequence[Job], varied: list[str]) -> None:
    """Set each job's `fields` (variant label, method, family, passes, skip, extra)."""
    # A job without arch info (e.g. its config is missing) borrows it from a job that chose the
    # same arch config.
    by_arch = {}
    for j in jobs:
        arch_choice = j.choices.get("arch", j.overrides.get("arch"))
        if j.base is not None and arch_choice is not None:
            by_arch.setdefault(str(arch_choice), j.base)
    for j in jobs:
        if j.base is None:
            arch_choice = j.choices.get("arch", j.overrides.get("arch"))
            j.base = by_arch.get(str(arch_choice)) if arch_choice is not None else None

    # Extra keys: varied overrides (not seed) that the (family, passes, skip) tuple does not
    # determine, e.g. optimizer.lr or dataset; they become part of the variant label.
    candidates = [k for k in varied if k != "seed"]
    groups: dict[tuple, list[Job]] = {}
    for j in jobs:
        if j.base is not None:
            groups.setdefault(j.base, []).append(j)
    extra_keys = [
        k
        for k in candidates
        if any(len({j.overrides.get(k) for j in g}) > 1 for g in groups.values())
    ]

    for j in jobs:
        if j.base is not None:
            fam, passes, skip = j.base
            extra = ", ".join(f"{k}={j.overrides.get(k, 'default')}" for k in extra_keys)
            method = method_label(fam, passes)
            if extra:
                method += f" ({extra})"
            label = method_label(fam, passes) + (f" {SKIP_SUFFIX}" if skip else "")
            label += f" ({extra})" if extra else ""
            j.fields.update(
                variant=label, method=method, family=fam, passes=passes, skip=skip, extra=extra
            )
        else:
            parts = [f"{k}={j.overrides.get(k, 'default')}" for k in candidates]
            name = dig(j.config, "arch", "name") or j.choices.get("arch")
            label = ", ".join(parts) or (str(name) if name else "run")
            j.fields.update(
                variant=label,
                method=label,
                family=np.nan,
                passes=np.nan,
                skip=False,
                extra=", ".join(parts),
            )
