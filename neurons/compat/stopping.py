"""The crate's early-stopping rule, as an `EarlyStopping` the training loop can use.

At the end of epoch e > patience it looks at the last `patience` validation losses and stops
when every one of their patience - 1 epoch-to-epoch changes is an increase (the doc comment's
"no improvement for patience epochs" is not what the crate does). Not a training loop.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from neurons.train import EarlyStopping, TrainState


@dataclass
class CrateEarlyStopping(EarlyStopping):
    """Stop when the monitored loss rose strictly at each of the last patience - 1 steps."""

    history: list[float] = field(default_factory=list)

    def should_stop(self, state: TrainState, value: float) -> bool:
        if not math.isnan(value):
            self.history.append(float(value))
        tau = self.patience
        if len(self.history) <= tau:
            return False
        last = self.history[-tau:]
        return all(b > a for a, b in zip(last, last[1:], strict=False))
