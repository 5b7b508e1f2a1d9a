"""Write a self-contained comparison report folder (PNGs, CSV/Markdown/LaTeX tables, README).

Reads run directories through `load_runs` and renders with the Agg canvas directly (no pyplot, no
global backend switch); it never imports or runs training code. Each file is written to a temp
file in the target folder and moved into place with `os.replace`.
"""

from __future__ import annotations

import io
import json
import os
import shlex
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import pandas as pd
import yaml
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .load import load_runs
from .plots import METRIC_LABELS, final_metric, learning_curves
from .tables import summary_table, to_latex, to_markdown

__all__ = ["build_command", "write_report", "write_report_frames"]

DPI = 130


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _write_text(path: Path, text: str) -> None:
    _atomic_write(path, text.encode("utf-8"))


def _write_figure(path: Path, fig: Figure) -> None:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    _atomic_write(path, buf.getvalue())


def _write_csv(path: Path, df: pd.DataFrame) -> None:
    _write_text(path, df.to_csv(index=False))


def build_command(
    dirs: Sequence[Path | str], out_dir: Path | str, *, band: str = "percentile", title=None
) -> str:
    """The command line that regenerates a report."""
    args = ["python", "-m", "neurons.compare", *map(str, dirs), "--out", str(out_dir)]
    if band != "percentile":
        args += ["--band", band]
    if title:
        args += ["--title", title]
    return shlex.join(args)


def sweep_commands(dirs: Sequence[Path | str]) -> list[str]:
    """The `python -m neurons -m ...` command of each sweep dir, from Hydra's multirun.yaml."""
    out = []
    for d in dirs:
        path = Path(d) / "multirun.yaml"
        if not path.exists():
            continue
        try:
            cfg = yaml.safe_load(path.read_text()) or {}
            task = cfg.get("hydra", {}).get("overrides", {}).get("task", []) or []
        except (yaml.YAMLError, AttributeError):
            continue
        out.append(shlex.join(["python", "-m", "neurons", "-m", *map(str, task)]))
    return out


def _task(jobs: pd.DataFrame) -> str:
    tasks = jobs.loc[jobs["complete"].astype(bool), "task"].dropna().astype(str)
    if tasks.empty:
        tasks = jobs["task"].dropna().astype(str)
    return "classification" if (tasks == "classification").any() else "regression"


def _md(s: object, limit: int = 300) -> str:
    """One Markdown table cell: missing -> "", a multi-line error (traceback) -> its last line."""
    if s is None or (not isinstance(s, str) and bool(pd.isna(s))):
        return ""
    lines = [ln for ln in str(s).splitlines() if ln.strip()]
    text = " ".join(lines[-1].split()) if lines else ""
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return text.replace("|", "\\|")


def _default_title(jobs: pd.DataFrame, task: str) -> str:
    names = []
    for col in ("dataset.name", "choice.dataset"):
        if col in jobs:
            names = [str(n) for n in dict.fromkeys(jobs[col].dropna())]
            if names:
                break
    return f"{', '.join(names) or 'Sweep'} ({task})"


def write_report(
    dirs: Iterable[Path | str] | Path | str,
    out_dir: Path | str,
    *,
    title: str | None = None,
    band: str = "percentile",
) -> Path:
    """Load the sweeps in `dirs` and write a report folder `out_dir`; returns `out_dir`.

    Contents: ``curves_epoch.png`` (mean curves vs epoch with `band`), ``curves_wall.png``
    (time-weighted: vs approx. training seconds, no bands), ``final_val_acc.png`` (classification
    only) and ``final_val_loss.png`` (box plot + runs), ``summary.csv/.md/.tex``
    (`summary_table`), ``curves.csv`` and ``jobs.csv`` (the tidy frames) and ``README.md``
    (figures, table, jobs with problems, sources and the regenerating command).
    Raises like `load_runs` when a directory is missing or holds no job.
    """
    if isinstance(dirs, str | Path):
        dirs = [dirs]
    dirs = [Path(d) for d in dirs]
    curves, jobs = load_runs(dirs)
    return write_report_frames(curves, jobs, dirs, out_dir, title=title, band=band)


