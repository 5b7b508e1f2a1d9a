"""Write a self-contained comparison report folder (PNGs, CSV/Markdown/LaTeX tables, statistics
against a baseline, README opening with a generated summary).

Reads run directories through `load_runs`, or a report's own tables through `load_report`, and
renders with the Agg canvas directly (no pyplot, no global backend switch); it never imports or
runs training code. Each file is written with the run records' atomic writer
(`neurons.record.write_atomic`: temp file, fsync, rename). Paths in the output are relative to
the repository, never absolute.
"""

from __future__ import annotations

import io
import json
import os
import shlex
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from neurons.record import write_atomic

from .load import find_job_dirs, load_runs
from .narrative import comparison_markdown, stats_markdown, summary_text
from .plots import BAND_LABELS, METRIC_LABELS, final_metric, forest_plot, learning_curves
from .saved import (
    META,
    TABLES,
    display_path,
    is_report_dir,
    load_report,
    path_base,
    slim_curves,
)
from .stats import (
    ALPHA,
    Settings,
    compare_to_baseline,
    default_baseline,
    stat_metrics,
    variant_stats,
)
from .tables import summary_table, to_latex, to_markdown

__all__ = ["build_command", "make_report", "write_report", "write_report_frames"]

DPI = 130


def _write_text(path: Path, text: str) -> None:
    write_atomic(path, text.encode("utf-8"))


def _write_figure(path: Path, fig: Figure) -> None:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    write_atomic(path, buf.getvalue())


def _write_csv(path: Path, df: pd.DataFrame) -> None:
    _write_text(path, df.to_csv(index=False))


def build_command(
    dirs: Sequence[Path | str],
    out_dir: Path | str | None,
    *,
    band: str = "ci",
    title: str | None = None,
    baseline: str | None = None,
    alpha: float = ALPHA,
    pairing: str = "auto",
) -> str:
    """The command line that regenerates a report (`out_dir` None: no ``--out``, i.e. in place
    when `dirs` is the report folder itself)."""
    args = ["python", "-m", "neurons.compare", *map(str, dirs)]
    if out_dir is not None:
        args += ["--out", str(out_dir)]
    if baseline:
        args += ["--baseline", baseline]
    if band != "ci":
        args += ["--band", band]
    if alpha != ALPHA:
        args += ["--alpha", f"{alpha:g}"]
    if pairing != "auto":
        args += ["--pairing", pairing]
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
    dirs: Iterable[Path | str] | Path | str, out_dir: Path | str | None = None, **options: Any
) -> Path:
    """Load the sweeps in `dirs` (or one report folder, to regenerate it from its own tables)
    and write a report folder `out_dir` (default: DIR/report for a sweep, the folder itself for a
    report); returns `out_dir`. `make_report` (same keyword options) with the frames dropped."""
    return make_report(dirs, out_dir, **options)[0]


