"""Replay a fixture of the original crate's numbers through our engine in compat mode.

`load_case` reads a fixture (setup, the network description in words, initial weights, data
rows); `replay` builds that network with `neurons.config.build_network`, loads the weights,
switches every quirk on with `neurons.compat.engine.apply` (what `compat=neurons` does) and
trains with `neurons.train.fit`; the result uses the fixture's own field names and layouts.
`differences` compares the two key by key. Parsing is strict: an unknown phrase is an error.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from neurons.compat.engine import apply
from neurons.compat.flags import CompatConfig
from neurons.config import Experiment, build_network
from neurons.data import Dataset
from neurons.graph import Feedback, Network
from neurons.optim import make_optimizer
from neurons.train import EarlyStopping, TrainConfig, evaluate, fit


class FixtureError(ValueError):
    """A fixture cannot be read; the message names the file and the field."""


ACTIVATIONS = {
    "relu": "relu",
    "leakyrelu": "leaky_relu",
    "sigmoid": "sigmoid",
    "tanh": "tanh",
    "softmax": "softmax",
    "linear": "linear",
}
MERGES = {"add": "add", "subtract": "subtract", "multiply": "multiply", "mean": "mean"}
MERGES["overwrite"] = "overwrite"
OBJECTIVES = {
    "crossentropy": "cross_entropy",
    "binarycrossentropy": "bce",
    "mse": "mse",
    "rmse": "rmse",
    "mae": "mae",
    "ae": "ae",
    "kldivergence": "kld",
}

_DENSE = re.compile(r"Dense\((\d+),\s*(\w+),\s*(no bias|bias)\)")
_BLOCK = re.compile(
    r"FeedbackBlock\[(.*?)\]\s*x\s*loops=(\d+),\s*inskips=(\w+),\s*outskips=(\w+),"
    r"\s*accumulation\s+(\w+)"
)
_CONNECT = re.compile(r"connect\((\d+),\s*(L-\d+|\d+)\)")
_SKIP_ACC = re.compile(r"skip accumulation\s+(\w+)")
_LOOP = re.compile(
    r"loopback\(from=(\d+),\s*into=(\d+),\s*iterations=(\d+),\s*scale\(loops\)=([-+.\deE]+),"
    r"\s*inskips=(\w+)\)"
)
_LOOP_ACC = re.compile(r"loop accumulation\s+(\w+)")


@dataclass
class Case:
    """A fixture, parsed: the arch mapping for build_network and everything fit needs."""

    path: Path
    raw: dict[str, Any]
    arch: dict[str, Any]
    objective: str
    optimizer: tuple[str, dict[str, Any]]
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    batch_size: int
    epochs: int
    tolerance: int | None


def _bool(path: str, word: str) -> bool:
    if word.lower() not in ("true", "false"):
        raise FixtureError(f"{path}: expected true or false, found {word!r}")
    return word.lower() == "true"


def _word(table: dict[str, str], path: str, word: str) -> str:
    key = word.lower().replace("_", "")
    if key not in table:
        raise FixtureError(f"{path}: expected one of {sorted(table)}, found {word!r}")
    return table[key]


def _dense(m: re.Match, where: str) -> dict[str, Any]:
    return {
        "kind": "dense",
        "units": int(m.group(1)),
        "activation": _word(ACTIVATIONS, f"{where} activation", m.group(2)),
        "bias": m.group(3) == "bias",
    }


def _split_top(text: str, sep: str) -> list[str]:
    """Split at `sep` outside (), [] brackets."""
    out, depth, start, i = [], 0, 0, 0
    while i < len(text):
        c = text[i]
        if c in "([":
            depth += 1
        elif c in ")]":
            depth -= 1
        elif depth == 0 and text.startswith(sep, i):
            out.append(text[start:i])
            i += len(sep)
            start = i
            continue
        i += 1
    out.append(text[start:])
    return out


def parse_network(text: str, where: str = "network") -> dict[str, Any]:
    """The `network` description -> an arch mapping (layers, skips, loops; output: null)."""
    chain, rest = (_split_top(text, ";") + [""])[:2] if ";" in text else (text, "")
    rest = text[len(chain) + 1 :]
    parts = [p.strip() for p in _split_top(chain, "->")]
    if not parts or not re.match(r"input \d+$", parts[0]):
        raise FixtureError(f"{where}: expected it to start with 'input <n>', found {parts[0]!r}")
    layers: list[dict[str, Any]] = []
    for k, part in enumerate(parts[1:]):
        body = re.sub(r"\s*\[layer \d+[^\]]*\]\s*$", "", part)
        if (m := _BLOCK.fullmatch(body)) is not None:
            inner = [_dense(d, f"{where} layer {k}") for d in _DENSE.finditer(m.group(1))]
            if not inner or _DENSE.sub("", m.group(1)).strip(" ,"):
                raise FixtureError(f"{where}: layer {k}: cannot read the block's layers {body!r}")
            layers.append(
                {
                    "kind": "feedback",
                    "loops": int(m.group(2)),
                    "coupling": "mean",
                    "inskips": _bool(f"{where} layer {k} inskips", m.group(3)),
                    "outskips": _bool(f"{where} layer {k} outskips", m.group(4)),
                    "merge": _word(MERGES, f"{where} layer {k} accumulation", m.group(5)),
                    "layers": inner,
                }
            )
        elif (m := _DENSE.fullmatch(body)) is not None:
            layers.append(_dense(m, f"{where} layer {k}"))
        else:
            raise FixtureError(
                f"{where}: layer {k}: expected Dense(n, Activation, [no ]bias) or "
                f"FeedbackBlock[...] x loops=..., found {body!r}"
            )
    n = len(layers)
    skips, loops = [], []
    for m in _CONNECT.finditer(rest):
        into = m.group(2)
        dst = n - int(into[2:]) if into.startswith("L-") else int(into)
        acc = _SKIP_ACC.search(rest)
        merge = _word(MERGES, f"{where} skip accumulation", acc.group(1)) if acc else "add"
        skips.append({"from": int(m.group(1)), "to": dst, "merge": merge})
    for m in _LOOP.finditer(rest):
        acc = _LOOP_ACC.search(rest)
        loops.append(
            {
                "from": int(m.group(1)),
                "to": int(m.group(2)),
                "iterations": int(m.group(3)),
                "scale": float(m.group(4)),
                "inskip": _bool(f"{where} loopback inskips", m.group(5)),
                "merge": _word(MERGES, f"{where} loop accumulation", acc.group(1))
                if acc
                else "mean",
            }
        )
    if "connect(" in rest and not skips:
        raise FixtureError(f"{where}: cannot read the skip in {rest.strip()!r}")
    if "loopback(" in rest and not loops:
        raise FixtureError(f"{where}: cannot read the loopback in {rest.strip()!r}")
    return {"layers": layers, "skips": skips, "loops": loops, "output": None}


def parse_objective(text: str, where: str = "objective") -> tuple[str, float | None]:
    """'CrossEntropy (...)' -> ('cross_entropy', clamp or None)."""
    name = _word(OBJECTIVES, where, text.split("(")[0].strip())
    if "no gradient clamp" in text:
        return name, None
    m = re.search(r"clamp\s*\(?\s*(-?[\d.eE+]+)\s*,\s*(-?[\d.eE+]+)", text.split("gradient")[-1])
    if m is None:
        return name, None
    lo, hi = float(m.group(1)), float(m.group(2))
    if lo != -hi:
        raise FixtureError(f"{where}: only a symmetric gradient clamp is supported, found {text!r}")
    return name, hi


def parse_optimizer(d: dict[str, Any], where: str = "optimizer") -> tuple[str, dict[str, Any]]:
    """The fixture's optimizer mapping -> (our optimizer name, hyper-parameters)."""
    name = str(d.get("name", "")).lower()
    decay = d.get("decay") or 0.0
    lr = d.get("lr")
    if not isinstance(lr, int | float):
        raise FixtureError(f"{where}.lr: expected a number, found {lr!r}")
    if name in ("adam", "adamw"):
        hp = {
            "lr": lr or 1e-3,
            "betas": (d.get("beta1") or 0.9, d.get("beta2") or 0.999),
            "eps": d.get("epsilon") or 1e-8,
            "weight_decay": decay,
        }
        return name, hp
    if name == "sgd":
        return "sgd", {"lr": lr or 0.1, "weight_decay": decay}
    if name == "sgdm":
        hp = {"lr": lr or 0.1, "momentum": d.get("momentum") or 0.9, "weight_decay": decay}
        return "sgdm", {**hp, "dampening": d.get("dampening") or 0.0}
    if name == "rmsprop":
        hp = {"lr": lr or 0.01, "alpha": d.get("alpha") or 0.99, "eps": d.get("epsilon") or 1e-8}
        hp.update(weight_decay=decay, momentum=d.get("momentum") or 0.0)
        return "rmsprop", {**hp, "centered": bool(d.get("centered", False))}
    raise FixtureError(
        f"{where}.name: expected Adam, AdamW, SGD, SGDM or RMSprop, found {d.get('name')!r}"
    )


