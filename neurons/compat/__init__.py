"""`compat` mode: reproduce the original Rust crate's numbers, one switchable quirk at a time.

`CompatConfig` holds the switches (the `compat` config group), `engine.apply` turns a built
experiment into the crate's, and `python -m neurons.compat replay <fixture.json>` retrains
from a fixture of the real crate's numbers through the same engine switches.
"""

from neurons.compat.flags import DESCRIPTIONS, CompatConfig

__all__ = ["DESCRIPTIONS", "CompatConfig"]
