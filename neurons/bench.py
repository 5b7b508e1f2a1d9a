"""Benchmark: seconds per training epoch of our engine vs PyTorch CPU, in one benchmark run.

    python -m neurons.bench                      # all four workloads, all cores
    python -m neurons.bench --workloads a,c --threads 2 --epochs 2

Same architecture, batch size, optimizer (Adam), shuffling and thread count on both sides; each
side of each workload runs in its own fresh child process (numba's, OpenBLAS's and PyTorch's
thread pools would otherwise spin against each other), one after the other, and the parent
prints a table with the ratio ours/PyTorch (lower is better). Needs torch; it is a script,
never a test, and no part of the package depends on torch.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from dataclasses import dataclass

import numpy as np

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


def _conv(f: int) -> dict:
    return {"kind": "conv", "filters": f, "kernel_size": 3, "padding": 1, "activation": "relu"}


WORKLOADS = {
    "a": Workload(
        "a",
        "crate MNIST CNN: 3x conv1 3x3 -> maxpool -> dense10, batch 32",
        "fashion_mnist",
        [
            {**_conv(1), "bias": False},
            {**_conv(1), "bias": False},
            {**_conv(1), "bias": False},
            {"kind": "maxpool", "kernel_size": 2},
        ],
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
}


def _data(name: str, limit: int | None):
    if name == "iris":
        return load_dataset(DatasetConfig(name="iris", normalize="standardize"))
    flat = name.endswith("_flat")
    return load_dataset(
        DatasetConfig(name="fashion_mnist", flatten=flat, limit=limit, download=False)
    )


def run_ours(w: Workload, ds, epochs: int, seed: int = 0) -> float:
    rng = np.random.default_rng(seed)
    arch = {"layers": w.layers, "output": {"kind": "dense", "units": "auto", "activation": "auto"}}
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


def run_torch(w: Workload, ds, epochs: int, threads: int, seed: int = 0) -> float:
    import torch
    from torch import nn

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    shape = ds.sample_shape
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
    mods.append(nn.Linear(math.prod(cur), ds.n_outputs))
    model = nn.Sequential(*mods)
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
    """Run one side of one workload in this (fresh) process; returns seconds per epoch."""
    n_threads = configure(threads)["numba"]
    w = WORKLOADS[key]
    ds = _data(w.dataset, limit)
    epochs = w.epochs if key == "d" else epochs
    if side == "ours":
        run_ours(w, ds, 1 if key != "d" else 2)  # warm-up: numba compilation and caches
        secs = run_ours(w, ds, epochs)
    else:
        run_torch(w, ds, 1 if key != "d" else 2, n_threads)
        secs = run_torch(w, ds, epochs, n_threads)
    return {"seconds": secs, "samples": len(ds.x_train), "threads": n_threads}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--workloads", default="a,b,c,d", help="comma-separated subset of a,b,c,d")
    p.add_argument("--threads", type=int, default=None, help="threads for both (default: all)")
    p.add_argument("--epochs", type=int, default=1, help="epochs timed for a, b, c (mean)")
    p.add_argument("--limit", type=int, default=None, help="training samples (default: all 60k)")
    p.add_argument("--child", nargs=2, metavar=("SIDE", "WORKLOAD"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        side, key = args.child
        print(json.dumps(_child(side, key, args.threads, args.epochs, args.limit)))
        return 0
    rows = []
    for key in [k.strip() for k in args.workloads.split(",")]:
        res = {}
        for side in ("ours", "torch"):
            cmd = [
                sys.executable,
                "-m",
                "neurons.bench",
                "--child",
                side,
                key,
                "--epochs",
                str(args.epochs),
            ]
            cmd += ["--threads", str(args.threads)] if args.threads else []
            cmd += ["--limit", str(args.limit)] if args.limit else []
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            res[side] = json.loads(out.strip().splitlines()[-1])
        ours, theirs = res["ours"]["seconds"], res["torch"]["seconds"]
        rows.append((key, WORKLOADS[key].title, res["ours"]["samples"], ours, theirs))
        print(f"  {key}: ours {ours:.3f} s/epoch, torch {theirs:.3f} s/epoch", flush=True)
    print(f"\nthreads (numba, BLAS and torch): {res['ours']['threads']}")
    print("| workload | samples | ours s/epoch | PyTorch s/epoch | ours/PyTorch |")
    print("|---|---:|---:|---:|---:|")
    for key, title, n, ours, theirs in rows:
        print(f"| ({key}) {title} | {n} | {ours:.3f} | {theirs:.3f} | {ours / theirs:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