def load_case(path: str | Path) -> Case:
    """Read and parse one fixture file (its data rows come from `iris_data.json` beside it)."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise FixtureError(f"{path}: cannot read the fixture: {e}") from None
    for key in ("network", "objective", "optimizer", "batch_size", "epochs", "initial_weights"):
        if key not in raw:
            raise FixtureError(f"{path}: missing field {key!r}")
    data_name = "iris_data.json"
    m = re.match(r"\s*([\w.-]+\.json)", str(raw.get("data", "")))
    if m:
        data_name = m.group(1)
    data_path = path.parent / data_name
    try:
        data = json.loads(data_path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise FixtureError(f"{path}: data file {data_path.name}: {e}") from None
    x = np.asarray(data["x"], dtype=np.float32)
    labels = np.asarray(data["y"], dtype=np.int64)
    y = np.eye(int(labels.max()) + 1, dtype=np.float32)[labels]
    tr = np.asarray(raw.get("train_rows", data.get("shuffle_seed12345_permutation", [])[:120]))
    te = np.asarray(raw["test_rows"])
    objective, clamp = parse_objective(str(raw["objective"]), f"{path.name}: objective")
    if clamp is not None:
        raise FixtureError(f"{path.name}: objective: gradient clamps are not replayed ({clamp})")
    tol = raw.get("early_stopping_tolerance")
    if raw.get("dropout") not in (None, 0, 0.0):
        raise FixtureError(f"{path.name}: dropout: replay has no dropout, found {raw['dropout']!r}")
    return Case(
        path=path,
        raw=raw,
        arch=parse_network(str(raw["network"]), f"{path.name}: network"),
        objective=objective,
        optimizer=parse_optimizer(dict(raw["optimizer"]), f"{path.name}: optimizer"),
        x_train=x[tr],
        y_train=y[tr],
        x_test=x[te],
        y_test=y[te],
        batch_size=int(raw["batch_size"]),
        epochs=int(raw["epochs"]),
        tolerance=None if tol is None else int(tol),
    )


# --------------------------------------------------------------------------- weights
def _weight_layer(net: Network, entry: dict[str, Any], where: str) -> Any:
    k, u = entry.get("layer"), entry.get("block_unrolled_index")
    if not isinstance(k, int) or not 0 <= k < len(net.layers):
        raise FixtureError(f"{where}.layer: expected a layer index < {len(net.layers)}, found {k}")
    layer = net.layers[k]
    if isinstance(layer, Feedback):
        if not isinstance(u, int) or not 0 <= u < layer.loops * len(layer.body):
            raise FixtureError(f"{where}.block_unrolled_index: out of range, found {u!r}")
        c, q = divmod(u, len(layer.body))
        return layer.copies[c][q]
    if u is not None:
        raise FixtureError(f"{where}.block_unrolled_index: layer {k} is no block, found {u!r}")
    return layer


def set_weights(net: Network, entries: list[dict[str, Any]], where: str) -> None:
    """Load fixture weights (W as [out][in], bias or null) into the built network."""
    for n, entry in enumerate(entries):
        w = f"{where}[{n}]"
        layer = _weight_layer(net, entry, w)
        W = np.asarray(entry["W"], dtype=net.dtype).T  # [out][in] -> our (in, out)
        if W.shape != layer.params["w"].shape:
            raise FixtureError(
                f"{w}.W: shape {W.T.shape} [out][in], the layer has {layer.params['w'].T.shape}"
            )
        np.copyto(layer.params["w"], W)
        b = entry.get("bias")
        if b is not None:
            if "b" not in layer.params:
                raise FixtureError(f"{w}.bias: the layer has no bias")
            np.copyto(layer.params["b"], np.asarray(b, dtype=net.dtype))


def get_weights(net: Network, layout: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The network's weights in the fixture's layout (the same entries, values replaced)."""
    out = []
    for n, entry in enumerate(layout):
        layer = _weight_layer(net, entry, f"final_weights[{n}]")
        W = layer.params["w"].T
        b = layer.params.get("b")
        out.append(
            {
                **{k: entry[k] for k in ("layer", "block_unrolled_index", "shape_out_in")},
                "loops": entry.get("loops"),
                "bias": None if b is None else _f32(b),
                "W": _f32(W),
            }
        )
    return out