def write_report_frames(
    curves: pd.DataFrame,
    jobs: pd.DataFrame,
    dirs: Sequence[Path],
    out_dir: Path | str,
    *,
    title: str | None = None,
    band: str = "percentile",
) -> Path:
    """`write_report` for frames already loaded from `dirs` with `load_runs`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    task = _task(jobs)
    command = build_command(dirs, out, band=band, title=title)
    title = title or _default_title(jobs, task)

    figures = {
        "curves_epoch.png": (
            "Learning curves (mean over seeds; band: "
            + ("20th-80th percentile" if band == "percentile" else "mean ± std")
            + ")",
            learning_curves(curves, x="epoch", band=band, task=task, title=title),
        ),
        "curves_wall.png": (
            "Time-weighted learning curves (x = epoch × the variant's mean seconds per epoch)",
            learning_curves(curves, x="wall", task=task, title=title),
        ),
    }
    finals = ["final.val_acc", "final.val_loss"] if task == "classification" else []
    finals = finals or ["final.val_loss"]
    for metric in finals:
        name = f"{metric.replace('.', '_')}.png"
        fig = final_metric(jobs, metric, title=title)
        figures[name] = (f"{METRIC_LABELS[metric]} per run (box plot + runs)", fig)
    for name, (_, fig) in figures.items():
        _write_figure(out / name, fig)

    table = summary_table(curves, jobs)
    md_table = to_markdown(table)
    _write_csv(out / "summary.csv", table)
    _write_text(out / "summary.md", md_table)
    _write_text(out / "summary.tex", to_latex(table, caption=None))
    _write_csv(out / "curves.csv", curves)
    _write_csv(out / "jobs.csv", jobs)

    _write_text(out / "README.md", _readme(title, dirs, jobs, figures, md_table, command, task))
    return out


def _readme(
    title: str,
    dirs: list[Path],
    jobs: pd.DataFrame,
    figures: dict[str, tuple[str, Figure]],
    md_table: str,
    command: str,
    task: str,
) -> str:
    n_done = int(jobs["complete"].sum())
    lines = [
        f"# {title}",
        "",
        f"Task: {task}. {len(jobs)} jobs, {n_done} completed. Generated from:",
        "",
    ]
    for d in dirs:
        n = int((jobs["sweep"] == str(d)).sum())
        lines.append(f"- `{d.resolve()}` ({n} jobs)")
    sweeps = sweep_commands(dirs)
    if sweeps:
        lines += ["", "The sweep was run with (from its `multirun.yaml`):", "", "```sh", *sweeps]
        lines += ["```"]
    lines += _search_lines(dirs)
    lines += ["", "Regenerate with:", "", "```sh", command, "```", "", "## Summary", ""]
    lines += [
        md_table,
        "Mean ± sample standard deviation (ddof=1) over each variant's completed runs of each"
        " run's own value. *Final* = the run's last epoch, *best-epoch* = the epoch with the"
        " lowest validation loss, *feedback/skip off* = the trained network probed on the"
        " validation split with feedback / bypassing skips switched off. *Last-index* = the"
        " thesis statistic: nanmean at the last epoch index of the NaN-padded curves, i.e. only"
        " over the runs that lasted longest (the original used ddof=0 there). Rows: all"
        " variants without bypassing skip first, then those with it; each block FFN, COMBINE xN,"
        " COUPLE xN by ascending N. Failed or unfinished jobs are left out of every statistic"
        " and plot.",
        "",
    ]
    for name, (caption, _) in figures.items():
        lines += [f"## {caption}", "", f"![{caption}]({name})", ""]

    bad = jobs[~jobs["complete"].astype(bool)]
    lines += ["## Failed or unfinished jobs", ""]
    if bad.empty:
        lines += ["None: every job completed.", ""]
    else:
        counts = ", ".join(f"{n} {k}" for k, n in bad["status"].value_counts().sort_index().items())
        names = ", ".join(f"`{j}`" for j in bad["job"])
        lines += [f"{len(bad)} of {len(jobs)} jobs did not complete ({counts}): {names}.", ""]
        lines += [
            "| job | variant | seed | status | epochs logged | error |",
            "|---|---|---|---|---:|---|",
        ]
        for _, r in bad.iterrows():
            lines.append(
                f"| {_md(r['job'])} | {_md(r['variant'])} | {_md(r['seed'])} | "
                f"{_md(r['status'])} | {r['n_epochs']} | {_md(r['error'])} |"
            )
        lines.append("")
    other = jobs[jobs["complete"].astype(bool) & (jobs["problem"] != "")]
    early = jobs[jobs["early_stopped"].astype(bool)]
    if not other.empty or not early.empty:
        lines += ["## Notes", ""]
        for _, r in other.iterrows():
            lines.append(f"- `{r['job']}`: {_md(r['problem'])}")
        for _, r in early.iterrows():
            lines.append(
                f"- `{r['job']}` stopped early after {r['n_epochs']} epochs"
                f" (configured: {r.get('train.epochs', '?')})."
            )
        lines.append("")
    lines += [
        "## Files",
        "",
        "- `summary.csv`, `summary.md`, `summary.tex`: the table above (CSV has every statistic).",
        "- `curves.csv`: one row per job × epoch (metrics, variant, flattened config).",
        "- `jobs.csv`: one row per job (status, error, problems, flattened summary.json).",
        "",
    ]
    return "\n".join(lines)


def _search_lines(dirs: Sequence[Path]) -> list[str]:
    """One line per hyper-parameter search among `dirs` (its `best.json`, see neurons.sweep)."""
    lines = []
    for d in dirs:
        try:
            best = json.loads((Path(d) / "best.json").read_text())
            params = ", ".join(f"{k}={v}" for k, v in best["params"].items())
            lines.append(
                f"- Search: best {best['monitor']} {best['value']:.6g} ({best['direction']}) at"
                f" trial {best['trial']} of {best['trials']}: {params}; every trial in"
                f" `{Path(d).name}/trials.csv`."
            )
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return ["", *lines] if lines else []