def make_report(
    dirs: Iterable[Path | str] | Path | str,
    out_dir: Path | str | None = None,
    *,
    title: str | None = None,
    band: str | None = None,
    baseline: str | None = None,
    alpha: float | None = None,
    pairing: str | None = None,
    from_report: bool | None = None,
) -> tuple[Path, pd.DataFrame]:
    """Write a report folder; returns ``(out_dir, jobs)``.

    `dirs` are sweep (or job) directories, or one report folder: `from_report` None detects it
    (a folder holding ``jobs.csv`` and ``curves.csv`` and no job directory), True insists.

    Contents: ``curves_epoch.png`` (mean curves vs epoch with `band`, default the 95% confidence
    band), ``curves_wall.png`` (time-weighted, no bands), ``final_val_acc.png`` (classification
    only) and ``final_val_loss.png`` (box plot + runs), ``forest.png`` (differences to the
    baseline with intervals), ``summary.csv/.md/.tex`` (`summary_table`), ``stats.csv``
    (`variant_stats`), ``comparison.csv/.md`` (`compare_to_baseline`), ``curves.csv`` and
    ``jobs.csv`` (the tidy frames), ``report.json`` (settings and sources) and ``README.md``.
    Settings left None come from the report's ``report.json`` when regenerating, else defaults
    (band "ci", the plain network as baseline, alpha 0.05, pairing "auto").
    Raises like `load_runs` when a directory is missing or holds no job, ValueError for an
    unknown baseline or a bad setting.
    """
    if isinstance(dirs, str | Path):
        dirs = [dirs]
    dirs = [Path(d) for d in dirs]
    if from_report is None:
        from_report = len(dirs) == 1 and is_report_dir(dirs[0]) and not _has_jobs(dirs[0])
    meta: dict = {}
    if from_report:
        if len(dirs) != 1:
            raise ValueError(f"a report is regenerated from one report folder, got {len(dirs)}")
        curves, jobs, meta = load_report(dirs[0])
        out = Path(out_dir) if out_dir is not None else dirs[0]
    else:
        curves, jobs = load_runs(dirs)
        out = Path(out_dir) if out_dir is not None else dirs[0] / "report"
    write_report_frames(
        curves,
        jobs,
        dirs,
        out,
        title=title if title is not None else meta.get("title_given"),
        band=band or meta.get("band", "ci"),
        baseline=baseline if baseline is not None else meta.get("baseline_given"),
        alpha=alpha if alpha is not None else float(meta.get("alpha", ALPHA)),
        pairing=pairing or meta.get("pairing", "auto"),
        from_report=meta if from_report else None,
    )
    return out, jobs


def _has_jobs(d: Path) -> bool:
    return bool(find_job_dirs(d))


