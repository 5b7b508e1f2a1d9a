"""The training loop: `fit`, `evaluate`, `predict`. Knows nothing of Hydra or files.

`fit` takes plain objects (a built network, an objective, an optimizer, arrays, a TrainConfig,
an explicit rng) and reads top to bottom: shuffle -> batches (forward, loss, backward, clip,
step) -> evaluate -> early stopping -> callbacks. Run records are the callbacks' business.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from neurons import plan as planning
from neurons.graph import Network
from neurons.kernels import Array
from neurons.kernels import program as pk
from neurons.kernels.activations import ACTIVATIONS
from neurons.layers import Context
from neurons.optim import clip_by_value, clip_grad_norm


class NonFiniteLoss(FloatingPointError):
    """The training loss, a gradient, a parameter or a validation metric became NaN or Inf.

    The message names what (the parameter, the metric), the epoch and, within an epoch, the batch.
    """


_HINT = "try a smaller optimizer.lr or train.clip_norm"


def nonfinite(arrays: dict[str, Array]) -> list[str]:
    """Names of the arrays holding NaN or Inf."""
    return [k for k, v in arrays.items() if not np.isfinite(v).all()]


@dataclass
class EarlyStopping:
    """Stop when `monitor` has not improved by more than `min_delta` for `patience` evaluations."""

    patience: int = 10
    min_delta: float = 0.0
    monitor: str = "val_loss"
    mode: str = "auto"  # min | max | auto (max for *acc*, min otherwise)
    restore_best: bool = False

    def better(self, value: float, best: float) -> bool:
        mode = self.mode if self.mode != "auto" else ("max" if "acc" in self.monitor else "min")
        if math.isnan(value):
            return False
        if math.isnan(best):
            return True
        return value > best + self.min_delta if mode == "max" else value < best - self.min_delta

    def should_stop(self, state: TrainState, value: float) -> bool:
        """After an epoch (`value`: the monitored metric, NaN when not evaluated)."""
        return state.wait >= self.patience


@dataclass
class TrainConfig:
    epochs: int = 10
    batch_size: int = 32
    shuffle: bool = True
    eval_every: int = 1  # epochs between validation passes (the last epoch is always evaluated)
    eval_batch_size: int = 512
    clip_value: float | None = None  # clamp the output gradient to [-v, v] (the original's kind)
    clip_norm: float | None = None  # rescale parameter gradients to this global L2 norm
    early_stopping: EarlyStopping | None = None
    loss_average: str = "sample"  # train_loss: "sample" mean, or "batch" (mean of batch means)
    engine: str = "auto"  # auto | tape | compiled (see neurons.plan.fit_fallback)


@dataclass
class TrainState:
    """Everything `fit` needs to continue bit-identically (saved in checkpoints)."""

    epoch: int = 0  # epochs completed
    step: int = 0  # optimizer steps taken
    best_value: float = float("nan")
    best_epoch: int = 0
    wait: int = 0
    stopped_early: bool = False
    best_state: dict[str, Array] | None = field(default=None, repr=False)
    engine_path: str = ""  # "compiled" or "tape": which path the last `fit` ran (not saved)
    engine_fallback: str | None = None  # why the tape path ran, when it did

    def to_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "step": self.step,
            "best_value": self.best_value,
            "best_epoch": self.best_epoch,
            "wait": self.wait,
            "stopped_early": self.stopped_early,
        }


EpochCallback = Callable[[TrainState, dict[str, float], bool], None]
"""Called after every epoch with the state, the epoch's metrics row, and `improved`."""


def _classes(objective: Any, out: Array, logits: bool) -> Array:
    pick = getattr(objective, "predict_class", None)  # e.g. neurons.compat's argmax ties
    return out.argmax(axis=1) if pick is None else pick(out, logits)


