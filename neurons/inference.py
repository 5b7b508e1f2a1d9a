"""Load a trained model for prediction: `load_model(path) -> Predictor`, no Hydra, no pickle.

A path is a run directory, one of its checkpoints (`checkpoints/{best,last}.npz`, rebuilt from
the run's `.hydra/config.yaml`) or an exported `.safetensors` file (self-contained). This module
reads files and rebuilds the engine's `Network`; it trains nothing and writes nothing.
"""

from __future__ import annotations

import json
import math
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from neurons import record as rec
from neurons import tensorfile
from neurons.graph import Network
from neurons.layers import BuildError

FORMAT = "neurons-model"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A model file cannot be loaded; the message names the file and what does not match."""


# --------------------------------------------------------------------------- preprocessing
@dataclass
class Preprocessing:
    """What the run's dataset did to a raw sample: downsample, `(x - shift) / scale`, flatten.

    `raw_shape` is one sample as read (images (C, H, W) with values 0..pixel_max); targets of a
    regression run were trained as `(t - target_shift) / target_scale` and are decoded back.
    """

    raw_shape: tuple[int, ...]
    input_shape: tuple[int, ...]
    shift: np.ndarray
    scale: np.ndarray
    downsample: int = 1
    flatten: bool = False
    pixel_max: float | None = None
    target_shift: np.ndarray | None = None
    target_scale: np.ndarray | None = None
    description: str = ""
    feature_names: list[str] | None = None  # tabular data: the columns a CSV input may name

    def __call__(self, x: np.ndarray, what: str = "input") -> np.ndarray:
        """Raw samples (N, *raw_shape) (or flat (N, prod)) -> network inputs (N, *input_shape)."""
        x = np.asarray(x, dtype=np.float32)
        n_raw = math.prod(self.raw_shape)
        if x.ndim == len(self.raw_shape) and tuple(x.shape) == self.raw_shape:
            x = x[None]  # one sample
        if x.ndim == 1 and x.size == n_raw:
            x = x[None]
        if x.ndim < 1 or math.prod(x.shape[1:]) != n_raw:
            raise ValueError(
                f"{what}: expected samples of shape {self.raw_shape} ({n_raw} values each), "
                f"found an array of shape {x.shape}"
            )
        x = x.reshape(x.shape[0], *self.raw_shape)  # (N, *raw_shape)
        k = self.downsample
        if k > 1:
            n, c, h, w = x.shape
            x = x.reshape(n, c, h // k, k, w // k, k).mean(axis=(3, 5), dtype=np.float32)
        x = ((x - self.shift) / self.scale).astype(np.float32, copy=False)
        return x.reshape(x.shape[0], *self.input_shape)

    def decode_targets(self, y: np.ndarray) -> np.ndarray:
        if self.target_shift is None or self.target_scale is None:
            return y
        return (y * self.target_scale + self.target_shift).astype(y.dtype, copy=False)

    def to_dict(self) -> dict[str, Any]:
        def arr(a: np.ndarray | None) -> Any:
            return None if a is None else {"shape": list(a.shape), "values": a.ravel().tolist()}

        return {
            "raw_shape": list(self.raw_shape),
            "input_shape": list(self.input_shape),
            "downsample": self.downsample,
            "shift": arr(self.shift),
            "scale": arr(self.scale),
            "flatten": self.flatten,
            "pixel_max": self.pixel_max,
            "target_shift": arr(self.target_shift),
            "target_scale": arr(self.target_scale),
            "description": self.description,
            "feature_names": self.feature_names,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Preprocessing:
        def arr(v: Any) -> np.ndarray | None:
            if v is None:
                return None
            return np.asarray(v["values"], dtype=np.float32).reshape(v["shape"])

        return cls(
            raw_shape=tuple(int(s) for s in d["raw_shape"]),
            input_shape=tuple(int(s) for s in d["input_shape"]),
            shift=arr(d["shift"]),  # type: ignore[arg-type]
            scale=arr(d["scale"]),  # type: ignore[arg-type]
            downsample=int(d["downsample"]),
            flatten=bool(d["flatten"]),
            pixel_max=d.get("pixel_max"),
            target_shift=arr(d.get("target_shift")),
            target_scale=arr(d.get("target_scale")),
            description=str(d.get("description", "")),
            feature_names=None if d.get("feature_names") is None else list(d["feature_names"]),
        )

    @classmethod
    def of_dataset(cls, ds: Any, downsample: int = 1, flatten: bool = False) -> Preprocessing:
        """From a loaded `neurons.data.Dataset` and its config's `downsample` and `flatten`."""
        return cls(
            raw_shape=tuple(ds.raw_shape),
            input_shape=tuple(ds.sample_shape),
            shift=np.asarray(ds.x_shift, dtype=np.float32),
            scale=np.asarray(ds.x_scale, dtype=np.float32),
            downsample=int(downsample),
            flatten=bool(flatten),
            pixel_max=ds.pixel_max,
            target_shift=ds.target_shift,
            target_scale=ds.target_scale,
            description=ds.preprocessing,
            feature_names=None if ds.feature_names is None else list(ds.feature_names),
        )