def _f32(a: Any) -> Any:
    """float32 values as the shortest decimals that read back to the same float32."""
    arr = np.asarray(a, dtype=np.float32)
    if arr.ndim == 0:
        v = float(str(arr[()]))
        return v if math.isfinite(v) else None
    return [_f32(v) for v in arr]


# --------------------------------------------------------------------------- replay
def build(case: Case, flags: CompatConfig | None = None) -> Experiment:
    """The experiment of a fixture: network with its initial weights, crate objects."""
    flags = flags or CompatConfig.all_on()
    rng = np.random.default_rng(0)  # only for the init that the fixture weights overwrite
    net = build_network(
        case.arch,
        (case.x_train.shape[1],),
        case.y_train.shape[1],
        "classification",
        case.objective,
        rng,
        "float32",
    )
    ds = Dataset(
        name=case.path.stem,
        task="classification",
        x_train=case.x_train,
        y_train=case.y_train,
        x_val=case.x_test,
        y_val=case.y_test,
        x_test=case.x_test,
        y_test=case.y_test,
        sample_shape=(case.x_train.shape[1],),
        n_outputs=case.y_train.shape[1],
        classes=None,
        source=str(case.path.name),
    )
    name, hp = case.optimizer
    es = EarlyStopping(patience=case.tolerance) if case.tolerance else None
    train = TrainConfig(epochs=case.epochs, batch_size=case.batch_size, early_stopping=es)
    from neurons.objectives import make_objective

    exp = Experiment(
        dataset=ds,
        network=net,
        objective=make_objective(case.objective),
        objective_name=case.objective,
        optimizer=make_optimizer(name, net.named_parameters(), **hp),
        schedule=None,
        train=train,
        rng=rng,
        classification=True,
        compat=flags,
    )
    exp = apply(exp, flags, lambda params: make_optimizer(name, params, **hp))
    set_weights(exp.network, case.raw["initial_weights"], "initial_weights")
    return exp