def evaluate(
    model: Network,
    objective: Any,
    x: Array,
    y: Array,
    *,
    classification: bool,
    batch_size: int = 512,
    recurrent: bool = True,
    skips: bool = True,
    engine: str = "auto",
) -> tuple[float, float]:
    """Mean per-sample loss and accuracy (argmax match; NaN for regression) over (x, y).

    `engine`: auto runs networks with a compiled program through it (one kernel call for all
    of x), tape always uses `Network.forward`; the outputs agree to rounding.
    """
    fused = model.head is not None and model.head == getattr(objective, "fused_activation", None)
    losses, hits = [], 0
    fast = None
    if engine != "tape" and len(x):
        rows = min(batch_size, len(x))
        if engine == "compiled" or model.n_params() * rows <= planning.AUTO_LIMIT:
            fast = planning.compiled_for(model, recurrent, skips)
    for s in range(0, len(x), batch_size):
        xb = x[s : s + batch_size].astype(model.dtype, copy=False)
        yb = y[s : s + batch_size].astype(model.dtype, copy=False)
        if fast is not None:
            out = fast.forward(xb, batch_size).reshape(len(xb), *model.output_shape)
            if model.head is not None and not fused:
                out = ACTIVATIONS[model.head][0](out)[0]
        else:
            out, _ = model.forward(xb, recurrent=recurrent, skips=skips, logits=fused)
        if fused:
            losses.append(objective.per_sample_logits(out, yb))
        else:
            losses.append(objective.per_sample(out, yb))
        if classification:
            hits += int((_classes(objective, out, fused) == yb.argmax(axis=1)).sum())
    loss = float(np.mean(np.concatenate(losses).astype(np.float64))) if losses else float("nan")
    acc = hits / len(x) if classification and len(x) else float("nan")
    return loss, acc


def train_step(
    model: Network,
    objective: Any,
    optimizer: Any,
    xb: Array,
    yb: Array,
    rng: np.random.Generator,
    cfg: TrainConfig,
) -> tuple[float, Array]:
    """One minibatch: forward, batch-mean loss, backward, clipping, one optimizer step."""
    fused = model.head is not None and model.head == getattr(objective, "fused_activation", None)
    model.zero_grad()
    ctx = Context(train=True, rng=rng)
    out, tape = model.forward(xb, ctx, record=True, logits=fused, input_grad=False)
    if fused:
        loss, dout = objective.loss_grad_logits(out, yb)
    else:
        loss, dout = objective.loss_grad(out, yb)
    if not math.isfinite(loss):
        raise NonFiniteLoss(f"training loss is {float(loss)}")
    if cfg.clip_value is not None:
        dout = clip_by_value(dout, -cfg.clip_value, cfg.clip_value)
    model.backward(dout.astype(model.dtype, copy=False), tape)
    grads = model.named_grads()
    bad = nonfinite(grads)
    if bad:  # before the step, so the parameters stay as they were
        raise NonFiniteLoss(f"gradient of {', '.join(bad[:3])} is not finite")
    if cfg.clip_norm is not None:
        clip_grad_norm(grads, cfg.clip_norm)
    optimizer.step(grads)
    return float(loss), out


def _compiled_epoch(
    trainer: planning.CompiledTrainer,
    model: Network,
    order: Array,
    epoch: int,
    n_batches: int,
    state: TrainState,
    cfg: TrainConfig,
    on_batch: Callable[[int, int, float], None] | None,
) -> tuple[float, int]:
    """One epoch through the kernel: (loss sum as the tape path adds it, hits); the same
    NonFiniteLoss messages (epoch, batch, step) as `train_step` inside `fit`. `on_batch` gets
    the calls the tape path makes, in order, after the kernel returns."""
    status, b, hits, steps, losses = trainer.epoch(order)
    state.step += steps
    for k in range(steps if on_batch is not None else 0):
        on_batch(k + 1, n_batches, float(losses[k]))
    if status != pk.OK:
        if status == pk.BAD_LOSS:
            what = f"training loss is {float(losses[b])}"
        else:
            bad = nonfinite(model.named_grads())
            what = f"gradient of {', '.join(bad[:3])} is not finite"
        raise NonFiniteLoss(
            f"{what} at epoch {epoch}, batch {b + 1} of {n_batches} "
            f"(step {state.step + 1}); {_HINT}"
        )
    bs, n = int(cfg.batch_size), len(order)
    loss_sum = 0.0
    for k in range(n_batches):
        loss = float(losses[k])
        loss_sum += loss if cfg.loss_average == "batch" else loss * (min(bs, n - k * bs))
    return loss_sum, hits


