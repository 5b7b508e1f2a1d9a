"""What a user installs: the wheel and the sdist carry every YAML under conf/ (as `neurons.conf`),
pyproject.toml lists every package, and (slow) the built wheel in a fresh virtual environment runs
the CLI, a user config dir, tab completion and the comparison from a directory outside the checkout.
"""

import json
import os
import shutil
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from pathlib import Path

import pytest
from setuptools import find_packages

ROOT = Path(__file__).resolve().parents[1]
YAMLS = sorted(p.relative_to(ROOT / "conf").as_posix() for p in (ROOT / "conf").rglob("*.yaml"))


def test_pyproject_lists_every_package():
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "packages"
    ]
    found = set(find_packages(where=str(ROOT), include=["neurons*"]))
    missing = sorted(found - set(packages))
    assert not missing, f"pyproject.toml [tool.setuptools] packages: add {missing}"
    assert "neurons.conf" in packages


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> Path:
    """Wheel and sdist built from a clean copy of the checkout (no stale build/ directory)."""
    tmp = tmp_path_factory.mktemp("dist")
    src = tmp / "src"
    shutil.copytree(
        ROOT,
        src,
        ignore=shutil.ignore_patterns(
            ".git", "runs", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", ".hypothesis"
        ),
    )
    out = tmp / "out"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    subprocess.run(
        [*pip, "wheel", "-q", "--no-deps", "-w", str(out), str(src)],
        check=True,
        capture_output=True,
        timeout=600,
    )
    code = "from setuptools import build_meta as b; import sys; b.build_sdist(sys.argv[1])"
    subprocess.run(
        [sys.executable, "-c", code, str(out)],
        cwd=src,
        check=True,
        capture_output=True,
        timeout=300,
    )
    return out


def test_wheel_and_sdist_carry_every_yaml_under_conf(dist):
    assert len(YAMLS) > 40 and "config.yaml" in YAMLS and "debug/fast.yaml" in YAMLS
    (wheel,) = dist.glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    in_wheel = sorted(n[len("neurons/conf/") :] for n in names if n.startswith("neurons/conf/"))
    assert [n for n in in_wheel if n.endswith(".yaml")] == YAMLS
    assert "neurons/conf/__init__.py" in names and "neurons/api.py" in names
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    eps = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "neurons = neurons.__main__:main" in eps
    assert "neurons-compare = neurons.compare.__main__:main" in eps
    (sdist,) = dist.glob("*.tar.gz")
    with tarfile.open(sdist) as t:
        members = t.getnames()
    top = members[0].split("/")[0]
    in_sdist = sorted(
        m[len(f"{top}/conf/") :]
        for m in members
        if m.startswith(f"{top}/conf/") and m.endswith(".yaml")
    )
    assert in_sdist == YAMLS
    assert f"{top}/pyproject.toml" in members


@pytest.mark.slow
def test_wheel_in_a_fresh_venv_runs_from_anywhere(dist, tmp_path):
    """CI proof: wheel -> fresh venv (deps from pip cache or index) -> runs outside the checkout."""
    (wheel,) = dist.glob("*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    subprocess.run(
        [sys.executable, "-m", "pip", "--disable-pip-version-check", "--python", str(py)]
        + ["install", "-q", "--no-compile", str(wheel)],
        check=True,
        capture_output=True,
        timeout=1200,
    )
    work = tmp_path / "project"  # a user's project folder, far from the checkout
    (work / "conf" / "arch").mkdir(parents=True)
    (work / "conf" / "arch" / "my_net.yaml").write_text(
        "name: my_net\nlayers:\n  - {kind: dense, units: 6, activation: tanh}\n"
    )
    flag_dir = tmp_path / "elsewhere"
    (flag_dir / "arch").mkdir(parents=True)
    (flag_dir / "arch" / "mlp_plain.yaml").write_text(
        "name: mlp_plain\nlayers:\n  - {kind: dense, units: 3, activation: relu}\n"
    )
    env = {
        k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")
    }
    env.update(PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}", NUMBA_NUM_THREADS="2")
    env.pop("NEURONS_CONFIG_DIR", None)

    def sh(*cmd: str, **extra: str) -> subprocess.CompletedProcess:
        p = subprocess.run(
            list(cmd),
            cwd=work,
            env={**env, **extra},
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert p.returncode == 0, f"{cmd}: exit {p.returncode}\n{p.stdout}\n{p.stderr}"
        return p

    where = sh(str(py), "-c", "import neurons, neurons.conf; print(neurons.conf.__file__)")
    assert Path(where.stdout.strip()).is_relative_to(venv)  # the wheel's copy, not the checkout
    helptext = sh("neurons", "--help").stdout
    assert "debug: fast, limit, overfit, profile" in helptext and "my_net" in helptext

    sh(str(py), "-m", "neurons", "train.epochs=1")  # the main command, one epoch on iris
    (status,) = work.glob("runs/*/*/status.json")
    assert json.loads(status.read_text())["status"] == "completed"

    sh("neurons", "-m", "arch=my_net,mlp_plain", "train.epochs=1", "train.threads=1")
    (sweep,) = work.glob("runs/multirun/*/*")
    jobs = sorted(p.name for p in sweep.iterdir() if p.is_dir())
    assert [j.split("_", 1)[1] for j in jobs] == ["my_net_iris_s0", "mlp_plain_iris_s0"]
    summary = json.loads((sweep / jobs[0] / "summary.json").read_text())
    assert summary["arch"] == "my_net" and summary["params"] == 4 * 6 + 6 + 6 * 3 + 3

    shown = sh("neurons", "--config-dir", str(flag_dir), "--cfg", "job").stdout
    assert "units: 3" in shown  # --config-dir beats the built-in mlp_plain
    shown = sh("neurons", "--cfg", "job", NEURONS_CONFIG_DIR=str(flag_dir)).stdout
    assert "units: 3" in shown
    done = sh("neurons", "-sc", "query=bash", COMP_LINE="neurons arch=my", COMP_POINT="15")
    assert "arch=my_net" in done.stdout

    sh("neurons-compare", str(sweep), "--out", "report")
    assert (work / "report" / "README.md").is_file() and (work / "report" / "summary.csv").is_file()
    sh(str(py), "-m", "neurons.compare", str(sweep), "--out", "report2")
    assert (work / "report2" / "curves_epoch.png").is_file()
