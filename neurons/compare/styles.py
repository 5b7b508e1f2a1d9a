"""Colours and line styles of the comparison's variants: the thesis's fixed colour per method,
the tab10 cycle for others, one line style per distinct extra key. No loading, no naming rules.
"""

from __future__ import annotations

import pandas as pd

from .frames import as_int, isna
from .variants import ordered_variants

# Fixed colours per method, as in the thesis; yellow is a darker gold so it shows on white.
METHOD_COLOURS = {
    ("looping", 2): "red",
    ("looping", 3): "green",
    ("looping", 4): "goldenrod",
    ("feedback", 2): "purple",
    ("feedback", 3): "orange",
    ("feedback", 4): "blue",
}
DEFAULT_CYCLE = (
    "tab:blue",
    "tab:orange",
    "tab:green",
    "tab:red",
    "tab:purple",
    "tab:brown",
    "tab:pink",
    "tab:gray",
    "tab:olive",
    "tab:cyan",
)
LINESTYLES = ("-", "--", ":", "-.")


def variant_styles(df: pd.DataFrame) -> dict[str, dict[str, str]]:
    """Colour and line style per variant label: fixed thesis colours per method (FFN black,
    COMBINE x2/x3/x4 red/green/gold, COUPLE x2/x3/x4 purple/orange/blue), others from the tab10
    cycle in order of appearance; distinct `extra` values (e.g. lr=...) get distinct line styles."""
    styles: dict[str, dict[str, str]] = {}
    others: dict[str, str] = {}
    extras: dict[str, str] = {}
    if df.empty or "variant" not in df:
        return styles
    sub = df.reindex(columns=["family", "passes", "method", "extra", "variant"])
    sub = sub.drop_duplicates("variant").set_index("variant")
    for v in ordered_variants(df):
        r = sub.loc[v]
        fam = None if isna(r.family) else str(r.family)
        n = as_int(r.passes)
        if fam == "plain":
            colour = "black"
        elif (fam, n) in METHOD_COLOURS:
            colour = METHOD_COLOURS[(fam, n)]
        else:
            key = str(r.method) if fam is None else f"{fam}/{n}"
            if key not in others:
                others[key] = DEFAULT_CYCLE[len(others) % len(DEFAULT_CYCLE)]
            colour = others[key]
        extra = "" if isna(r.extra) else str(r.extra)
        if fam is None:
            style = "-"
        else:
            if extra not in extras:
                extras[extra] = LINESTYLES[len(extras) % len(LINESTYLES)]
            style = extras[extra]
        styles[v] = {"color": colour, "linestyle": style}
    return styles