def replay(case: Case, flags: CompatConfig | None = None) -> dict[str, Any]:
    """Train the fixture's case; returns a mapping with the fixture's field names."""
    exp = build(case, flags)
    net, obj = exp.network, exp.objective
    kw = {"classification": True, "batch_size": 512}

    def ev(x: np.ndarray, y: np.ndarray, **probe: bool) -> tuple[float, float]:
        return evaluate(net, obj, x, y, **kw, **probe)

    vl, va = ev(case.x_test, case.y_test)
    tl, ta = ev(case.x_train, case.y_train)
    before = {
        "val_loss": _f32(vl),
        "val_acc": _f32(va),
        "train_loss": _f32(tl),
        "train_acc": _f32(ta),
        "test_predictions": _f32(net.predict(case.x_test)),
    }
    rows: list[dict[str, float]] = []
    state = fit(
        net,
        obj,
        exp.optimizer,
        case.x_train,
        case.y_train,
        case.x_test,
        case.y_test,
        exp.train,
        exp.rng,
        classification=True,
        callbacks=[lambda st, row, imp: rows.append(row)],
    )
    tl, ta = ev(case.x_train, case.y_train)
    after = {
        "train_loss_eval": _f32(tl),
        "train_acc_eval": _f32(ta),
        "test_predictions": _f32(net.predict(case.x_test)),
    }
    probes: dict[str, Any] = {}
    if net.has_recurrence():
        loss, acc = ev(case.x_test, case.y_test, recurrent=False)
        probes["no_feedback"] = {"tst_loss": _f32(loss), "tst_acc": _f32(acc)}
    if net.skips:
        loss, acc = ev(case.x_test, case.y_test, skips=False)
        probes["no_skip"] = {"tst_loss": _f32(loss), "tst_acc": _f32(acc)}
    return {
        "case": case.raw.get("case", case.path.stem),
        "compat": exp.compat.record(),
        "before_training": before,
        "epochs_run": state.epoch,
        "train_loss": [_f32(r["train_loss"]) for r in rows],
        "val_loss": [_f32(r["val_loss"]) for r in rows],
        "val_acc": [_f32(r["val_acc"]) for r in rows],
        "after_training": after,
        "probes_after_training": probes,
        "final_weights": get_weights(
            net,
            case.raw["final_weights"]
            if "final_weights" in case.raw
            else case.raw["initial_weights"],
        ),
    }


