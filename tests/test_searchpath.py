"""Config search order: --config-dir / config_dir=, then $NEURONS_CONFIG_DIR, then ./conf, then
the installed `pkg://neurons.conf`; user files add options and override built-ins of the same
name, through the Python API and through the CLI."""

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hydra._internal.utils import create_config_search_path

import neurons
from neurons.config import build_network
from neurons.searchpath import (
    ENV_VAR,
    PROVIDER,
    ConfigDirError,
    builtin_dir,
    install,
    normalize_overrides,
    split_config_dir,
    user_config_dirs,
)

ROOT = Path(__file__).resolve().parents[1]


def arch_file(conf: Path, name: str, width: int) -> Path:
    p = conf / "arch" / f"{name}.yaml"
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(
        f"name: {name}\nwidth: {width}\n"
        'layers:\n  - {kind: dense, units: "${arch.width}", activation: relu}\n'
    )
    return p


@pytest.fixture
def project(tmp_path, monkeypatch):
    """An empty project directory as the current directory, no $NEURONS_CONFIG_DIR."""
    monkeypatch.delenv(ENV_VAR, raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_builtin_configs_come_from_the_installed_package(project):
    assert (builtin_dir() / "config.yaml").is_file()
    assert (builtin_dir() / "arch" / "mlp_plain.yaml").is_file()
    cfg = neurons.compose()
    assert cfg.arch.name == "mlp_plain" and cfg.dataset.name == "iris"
    assert user_config_dirs() == []


def test_local_conf_adds_an_option_and_overrides_a_builtin(project):
    arch_file(project / "conf", "my_net", 7)
    arch_file(project / "conf", "mlp_plain", 5)  # same name as a built-in
    assert neurons.compose(["arch=my_net"]).arch.width == 7
    plain = neurons.compose().arch  # the default arch is now the user's file
    assert plain.width == 5 and len(plain.layers) == 1
    assert neurons.compose(["arch=mlp_skip"]).arch.name == "mlp_skip"  # other built-ins stay


def test_search_order_config_dir_then_env_then_local(project, monkeypatch):
    local, env1, env2, flag = (project / n for n in ("conf", "env1", "env2", "flag"))
    for i, d in enumerate((local, env1, env2, flag)):
        arch_file(d, "mlp_plain", 10 + i)
    monkeypatch.setenv(ENV_VAR, os.pathsep.join([str(env1), str(env2)]))
    assert user_config_dirs(flag) == [flag, env1, env2, local]
    assert neurons.compose(config_dir=flag).arch.width == 13
    assert neurons.compose().arch.width == 11  # env1: leftmost in the variable
    monkeypatch.setenv(ENV_VAR, str(env2))
    assert neurons.compose().arch.width == 12
    monkeypatch.delenv(ENV_VAR)
    assert neurons.compose().arch.width == 10  # ./conf
    (local / "arch" / "mlp_plain.yaml").unlink()
    assert neurons.compose().arch.width == 25  # the built-in


def test_missing_named_dirs_fail_naming_where_they_came_from(project, monkeypatch):
    with pytest.raises(ConfigDirError, match=r"--config-dir: .*'nope'"):
        neurons.compose(config_dir="nope")
    monkeypatch.setenv(ENV_VAR, "missing-dir")
    with pytest.raises(ConfigDirError, match=r"\$NEURONS_CONFIG_DIR: .*'missing-dir'"):
        neurons.compose()


def test_checkout_conf_is_not_listed_twice(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    monkeypatch.chdir(ROOT)  # ./conf here is the built-in tree itself (editable install)
    assert user_config_dirs() == []


def test_plugin_leaves_other_apps_search_paths_alone(project):
    arch_file(project / "conf", "my_net", 7)
    install(None)
    other = create_config_search_path("file:///some/other/app/conf")
    assert PROVIDER not in [e.provider for e in other.get_path()]
    ours = create_config_search_path("pkg://neurons.conf")
    paths = [(e.provider, e.path) for e in ours.get_path()]
    assert paths.index((PROVIDER, f"file://{project / 'conf'}")) < paths.index(
        ("main", "pkg://neurons.conf")
    )


@pytest.mark.parametrize(
    "argv, found, rest",
    [
        (["--config-dir", "d", "arch=x"], "d", ["arch=x"]),
        (["arch=x", "--config-dir=d"], "d", ["arch=x"]),
        (["-cd", "d", "-m", "seed=0,1"], "d", ["-m", "seed=0,1"]),
        (["arch=x", "--cfg", "job"], None, ["arch=x", "--cfg", "job"]),
    ],
)
def test_split_config_dir(argv, found, rest):
    assert split_config_dir(argv) == (found, rest)


def test_normalize_overrides_only_touches_the_debug_group():
    assert normalize_overrides(["+debug=fast", "++debug=limit", "+arch.extra=1", "debug=x"]) == [
        "debug=fast",
        "debug=limit",
        "+arch.extra=1",
        "debug=x",
    ]


def test_readme_arch_example_composes_and_builds(project):
    readme = (ROOT / "README.md").read_text()
    m = re.search(r"```yaml\n# conf/arch/my_net.yaml\n(.*?)```", readme, re.S)
    assert m, "README: the conf/arch/my_net.yaml example is missing"
    (project / "conf" / "arch").mkdir(parents=True)
    (project / "conf" / "arch" / "my_net.yaml").write_text(m.group(1))
    cfg = neurons.compose(["arch=my_net"])
    rng = np.random.default_rng(0)
    net = build_network(cfg.arch, (4,), 3, "classification", "cross_entropy", rng)
    assert len(net.layers) == 3 and len(net.skips) == 1  # two hidden layers + the output layer


@pytest.mark.slow
def test_cli_and_console_scripts_search_user_dirs_first(tmp_path):
    flag = tmp_path / "mine"
    arch_file(flag, "mlp_plain", 9)
    arch_file(tmp_path / "conf", "mlp_plain", 8)
    env = {k: v for k, v in os.environ.items() if k != ENV_VAR}
    run = [sys.executable, "-m", "neurons"]
    p = subprocess.run(
        [*run, "--config-dir", str(flag), "--cfg", "job"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert p.returncode == 0, p.stderr
    assert "width: 9" in p.stdout
    p = subprocess.run(
        [*run, "--cfg", "job"], cwd=tmp_path, capture_output=True, text=True, env=env, timeout=120
    )
    assert p.returncode == 0, p.stderr
    assert "width: 8" in p.stdout  # ./conf when no flag
    p = subprocess.run(
        [*run, "--config-dir", "nope", "--cfg", "job"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert p.returncode == 2 and "--config-dir" in p.stderr and "'nope'" in p.stderr
    bin_dir = Path(sys.executable).parent  # console scripts of this (editable) install
    p = subprocess.run(
        [str(bin_dir / "neurons"), "arch=mlp_plain", "--cfg", "job"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert p.returncode == 0 and "width: 8" in p.stdout, p.stderr
    arch_file(flag, "flag_net", 4)
    line = f"neurons --config-dir {flag} arch=flag_"
    p = subprocess.run(
        [str(bin_dir / "neurons"), "-sc", "query=bash"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={**env, "COMP_LINE": line, "COMP_POINT": str(len(line))},
        timeout=120,
    )
    assert p.returncode == 0 and p.stdout.split() == ["arch=flag_net"], p.stderr
    p = subprocess.run(
        [str(bin_dir / "neurons-compare"), "--help"], cwd=tmp_path, capture_output=True, text=True
    )
    assert p.returncode == 0 and "sweep directories" in p.stdout, p.stderr
