"""Report-level tests of `neurons.compare`: damaged jobs are reported and never averaged in,
committed reports carry no absolute paths and regenerate exactly from their committed tables,
and the CLI's baseline / report-folder options."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest
from test_compare import EPOCHS, write_job

from neurons.compare import load_runs, summary_table
from neurons.compare.__main__ import main
from neurons.compare.integrity import metrics_damage
from neurons.compare.saved import display_path, load_report

REPO = Path(__file__).resolve().parents[1]
REPORTS = REPO / "compare"
ABSOLUTE = re.compile(r"/(work|tmp|root|home)/")


def _small_sweep(root: Path) -> dict[str, Path]:
    dirs = {}
    num = 0
    for arch in ("mlp_plain", "mlp_feedback"):
        for seed in range(3):
            d, _ = write_job(root, num, arch, seed)
            dirs[f"{arch}{seed}"] = d
            num += 1
    return dirs


# ----------------------------------------------------------------------------- damaged jobs


def test_metrics_damage_kinds():
    head = "epoch,step,val_loss\n"
    assert metrics_damage(head + "1,10,0.5\n2,20,0.4\n") == []
    assert metrics_damage("") == []
    cut = metrics_damage(head + "1,10,0.5\n2,20,0.")
    assert len(cut) == 1 and "line 3 was cut mid-write" in cut[0]
    assert "line 2 has 2 fields, the header has 3" in metrics_damage(head + "1,10\n")[0]
    assert "not a number in column val_loss" in metrics_damage(head + "1,10,abc\n")[0]
    assert "epoch 1 after epoch 1" in metrics_damage(head + "1,10,0.5\n1,10,0.5\n")[0]


def test_cut_metrics_job_is_damaged_not_averaged(tmp_path, capsys):
    root = tmp_path / "sweep"
    dirs = _small_sweep(root)
    # a metrics.csv whose last line was cut mid-write (parses as a real row with NaNs)
    m = dirs["mlp_feedback2"] / "metrics.csv"
    text = m.read_text()
    m.write_text(text[: text.rindex("\n", 0, len(text) - 1) + 8])
    # a completed job whose summary.json is corrupt, and one that lost its metrics rows at a
    # line boundary (the summary says more epochs than the metrics hold)
    (dirs["mlp_plain2"] / "summary.json").write_text('{"status": "compl')
    short = dirs["mlp_feedback1"] / "metrics.csv"
    short.write_text("".join(short.read_text().splitlines(keepends=True)[:-1]))

    curves, jobs = load_runs([root])
    j = jobs.set_index("job")
    names = {k: d.name for k, d in dirs.items()}
    assert j.loc[names["mlp_feedback2"], "damaged"]
    assert "cut mid-write" in j.loc[names["mlp_feedback2"], "damage"]
    assert "summary.json unreadable" in j.loc[names["mlp_plain2"], "damage"]
    assert (
        f"says {EPOCHS} epochs, metrics.csv holds {EPOCHS - 1}"
        in (j.loc[names["mlp_feedback1"], "damage"])
    )
    assert not j.loc[names["mlp_feedback2"], "complete"]
    assert j["damaged"].sum() == 3 and j.loc[names["mlp_plain0"], "damage"] == ""

    table = summary_table(curves, jobs).set_index("variant")
    assert table.loc["COUPLE x2", "n_runs"] == 1 and table.loc["FFN", "n_runs"] == 2
    good = jobs[~jobs["damaged"] & (jobs["variant"] == "COUPLE x2")]
    assert table.loc["COUPLE x2", "final.val_acc.mean"] == pytest.approx(
        good["final.val_acc"].mean()
    )

    out = tmp_path / "report"
    assert main([str(root), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "3 of 6 jobs are damaged and left out" in err and names["mlp_feedback2"] in err
    assert "did not complete" not in err
    readme = (out / "README.md").read_text()
    section = readme.split("## Damaged jobs", 1)[1].split("\n## ", 1)[0]
    for k in ("mlp_feedback2", "mlp_plain2", "mlp_feedback1"):
        assert names[k] in section
    assert "cut mid-write" in section and "3 damaged (left out)" in readme
    stats = pd.read_csv(out / "stats.csv").set_index(["variant", "metric"])
    assert stats.loc[("COUPLE x2", "final.val_acc"), "n"] == 1
    assert stats.loc[("FFN", "final.val_acc"), "n"] == 2


# ------------------------------------------------------------------------ committed reports


def _committed() -> list[str]:
    return sorted(p.parent.name for p in REPORTS.glob("*/README.md"))


def test_committed_reports_carry_no_absolute_paths():
    assert _committed(), "no committed report found"
    for f in REPORTS.rglob("*"):
        if f.is_file() and f.suffix in (".md", ".csv", ".json", ".tex"):
            hits = ABSOLUTE.findall(f.read_text(encoding="utf-8"))
            assert not hits, f"{f.relative_to(REPO)} names an absolute path"


@pytest.mark.slow
@pytest.mark.parametrize("name", ["iris", "fashion_mnist", "iris_compat", "iris_compat/ablation"])
def test_committed_report_regenerates_from_its_tables(tmp_path, name):
    """Copy only the committed tables into a fresh repository layout, regenerate with the
    command the README gives, and get every text file back byte for byte."""
    src = REPORTS / name
    readme = (src / "README.md").read_text()
    command = f"python -m neurons.compare compare/{name}"
    assert f"```sh\n{command}\n```" in readme or f"```sh\n{command} --title " in readme
    repo = tmp_path / "repo"
    dst = repo / "compare" / name
    dst.mkdir(parents=True)
    (repo / "pyproject.toml").write_text("")
    for f in ("jobs.csv", "curves.csv", "report.json"):
        shutil.copy(src / f, dst / f)
    assert main([str(dst)]) == 0  # in place, as the README's command does from the repo root
    produced = {p.name for p in dst.iterdir()}
    written_by_hand = {"READING.md", "ablation.md"}  # compare/iris_compat's own reading
    assert produced == {p.name for p in src.iterdir() if p.is_file()} - written_by_hand
    for f in sorted(produced):
        if f.endswith(".png"):
            assert (dst / f).stat().st_size > 10_000, f
            continue
        assert (dst / f).read_text() == (src / f).read_text(), f"{f} differs"


def test_regenerating_a_report_elsewhere_copies_its_tables(tmp_path):
    root = tmp_path / "sweep"
    _small_sweep(root)
    first = tmp_path / "first"
    assert main([str(root), "--out", str(first), "--baseline", "COUPLE x2", "--band", "std"]) == 0
    meta = json.loads((first / "report.json").read_text())
    assert meta["baseline"] == "COUPLE x2" and meta["band"] == "std"
    second = tmp_path / "second"
    assert main(["--from-report", str(first), "--out", str(second)]) == 0
    for f in ("jobs.csv", "curves.csv"):
        assert (second / f).read_bytes() == (first / f).read_bytes()
    for f in ("summary.csv", "stats.csv", "comparison.csv", "comparison.md"):
        assert (second / f).read_text() == (first / f).read_text(), f
    # the settings came back from report.json
    comp = pd.read_csv(second / "comparison.csv")
    assert set(comp["baseline"]) == {"COUPLE x2"} and set(comp["variant"]) == {"FFN"}
    curves, jobs, _ = load_report(first)
    assert jobs["complete"].dtype == bool and str(jobs["seed"].dtype) == "Int64"
    assert len(curves) == 6 * EPOCHS


def test_cli_baseline_errors_and_defaults(tmp_path, capsys):
    root = tmp_path / "sweep"
    _small_sweep(root)
    assert main([str(root), "--out", str(tmp_path / "r"), "--baseline", "nope"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: baseline 'nope' is not a variant") and "FFN" in err
    assert main([str(root), "--out", str(tmp_path / "r"), "--alpha", "2"]) == 2
    assert "alpha must be between 0 and 1" in capsys.readouterr().err
    assert main([str(root), "--out", str(tmp_path / "r")]) == 0
    comp = pd.read_csv(tmp_path / "r" / "comparison.csv")
    assert set(comp["baseline"]) == {"FFN"} and comp["paired"].all()
    readme = (tmp_path / "r" / "README.md").read_text()
    assert readme.index("## In short") < readme.index("## Sources") < readme.index("## Summary")
    assert "baseline **FFN** (3 runs)" in readme and "paired by seed" in readme


def test_display_path_is_never_absolute(tmp_path, monkeypatch):
    repo = tmp_path / "proj"
    (repo / "runs" / "s").mkdir(parents=True)
    (repo / "pyproject.toml").write_text("")
    out = repo / "compare" / "x"
    out.mkdir(parents=True)
    assert display_path(repo / "runs" / "s", out) == "runs/s"
    assert display_path(tmp_path / "elsewhere", out) == "elsewhere (outside the repository)"
    lone = tmp_path / "lone"
    (lone / "report").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert display_path(lone, lone / "report") == ".."
    assert display_path(lone, lone) == "."
