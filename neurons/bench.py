"""Benchmark: seconds per training epoch of our engine vs PyTorch CPU, in one benchmark run.

    python -m neurons.bench                      # all five workloads, all cores
    python -m neurons.bench --workloads a,c --threads 2 --epochs 2
    python -m neurons.bench --numpy-first --rounds 3   # ours in both import orders, medians

Same architecture, batch size, optimizer (Adam), shuffling and thread count on both sides; each
side of each workload runs in its own fresh child process (numba's, OpenBLAS's and PyTorch's
thread pools would otherwise spin against each other), one after the other, and the parent
prints a table with the ratio ours/PyTorch (lower is better). The PyTorch child never imports
this package. `--numpy-first` also times ours in a child that imports numpy before neurons
(what notebooks do), with OPENBLAS_THREAD_TIMEOUT unset, to show the import order costs
nothing. GFLOP/s counts forward + backward multiply-adds analytically (`flops_per_sample`).
After the table, start-up (cold: empty numba and bytecode caches; cached) and the peak memory of
a Fashion-MNIST run, each through the real CLI in a fresh process (`neurons.bench_process`;
`--process no` skips them, `--process only` prints only them).
Needs torch; it is a script, never a test, and no part of the package depends on torch.
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

import numpy as np

from neurons.bench_process import process_tables
from neurons.config import build_network
from neurons.data import DatasetConfig, load_dataset
from neurons.objectives import make_objective
from neurons.optim import Adam
from neurons.runtime import configure
from neurons.train import TrainConfig, fit


@dataclass
class Workload:
    key: str
    title: str
    dataset: str
    layers: list[dict]
    batch: int
    epochs: int
    skips: list[dict] = field(default_factory=list)
    loops: list[dict] = field(default_factory=list)


def _conv(f: int) -> dict:
    return {"kind": "conv", "filters": f, "kernel_size": 3, "padding": 1, "activation": "relu"}


# the original crate's MNIST CNN (the thesis grid's base): three 1-filter 3x3 convs -> 2x2 maxpool
_CRATE_CNN = [{**_conv(1), "bias": False} for _ in range(3)] + [
    {"kind": "maxpool", "kernel_size": 2}
]

WORKLOADS = {
    "a": Workload(
        "a",
        "crate MNIST CNN: 3x conv1 3x3 -> maxpool -> dense10, batch 32",
        "fashion_mnist",
        _CRATE_CNN,
        32,
        1,
    ),
    "b": Workload(
        "b",
        "conv32 -> maxpool -> conv64 -> maxpool -> dense128 -> dense10, batch 64",
        "fashion_mnist",
        [
            _conv(32),
            {"kind": "maxpool", "kernel_size": 2},
            _conv(64),
            {"kind": "maxpool", "kernel_size": 2},
            {"kind": "dense", "units": 128, "activation": "relu"},
        ],
        64,
        1,
    ),
    "c": Workload(
        "c",
        "MLP 784-256-128-10, batch 64",
        "fashion_mnist_flat",
        [
            {"kind": "dense", "units": 256, "activation": "relu"},
            {"kind": "dense", "units": 128, "activation": "relu"},
        ],
        64,
        1,
    ),
    "d": Workload(
        "d",
        "Iris MLP 4-32-3, batch 1, 100 epochs",
        "iris",
        [{"kind": "dense", "units": 32, "activation": "relu"}],
        1,
        100,
    ),
    # conf/arch/cnn_looping_x3.yaml with arch.skip=true: the thesis CNN grid's slowest variant
    "e": Workload(
        "e",
        "thesis CNN COMBINE x3 + skip: (a) looped 3 passes, skip 1 -> 3, batch 32",
        "fashion_mnist",
        _CRATE_CNN,
        32,
        1,
        skips=[{"from": 1, "to": 3, "merge": "add"}],
        loops=[{"from": 2, "to": 0, "iterations": 2, "merge": "mean"}],
    ),
}


def flops_per_sample(w: Workload, sample_shape: tuple[int, ...], n_outputs: int) -> int | None:
    """Forward + backward FLOPs of one sample (2 per multiply-add), None for looped networks.

    Counted analytically from the layer shapes: a conv is 2*F*C*kh*kw*OH*OW forward, a dense
    layer 2*in*out; backward is twice forward (input and weight gradients), except that the
    first layer's input gradient is not needed (PyTorch skips it). Pooling, activations, the
    loss and the optimizer move memory and are not counted.
    """
    if w.loops or w.skips:
        return None
    cur, fwd = tuple(sample_shape), []
    for spec in [*w.layers, {"kind": "dense", "units": n_outputs}]:
        if spec["kind"] == "conv":
            k, p, f = spec["kernel_size"], spec.get("padding", 0), spec["filters"]
            h, wd = cur[1] + 2 * p - k + 1, cur[2] + 2 * p - k + 1
            fwd.append(2 * f * cur[0] * k * k * h * wd)
            cur = (f, h, wd)
        elif spec["kind"] == "maxpool":
            k = spec["kernel_size"]
            cur = (cur[0], cur[1] // k, cur[2] // k)
        else:
            fwd.append(2 * math.prod(cur) * spec["units"])
            cur = (spec["units"],)
    return 3 * sum(fwd) - fwd[0]


def _data(name: str, limit: int | None):
    if name == "iris":
        return load_dataset(DatasetConfig(name="iris", normalize="standardize"))
    flat = name.endswith("_flat")
    return load_dataset(
        DatasetConfig(name="fashion_mnist", flatten=flat, limit=limit, download=False)
    )


def run_ours(w: Workload, ds, epochs: int, seed: int = 0) -> float:
    rng = np.random.default_rng(seed)
    arch = {
        "layers": w.layers,
        "skips": w.skips,
        "loops": w.loops,
        "output": {"kind": "dense", "units": "auto", "activation": "auto"},
    }
    net = build_network(arch, ds.sample_shape, ds.n_outputs, "classification", "cross_entropy", rng)
    opt = Adam(net.named_parameters(), lr=1e-3)
    cfg = TrainConfig(epochs=epochs, batch_size=w.batch)
    secs: list[float] = []
    fit(
        net,
        make_objective("cross_entropy"),
        opt,
        ds.x_train,
        ds.y_train,
        None,
        None,
        cfg,
        rng,
        callbacks=[lambda s, row, imp: secs.append(row["seconds"])],
    )
    return float(np.mean(secs))


def _torch_model(w: Workload, shape: tuple[int, ...], n_outputs: int):
    """The workload as a torch module: sequential, or (e) unrolled with tied conv weights."""
    import torch
    from torch import nn

    if w.loops:  # (e): conf/arch/cnn_looping_x3 + skip, as tests/test_torch_parity unrolls it
        (loop,) = w.loops
        (skip,) = w.skips
        assert (loop["from"], loop["to"], loop["merge"]) == (2, 0, "mean")
        assert (skip["from"], skip["to"], skip["merge"]) == (1, 3, "add")
        passes = loop["iterations"] + 1

        class Looped(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.convs = nn.ModuleList(
                    [nn.Conv2d(1, 1, 3, padding=1, bias=False) for _ in range(3)]
                )
                self.out = nn.Linear(math.prod(shape) // 4, n_outputs)

            def forward(self, x):
                h, a0s, a2s = x, [], []
                for _ in range(passes):  # the same three convs each pass
                    a0 = torch.relu(self.convs[0](h))
                    h = torch.relu(self.convs[2](torch.relu(self.convs[1](a0))))
                    a0s.append(a0)
                    a2s.append(h)
                # loop output: mean over passes; skip: layer 1's input (mean over passes)
                v = torch.stack(a2s).mean(0) + torch.stack(a0s).mean(0)
                return self.out(torch.flatten(nn.functional.max_pool2d(v, 2), 1))

        return Looped()
    mods: list[nn.Module] = []
    cur = shape
    for spec in w.layers:
        if spec["kind"] == "conv":
            mods += [
                nn.Conv2d(cur[0], spec["filters"], 3, padding=1, bias=spec.get("bias", True)),
                nn.ReLU(),
            ]
            cur = (spec["filters"], cur[1], cur[2])
        elif spec["kind"] == "maxpool":
            mods.append(nn.MaxPool2d(2))
            cur = (cur[0], cur[1] // 2, cur[2] // 2)
        else:
            if len(cur) > 1:
                mods.append(nn.Flatten())
            mods += [nn.Linear(math.prod(cur), spec["units"]), nn.ReLU()]
            cur = (spec["units"],)
    if len(cur) > 1:
        mods.append(nn.Flatten())
    mods.append(nn.Linear(math.prod(cur), n_outputs))
    return nn.Sequential(*mods)


def run_torch(w: Workload, ds, epochs: int, threads: int, seed: int = 0) -> float:
    import torch
    from torch import nn

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    model = _torch_model(w, ds.sample_shape, ds.n_outputs)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    x = torch.from_numpy(np.ascontiguousarray(ds.x_train))
    y = torch.from_numpy(ds.y_train.argmax(axis=1))
    n = len(x)
    gen = torch.Generator().manual_seed(seed)
    secs = []
    for _ in range(epochs):
        t0 = time.perf_counter()
        order = torch.randperm(n, generator=gen)
        for s in range(0, n, w.batch):
            idx = order[s : s + w.batch]
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(x[idx]), y[idx])
            loss.backward()
            opt.step()
        secs.append(time.perf_counter() - t0)
    return float(np.mean(secs))


def _child(side: str, key: str, threads: int | None, epochs: int, limit: int | None) -> dict:
    """Run our side of one workload in this (fresh) process; returns seconds per epoch."""
    n_threads = configure(threads)["numba"]
    w = WORKLOADS[key]
    ds = _data(w.dataset, limit)
    epochs = w.epochs if key == "d" else epochs
    run_ours(w, ds, 1 if key != "d" else 2)  # warm-up: numba compilation and caches
    secs = run_ours(w, ds, epochs)
    fl = flops_per_sample(w, ds.sample_shape, ds.n_outputs)
    return {
        "seconds": secs,
        "samples": len(ds.x_train),
        "threads": n_threads,
        "flops_per_sample": fl,
    }


def _torch_child_code() -> str:
    """The PyTorch child: `_torch_model` and `run_torch` with a driver reading the workload as
    JSON and the data from .npy files, so that process never imports this package."""
    driver = """
