"""Sweeps at scale through the real CLI: parallel and submitit_local launchers (per-job threads),
failure isolation and exit codes under every launcher, a killed sweep resumed, a seeded Optuna
search, and numba's on-disk cache shared by two cold processes compiling at once."""

import csv
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from neurons.runtime import cores
from neurons.sweep import check_resume_args, direction, job_threads

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "NUMBA_NUM_THREADS": os.environ.get("NUMBA_NUM_THREADS", "2")}
IRIS = ("dataset=iris", "arch=mlp_plain", "train.progress=false")


def cli(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "neurons", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=ENV,
        timeout=timeout,
    )


def _ok(p: subprocess.CompletedProcess) -> None:
    assert p.returncode == 0, f"exit {p.returncode}\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"


def jobs(sweep: Path) -> dict[str, Path]:
    return {d.name: d for d in sorted(sweep.iterdir()) if d.is_dir() and d.name[0].isdigit()}


def status(job: Path) -> str:
    return json.loads((job / "status.json").read_text())["status"]


def metrics(job: Path) -> list[dict[str, str]]:
    with (job / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    return [{k: v for k, v in r.items() if k not in ("seconds", "wall")} for r in rows]


class _HC:
    """The two HydraConfig fields `job_threads` reads."""

    def __init__(self, **launcher):
        self.launcher = launcher


def test_job_threads_never_oversubscribe(monkeypatch):
    monkeypatch.delenv("SLURM_CPUS_PER_TASK", raising=False)
    monkeypatch.setattr("neurons.sweep.cores", lambda: 8)
    joblib = "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"
    local = "hydra_plugins.hydra_submitit_launcher.submitit_launcher.LocalLauncher"
    slurm = "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    basic = "hydra._internal.core_plugins.basic_launcher.BasicLauncher"
    assert job_threads(_HC(_target_=joblib, n_jobs=-1))[0] == 1
    assert job_threads(_HC(_target_=joblib, n_jobs=2))[0] == 4
    assert job_threads(_HC(_target_=joblib, n_jobs=3))[0] == 2
    assert job_threads(_HC(_target_=joblib, n_jobs=-3))[0] == 1  # 6 jobs on 8 cores
    assert job_threads(_HC(_target_=joblib, n_jobs=16))[0] == 1
    assert job_threads(_HC(_target_=local, cpus_per_task=None))[0] == 1
    assert job_threads(_HC(_target_=local, cpus_per_task=2))[0] == 2
    assert job_threads(_HC(_target_=slurm, cpus_per_task=None))[0] == 8
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "3")
    assert job_threads(_HC(_target_=slurm, cpus_per_task=4)) == (3, "SLURM_CPUS_PER_TASK=3")
    assert job_threads(_HC(_target_=basic)) == (None, None)


def test_direction_follows_early_stopping():
    assert direction(False, "val_acc", "max") == "minimize"  # no early stopping: best val_loss
    assert direction(True, "val_acc", "auto") == "maximize"
    assert direction(True, "val_loss", "auto") == "minimize"
    assert direction(True, "train_loss", "max") == "maximize"


def test_sweep_resume_needs_an_existing_sweep_dir(tmp_path):
    assert check_resume_args(["-m", "seed=0,1"]) is None
    assert "found none" in check_resume_args(["-m", "+sweep_resume=true"])
    missing = f"hydra.sweep.dir={tmp_path / 'nope'}"
    assert "existing sweep" in check_resume_args(["+sweep_resume=true", missing])
    assert check_resume_args(["+sweep_resume=true", f"hydra.sweep.dir={tmp_path}"]) is None


