"""Checks a config before anything is allocated or loaded: types of every numeric arch value,
the estimated memory of the network, and shape errors where the dataset's shape is known.

`preflight(cfg)` raises ConfigError / BuildError / DatasetError naming the key; it builds
nothing that is kept and reads no data files. `neurons.config.build_experiment` and the CLI
guard call it, so a refused config fails before its run directory is created.
"""

from __future__ import annotations

import math
import os
import resource
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from neurons.config import (
    LAYERS,
    ConfigError,
    build_layer,
    build_network,
    layer_parameters,
    validate,
)
from neurons.data import DATASETS, DatasetConfig, validate_config
from neurons.data.loaders import downsampled_shape
from neurons.graph import Feedback
from neurons.layers import BuildError, Conv2d, Dense, NormConv2d, NormDense

# arch-level values that layer mappings interpolate (`units: ${arch.width}`): (kind, minimum)
ARCH_SCALARS: dict[str, tuple[type, int]] = {
    "width": (int, 1),
    "passes": (int, 1),
    "filters": (int, 1),
    "kernel": (int, 1),
    "padding": (int, 0),
    "skip": (bool, 0),
    "bias": (bool, 0),
}
# bytes held per parameter, in units of the dtype: value, gradient, two optimizer slots, and
# three copies (the epoch snapshot, restore_best's copy, the checkpoint being written)
PARAM_COPIES = 7
ACTIVATION_COPIES = 4  # per activation element: output, cache, upstream and downstream grads


def _int_annotation(annotation: Any) -> bool:
    text = str(annotation)
    return "int" in text and "float" not in text


def check_layer_types(spec: Any, path: str) -> None:
    """Integer-annotated layer keys (units, filters, kernel_size, ...) must be integers."""
    if not isinstance(spec, dict) or spec.get("kind") not in LAYERS:
        return  # build_layer reports these
    cls = LAYERS[spec["kind"]]
    params = layer_parameters(cls)
    for key, value in spec.items():
        p = params.get(key)
        if p is None:
            continue
        text = str(p.annotation)
        if text.startswith("float"):  # float | None: a number (or null)
            if value is None and "None" in text:
                continue
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise BuildError(f"{path}.{key}: expected a number, found {value!r}")
            continue
        if not _int_annotation(text):
            continue
        seq = isinstance(value, list | tuple) and "tuple" in str(p.annotation)
        values = value if seq else [value]
        if value is None and "None" in str(p.annotation):
            continue
        if any(isinstance(v, bool) or not isinstance(v, int) for v in values):
            raise BuildError(f"{path}.{key}: expected an integer, found {value!r}")
    for q, inner in enumerate(spec.get("layers") or []):
        check_layer_types(inner, f"{path}.layers[{q}]")


def check_arch_values(cfg: DictConfig) -> dict[str, Any]:
    """Type-check the arch's own scalars, resolve it, and type-check every layer mapping."""
    raw = OmegaConf.to_container(cfg.arch, resolve=False)
    if not isinstance(raw, dict):
        raise ConfigError(f"arch: expected a mapping (an arch/ config), found {raw!r}")
    for key, (kind, lo) in ARCH_SCALARS.items():
        if key not in raw or (isinstance(raw[key], str) and raw[key].startswith("${")):
            continue
        v = raw[key]
        if kind is bool:
            if not isinstance(v, bool):
                raise ConfigError(f"arch.{key}: expected true or false, found {v!r}")
        elif isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise ConfigError(f"arch.{key}: expected an integer >= {lo}, found {v!r}")
    try:
        arch = OmegaConf.to_container(cfg.arch, resolve=True)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", "") or "arch"
        raise ConfigError(f"{key}: cannot be resolved ({str(e).splitlines()[0]})") from None
    assert isinstance(arch, dict)
    for k, spec in enumerate(arch.get("layers") or []):
        check_layer_types(spec, f"arch.layers[{k}]")
    out = arch.get("output")
    if isinstance(out, dict):
        check_layer_types({k: v for k, v in out.items() if v != "auto"}, "arch.output")
    return arch


def available_memory() -> int:
    """Bytes this process may still allocate: MemAvailable, capped by RLIMIT_AS."""
    avail = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
    except OSError:
        pass
    if avail is None:
        avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY:
        try:
            with open("/proc/self/statm") as f:
                used = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
        except OSError:
            used = 0
        avail = min(avail, max(soft - used, 0))
    return int(avail)