# --------------------------------------------------------------------------- the model card
@dataclass
class ModelCard:
    """Everything besides the weights that rebuilds a network (stored in exported files)."""

    arch: dict[str, Any]
    input_shape: tuple[int, ...]
    n_outputs: int
    task: str
    objective: str
    dtype: str
    classes: list[str] | None
    dataset: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "arch": self.arch,
            "input_shape": list(self.input_shape),
            "n_outputs": self.n_outputs,
            "task": self.task,
            "objective": self.objective,
            "dtype": self.dtype,
            "classes": self.classes,
            "dataset": self.dataset,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str) -> ModelCard:
        if d.get("format") != FORMAT:
            raise CheckpointError(
                f"{where}: expected metadata format {FORMAT!r}, found {d.get('format')!r}"
            )
        try:
            return cls(
                arch=dict(d["arch"]),
                input_shape=tuple(int(s) for s in d["input_shape"]),
                n_outputs=int(d["n_outputs"]),
                task=str(d["task"]),
                objective=str(d["objective"]),
                dtype=str(d["dtype"]),
                classes=None if d.get("classes") is None else [str(c) for c in d["classes"]],
                dataset=str(d.get("dataset", "")),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"{where}: incomplete model metadata ({e!r})") from None

    def build(self, where: str) -> Network:
        from neurons.config import build_network

        try:
            return build_network(
                self.arch,
                self.input_shape,
                self.n_outputs,
                self.task,
                self.objective,
                np.random.default_rng(0),  # every weight is overwritten by the checkpoint
                self.dtype,
            )
        except (BuildError, KeyError, ValueError) as e:
            raise CheckpointError(f"{where}: the stored architecture does not build: {e}") from None


# --------------------------------------------------------------------------- the predictor
class Predictor:
    """A trained network with its preprocessing: `predict`, `predict_proba`, `evaluate`.

    Inputs are raw samples as the dataset stores them (pixel values, unscaled features) unless
    `preprocessed=True`; regression outputs are decoded to the targets' original units.
    """

    def __init__(
        self,
        network: Network,
        card: ModelCard,
        source: Path,
        *,
        preprocessing: Preprocessing | None = None,
        config: DictConfig | None = None,
        checkpoint: Path | None = None,
        dataset: Any = None,
    ) -> None:
        self.network = network
        self.card = card
        self.source = source
        self.checkpoint = checkpoint or source
        self.config = config
        self._preprocessing = preprocessing
        self._dataset: Any = dataset  # the run's Dataset, loaded on first need

    # -- facts
    @property
    def task(self) -> str:
        return self.card.task

    @property
    def classification(self) -> bool:
        return self.card.task == "classification"

    @property
    def classes(self) -> list[str] | None:
        return self.card.classes

    @property
    def preprocessing(self) -> Preprocessing:
        """The run's input preparation (a run directory loads its dataset once to learn it)."""
        if self._preprocessing is None:
            d = self.config.dataset if self.config is not None else {}
            self._preprocessing = Preprocessing.of_dataset(
                self.dataset(), int(d.get("downsample", 1)), bool(d.get("flatten", False))
            )
        return self._preprocessing

    def dataset(self) -> Any:
        """The run's own dataset, loaded as in training (only for run directories/checkpoints)."""
        if self._dataset is None:
            if self.config is None:
                raise CheckpointError(
                    f"{self.source}: an exported model has no dataset config; evaluate a run "
                    f"directory or one of its checkpoints instead"
                )
            from neurons.data import load_dataset

            self._dataset = load_dataset(self.config.dataset)
        return self._dataset

    # -- prediction
    def outputs(
        self,
        x: np.ndarray,
        *,
        preprocessed: bool = False,
        recurrent: bool = True,
        skips: bool = True,
        batch_size: int = 256,
    ) -> np.ndarray:
        """Network outputs: probabilities (classification) or decoded regression values."""
        xin = np.asarray(x) if preprocessed else self.preprocessing(x)
        y = self.network.predict(xin, batch_size, recurrent=recurrent, skips=skips)
        if not self.classification:
            y = self.preprocessing.decode_targets(y)
        return y

    def predict_proba(self, x: np.ndarray, **kw: Any) -> np.ndarray:
        """(N, n_classes) class probabilities."""
        if not self.classification:
            raise ValueError(f"{self.source}: predict_proba needs a classification model")
        return self.outputs(x, **kw)

    def predict(self, x: np.ndarray, **kw: Any) -> np.ndarray:
        """Class indices (N,) for classification, outputs (N, n_outputs) for regression."""
        y = self.outputs(x, **kw)
        return y.argmax(axis=1) if self.classification else y

    def evaluate(
        self, split: str = "test", *, recurrent: bool = True, skips: bool = True
    ) -> dict[str, Any]:
        """Loss and accuracy on the run's own `test` or `val` split, as in summary.json."""
        from neurons.config import resolve_objective
        from neurons.objectives import make_objective
        from neurons.train import evaluate

        if split not in ("test", "val"):
            raise ValueError(f"split: expected test or val, found {split!r}")
        ds = self.dataset()
        x, y = (ds.x_test, ds.y_test) if split == "test" else (ds.x_val, ds.y_val)
        if x is None or len(x) == 0:
            raise ValueError(f"split: the dataset {ds.name} has no {split} split")
        obj = make_objective(resolve_objective(self.card.objective, self.card.task))
        bs = int(self.config.train.eval_batch_size) if self.config is not None else 512
        loss, acc = evaluate(
            self.network,
            obj,
            x,
            y,
            classification=self.classification,
            batch_size=bs,
            recurrent=recurrent,
            skips=skips,
        )
        acc_out = None if math.isnan(acc) else acc  # regression has no accuracy
        return {"split": split, "loss": loss, "acc": acc_out, "n": int(len(x))}

    def state_dict(self) -> dict[str, np.ndarray]:
        return self.network.state_dict()


