"""Tests for `neurons.compare` on synthetic run folders (no training involved)."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from matplotlib.collections import PolyCollection
from matplotlib.figure import Figure

from neurons.compare import final_metric, learning_curves, load_runs, summary_table, write_report
from neurons.compare.__main__ import main
from neurons.compare.tables import format_number, to_latex, to_markdown

EPOCHS = 5
ARCHS = {
    "mlp_plain": ("plain", 1, False),
    "mlp_plain_skip": ("plain", 1, True),
    "mlp_feedback": ("feedback", 2, False),
    "mlp_feedback_skip": ("feedback", 2, True),
}
FAMILY_OFFSET = {"plain": 0.0, "looping": 0.03, "feedback": 0.05}


def metric_rows(family, passes, skip, seed, n, task="classification"):
    off = FAMILY_OFFSET[family] + 0.01 * passes + (0.02 if skip else 0.0) + 0.01 * seed
    rows, wall = [], 0.0
    for e in range(1, n + 1):
        seconds = 0.1 * passes + 0.01 * seed
        wall += seconds
        acc = task == "classification"
        rows.append(
            {
                "epoch": e,
                "step": 10 * e,
                "seconds": seconds,
                "wall": wall,
                "lr": 0.1,
                "train_loss": 0.9 / (e + seed) + off,
                "train_acc": 0.45 + 0.05 * e + off if acc else np.nan,
                "val_loss": 1.0 / (e + seed) + off,
                "val_acc": 0.4 + 0.05 * e + off if acc else np.nan,
            }
        )
    return rows


def write_job(
    root: Path,
    num: int,
    arch: str,
    seed: int,
    *,
    n_rows: int = EPOCHS,
    status: str = "completed",
    error: str | None = None,
    summary: bool = True,
    task: str = "classification",
    arch_cfg: dict | None = None,
    overrides: list[str] | None = None,
    extra_cfg: dict | None = None,
) -> tuple[Path, list[dict]]:
    """One runner job folder with every file the runner writes."""
    family, passes, skip = ARCHS.get(arch, ("plain", 1, False))
    d = root / f"{num}_{arch}_s{seed}"
    (d / ".hydra").mkdir(parents=True)
    arch_map = (
        arch_cfg
        if arch_cfg is not None
        else {"name": arch, "family": family, "passes": passes, "skip": skip, "layers": [8, 8]}
    )
    config = {
        "seed": seed,
        "arch": arch_map,
        "dataset": {"name": "iris", "val_fraction": 0.2},
        "optimizer": {"name": "sgd", "lr": 0.1},
        "objective": {"name": "cross_entropy" if task == "classification" else "mse"},
        "train": {"epochs": EPOCHS, "batch_size": 16},
        **(extra_cfg or {}),
    }
    (d / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    hydra = {
        "hydra": {
            "runtime": {"choices": {"arch": arch, "dataset": "iris", "hydra/launcher": "basic"}},
            "job": {"num": num},
        }
    }
    (d / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump(hydra))
    ovr = overrides if overrides is not None else [f"arch={arch}", f"seed={seed}"]
    (d / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(ovr))
    rows = metric_rows(family, passes, skip, seed, n_rows, task) if n_rows else []
    if n_rows:
        pd.DataFrame(rows).to_csv(d / "metrics.csv", index=False)
    if summary:
        m = pd.DataFrame(rows)
        last = m.iloc[-1]
        best = m.loc[m["val_loss"].idxmin()]

        def num_or_none(v):
            return None if pd.isna(v) else float(v)

        probe = {"loss": float(last["val_loss"]) + 0.1, "acc": num_or_none(last["val_acc"])}
        doc = {
            "status": "completed",
            "task": task,
            "epochs_run": len(rows),
            "final": {k: num_or_none(last[k]) for k in ("train_loss", "train_acc")}
            | {k: num_or_none(last[k]) for k in ("val_loss", "val_acc")},
            "best": {
                "epoch": int(best["epoch"]),
                "monitor": "val_loss",
                "val_loss": float(best["val_loss"]),
                "val_acc": num_or_none(best["val_acc"]),
            },
            "probes": {
                "no_feedback": probe if family == "feedback" else None,
                "no_skip": probe if skip else None,
                "split": "val",
            },
            "params": 100 * passes,
            "wall_seconds": float(last["wall"]),
            "seconds_per_epoch": float(m["seconds"].mean()),
            "threads": {"numba": 1},
            "versions": {"numpy": np.__version__},
            "seed": seed,
            "dataset": {"name": "iris", "source": "synthetic", "n_train": 96, "n_val": 24},
        }
        (d / "summary.json").write_text(json.dumps(doc))
    (d / "status.json").write_text(json.dumps({"status": status, "error": error}))
    return d, rows


@pytest.fixture
def sweep(tmp_path):
    """2 methods x 2 skip x 3 seeds; FB2-skip seed 2 early-stopped after 3 epochs; plus one
    failed (partial metrics) and one unfinished job. Returns (dir, {job dir name: rows})."""
    root = tmp_path / "multirun" / "2024-01-01" / "12-00-00"
    root.mkdir(parents=True)
    (root / "multirun.yaml").write_text("hydra: {}\n")
    runs, num = {}, 0
    for arch in ARCHS:
        for seed in range(3):
            n = 3 if (arch == "mlp_feedback_skip" and seed == 2) else EPOCHS
            d, rows = write_job(root, num, arch, seed, n_rows=n)
            runs[d.name] = rows
            num += 1
    d, rows = write_job(
        root,
        num,
        "mlp_feedback",
        3,
        n_rows=2,
        status="failed",
        error="FloatingPointError: overflow encountered",
        summary=False,
    )
    runs[d.name] = rows
    d, rows = write_job(root, num + 1, "mlp_plain", 3, n_rows=1, status="running", summary=False)
    runs[d.name] = rows
    return root, runs


VARIANT_OF = {
    "mlp_plain": "FFN",
    "mlp_plain_skip": "FFN w. bypassing skip",
    "mlp_feedback": "COUPLE x2",
    "mlp_feedback_skip": "COUPLE x2 w. bypassing skip",
}
ORDER = ["FFN", "COUPLE x2", "FFN w. bypassing skip", "COUPLE x2 w. bypassing skip"]


def completed(runs):
    """{variant: [rows of each completed run]} (the failed and running jobs have seed 3)."""
    out: dict[str, list] = {}
    for name, rows in runs.items():
        arch = name.split("_", 1)[1].rsplit("_s", 1)[0]
        if not name.endswith("_s3"):
            out.setdefault(VARIANT_OF[arch], []).append(rows)
    return out


# ---------------------------------------------------------------------------------- loading


def test_load_runs_frames(sweep):
    root, runs = sweep
    curves, jobs = load_runs([root])
    assert len(curves) == sum(len(r) for r in runs.values()) == 11 * 5 + 3 + 2 + 1
    assert len(jobs) == 14
    assert set(jobs["variant"]) == set(ORDER)
    assert curves.attrs["varied"] == jobs.attrs["varied"] == ["arch", "seed"]
    for col in (
        "job",
        "variant",
        "family",
        "passes",
        "skip",
        "seed",
        "epoch",
        "seconds",
        "wall",
        "lr",
        "train_loss",
        "train_acc",
        "val_loss",
        "val_acc",
        "arch.family",
        "optimizer.lr",
        "train.epochs",
        "choice.arch",
        "choice.dataset",
    ):
        assert col in curves, col
    assert "choice.hydra/launcher" not in curves
    assert curves["arch.layers"].iloc[0] == "[8,8]"
    for col in ("final.val_acc", "best.epoch", "probes.no_feedback.loss", "dataset.n_train"):
        assert col in jobs, col

    by_status = jobs.set_index("job")["status"]
    failed = jobs[jobs["status"] == "failed"].iloc[0]
    assert failed["error"].startswith("FloatingPointError")
    assert "status failed" in failed["problem"] and "summary.json missing" in failed["problem"]
    assert failed["n_epochs"] == 2 and not failed["complete"]
    running = jobs[jobs["status"] == "running"].iloc[0]
    assert running["variant"] == "FFN" and "status running" in running["problem"]
    assert (by_status == "completed").sum() == 12
    assert (jobs.loc[jobs["complete"], "problem"] == "").all()
    early = jobs[jobs["early_stopped"]]
    assert list(early["job"]) == ["11_mlp_feedback_skip_s2"] and early["epochs_run"].iloc[0] == 3
    assert (~curves["complete"]).sum() == 3  # partial curves kept but flagged
    assert pd.isna(jobs.loc[jobs["variant"] == "FFN", "probes.no_feedback.acc"]).all()


def test_single_job_dir_and_broken_files(tmp_path):
    d, _ = write_job(tmp_path, 0, "mlp_feedback", 0)
    curves, jobs = load_runs([d])
    assert len(jobs) == 1 and len(curves) == EPOCHS and jobs["variant"].iloc[0] == "COUPLE x2"

    root = tmp_path / "broken"
    root.mkdir()
    a, _ = write_job(root, 0, "mlp_plain", 0)
    (a / "summary.json").write_text("{not json")
    b, _ = write_job(root, 1, "mlp_plain", 1, n_rows=0, summary=False, status="failed")
    (b / "metrics.csv").write_text("")
    c = root / "2_crashed"
    c.mkdir()
    (c / "status.json").write_text(json.dumps({"status": "failed", "error": "boom"}))
    curves, jobs = load_runs([root])
    probs = jobs.set_index("job")["problem"]
    assert "summary.json unreadable" in probs[a.name]
    # a completed job without a usable summary falls back to its metrics
    assert jobs.set_index("job").loc[a.name, "final.val_acc"] == pytest.approx(
        curves[curves["job"] == a.name]["val_acc"].iloc[-1]
    )
    assert "metrics.csv empty" in probs[b.name]
    assert ".hydra/config.yaml missing" in probs["2_crashed"]
    assert jobs.set_index("job").loc["2_crashed", "error"] == "boom"
    table = summary_table(curves, jobs)
    assert table["n_failed"].sum() == 2


def test_fallback_and_extra_keys(tmp_path):
    # arch config without family/passes/skip: the variant is named by the varied overrides
    root = tmp_path / "fallback"
    for i, lr in enumerate(["0.1", "0.01"]):
        for seed in range(2):
            write_job(
                root,
                2 * i + seed,
                "custom",
                seed,
                arch_cfg={"name": "custom"},
                overrides=[f"optimizer.lr={lr}", f"seed={seed}"],
            )
    _, jobs = load_runs([root])
    assert sorted(set(jobs["variant"])) == ["optimizer.lr=0.01", "optimizer.lr=0.1"]

    # a varied key the arch does not determine becomes part of the label
    root = tmp_path / "extra"
    for i, lr in enumerate(["0.1", "0.01"]):
        write_job(root, i, "mlp_feedback", 0, overrides=["arch=mlp_feedback", f"optimizer.lr={lr}"])
    curves, jobs = load_runs([root])
    assert set(jobs["variant"]) == {"COUPLE x2 (optimizer.lr=0.1)", "COUPLE x2 (optimizer.lr=0.01)"}
    fig = learning_curves(curves)
    assert len(fig.axes[0].lines) == 2
    assert {ln.get_linestyle() for ln in fig.axes[0].lines} == {"-", "--"}
    assert {ln.get_color() for ln in fig.axes[0].lines} == {"purple"}


def test_duplicate_job_names_across_sweeps(tmp_path):
    for s in ("a", "b"):
        write_job(tmp_path / s, 0, "mlp_plain", 0)
    _, jobs = load_runs([tmp_path / "a", tmp_path / "b"])
    assert list(jobs["job"]) == ["a/0_mlp_plain_s0", "b/0_mlp_plain_s0"]


# ---------------------------------------------------------------------------------- tables


def test_summary_table_statistics(sweep):
    root, runs = sweep
    curves, jobs = load_runs([root])
    table = summary_table(curves, jobs)
    assert list(table["variant"]) == ORDER
    t = table.set_index("variant")
    assert t.loc["FFN", "n_runs"] == 3 and t.loc["FFN", "n_unfinished"] == 1
    assert t.loc["COUPLE x2", "n_failed"] == 1 and t.loc["COUPLE x2", "n_unfinished"] == 0
    for variant, rs in completed(runs).items():
        for col, key in (
            ("final.val_acc", "val_acc"),
            ("final.val_loss", "val_loss"),
            ("final.train_loss", "train_loss"),
        ):
            finals = [r[-1][key] for r in rs]
            assert t.loc[variant, f"{col}.mean"] == pytest.approx(statistics.mean(finals))
            assert t.loc[variant, f"{col}.std"] == pytest.approx(statistics.stdev(finals))
        bests = [min(r, key=lambda row: row["val_loss"])["val_acc"] for r in rs]
        assert t.loc[variant, "best.val_acc.mean"] == pytest.approx(statistics.mean(bests))
        assert t.loc[variant, "epochs_run.mean"] == pytest.approx(
            statistics.mean(len(r) for r in rs)
        )
        longest = max(len(r) for r in rs)
        last = [r[-1]["val_acc"] for r in rs if len(r) == longest]
        assert t.loc[variant, "last_index.epoch"] == longest
        assert t.loc[variant, "last_index.n"] == len(last)
        assert t.loc[variant, "last_index.val_acc.mean"] == pytest.approx(np.mean(last))
    # early stopping: the last-index statistic sees only the two 5-epoch runs
    assert t.loc["COUPLE x2 w. bypassing skip", "last_index.n"] == 2
    assert t.loc["COUPLE x2 w. bypassing skip", "final.val_acc.mean"] != pytest.approx(
        t.loc["COUPLE x2 w. bypassing skip", "last_index.val_acc.mean"]
    )
    assert np.isnan(t.loc["FFN", "probes.no_feedback.loss.mean"])
    assert np.isfinite(t.loc["COUPLE x2", "probes.no_feedback.loss.mean"])
    assert np.isnan(t.loc["COUPLE x2", "probes.no_skip.acc.mean"])


def test_row_order(tmp_path):
    archs = {
        "fb3": ("feedback", 3, False),
        "loop3": ("looping", 3, False),
        "fb2s": ("feedback", 2, True),
        "loop2": ("looping", 2, False),
        "plain": ("plain", 1, False),
        "plains": ("plain", 1, True),
        "fb2": ("feedback", 2, False),
    }
    for i, (name, (fam, p, s)) in enumerate(archs.items()):
        cfg = {"name": name, "family": fam, "passes": p, "skip": s}
        write_job(tmp_path, i, name, 0, arch_cfg=cfg, overrides=[f"arch={name}"])
    curves, jobs = load_runs([tmp_path])
    assert list(summary_table(curves, jobs)["variant"]) == [
        "FFN",
        "COMBINE x2",
        "COMBINE x3",
        "COUPLE x2",
        "COUPLE x3",
        "FFN w. bypassing skip",
        "COUPLE x2 w. bypassing skip",
    ]


def test_formatting(sweep):
    assert format_number(1234.5) == "1.23e+03"
    assert format_number(-0.000123456) == "-0.0001"
    assert format_number(0.123456) == "0.1235"
    assert format_number(float("nan")) == "–"
    root, _ = sweep
    table = summary_table(*load_runs([root]))
    md = to_markdown(table)
    lines = md.strip().splitlines()
    assert len(lines) == 2 + 4 and lines[2].startswith("| FFN |")
    assert " ± " in md and "Final val acc" in md and "Feedback off loss" in md
    tex = to_latex(table)
    assert "\\begin{tabular}" in tex and "$\\pm$" in tex and "\\bottomrule" in tex
    assert tex.count("\\\\") == 1 + 4 and "ddof=1" in tex
    assert "_" not in tex.replace("\\_", "")


# ---------------------------------------------------------------------------------- plots


def _bands(ax):
    return [c for c in ax.collections if isinstance(c, PolyCollection)]


@pytest.mark.parametrize("band", ["percentile", "std"])
def test_learning_curves_counts(sweep, band):
    curves, _ = load_runs([sweep[0]])
    fig = learning_curves(curves, band=band)
    assert isinstance(fig, Figure) and len(fig.axes) == 6
    for ax in fig.axes:
        assert len(ax.lines) == 2 and len(_bands(ax)) == 2
    axes = np.array(fig.axes).reshape(3, 2)
    assert axes[0, 0].get_title() == "Without bypassing skip"
    assert axes[0, 0].get_ylabel() == "Avg. validation accuracy"
    assert axes[2, 0].get_ylabel() == "Avg. training loss"
    assert axes[2, 0].get_legend() is not None
    assert sum(ax.get_legend() is not None for ax in fig.axes) == 1
    colours = {ln.get_label(): ln.get_color() for ln in axes[0, 0].lines}
    assert colours == {"FFN": "black", "COUPLE x2": "purple"}
    # the mean line is the nanmean over the completed runs, NaN-padded
    line = next(ln for ln in axes[0, 1].lines if ln.get_label() == "COUPLE x2")
    assert list(line.get_xdata()) == [1, 2, 3, 4, 5]
    y = line.get_ydata()
    assert y[2] == pytest.approx(
        np.mean([0.4 + 0.15 + 0.05 + 0.02 + 0.02 + 0.01 * s for s in range(3)])
    )
    assert y[4] == pytest.approx(
        np.mean([0.4 + 0.25 + 0.05 + 0.02 + 0.02 + 0.01 * s for s in range(2)])
    )


def test_learning_curves_wall_single_column_regression(tmp_path, sweep):
    curves, _ = load_runs([sweep[0]])
    fig = learning_curves(curves, x="wall")
    for ax in fig.axes:
        assert len(ax.lines) == 2 and len(_bands(ax)) == 0
    line = next(ln for ln in fig.axes[0].lines if ln.get_label() == "COUPLE x2")
    spe = np.mean([0.2 + 0.01 * s for s in range(3)])
    assert line.get_xdata() == pytest.approx(np.arange(1, 6) * spe)

    no_skip = curves[~curves["skip"]]
    fig = learning_curves(no_skip)
    assert len(fig.axes) == 3 and all(len(ax.lines) == 2 for ax in fig.axes)

    root = tmp_path / "reg"
    for i, arch in enumerate(["mlp_plain", "mlp_feedback_skip"]):
        for seed in range(2):
            write_job(root, 2 * i + seed, arch, seed, task="regression")
    rc, rj = load_runs([root])
    assert set(rj["task"]) == {"regression"}
    fig = learning_curves(rc, task="regression")
    assert len(fig.axes) == 4
    assert fig.axes[0].get_ylabel() == "Avg. validation loss"
    assert [len(ax.lines) for ax in fig.axes] == [1, 1, 1, 1]
    assert [len(_bands(ax)) for ax in fig.axes] == [1, 1, 1, 1]


def test_final_metric_counts(sweep):
    _, jobs = load_runs([sweep[0]])
    fig = final_metric(jobs, "final.val_acc")
    (ax,) = fig.axes
    assert len(ax.lines) == 7 * 4 and len(_bands(ax)) == 0
    strips = [ln for ln in ax.lines if ln.get_marker() == "o"]
    assert [len(ln.get_xdata()) for ln in strips] == [3, 3, 3, 3]
    assert [t.get_text().split("\n")[0] for t in ax.get_xticklabels()] == [
        "FFN",
        "COUPLE x2",
        "FFN",
        "COUPLE x2",
    ]
    fig = final_metric(jobs, "probes.no_feedback.loss")
    assert len(fig.axes[0].lines) == 7 * 2
    fig = final_metric(jobs, "no.such.metric")
    assert len(fig.axes[0].lines) == 0


# ---------------------------------------------------------------------------------- report/CLI

REPORT_FILES = {
    "README.md",
    "curves_epoch.png",
    "curves_wall.png",
    "final_val_acc.png",
    "final_val_loss.png",
    "summary.csv",
    "summary.md",
    "summary.tex",
    "curves.csv",
    "jobs.csv",
    "forest.png",
    "stats.csv",
    "comparison.csv",
    "comparison.md",
    "report.json",
}


def test_cli_writes_report(sweep, capsys):
    root, runs = sweep
    assert main([str(root)]) == 0
    out = root / "report"
    assert {p.name for p in out.iterdir()} == REPORT_FILES
    captured = capsys.readouterr()
    assert "warning: 2 of 14 jobs did not complete" in captured.err
    assert "12_mlp_feedback_s3 (failed)" in captured.err

    summary = pd.read_csv(out / "summary.csv").set_index("variant")
    assert list(summary.index) == ORDER
    for variant, rs in completed(runs).items():
        finals = [r[-1]["val_acc"] for r in rs]
        assert summary.loc[variant, "final.val_acc.mean"] == pytest.approx(np.mean(finals))
        assert summary.loc[variant, "final.val_acc.std"] == pytest.approx(np.std(finals, ddof=1))
        spe = [np.mean([row["seconds"] for row in r]) for r in rs]
        assert summary.loc[variant, "seconds_per_epoch.mean"] == pytest.approx(np.mean(spe))
    assert len(pd.read_csv(out / "curves.csv")) == 61
    assert len(pd.read_csv(out / "jobs.csv")) == 14

    readme = (out / "README.md").read_text()
    for name in ("curves_epoch.png", "curves_wall.png", "final_val_acc.png"):
        assert f"]({name})" in readme
    assert "12_mlp_feedback_s3" in readme and "FloatingPointError" in readme
    assert "13_mlp_plain_s3" in readme and "running" in readme
    assert "stopped early" in readme
    # paths relative to the report folder (no repository around tmp_path), never absolute
    assert str(root.parent) not in readme and str(root.parent) not in (out / "jobs.csv").read_text()
    assert "- `..` (14 jobs)" in readme
    assert "python -m neurons.compare .. --out .\n" in readme
    assert "| FFN |" in readme and "ddof=1" in readme
    assert (out / "summary.md").read_text() in readme
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp files left

    # rerunning (the report dir now sits inside the sweep) still sees 14 jobs
    assert main([str(root), "--out", str(root / "r2"), "--band", "std", "--title", "T"]) == 0
    assert "--band std --title T" in (root / "r2" / "README.md").read_text()


def test_write_report_regression(tmp_path):
    root = tmp_path / "reg"
    for i, arch in enumerate(["mlp_plain", "mlp_feedback"]):
        for seed in range(2):
            write_job(root, 2 * i + seed, arch, seed, task="regression")
    out = write_report([root], tmp_path / "out", title="Bike")
    names = {p.name for p in out.iterdir()}
    assert names == REPORT_FILES - {"final_val_acc.png"}
    readme = (out / "README.md").read_text()
    assert readme.startswith("# Bike") and "None: every job completed." in readme
    assert "acc" not in (out / "summary.md").read_text().lower().replace("accumul", "")


def test_cli_errors(tmp_path, capsys):
    assert main([str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: no such directory: {tmp_path / 'nope'}"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main([str(empty)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: no job directories") and "\n" not in err
    assert "Traceback" not in err