def _estimate(layers: list, shape: tuple[int, ...] | None) -> tuple[int, int, str, int, Any]:
    """(params, activations per sample, largest layer path, its params, out shape or None)."""
    n_params = acts = 0
    big_path, big = "", 0
    rng = np.random.default_rng(0)
    for layer in layers:
        if shape is None:
            break
        n = 0
        try:
            if isinstance(layer, Feedback):
                n, a, bp, bn, shape = _estimate(layer.body, shape)
                copies = layer.loops if layer.coupling == "none" else 1
                n, a = n * copies, a * layer.loops
                if bn * copies > big:
                    big_path, big = bp, bn * copies
                acts += a
                n_params += n
                continue
            if isinstance(layer, Dense | NormDense):
                n = math.prod(shape) * layer.units + layer.units
                shape = (layer.units,)
            elif isinstance(layer, Conv2d | NormConv2d) and len(shape) == 3:
                n = math.prod(layer._weight_shape(shape[0])) + layer.filters
                shape = (layer.filters, *layer._output_hw(tuple(shape[1:])))
            else:  # parameter-free or tiny layers: their own build gives the shape
                shape = layer.build(shape, rng, np.dtype(np.float32))
                n = layer.n_params()
        except (BuildError, ValueError, TypeError, AttributeError):
            shape = None  # the real build reports the shape error
        n_params += n
        if n > big:
            big_path, big = layer.path, n
        if shape is not None:
            acts += math.prod(shape)
    return n_params, acts, big_path, big, shape


def _bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} PiB"


def check_memory(cfg: DictConfig, arch: dict, input_shape: tuple[int, ...]) -> int:
    """Estimate parameter + activation memory of `arch` on `input_shape`; ConfigError if it
    exceeds the available memory. Returns the estimate in bytes."""
    specs = list(arch.get("layers") or [])
    layers = [build_layer(s, f"arch.layers[{k}]") for k, s in enumerate(specs)]
    n_params, acts, big_path, big, _ = _estimate(layers, tuple(input_shape))
    itemsize = np.dtype(str(cfg.train.dtype)).itemsize
    batch = int(cfg.train.batch_size)
    passes = arch.get("passes", 1)
    passes = passes if isinstance(passes, int) and passes > 0 else 1
    need = itemsize * (PARAM_COPIES * n_params + ACTIVATION_COPIES * acts * batch * passes)
    avail = available_memory()
    if need > avail:
        raise ConfigError(
            f"arch: the network needs about {_bytes(need)} ({n_params:,} parameters, largest "
            f"{big_path} with {big:,}; {acts:,} activations per sample x train.batch_size="
            f"{batch}) but only {_bytes(avail)} of memory is available; reduce the layer sizes "
            "(e.g. arch.width) or train.batch_size"
        )
    return need


def known_shape(dcfg: Any) -> tuple[tuple[int, ...], int] | None:
    """(sample shape, outputs) the dataset will have, when it follows from the config alone."""
    spec = DATASETS.get(dcfg.name)
    if spec is None or spec.shape is None:
        return None
    shape, n_out = spec.shape
    if dcfg.task == "regression":
        n_out = 1  # the class index as one target column (xor, and)
    shape = downsampled_shape(dcfg.name, shape, int(dcfg.downsample))
    if dcfg.flatten:
        shape = (math.prod(shape),)
    return shape, n_out


def dataset_settings(cfg: DictConfig) -> DatasetConfig:
    """`cfg.dataset` as a typed DatasetConfig (also for a saved config loaded without schema)."""
    try:
        merged = OmegaConf.merge(OmegaConf.structured(DatasetConfig), cfg.dataset)
        return OmegaConf.to_object(merged)  # type: ignore[return-value]
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", "") or ""
        raise ConfigError(f"dataset.{key}: {str(e).splitlines()[0]}") from None


def preflight(cfg: DictConfig, dataset: Any = None) -> None:
    """Every check that needs no data: values, arch types, memory, and (where the dataset's
    shape is known from the config, or `dataset` is given) the network's full shape check."""
    from neurons.config import resolve_objective

    validate(cfg)
    _int_key("train.lsuv_batch", cfg.train.lsuv_batch, 1)
    dcfg = dataset_settings(cfg)
    validate_config(dcfg)
    arch = check_arch_values(cfg)
    if dataset is not None:
        known = (tuple(dataset.sample_shape), int(dataset.n_outputs))
        task = dataset.task
    else:
        known = known_shape(dcfg)
        task = dcfg.task or "classification"
    if known is None:
        return
    shape, n_out = known
    check_memory(cfg, arch, shape)
    objective = resolve_objective(cfg.objective.name, task)
    if task == "regression" and objective in ("cross_entropy", "kld"):
        raise ConfigError(f"objective.name: {objective} needs a classification dataset")
    rng = np.random.default_rng(int(cfg.seed))
    build_network(arch, shape, n_out, task, objective, rng, str(cfg.train.dtype))


def _int_key(path: str, value: Any, lo: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise ConfigError(f"{path}: expected an integer >= {lo}, found {value!r}")