def _maxdiff(a: Any, b: Any) -> float:
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.shape != y.shape:
        return math.inf
    return float(np.max(np.abs(x - y))) if x.size else 0.0


def differences(result: dict[str, Any], fixture: dict[str, Any]) -> dict[str, float]:
    """Largest absolute difference per compared key (inf on a length or shape mismatch)."""
    out: dict[str, float] = {}
    for key in ("train_loss", "val_loss", "val_acc"):
        out[key] = _maxdiff(result[key], fixture[key])
    b, fb = result["before_training"], fixture["before_training"]
    for key in ("val_loss", "val_acc", "train_loss", "train_acc", "test_predictions"):
        out[f"before_training.{key}"] = _maxdiff(b[key], fb[key])
    a, fa = result["after_training"], fixture["after_training"]
    for key in ("train_loss_eval", "train_acc_eval", "test_predictions"):
        out[f"after_training.{key}"] = _maxdiff(a[key], fa[key])
    fp = {k: v for k, v in fixture.get("probes_after_training", {}).items() if k != "note"}
    for probe, vals in fp.items():
        got = result["probes_after_training"].get(probe)
        for key in ("tst_loss", "tst_acc"):
            out[f"probes_after_training.{probe}.{key}"] = (
                math.inf if got is None else _maxdiff(got[key], vals[key])
            )
    fw = fixture.get("final_weights", [])
    rw = result["final_weights"]
    out["final_weights"] = (
        max((_maxdiff(r["W"], f["W"]) for r, f in zip(rw, fw, strict=True)), default=0.0)
        if len(rw) == len(fw)
        else math.inf
    )
    out["epochs_run"] = float(
        result["epochs_run"] != fixture.get("epochs_run", result["epochs_run"])
    )
    return out


def with_flags(flags: CompatConfig, **off: Any) -> CompatConfig:
    """A copy of `flags` with some switches changed (for ablations in tests)."""
    return replace(flags, **off)
