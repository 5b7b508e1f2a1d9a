"""Optimizer quirks of the crate: step counter = epoch, and feedback copies coupled by mean.

`CrateOptimizer` wraps one of our optimizers. With `adam_step=epoch` every step of an epoch uses
t = epoch (1-based) in the bias corrections; with coupling groups (feedback copies that keep their
own optimizer state) it replaces each group's weights by their mean after every update.
The update formulas themselves are our optimizers'; the crate's SGDM is plain SGD while
t = 1, i.e. through the whole first epoch.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from neurons.optim import Optimizer, SGDMomentum


class CrateOptimizer:
    """Delegates to `inner`; see the module docstring. `start_epoch(e)` is called by `fit`."""

    def __init__(
        self,
        inner: Optimizer,
        epoch_step: bool = False,
        groups: list[list[np.ndarray]] | None = None,
    ) -> None:
        self.inner = inner
        self.epoch_step = bool(epoch_step)
        self.groups = [g for g in (groups or []) if len(g) > 1]
        self.epoch = 1
        self.name = inner.name

    @property
    def lr(self) -> float:
        return self.inner.lr

    @lr.setter
    def lr(self, value: float) -> None:
        self.inner.lr = value

    @property
    def params(self) -> dict[str, np.ndarray]:
        return self.inner.params

    @property
    def t(self) -> int:
        return self.inner.t

    def start_epoch(self, epoch: int) -> None:
        """Epoch `epoch` (1-based) is about to start."""
        self.epoch = int(epoch)

    def step(self, grads: Mapping[str, np.ndarray]) -> None:
        if self.epoch_step:
            self.inner.t = self.epoch - 1  # step() adds one: every batch of the epoch uses t=epoch
            if self.epoch == 1 and isinstance(self.inner, SGDMomentum):
                self.inner.state["momentum_buffer"].clear()  # the crate: v = g while t = 1
        self.inner.step(grads)
        couple(self.groups)

    def state_dict(self) -> dict[str, np.ndarray]:
        return self.inner.state_dict()

    def load_state_dict(self, d: Mapping[str, np.ndarray]) -> None:
        self.inner.load_state_dict(d)


def couple(groups: list[list[np.ndarray]]) -> None:
    """Overwrite every array of each group with the group's arithmetic mean (in place)."""
    for group in groups:
        total = group[0].copy()
        for a in group[1:]:
            total += a
        mean = total / total.dtype.type(len(group))
        for a in group:
            np.copyto(a, mean)