@pytest.mark.slow
@pytest.mark.parametrize(
    "launcher,threads",
    [
        (("hydra/launcher=parallel", "hydra.launcher.n_jobs=2"), max(1, cores() // 2)),
        (("hydra/launcher=submitit_local",), 1),  # all 4 start at once: 1 thread each
    ],
    ids=["parallel", "submitit_local"],
)
def test_four_job_sweep_threads_and_one_forced_failure(launcher, threads, tmp_path):
    """4 jobs, the third forced to fail (cnn_plain cannot take Iris' (4,) samples): the other
    three complete with their share of the cores, the command exits 1 naming the failed job."""
    sweep = tmp_path / "sweep"
    p = cli(
        "-m",
        *IRIS,
        *launcher,
        "arch=mlp_plain,mlp_skip,cnn_plain,mlp_feedback",
        "train.epochs=2",
        f"hydra.sweep.dir={sweep}",
    )
    assert p.returncode == 1, p.stderr[-3000:]
    found = jobs(sweep)
    assert [status(j) for j in found.values()] == ["completed", "completed", "failed", "completed"]
    want = min(threads, int(ENV["NUMBA_NUM_THREADS"]))
    for name, job in found.items():
        if name.startswith("2_"):
            continue
        s = json.loads((job / "summary.json").read_text())
        assert s["threads"]["numba"] == want, s["threads"]
        assert s["threads"]["blas"] == 1, s["threads"]  # one pool (numba's) owns the cores
        assert s["threads"]["rule"], s["threads"]
    _failure_named(p, found["2_cnn_plain_iris_s0"], "2_cnn_plain_iris_s0", 4)


def _failure_named(p: subprocess.CompletedProcess, bad: Path, name: str, total: int) -> None:
    assert "conv expects a (C, H, W) input" in (bad / "run.log").read_text()
    assert json.loads((bad / "status.json").read_text())["status"] == "failed"
    assert f"1 of {total} job(s) did not complete" in p.stderr, p.stderr
    assert f"{name}: failed: " in p.stderr
    assert "0_mlp_plain" not in p.stderr.split("did not complete")[1]


@pytest.mark.slow
def test_a_failing_job_is_isolated_and_named_basic_launcher(tmp_path):
    sweep = tmp_path / "sweep"
    p = cli("-m", *IRIS, "arch=mlp_plain,cnn_plain", "train.epochs=2", f"hydra.sweep.dir={sweep}")
    assert p.returncode == 1, p.stderr[-3000:]
    found = jobs(sweep)
    assert [status(j) for j in found.values()] == ["completed", "failed"]
    _failure_named(p, found["1_cnn_plain_iris_s0"], "1_cnn_plain_iris_s0", 2)


@pytest.mark.slow
def test_killed_sweep_resumes_each_job_exactly_once(tmp_path):
    args = [*IRIS, "train.epochs=40", "train.batch_size=8", "train.threads=1", "seed=0,1,2,3"]
    ref, cut = tmp_path / "ref", tmp_path / "cut"
    _ok(cli("-m", *args, f"hydra.sweep.dir={ref}"))

    proc = subprocess.Popen(
        [sys.executable, "-m", "neurons", "-m", *args, f"hydra.sweep.dir={cut}"],
        cwd=ROOT,
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    victim = cut / "1_mlp_plain_iris_s1" / "metrics.csv"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if victim.exists() and len(victim.read_text().splitlines()) > 10:
            os.killpg(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.02)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the sweep ended before it could be killed"
    before = jobs(cut)
    assert status(before["0_mlp_plain_iris_s0"]) == "completed"
    assert status(before["1_mlp_plain_iris_s1"]) == "running"  # killed mid-job
    assert "3_mlp_plain_iris_s3" not in before

    p = cli("-m", *args, f"hydra.sweep.dir={cut}", "+sweep_resume=true")
    _ok(p)
    after, want = jobs(cut), jobs(ref)
    assert sorted(after) == sorted(want)
    for name, job in after.items():
        log = (job / "run.log").read_text()
        assert log.count("] - completed: ") == 1, (name, log)
        assert status(job) == "completed"
        assert metrics(job) == metrics(want[name]), name
        summary = json.loads((job / "summary.json").read_text())
        assert summary["best"] == json.loads((want[name] / "summary.json").read_text())["best"]
    assert "already completed; skipped" in (after["0_mlp_plain_iris_s0"] / "run.log").read_text()
    assert "resuming" in (after["1_mlp_plain_iris_s1"] / "run.log").read_text()
    overrides = (after["3_mlp_plain_iris_s3"] / ".hydra" / "overrides.yaml").read_text()
    assert "seed=3" in overrides and "sweep_resume" not in overrides


@pytest.mark.slow
def test_resume_reruns_failed_jobs_only_when_asked(tmp_path):
    sweep = tmp_path / "sweep"
    args = ["-m", *IRIS, "train.epochs=2", "seed=0,1", f"hydra.sweep.dir={sweep}"]
    _ok(cli(*args))
    failed = jobs(sweep)["1_mlp_plain_iris_s1"]
    st = json.loads((failed / "status.json").read_text())
    (failed / "status.json").write_text(json.dumps({**st, "status": "failed", "error": "boom"}))

    p = cli(*args, "+sweep_resume=true")
    assert p.returncode == 1 and "1_mlp_plain_iris_s1: failed: boom" in p.stderr, p.stderr
    assert status(failed) == "failed"

    _ok(cli(*args, "+sweep_resume=true", "+sweep_rerun_failed=true"))
    assert status(failed) == "completed"
    old = json.loads((failed / ".previous" / "1" / "status.json").read_text())
    assert old["error"] == "boom"
    assert (jobs(sweep)["0_mlp_plain_iris_s0"] / "run.log").read_text().count("completed: ") == 1


@pytest.mark.slow
def test_optuna_search_is_seeded_and_writes_best_params(tmp_path):
    runs = []
    for name in ("a", "b"):
        sweep = tmp_path / name
        p = cli(
            "-m",
            "hparams_search=iris_mlp",
            "hydra.sweeper.n_trials=6",
            "train.epochs=4",
            "train.threads=1",
            "train.progress=false",
            f"hydra.sweep.dir={sweep}",
        )
        _ok(p)
        with (sweep / "trials.csv").open() as f:
            trials = list(csv.DictReader(f))
        best = json.loads((sweep / "best.json").read_text())
        runs.append((trials, best))
        assert len(trials) == 6 and {t["status"] for t in trials} == {"completed"}
        assert best["direction"] == "minimize" and best["monitor"] == "val_loss"
        assert best["value"] == min(float(t["value"]) for t in trials)
        assert set(best["params"]) == {"optimizer.lr", "arch.width"}
        assert best["params"]["arch.width"] in (8, 16, 32, 64)
        assert len({t["optimizer.lr"] for t in trials}) == 6  # the sampler really varied lr
        assert (sweep / "optimization_results.yaml").exists()
    assert runs[0] == runs[1]

    report = tmp_path / "report"
    p = subprocess.run(
        [sys.executable, "-m", "neurons.compare", str(tmp_path / "a"), "--out", str(report)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=ENV,
        timeout=300,
    )
    assert p.returncode == 0, p.stderr
    text = (report / "README.md").read_text()
    assert "6 jobs, 6 usable" in text
    assert "Search: best val_loss" in text


CHILD = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path
    import numpy as np
    from neurons.runtime import configure
    configure(1)  # installs the compile lock, as every run does
    from neurons.kernels import naive, pool
    go = Path(sys.argv[1])
    while not go.exists():
        time.sleep(0.01)
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)
    y, _ = pool.maxpool2d_forward(x, 2, 2)
    ref, _ = naive.maxpool2d_forward_naive(x, 2, 2)
    st = pool._max_fwd_2x2.stats  # the 2x2, stride-2 kernel
    print(json.dumps({"hits": sum(st.cache_hits.values()), "misses": sum(st.cache_misses.values()),
                      "same": bool(np.array_equal(y, ref))}))
    """
)


@pytest.mark.slow
def test_two_cold_jobs_share_the_numba_cache_without_recompiling(tmp_path):
    env = {**ENV, "NUMBA_CACHE_DIR": str(tmp_path / "cache")}
    go = tmp_path / "go"

    def start():
        return subprocess.Popen(
            [sys.executable, "-c", CHILD, str(go)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    procs = [start(), start()]
    time.sleep(4)  # both imported and waiting: they compile at the same moment
    go.touch()
    out = []
    for pr in procs:
        stdout, stderr = pr.communicate(timeout=300)
        assert pr.returncode == 0, stderr
        out.append(json.loads(stdout.strip().splitlines()[-1]))
    assert all(o["same"] for o in out)
    assert sorted(o["misses"] for o in out) == [0, 1], out  # one compiled, one loaded its result
    assert sorted(o["hits"] for o in out) == [0, 1], out
    third = start()
    stdout, stderr = third.communicate(timeout=300)
    assert third.returncode == 0, stderr
    assert json.loads(stdout.strip().splitlines()[-1]) == {"hits": 1, "misses": 0, "same": True}


def test_slurm_preset_is_complete_and_overridable():
    p = cli(
        "hydra/launcher=slurm",
        "hydra.launcher.partition=gpu",
        "hydra.launcher.timeout_min=7",
        "hydra.launcher.cpus_per_task=3",
        "hydra.launcher.mem_gb=5",
        "hydra.launcher.array_parallelism=9",
        "--cfg",
        "hydra",
        "-p",
        "hydra.launcher",
    )
    _ok(p)
    got = yaml.safe_load(p.stdout)
    assert got["_target_"].endswith("SlurmLauncher")
    want = {"partition": "gpu", "timeout_min": 7, "cpus_per_task": 3, "mem_gb": 5}
    assert {k: got[k] for k in want} == want and got["array_parallelism"] == 9


_COUNT_COMPOSES = textwrap.dedent(
    """
    import os
    if os.environ.get("COUNT_COMPOSES_FILE"):  # every process of the sweep, its workers too
        from hydra._internal.config_loader_impl import ConfigLoaderImpl
        orig = ConfigLoaderImpl.load_configuration
        def counted(self, *a, **k):
            with open(os.environ["COUNT_COMPOSES_FILE"], "a") as f:
                f.write(f"{os.getpid()}\\n")
            return orig(self, *a, **k)
        ConfigLoaderImpl.load_configuration = counted
    """
)


@pytest.mark.parametrize(
    "launcher",
    [[], ["hydra/launcher=parallel", "hydra.launcher.n_jobs=2"]],
    ids=["basic", "joblib"],
)
def test_a_sweep_composes_each_job_once(tmp_path, launcher):
    """Hydra validates the batch (one compose per job), then the basic launcher composes each
    job again and the joblib plugin's workers would too; both are served from the first compose
    in the launching process (the joblib workers get the composed config), and each job still
    gets its own config, job number and run."""
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(_COUNT_COMPOSES)
    counts = tmp_path / "composes.txt"
    env = dict(ENV, COUNT_COMPOSES_FILE=str(counts))
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path / "site"), env.get("PYTHONPATH", "")])
    sweep = tmp_path / "sweep"
    p = subprocess.Popen(
        [sys.executable, "-m", "neurons", "-m", *IRIS, "train.epochs=1", "seed=0,1,2"]
        + [*launcher, f"hydra.sweep.dir={sweep}"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    out, err = p.communicate(timeout=600)
    assert p.returncode == 0, err[-3000:]
    pids = counts.read_text().split()
    assert len(pids) == 2 + 3  # Hydra's mode probe + the primary config, then 3 (not 6) jobs
    assert set(pids) == {str(p.pid)}  # none in a worker
    found = {
        d.name: yaml.safe_load((d / ".hydra" / "config.yaml").read_text())
        for d in jobs(sweep).values()
    }
    assert sorted(c["seed"] for c in found.values()) == [0, 1, 2]
    hydra = [
        yaml.safe_load((d / ".hydra" / "hydra.yaml").read_text()) for d in jobs(sweep).values()
    ]
    assert sorted(h["hydra"]["job"]["num"] for h in hydra) == [0, 1, 2]
    assert all(status(d) == "completed" for d in jobs(sweep).values())
    if launcher:  # the plugin's own job ids, and each job's share of the cores
        assert sorted(h["hydra"]["job"]["id"] for h in hydra) == [f"neurons_{i}" for i in range(3)]
        threads = [
            json.loads((d / "summary.json").read_text())["threads"] for d in jobs(sweep).values()
        ]
        assert all(t["numba"] == max(1, cores() // 2) for t in threads)
