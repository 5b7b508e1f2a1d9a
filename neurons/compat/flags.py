"""The quirk switches of `compat` mode: one field per behaviour of the original Rust crate.

`CompatConfig` is both the Hydra schema of the `compat` config group and the object the engine
reads; `compat=none` turns every switch off (today's textbook engine), `compat=neurons` all on.
No engine code here.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

ADAM_STEPS = ("global", "epoch")

# what each switch reproduces when on (also the order the run records list them in)
DESCRIPTIONS: dict[str, str] = {
    "init": "every weight and bias drawn from U(-1, 1), no fan-in scaling",
    "softmax_backward": "softmax output delta (n - 2) * sum(p^2) * g instead of the Jacobian",
    "objective": "the crate's losses and gradients (CE clip 1e-6 with gradient p - y, ...)",
    "grad_sum": "minibatch gradients summed over the samples, not averaged",
    "adam_step": "optimizer step counter t = epoch (1-based), not the global step",
    "skip_weight_grad": "a skip receiver's weight gradient uses its input without the skip",
    "loop_backward": "loop backward: one pass at the combined (merged) values, no unrolling",
    "feedback_coupling": "feedback copies keep their own optimizer state, then are averaged",
    "early_stopping": "stop when val loss rose strictly over the last `patience` epochs",
    "argmax_last": "accuracy argmax ties go to the last index",
    "no_reshuffle": "the same minibatches in the same order every epoch",
    "batch_mean_loss": "epoch train loss = mean over batches of the batch-mean loss",
    "data": "the crate's iris.csv: rows 35 and 38 as in UCI's file, not sklearn's corrected copy",
}


@dataclass
class CompatConfig:
    """Each switch on reproduces one quirk of the crate (see DESCRIPTIONS); all off = none."""

    name: str = "none"  # a label for the preset (none | neurons | a custom ablation name)
    init: bool = False
    softmax_backward: bool = False
    objective: bool = False
    grad_sum: bool = False
    adam_step: str = "global"  # global | epoch
    skip_weight_grad: bool = False
    loop_backward: bool = False
    feedback_coupling: bool = False
    early_stopping: bool = False
    argmax_last: bool = False
    no_reshuffle: bool = False
    batch_mean_loss: bool = False
    data: bool = False
    ablate: str = ""  # ablation: one switch name to turn off (its textbook behaviour), "" = none

    @classmethod
    def all_on(cls, name: str = "neurons") -> CompatConfig:
        """Every quirk on: what the original crate computes."""
        kw: dict[str, Any] = {f.name: True for f in fields(cls) if f.type in (bool, "bool")}
        return cls(name=name, adam_step="epoch", **kw)

    @classmethod
    def from_mapping(cls, m: Any, path: str = "compat") -> CompatConfig:
        """From a mapping (a DictConfig or dict); errors name `compat.<key>`."""
        if m is None:
            return cls()
        d = dict(m)
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(d) - set(known))
        if unknown:
            raise ValueError(
                f"{path}: unknown key(s) {unknown}; expected a subset of {sorted(known)}"
            )
        for key, value in d.items():
            if key == "adam_step":
                if value not in ADAM_STEPS:
                    raise ValueError(
                        f"{path}.adam_step: expected one of {', '.join(ADAM_STEPS)}, "
                        f"found {value!r}"
                    )
            elif key == "name":
                if not isinstance(value, str):
                    raise ValueError(f"{path}.name: expected a string, found {value!r}")
            elif key == "ablate":
                if value not in ("", None, *DESCRIPTIONS):
                    raise ValueError(
                        f"{path}.ablate: expected one of {', '.join(DESCRIPTIONS)} (or empty), "
                        f"found {value!r}"
                    )
            elif not isinstance(value, bool):
                raise ValueError(f"{path}.{key}: expected true or false, found {value!r}")
        flags = cls(**{**d, "ablate": d.get("ablate") or ""})
        if flags.ablate:  # the ablation: that one quirk back to the textbook engine
            setattr(flags, flags.ablate, cls.__dataclass_fields__[flags.ablate].default)
        return flags

    def on(self) -> list[str]:
        """Names of the switches that are on, in DESCRIPTIONS order."""
        out = []
        for key in DESCRIPTIONS:
            value = getattr(self, key)
            if (key == "adam_step" and value == "epoch") or value is True:
                out.append(key)
        return out

    def any(self) -> bool:
        return bool(self.on())

    def record(self) -> dict[str, Any]:
        """JSON-ready: the preset name, every switch's value and the list of those on."""
        return {**asdict(self), "on": self.on()}
