"""Config -> objects: the only module that maps YAML names (`kind: conv`, `name: adam`) to classes.

`build_experiment(cfg)` checks values (every error names its config path, what was expected
and what was found), loads the dataset and returns plain objects for `neurons.train.fit`.
It also registers the OmegaConf resolvers the YAML files use.
"""

from __future__ import annotations

import inspect
import logging
import math
import secrets
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from omegaconf import DictConfig, ListConfig, OmegaConf

from neurons.data import Dataset, DatasetConfig, load_dataset
from neurons.graph import Feedback, Loop, Network, Skip, lsuv_init
from neurons.layers import (
    Activation,
    Affine,
    AvgPool2d,
    BatchNorm,
    BuildError,
    Conv2d,
    Deconv2d,
    Dense,
    Dropout,
    Flatten,
    Layer,
    MaxPool2d,
    NormConv2d,
    NormDense,
    Reshape,
)
from neurons.objectives import OBJECTIVES, make_objective
from neurons.optim import (
    OPTIMIZERS,
    SCHEDULES,
    HParamError,
    Optimizer,
    Schedule,
    optimizer_class,
    schedule_class,
)
from neurons.train import EarlyStopping, TrainConfig

log = logging.getLogger(__name__)


class ConfigError(ValueError):
    """A config value is wrong; the message names the key, what is allowed and what was found."""


LAYERS: dict[str, type] = {
    "dense": Dense,
    "conv": Conv2d,
    "deconv": Deconv2d,
    "maxpool": MaxPool2d,
    "avgpool": AvgPool2d,
    "flatten": Flatten,
    "reshape": Reshape,
    "dropout": Dropout,
    "batchnorm": BatchNorm,
    "activation": Activation,
    "normdense": NormDense,
    "normconv": NormConv2d,
    "feedback": Feedback,
}


# ----------------------------------------------------------------------------- resolvers
def _run_dir(resume: str | None = None) -> str:
    if resume:
        return str(resume)
    stamp = time.strftime("%Y-%m-%d/%H-%M-%S")
    return f"runs/{stamp}-{secrets.token_hex(3)}"  # unique even within one second


def _output_subdir(resume: str | None = None, sweep_resume: bool = False) -> str | None:
    """`.hydra`, or None (Hydra writes nothing) when resuming a run or a sweep (neurons.sweep)."""
    return None if resume or sweep_resume else ".hydra"


def register_resolvers() -> None:
    """Resolvers used in conf/: `${sub:a,b}`, `${uid:}`, `${neurons_run_dir:${resume}}`, ..."""
    reg = OmegaConf.register_new_resolver
    if not OmegaConf.has_resolver("sub"):
        reg("sub", lambda a, b: a - b)
    if not OmegaConf.has_resolver("uid"):
        reg("uid", lambda: secrets.token_hex(3), use_cache=True)
    if not OmegaConf.has_resolver("neurons_run_dir"):
        reg("neurons_run_dir", _run_dir, use_cache=True)
    if not OmegaConf.has_resolver("neurons_output_subdir"):
        reg("neurons_output_subdir", _output_subdir)


register_resolvers()


