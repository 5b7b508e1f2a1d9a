"""The Python API: every python snippet of the README's API section runs (in order, one
namespace, from an empty directory), and compose/fit/load_sweep keep their promises."""

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from omegaconf import DictConfig

import neurons
from neurons.searchpath import ENV_VAR

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- api-snippets:begin", "<!-- api-snippets:end -->"


def readme_snippets() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert text.count(BEGIN) == 1 and text.count(END) == 1, "README: API snippet markers"
    section = text[text.index(BEGIN) : text.index(END)]
    return re.findall(r"```python\n(.*?)```", section, re.S)


@pytest.fixture
def project(tmp_path, monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    monkeypatch.setenv("NUMBA_NUM_THREADS", "2")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_readme_api_snippets_run(project):
    snippets = readme_snippets()
    assert len(snippets) >= 2
    ns: dict = {}
    for i, code in enumerate(snippets):
        exec(compile(code, f"README.md api snippet {i + 1}", "exec"), ns)
    # what the snippets promise, checked on what they left behind
    run = ns["run"]
    assert isinstance(run.metrics, pd.DataFrame) and list(run.metrics.epoch) == [1, 2, 3, 4, 5]
    assert run.run_dir.is_dir() and not run.run_dir.is_absolute()  # runs/<date>/<time>-<id>
    assert (run.run_dir / ".hydra" / "config.yaml").is_file()
    table = ns["sweep"].table()
    assert sorted(table.n_runs) == [2, 2] and table.variant.nunique() == 2
    model, x = ns["model"], ns["x"]  # the loaded run predicts what its own network computes
    proba = model.predict_proba(x)
    assert proba.shape == (2, 3) and np.allclose(proba.sum(axis=1), 1, atol=1e-5)
    assert list(model.predict(x)) == list(proba.argmax(axis=1))
    val = ns["model"].evaluate("val")
    assert val["acc"] == pytest.approx(run.summary["final"]["val_acc"], abs=1e-6)


def test_fit_records_choices_and_overrides_for_compare(project):
    run = neurons.fit(["arch=mlp_skip", "train.epochs=2", "train.threads=1"], run_dir="a/0")
    assert isinstance(run.config, DictConfig) and run.config.arch.name == "mlp_skip"
    assert run.summary["epochs_run"] == 2 and (run.run_dir / "run.log").read_text()
    cfg = neurons.compose(["arch=mlp_plain", "train.epochs=2", "train.threads=1"])
    neurons.fit(cfg, run_dir="a/1")  # a composed config works too
    sweep = neurons.load_sweep("a")
    assert len(sweep.jobs) == 2 and set(sweep.jobs.status) == {"completed"}
    assert set(sweep.jobs["choice.arch"].dropna()) == {"mlp_skip"}
    assert len(sweep.curves) == 4


def test_fit_failure_raises_naming_the_run_and_error(project):
    with pytest.raises(neurons.RunFailed, match=r"run bad ended with status 'failed': .*lr") as e:
        neurons.fit(["optimizer.lr=-1"], run_dir="bad")
    assert e.value.run_dir == Path("bad")


def test_compose_rejects_a_bare_string_and_bad_keys(project):
    with pytest.raises(TypeError, match="list of strings"):
        neurons.compose("arch=mlp_skip")  # type: ignore[arg-type]
    with pytest.raises(Exception, match="train.foo"):
        neurons.compose(["train.foo=1"])


def test_load_sweep_needs_a_directory(project):
    with pytest.raises(ValueError, match="at least one"):
        neurons.load_sweep()
    with pytest.raises(FileNotFoundError, match="nowhere"):
        neurons.load_sweep("nowhere")