def fit(
    model: Network,
    objective: Any,
    optimizer: Any,
    x_train: Array,
    y_train: Array,
    x_val: Array | None,
    y_val: Array | None,
    cfg: TrainConfig,
    rng: np.random.Generator,
    *,
    classification: bool = True,
    schedule: Callable[[int], float] | None = None,
    state: TrainState | None = None,
    callbacks: list[EpochCallback] | None = None,
    on_batch: Callable[[int, int, float], None] | None = None,
) -> TrainState:
    """Train `model` for `cfg.epochs` epochs (continuing from `state` when resuming).

    Each epoch: shuffle with `rng` (if cfg.shuffle), one optimizer step per minibatch on the
    batch-mean loss, then evaluate on (x_val, y_val) every `cfg.eval_every` epochs. Metrics per
    epoch go to `callbacks` as a row: epoch, step, seconds, lr, train_loss, train_acc,
    val_loss, val_acc. Raises NonFiniteLoss (naming the epoch and batch) on a NaN/Inf loss.
    BLAS runs on numba's threads for networks without conv/pool layers, else on one.
    """
    state = state or TrainState()
    es = cfg.early_stopping
    judge = es or EarlyStopping()  # without early stopping, still track the best val_loss
    n = len(x_train)
    if n == 0:
        raise ValueError("fit: the training split is empty")
    bs = int(cfg.batch_size)
    n_batches = math.ceil(n / bs)
    dtype = model.dtype
    fused = model.head is not None and model.head == getattr(objective, "fused_activation", None)
    start_epoch = getattr(optimizer, "start_epoch", None)  # neurons.compat: t = epoch
    why = planning.fit_fallback(model, objective, optimizer, cfg, classification)
    if start_epoch is not None and why is None:
        why = "the optimizer's start_epoch hook runs on the tape"
    trainer = None
    if why is None:
        trainer = planning.CompiledTrainer(
            model, objective, optimizer, x_train, y_train, cfg, classification
        )
    state.engine_path, state.engine_fallback = (
        ("tape", why) if trainer is None else ("compiled", None)
    )
    engine = "tape" if cfg.engine == "tape" else "auto"
    for epoch in range(state.epoch + 1, cfg.epochs + 1):
        if schedule is not None:
            optimizer.lr = float(schedule(epoch - 1))
        if start_epoch is not None:
            start_epoch(epoch)
        t0 = time.perf_counter()
        order = rng.permutation(n) if cfg.shuffle else np.arange(n)
        loss_sum, hits = 0.0, 0
        if trainer is not None:
            loss_sum, hits = _compiled_epoch(
                trainer, model, order, epoch, n_batches, state, cfg, on_batch
            )
        for b in range(n_batches if trainer is None else 0):
            idx = order[b * bs : (b + 1) * bs]
            xb = x_train[idx].astype(dtype, copy=False)
            yb = y_train[idx].astype(dtype, copy=False)
            try:
                loss, out = train_step(model, objective, optimizer, xb, yb, rng, cfg)
            except NonFiniteLoss as e:
                raise NonFiniteLoss(
                    f"{e} at epoch {epoch}, batch {b + 1} of {n_batches} "
                    f"(step {state.step + 1}); {_HINT}"
                ) from None
            state.step += 1
            loss_sum += loss if cfg.loss_average == "batch" else loss * len(idx)
            if classification:
                hits += int((_classes(objective, out, fused) == yb.argmax(axis=1)).sum())
            if on_batch is not None:
                on_batch(b + 1, n_batches, loss)
        bad = nonfinite(model.named_parameters())
        if bad:
            raise NonFiniteLoss(
                f"parameters {', '.join(bad[:3])} are not finite after epoch {epoch} "
                f"(step {state.step}); {_HINT}"
            )
        seconds = time.perf_counter() - t0
        row = {
            "epoch": epoch,
            "step": state.step,
            "seconds": seconds,
            "lr": float(optimizer.lr),
            "train_loss": loss_sum / (n_batches if cfg.loss_average == "batch" else n),
            "train_acc": hits / n if classification else float("nan"),
            "val_loss": float("nan"),
            "val_acc": float("nan"),
        }
        evaluated = x_val is not None and len(x_val) > 0
        evaluated = evaluated and (epoch % max(cfg.eval_every, 1) == 0 or epoch == cfg.epochs)
        if evaluated:
            row["val_loss"], row["val_acc"] = evaluate(
                model,
                objective,
                x_val,
                y_val,
                classification=classification,
                batch_size=cfg.eval_batch_size,
                engine=engine,
            )
        for key in ("val_loss", "val_acc") if evaluated else ():
            if not math.isfinite(row[key]) and not (key == "val_acc" and not classification):
                raise NonFiniteLoss(f"validation {key[4:]} is {row[key]} at epoch {epoch}; {_HINT}")
        state.epoch = epoch
        improved = False
        value = row.get(judge.monitor, float("nan"))
        if evaluated or judge.monitor.startswith("train"):
            better = judge.better(value, state.best_value)
            if better:
                state.best_value, state.best_epoch, state.wait, improved = value, epoch, 0, True
                if es is not None and es.restore_best:
                    state.best_state = model.state_dict()
            else:
                state.wait += 1
        if es is not None and es.should_stop(state, value if evaluated else float("nan")):
            state.stopped_early = True
        for cb in callbacks or ():
            cb(state, row, improved)
        if state.stopped_early:
            break
    if es is not None and es.restore_best and state.best_state is not None:
        model.load_state_dict(state.best_state)
    return state