# --------------------------------------------------------------------------- loading
def load_model(path: str | Path) -> Predictor:
    """A `Predictor` from a run directory, a run's `.npz` checkpoint or a `.safetensors` export.

    A run directory loads `checkpoints/best.npz` when the run restored its best epoch
    (`train.early_stopping.restore_best`), else `checkpoints/last.npz`. Raises `CheckpointError`
    naming the file for a missing, truncated, tampered or mismatching checkpoint.
    """
    path = Path(path)
    if path.is_dir():
        return _load_run(path, None)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or run directory")
    if path.suffix == ".safetensors":
        return _load_safetensors(path)
    if path.suffix == ".npz":
        run = path.parent.parent if path.parent.name == rec.CHECKPOINTS else path.parent
        if not (run / ".hydra" / "config.yaml").is_file():
            raise CheckpointError(
                f"{path}: expected a checkpoint inside a run directory (<run>/{rec.CHECKPOINTS}/"
                f"{path.name} next to <run>/.hydra/config.yaml), found no {run}/.hydra/config.yaml"
            )
        return _load_run(run, path)
    raise CheckpointError(
        f"{path}: expected a run directory, a .npz checkpoint or a .safetensors file, "
        f"found {path.suffix or 'no suffix'}"
    )


def _read_config(run: Path) -> DictConfig:
    from neurons.config import register_resolvers

    register_resolvers()
    cfg_path = run / ".hydra" / "config.yaml"
    if not cfg_path.is_file():
        raise CheckpointError(f"{run}: not a run directory (no .hydra/config.yaml)")
    try:
        cfg = OmegaConf.load(cfg_path)
    except Exception as e:  # yaml errors have many types; none of them runs code (safe loader)
        raise CheckpointError(f"{cfg_path}: unreadable config ({type(e).__name__}: {e})") from None
    if not isinstance(cfg, DictConfig) or "arch" not in cfg or "dataset" not in cfg:
        raise CheckpointError(f"{cfg_path}: expected a run config with arch and dataset")
    return cfg


def _card_of_run(run: Path, cfg: DictConfig) -> tuple[ModelCard, Any]:
    """The card of a run (from summary.json, or by loading its dataset); returns the dataset too."""
    from neurons.config import resolve_objective

    summary_path = run / rec.SUMMARY
    arch = OmegaConf.to_container(cfg.arch, resolve=True)
    dtype = str(cfg.train.get("dtype", "float32"))
    dataset = None
    info: dict[str, Any] | None = None
    if summary_path.is_file():
        try:
            info = rec.read_json(summary_path)["dataset"]
        except (ValueError, KeyError, TypeError):
            info = None
    if info is None:  # an unfinished run: the dataset tells the shapes
        from neurons.data import load_dataset

        dataset = load_dataset(cfg.dataset)
        info = dataset.info()
    task = str(info["task"])
    return (
        ModelCard(
            arch=arch,  # type: ignore[arg-type]
            input_shape=tuple(int(s) for s in info["sample_shape"]),
            n_outputs=int(info["n_outputs"]),
            task=task,
            objective=resolve_objective(str(cfg.objective.name), task),
            dtype=dtype,
            classes=info.get("classes"),
            dataset=str(info.get("name", "")),
        ),
        dataset,
    )