# ----------------------------------------------------------------------------- validation
def _num(path: str, value: Any, *, lo: float | None = None, lo_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(f"{path}: expected a finite number, found {value!r}")
    if lo is not None and (value <= lo if lo_open else value < lo):
        rel = ">" if lo_open else ">="
        raise ConfigError(f"{path}: expected a number {rel} {lo}, found {value!r}")
    return float(value)


def _int(path: str, value: Any, lo: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise ConfigError(f"{path}: expected an integer >= {lo}, found {value!r}")
    return int(value)


def _choice(path: str, value: Any, allowed: tuple[str, ...] | list[str]) -> str:
    if value not in allowed:
        raise ConfigError(f"{path}: expected one of {', '.join(allowed)}, found {value!r}")
    return value


def validate(cfg: DictConfig) -> None:
    """Check value ranges that types cannot express; raise ConfigError naming the key."""
    check_optimizer(cfg.optimizer)
    _choice("objective.name", cfg.objective.name, ("auto", *OBJECTIVES))
    t = cfg.train
    _int("train.epochs", t.epochs, 1)
    _int("train.batch_size", t.batch_size, 1)
    _int("train.eval_every", t.eval_every, 1)
    _int("train.eval_batch_size", t.eval_batch_size, 1)
    _int("train.checkpoint_every", t.checkpoint_every, 0)
    _num("train.checkpoint_min_seconds", t.checkpoint_min_seconds, lo=0.0)
    if t.threads is not None:
        _int("train.threads", t.threads, 1)
    if t.clip_value is not None:
        _num("train.clip_value", t.clip_value, lo=0.0, lo_open=True)
    if t.clip_norm is not None:
        _num("train.clip_norm", t.clip_norm, lo=0.0, lo_open=True)
    _choice("train.dtype", t.dtype, ("float32", "float64"))
    es = t.early_stopping
    _int("train.early_stopping.patience", es.patience, 1)
    _num("train.early_stopping.min_delta", es.min_delta, lo=0.0)
    _choice(
        "train.early_stopping.monitor",
        es.monitor,
        ("val_loss", "val_acc", "train_loss", "train_acc"),
    )
    _choice("train.early_stopping.mode", es.mode, ("auto", "min", "max"))
    build_schedule(t, float(cfg.optimizer.lr))
    _int("seed", cfg.seed, 0)
    if not isinstance(cfg.arch, DictConfig | dict):
        raise ConfigError(f"arch: expected a mapping (an arch/ config), found {cfg.arch!r}")


# ----------------------------------------------------------------------------- arch
def _plain(node: Any) -> Any:
    if isinstance(node, DictConfig | ListConfig):
        return OmegaConf.to_container(node, resolve=True)
    return node


def layer_parameters(cls: type) -> dict[str, inspect.Parameter]:
    """The config keys of a layer class: its `__init__`'s named parameters, followed through
    `**kwargs` into each parent's `__init__` (a subclass lists only what it adds)."""
    out: dict[str, inspect.Parameter] = {}
    for klass in cls.__mro__:
        if klass is object or "__init__" not in vars(klass):
            continue
        forwards = False
        for name, p in list(inspect.signature(klass.__init__).parameters.items())[1:]:
            if p.kind is inspect.Parameter.VAR_KEYWORD:
                forwards = True
            elif p.kind is not inspect.Parameter.VAR_POSITIONAL:
                out.setdefault(name, p)
        if not forwards:
            break
    return out


def build_layer(spec: Any, path: str) -> Layer | Feedback:
    """One layer (or feedback block) from its mapping, e.g. {kind: conv, filters: 8}."""
    spec = _plain(spec)
    if not isinstance(spec, dict):
        raise BuildError(f"{path}: expected a mapping with a `kind`, found {spec!r}")
    spec = dict(spec)
    kind = spec.pop("kind", None)
    if kind not in LAYERS:
        raise BuildError(f"{path}.kind: expected one of {', '.join(LAYERS)}, found {kind!r}")
    cls = LAYERS[kind]
    if kind == "feedback":
        inner = spec.pop("layers", None)
        if not isinstance(inner, list) or not inner:
            raise BuildError(f"{path}.layers: a feedback block needs a non-empty list of layers")
        body = [build_layer(s, f"{path}.layers[{q}]") for q, s in enumerate(inner)]
        spec["layers"] = body
    params = layer_parameters(cls)
    unknown = sorted(set(spec) - set(params))
    if unknown:
        raise BuildError(
            f"{path}: unknown key(s) {unknown} for kind {kind}; allowed: {', '.join(params)}"
        )
    required = [k for k, p in params.items() if p.default is inspect.Parameter.empty]
    missing = [k for k in required if spec.get(k) is None]
    if missing:
        raise BuildError(f"{path}: kind {kind} needs {', '.join(missing)}")
    try:
        layer = cls(**spec)
    except BuildError as e:
        raise BuildError(f"{path}.{e}") from None
    except (TypeError, ValueError) as e:
        raise BuildError(f"{path}: {e}") from None
    layer.path = path
    return layer


def _index(path: str, value: Any, n: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise BuildError(f"{path}: expected a layer index (int), found {value!r}")
    if not -n <= value < n:
        raise BuildError(f"{path}: expected a layer index in [-{n}, {n - 1}], found {value}")
    return value % n


def _structure(arch: dict, key: str, n: int) -> list[Skip] | list[Loop]:
    items = arch.get(key) or []
    if not isinstance(items, list):
        raise BuildError(f"arch.{key}: expected a list, found {items!r}")
    out: list = []
    for k, spec in enumerate(items):
        path = f"arch.{key}[{k}]"
        if not isinstance(spec, dict):
            raise BuildError(f"{path}: expected a mapping, found {spec!r}")
        spec = dict(spec)
        if not spec.pop("enabled", True):
            continue
        if key == "skips":
            allowed = {"from", "to", "merge"}
        else:
            allowed = {"from", "to", "iterations", "merge", "inskip", "scale"}
        unknown = sorted(set(spec) - allowed)
        if unknown:
            raise BuildError(
                f"{path}: unknown key(s) {unknown}; allowed: {sorted(allowed | {'enabled'})}"
            )
        for req in ("from", "to"):
            if req not in spec:
                raise BuildError(f"{path}: needs `{req}` (a layer index)")
        src = _index(f"{path}.from", spec["from"], n)
        dst = _index(f"{path}.to", spec["to"], n)
        if key == "skips":
            out.append(Skip(src=src, dst=dst, merge=spec.get("merge", "add"), path=path))
        else:
            it = spec.get("iterations", 1)
            if isinstance(it, bool) or not isinstance(it, int):
                raise BuildError(f"{path}.iterations: expected an int >= 0, found {it!r}")
            scale = spec.get("scale", 1.0)
            if isinstance(scale, bool) or not isinstance(scale, int | float):
                raise BuildError(f"{path}.scale: expected a number, found {scale!r}")
            out.append(
                Loop(
                    src=src,
                    dst=dst,
                    iterations=it,
                    merge=spec.get("merge", "mean"),
                    inskip=bool(spec.get("inskip", False)),
                    scale=float(scale),
                    path=path,
                )
            )
    return out


def output_activation(task: str, objective: str) -> str:
    if task == "classification":
        return "sigmoid" if objective == "bce" else "softmax"
    return "linear"


def build_network(
    arch: Any,
    input_shape: tuple[int, ...],
    n_outputs: int,
    task: str,
    objective: str,
    rng: np.random.Generator,
    dtype: str | np.dtype = "float32",
) -> Network:
    """Build and shape-check the network of an `arch` mapping for a dataset.

    Args:
        arch: `layers` (list of layer mappings), optional `skips`, `loops` and `output` (the
            output layer; `units: auto` = n_outputs, `activation: auto` = softmax/sigmoid for
            classification, linear for regression; `output: null` = the last layer is the output).
        objective: the resolved objective name; softmax + cross_entropy and sigmoid + bce are
            fused (the network keeps that activation apart as its `head`).
    """
    arch = _plain(arch)
    specs = arch.get("layers")
    if not isinstance(specs, list) or not specs:
        raise BuildError("arch.layers: expected a non-empty list of layer mappings")
    layers = [build_layer(s, f"arch.layers[{k}]") for k, s in enumerate(specs)]
    out_spec = arch.get("output", {"kind": "dense"})
    if out_spec is not None:
        out_spec = dict(out_spec)
        out_spec.setdefault("kind", "dense")
        if out_spec.get("units", "auto") == "auto" and out_spec["kind"] in ("dense", "normdense"):
            out_spec["units"] = n_outputs
        if out_spec.get("activation", "auto") == "auto":
            out_spec["activation"] = output_activation(task, objective)
        layers.append(build_layer(out_spec, "arch.output"))
    n = len(layers)
    skips = _structure(arch, "skips", n)
    loops = _structure(arch, "loops", n)
    head = None
    last = layers[-1]
    obj_cls = OBJECTIVES[objective]
    fused = getattr(obj_cls, "fused_activation", None)
    in_loop = any(lp.dst <= n - 1 <= lp.src for lp in loops)
    if fused and getattr(last, "activation", None) == fused and not in_loop:
        if isinstance(last, Affine) and getattr(last, "scale", None) is None:
            last.activation, head = "linear", fused  # train on logits; predict applies head
    net = Network(layers, skips=skips, loops=loops, head=head)
    net.build(tuple(input_shape), rng, np.dtype(dtype))
    if math.prod(net.output_shape) != n_outputs or len(net.output_shape) != 1:
        raise BuildError(
            f"arch.output: the network's output shape {net.output_shape} does not match the "
            f"dataset's {n_outputs} output(s); let arch.output.units be auto"
        )
    return net


# ----------------------------------------------------------------------------- experiment
@dataclass
class Experiment:
    """Everything a run needs, as plain objects."""

    dataset: Dataset
    network: Network
    objective: Any
    objective_name: str
    optimizer: Any
    schedule: Any
    train: TrainConfig
    rng: np.random.Generator
    classification: bool
    compat: Any = None  # neurons.compat.CompatConfig (which of the crate's quirks are on)


def resolve_objective(name: str, task: str) -> str:
    if name == "auto":
        return "cross_entropy" if task == "classification" else "mse"
    return name


def _hparam_error(path: str, e: HParamError) -> ConfigError:
    return ConfigError(f"{path}.{e.key}: expected {e.expected}, found {e.found}")


def _optimizer_spec(ocfg: Any) -> tuple[type[Optimizer], dict[str, Any]]:
    """The optimizer node (`optimizer`) as its class and its hyper-parameters."""
    o = _plain(ocfg)
    if not isinstance(o, dict):
        raise ConfigError(f"optimizer: expected a mapping (an optimizer/ config), found {o!r}")
    hp = dict(o)
    cls = optimizer_class(_choice("optimizer.name", hp.pop("name", None), tuple(OPTIMIZERS)))
    return cls, hp


def check_optimizer(ocfg: Any) -> dict[str, Any]:
    """The `optimizer` node's hyper-parameters checked by its class's spec (no parameters built)."""
    cls, hp = _optimizer_spec(ocfg)
    try:
        return cls.check(hp)
    except HParamError as e:
        raise _hparam_error("optimizer", e) from None


def build_optimizer(ocfg: Any, params: dict[str, np.ndarray]) -> Optimizer:
    """The optimizer of the `optimizer` node over `params`."""
    cls, hp = _optimizer_spec(ocfg)
    try:
        return cls(params, **hp)
    except HParamError as e:
        raise _hparam_error("optimizer", e) from None


def build_schedule(tcfg: Any, base_lr: float) -> Schedule:
    """The schedule of `train.schedule` (only the keys its class declares are passed on)."""
    s = _plain(tcfg.schedule)
    cls = schedule_class(_choice("train.schedule.name", s.get("name"), tuple(SCHEDULES)))
    hp = {k: v for k, v in s.items() if k in cls.hparams}
    try:
        return cls(base_lr, epochs=int(tcfg.epochs), **hp)
    except HParamError as e:
        raise _hparam_error("train.schedule", e) from None


def build_train_config(tcfg: Any) -> TrainConfig:
    t = _plain(tcfg)
    es = t["early_stopping"]
    return TrainConfig(
        epochs=t["epochs"],
        batch_size=t["batch_size"],
        shuffle=t["shuffle"],
        eval_every=t["eval_every"],
        eval_batch_size=t["eval_batch_size"],
        clip_value=t["clip_value"],
        clip_norm=t["clip_norm"],
        early_stopping=EarlyStopping(
            patience=es["patience"],
            min_delta=es["min_delta"],
            monitor=es["monitor"],
            mode=es["mode"],
            restore_best=es["restore_best"],
        )
        if es["enabled"]
        else None,
    )


def dataset_config(cfg: DictConfig) -> DatasetConfig:
    return OmegaConf.to_object(cfg.dataset)  # type: ignore[return-value]


def build_experiment(cfg: DictConfig, dataset: Dataset | None = None) -> Experiment:
    """Validate `cfg`, load the dataset (unless given) and build every object of a run."""
    from neurons.preflight import (
        check_arch_values,
        check_memory,
        dataset_settings,
        known_shape,
        preflight,
    )

    preflight(cfg, dataset)  # values, types, memory and known shapes, before data is read
    if dataset is None:
        dataset = load_dataset(dataset_config(cfg))
        if known_shape(dataset_settings(cfg)) is None:
            check_memory(cfg, check_arch_values(cfg), dataset.sample_shape)
    log.info("dataset %s: %s", dataset.name, dataset.source)
    rng = np.random.default_rng(int(cfg.seed))
    objective_name = resolve_objective(cfg.objective.name, dataset.task)
    if dataset.task == "regression" and objective_name in ("cross_entropy", "kld"):
        raise ConfigError(
            f"objective.name: {objective_name} needs a classification dataset, "
            f"{dataset.name} is a regression task"
        )
    net = build_network(
        cfg.arch,
        dataset.sample_shape,
        dataset.n_outputs,
        dataset.task,
        objective_name,
        rng,
        cfg.train.dtype,
    )
    if any(getattr(ly, "init", None) == "lsuv" for _, ly in net.unique_layers()):
        n = min(int(cfg.train.lsuv_batch), len(dataset.x_train))
        idx = rng.choice(len(dataset.x_train), size=n, replace=False)
        lsuv_init(net, dataset.x_train[idx])
    log.info("network (%s parameters)\n%s", f"{net.n_params():,}", net.summary())
    optimizer = build_optimizer(cfg.optimizer, net.named_parameters())
    schedule = build_schedule(cfg.train, float(cfg.optimizer.lr))
    exp = Experiment(
        dataset=dataset,
        network=net,
        objective=make_objective(objective_name),
        objective_name=objective_name,
        optimizer=optimizer,
        schedule=schedule,
        train=build_train_config(cfg.train),
        rng=rng,
        classification=dataset.task == "classification",
    )
    return apply_compat(exp, cfg)


def apply_compat(exp: Experiment, cfg: DictConfig) -> Experiment:
    """The `compat` group: switch on the original crate's quirks (neurons.compat)."""
    from neurons.compat import CompatConfig
    from neurons.compat.engine import apply

    try:
        flags = CompatConfig.from_mapping(cfg.get("compat"))
    except ValueError as e:
        raise ConfigError(str(e)) from None
    exp.compat = flags
    if not flags.any():
        return exp
    ds = cfg.get("dataset") or {}
    if flags.data and ds.get("name") in ("iris", "bike") and ds.get("shuffle") != "upstream":
        raise ConfigError(  # the crate shuffles these two with its LCG before splitting
            f"dataset.shuffle: compat.data reproduces the crate's {ds.get('name')} pipeline and "
            f"needs upstream (its LCG shuffle), found {ds.get('shuffle')!r}; or compat.data=false"
        )
    return apply(exp, flags, lambda params: build_optimizer(cfg.optimizer, params))


# ----------------------------------------------------------------------------- loggers
def build_loggers(cfg: DictConfig, run_dir: Any, network: Network | None = None) -> Any:
    """`cfg.logger` (the `logger` group, several at once) -> a `neurons.loggers.Loggers`.

    `csv` is the run's own records and always on; tensorboard/mlflow need their extras.
    """
    from neurons import loggers as lg

    spec = _plain(cfg.get("logger")) or {}
    unknown = sorted(set(spec) - {"csv", "tensorboard", "mlflow"})
    if unknown:
        raise ConfigError(f"logger: expected csv, tensorboard or mlflow, found {unknown[0]!r}")
    if (spec.get("csv") or {}).get("enabled") is False:
        raise ConfigError(
            "logger.csv.enabled: metrics.csv and summary.json are always written; "
            "expected true, found false"
        )
    out: list[lg.RunLogger] = []
    if (spec.get("tensorboard") or {}).get("enabled"):
        t = {k: v for k, v in spec["tensorboard"].items() if k != "enabled"}
        _int("logger.tensorboard.log_every_n_steps", t["log_every_n_steps"], 0)
        _int("logger.tensorboard.histogram_every", t["histogram_every"], 0)
        _int("logger.tensorboard.flush_secs", t["flush_secs"], 1)
        if not str(t["dir"]).strip():
            raise ConfigError("logger.tensorboard.dir: expected a directory name, found ''")
        out.append(lg.TensorBoardLogger(**t, network=network))
    if (spec.get("mlflow") or {}).get("enabled"):
        m = {k: v for k, v in spec["mlflow"].items() if k != "enabled"}
        if not str(m["tracking_uri"]).strip():
            raise ConfigError("logger.mlflow.tracking_uri: expected a tracking URI, found ''")
        if m["http_timeout"] is not None:
            _num("logger.mlflow.http_timeout", m["http_timeout"], lo=0, lo_open=True)
        if m["http_retries"] is not None:
            _int("logger.mlflow.http_retries", m["http_retries"], 0)
        out.append(lg.MlflowLogger(**m))
    for logger in out:
        try:
            lg.require(logger.name)
        except lg.MissingExtra as e:
            raise ConfigError(str(e)) from None
    return lg.Loggers(out, run_dir)