def write_report_frames(
    curves: pd.DataFrame,
    jobs: pd.DataFrame,
    dirs: Sequence[Path],
    out_dir: Path | str,
    *,
    title: str | None = None,
    band: str = "ci",
    baseline: str | None = None,
    alpha: float = ALPHA,
    pairing: str = "auto",
    from_report: dict | None = None,
) -> Path:
    """`write_report` for frames already loaded from `dirs` (`load_runs`, or `load_report` with
    its ``report.json`` as `from_report`)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if pairing not in ("auto", "off"):
        raise ValueError(f"pairing must be 'auto' or 'off', not {pairing!r}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be between 0 and 1, not {alpha}")
    task = _task(jobs)
    settings = Settings(alpha=alpha, pairing=pairing)
    title_given, baseline_given = title, baseline
    title = title or _default_title(jobs, task)
    base = baseline if baseline is not None else default_baseline(jobs)
    metrics = [m for m in stat_metrics(task) if m in jobs]
    primary = metrics[:2] if task == "classification" else metrics[:1]
    vstats = variant_stats(jobs, metrics, settings)
    comparison = compare_to_baseline(jobs, base, metrics, settings)

    out_rel = display_path(out, out)
    if from_report is not None:
        sources = list(from_report.get("sources", []))
        sweeps = list(from_report.get("sweep_commands", []))
        if not sources:  # a report written before report.json: its jobs.csv names the sweeps
            counts = jobs["sweep"].astype(str).value_counts(sort=False) if "sweep" in jobs else {}
            sources = [{"path": str(k), "jobs": int(v)} for k, v in dict(counts).items()]
        made_with = from_report.get("made_with")
    else:
        sources = [
            {"path": display_path(d, out), "jobs": int((jobs["sweep"] == str(d)).sum())}
            for d in dirs
        ]
        sweeps = sweep_commands(dirs)
        made_with = build_command(
            [s["path"] for s in sources],
            out_rel,
            band=band,
            title=title_given,
            baseline=baseline_given,
            alpha=alpha,
            pairing=pairing,
        )
    regenerate = build_command(
        [out_rel],
        None,
        band=band,
        title=title_given,
        baseline=baseline_given,
        alpha=alpha,
        pairing=pairing,
    )

    figures = {
        "forest.png": (
            f"Differences to the baseline ({base}) with 95% confidence intervals",
            forest_plot(comparison, primary, title=title),
        ),
        "curves_epoch.png": (
            f"Learning curves (mean over seeds; band: {BAND_LABELS[band]})",
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
    _write_csv(out / "stats.csv", vstats)
    _write_csv(out / "comparison.csv", comparison)
    _write_text(out / "comparison.md", comparison_markdown(comparison, metrics))
    if from_report is None:
        rel = jobs.copy()
        for col in ("path", "sweep"):
            if col in rel:
                rel[col] = [display_path(p, out) for p in rel[col].astype(str)]
        _write_csv(out / "curves.csv", slim_curves(curves, jobs))
        _write_csv(out / "jobs.csv", rel)
    elif Path(os.path.abspath(dirs[0])) != Path(os.path.abspath(out)):
        for name in TABLES:  # the source tables, byte for byte
            write_atomic(out / name, (dirs[0] / name).read_bytes())
    meta = {
        "title": title,
        "title_given": title_given,
        "task": task,
        "baseline": base,
        "baseline_given": baseline_given,
        "band": band,
        "alpha": alpha,
        "pairing": pairing,
        "confidence": settings.confidence,
        "bootstrap": {
            "method": settings.method,
            "resamples": settings.n_resamples,
            "seed": settings.seed,
        },
        "power": settings.power,
        "metrics": metrics,
        "sources": sources,
        "sweep_commands": sweeps,
        "made_with": made_with,
        "varied": list(jobs.attrs.get("varied", [])),
    }
    _write_text(out / META, json.dumps(meta, indent=2) + "\n")
    readme = _readme(
        title=title,
        jobs=jobs,
        figures=figures,
        md_table=md_table,
        task=task,
        sources=sources,
        sweeps=sweeps,
        made_with=made_with,
        regenerate=regenerate,
        base=path_base(out)[1],
        has_comparison=not comparison.empty,
        summary=summary_text(comparison, vstats, jobs, primary, settings),
        comparison_md=comparison_markdown(comparison, primary),
        stats_md=stats_markdown(vstats, metrics),
        settings=settings,
        band=band,
        search=_search_lines(dirs),
    )
    _write_text(out / "README.md", readme)
    return out


def _few_runs_note(jobs: pd.DataFrame) -> str:
    done = jobs[jobs["complete"].astype(bool)]
    n = int(done["variant"].value_counts().min()) if len(done) else 0
    if 0 < n < 10:
        return (
            f" With {n} runs a bootstrap interval tends to be narrower than its nominal level"
            " (it only resamples what was seen); the t intervals of the differences above do"
            " not have that problem."
        )
    return ""


def _readme(
    *,
    title: str,
    jobs: pd.DataFrame,
    figures: dict[str, tuple[str, Figure]],
    md_table: str,
    task: str,
    sources: list[dict],
    sweeps: list[str],
    made_with: str | None,
    regenerate: str,
    base: str,
    has_comparison: bool,
    summary: str,
    comparison_md: str,
    stats_md: str,
    settings: Settings,
    band: str,
    search: list[str],
) -> str:
    complete = jobs["complete"].astype(bool)
    damaged = jobs["damaged"].astype(bool) if "damaged" in jobs else pd.Series(False, jobs.index)
    n_done = int(complete.sum())
    forest_caption = figures["forest.png"][0]
    lines = [
        f"# {title}",
        "",
        f"Task: {task}. {len(jobs)} jobs, {n_done} usable"
        + (f", {int(damaged.sum())} damaged (left out)" if damaged.any() else "")
        + ".",
        "",
        "## In short",
        "",
        summary,
    ]
    if has_comparison:
        lines += [
            comparison_md,
            "Δ = variant − baseline (mean of the per-seed differences when paired). 95% CI: t"
            " interval of that difference (Welch–Satterthwaite when unpaired). p: two-sided"
            " t-test (paired or Welch), in brackets Holm-corrected over the variants compared on"
            " that metric; rank p: Wilcoxon signed-rank (paired) or Mann–Whitney U, likewise."
            " Seeds needed – : no observed difference to detect. Effect: d_z = mean"
            " difference / sd of the differences (paired) or Hedges' g (unpaired). Verdict from the"
            f" Holm-corrected t-test at {settings.alpha:g}. Seeds needed: runs per variant for a"
            f" two-sided t-test to detect the observed effect with {settings.power:.0%} power"
            f" (noncentral t), at {settings.alpha:g} and, in brackets, at {settings.alpha:g}/m (m ="
            " comparisons per metric), which survives Holm. Every metric: `comparison.md`,"
            " `comparison.csv`.",
            "",
            f"![{forest_caption}](forest.png)",
            "",
        ]
    lines += [
        "## Sources",
        "",
        "Generated from:",
        "",
    ]
    for s in sources:
        lines.append(f"- `{s['path']}` ({s['jobs']} jobs)")
    if sweeps:
        lines += ["", "The sweep was run with (from its `multirun.yaml`):", "", "```sh", *sweeps]
        lines += ["```"]
    if made_with:
        lines += [
            "",
            "The report was first made from the sweep with:",
            "",
            "```sh",
            made_with,
            "```",
        ]
    lines += search
    lines += [
        "",
        "Regenerate it from its own committed tables (`jobs.csv`, `curves.csv`, `report.json`),"
        f" from {base}:",
        "",
        "```sh",
        regenerate,
        "```",
        "",
        "## Per-variant statistics",
        "",
        stats_md,
        f"Mean ± sample std (ddof=1) over each variant's usable runs; in brackets the"
        f" {settings.confidence:.0%} confidence interval of the mean, {settings.method}"
        f" bootstrap over runs with {settings.n_resamples} resamples (seed {settings.seed};"
        " percentile bootstrap where BCa is undefined, the value itself when all runs agree)."
        + _few_runs_note(jobs)
        + " `stats.csv` holds every number.",
        "",
        "## Summary",
        "",
    ]
    lines += [
        md_table,
        "Mean ± sample standard deviation (ddof=1) over each variant's completed runs of each"
        " run's own value. *Final* = the run's last epoch, *best-epoch* = the epoch with the"
        " lowest validation loss, *feedback/skip off* = the trained network probed on the"
        " validation split with feedback / bypassing skips switched off. *Last-index* = the"
        " thesis statistic: nanmean at the last epoch index of the NaN-padded curves, i.e. only"
        " over the runs that lasted longest (the original used ddof=0 there). Rows: all"
        " variants without bypassing skip first, then those with it; each block FFN, COMBINE xN,"
        " COUPLE xN by ascending N. Failed, unfinished or damaged jobs are left out of every"
        " statistic and plot.",
        "",
    ]
    for name, (caption, _) in figures.items():
        if name != "forest.png":
            lines += [f"## {caption}", "", f"![{caption}]({name})", ""]

    lines += ["## Damaged jobs", ""]
    if not damaged.any():
        lines += ["None: every job's records are intact.", ""]
    else:
        lines += [
            "Their records cannot be trusted, so they are left out of every statistic and plot:",
            "",
            "| job | variant | seed | status | epochs logged | damage |",
            "|---|---|---|---|---:|---|",
        ]
        for _, r in jobs[damaged].iterrows():
            lines.append(
                f"| {_md(r['job'])} | {_md(r['variant'])} | {_md(r['seed'])} | "
                f"{_md(r['status'])} | {r['n_epochs']} | {_md(r['damage'])} |"
            )
        lines.append("")
    bad = jobs[~complete & ~damaged]
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
    other = jobs[complete & (jobs["problem"].fillna("") != "")]
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
        "- `summary.csv`, `summary.md`, `summary.tex`: the summary table (CSV: every statistic).",
        "- `stats.csv`: per variant and metric: runs, mean, std, bootstrap interval.",
        "- `comparison.csv`, `comparison.md`: every metric's differences to the baseline, tests,"
        " verdicts, seeds needed.",
        "- `curves.csv`: one row per job × epoch (metrics, variant; the flattened config is in"
        " `jobs.csv`).",
        "- `jobs.csv`: one row per job (status, error, problems, damage, flattened summary.json).",
        "- `report.json`: the settings, sources and commands; with the two tables above, enough"
        " to regenerate this folder.",
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