def _pick_checkpoint(run: Path, cfg: DictConfig) -> Path:
    es = cfg.train.get("early_stopping")
    best = run / rec.CHECKPOINTS / rec.BEST
    if es is not None and es.get("enabled") and es.get("restore_best") and best.is_file():
        return best
    last = run / rec.CHECKPOINTS / rec.LAST
    if not last.is_file():
        raise CheckpointError(f"{run}: no checkpoint ({rec.CHECKPOINTS}/{rec.LAST} is missing)")
    return last


def read_npz(path: Path) -> dict[str, np.ndarray]:
    """The arrays of a run checkpoint (no pickle); CheckpointError when it is damaged."""
    try:
        arrays, _ = rec.load_checkpoint(path)
    except (zipfile.BadZipFile, EOFError, OSError, KeyError) as e:
        raise CheckpointError(f"{path}: truncated or corrupt checkpoint ({e})") from None
    except ValueError as e:  # object arrays refused by allow_pickle=False, bad headers, bad JSON
        raise CheckpointError(f"{path}: tampered or corrupt checkpoint ({e})") from None
    return arrays


def apply_state(net: Network, state: dict[str, np.ndarray], where: Path | str) -> None:
    """Copy `state` (keys `param.*` / `buffer.*`) into `net`, checking names, shapes, dtypes."""
    own = net.state_dict()
    missing = sorted(set(own) - set(state))
    extra = sorted(set(state) - set(own))
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing {missing[:4]}{' ...' if len(missing) > 4 else ''}")
        if extra:
            parts.append(f"unexpected {extra[:4]}{' ...' if len(extra) > 4 else ''}")
        raise CheckpointError(
            f"{where}: does not match the architecture: {'; '.join(parts)} "
            f"(the network expects {len(own)} tensors, the file has {len(state)})"
        )
    for k, arr in own.items():
        src = state[k]
        if src.shape != arr.shape:
            raise CheckpointError(
                f"{where}: does not match the architecture: {k} has shape {tuple(src.shape)}, "
                f"the network expects {tuple(arr.shape)}"
            )
        if src.dtype != arr.dtype:
            raise CheckpointError(
                f"{where}: {k} has dtype {src.dtype}, the network expects {arr.dtype}"
            )
        if not np.all(np.isfinite(src)):
            raise CheckpointError(f"{where}: {k} holds non-finite values (NaN or Inf)")
    net.load_state_dict(state)


def _load_run(run: Path, ckpt: Path | None) -> Predictor:
    cfg = _read_config(run)
    ckpt = ckpt or _pick_checkpoint(run, cfg)
    arrays = read_npz(ckpt)  # before building: a damaged file is named first
    card, dataset = _card_of_run(run, cfg)
    net = card.build(str(run / ".hydra" / "config.yaml"))
    state = rec.model_state(arrays)
    if not state:
        raise CheckpointError(
            f"{ckpt}: holds no {rec.MODEL_PREFIX}* arrays (not a neurons checkpoint)"
        )
    apply_state(net, state, ckpt)
    return Predictor(net, card, run, config=cfg, checkpoint=ckpt, dataset=dataset)


def _load_safetensors(path: Path) -> Predictor:
    try:
        tensors, meta = tensorfile.load(path)
    except tensorfile.TensorFileError as e:
        raise CheckpointError(str(e)) from None
    if "neurons" not in meta:
        raise CheckpointError(f"{path}: no `neurons` entry in __metadata__ (not a neurons export)")
    try:
        body = json.loads(meta["neurons"])
        card = ModelCard.from_dict(body["model"], str(path))
        prep = Preprocessing.from_dict(body["preprocessing"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        if isinstance(e, CheckpointError):
            raise
        raise CheckpointError(f"{path}: corrupt neurons metadata ({e!r})") from None
    net = card.build(str(path))
    apply_state(net, tensors, path)
    return Predictor(net, card, path, preprocessing=prep)


def model_metadata(p: Predictor) -> dict[str, Any]:
    """The JSON-ready description stored in exports: the model card and the preprocessing."""
    return {"model": p.card.to_dict(), "preprocessing": p.preprocessing.to_dict()}