import json, sys, types
spec = json.loads(sys.argv[1])
w = types.SimpleNamespace(**spec["workload"])
ds = types.SimpleNamespace(
    x_train=np.load(spec["x"]), y_train=np.load(spec["y"]),
    sample_shape=tuple(spec["sample_shape"]), n_outputs=spec["n_outputs"],
)
threads = spec["threads"] or len(os.sched_getaffinity(0))
run_torch(w, ds, 1 if w.key != "d" else 2, threads)  # warm-up
secs = run_torch(w, ds, w.epochs if w.key == "d" else spec["epochs"], threads)
print(json.dumps({"seconds": secs, "samples": len(ds.x_train), "threads": threads}))
"""
    head = "from __future__ import annotations\nimport math, os, time\nimport numpy as np\n"
    return head + inspect.getsource(_torch_model) + inspect.getsource(run_torch) + driver


# A child that imports numpy before neurons (so neurons/__init__ cannot set OpenBLAS's
# variables first), then runs this module's main: the order every notebook and script uses.
_NUMPY_FIRST = "import numpy, sys; from neurons.bench import main; sys.exit(main(sys.argv[1:]))"


def _run_child(
    side: str, key: str, args: argparse.Namespace, numpy_first: bool, data: dict
) -> dict:
    # the parent's `import neurons` set OPENBLAS_THREAD_TIMEOUT; a child must not inherit it,
    # or the numpy-first order would be measured with the fix that only neurons-first gets
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_THREAD_TIMEOUT"}
    if side == "torch":
        w = WORKLOADS[key]
        spec = {"workload": vars(w), "epochs": args.epochs, "threads": args.threads, **data}
        cmd = ["-c", _torch_child_code(), json.dumps(spec)]
    else:
        cmd = ["-c", _NUMPY_FIRST] if numpy_first else ["-m", "neurons.bench"]
        cmd += ["--child", side, key, "--epochs", str(args.epochs)]
        cmd += ["--threads", str(args.threads)] if args.threads else []
        cmd += ["--limit", str(args.limit)] if args.limit else []
    p = subprocess.run([sys.executable, *cmd], capture_output=True, text=True, env=env)
    if p.returncode != 0:
        raise SystemExit(f"bench: the {side} child for workload {key} failed:\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def _torch_data(key: str, limit: int | None, tmp: str) -> dict:
    """The workload's training split as .npy files for the PyTorch child."""
    ds = _data(WORKLOADS[key].dataset, limit)
    x, y = os.path.join(tmp, f"{key}_x.npy"), os.path.join(tmp, f"{key}_y.npy")
    np.save(x, np.ascontiguousarray(ds.x_train))
    np.save(y, ds.y_train)
    return {"x": x, "y": y, "sample_shape": list(ds.sample_shape), "n_outputs": ds.n_outputs}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--workloads", default="a,b,c,d,e", help="comma-separated subset of a,b,c,d,e")
    p.add_argument("--threads", type=int, default=None, help="threads for both (default: all)")
    p.add_argument("--epochs", type=int, default=1, help="epochs timed for a, b, c, e (mean)")
    p.add_argument("--limit", type=int, default=None, help="training samples (default: all 60k)")
    p.add_argument("--rounds", type=int, default=1, help="interleaved rounds (medians printed)")
    p.add_argument(
        "--numpy-first", action="store_true", help="also time ours with numpy imported first"
    )
    p.add_argument(
        "--process",
        choices=("yes", "no", "only"),
        default="yes",
        help="also (or only) time start-up (cold and cached) and peak memory through the CLI",
    )
    p.add_argument("--child", nargs=2, metavar=("SIDE", "WORKLOAD"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        side, key = args.child
        print(json.dumps(_child(side, key, args.threads, args.epochs, args.limit)))
        return 0
    if args.process == "only":
        print(process_tables(max(args.rounds, 1)))
        return 0
    keys = [k.strip() for k in args.workloads.split(",")]
    bad = [k for k in keys if k not in WORKLOADS]
    if bad:
        p.error(f"--workloads: unknown workload(s) {bad}; expected a subset of {sorted(WORKLOADS)}")
    sides = ["ours", "torch"] + (["ours_numpy_first"] if args.numpy_first else [])
    times: dict[str, dict[str, list[float]]] = {k: {s: [] for s in sides} for k in keys}
    info: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="neurons-bench-") as tmp:
        data = {k: _torch_data(k, args.limit, tmp) for k in keys}
        for r in range(max(args.rounds, 1)):
            for key in keys:
                for side in sides:
                    nf = side.endswith("numpy_first")
                    res = _run_child(side.split("_")[0], key, args, nf, data[key])
                    times[key][side].append(res["seconds"])
                    if side == "ours":
                        info[key] = res
                got = ", ".join(f"{s} {times[key][s][-1]:.4g}" for s in sides)
                print(f"  round {r + 1} ({key}): {got} s/epoch", flush=True)
    med = {k: {s: statistics.median(v) for s, v in times[k].items()} for k in keys}
    print(
        f"\nthreads (numba and torch; BLAS on one, or numba's for (c) and (d)): "
        f"{info[keys[-1]]['threads']}"
    )
    print(f"rounds: {max(args.rounds, 1)} (medians); load average before the run: {_load()}")
    head = "| workload | samples | ours s/epoch | PyTorch s/epoch | ours/PyTorch | ours GFLOP/s |"
    rule = "|---|---:|---:|---:|---:|---:|"
    if args.numpy_first:
        head += " ours, numpy first | numpy-first/ours |"
        rule += "---:|---:|"
    print(head)
    print(rule)
    for key in keys:
        w, m = WORKLOADS[key], med[key]
        ds_n = info[key]["samples"]
        fl = info[key].get("flops_per_sample")
        gf = (
            "-"
            if not fl
            else f"{fl * ds_n * (w.epochs if key == 'd' else 1) / m['ours'] / 1e9:.1f}"
        )
        row = (
            f"| ({key}) {w.title} | {ds_n} | {m['ours']:.4g} | {m['torch']:.4g} | "
            f"{m['ours'] / m['torch']:.2f} | {gf} |"
        )
        if args.numpy_first:
            nf = m["ours_numpy_first"]
            row += f" {nf:.4g} | {nf / m['ours']:.2f} |"
        print(row)
    if args.process == "yes":
        print()
        print(process_tables(max(args.rounds, 1)))
    return 0


def _load() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "unknown"


if __name__ == "__main__":
    raise SystemExit(main())
