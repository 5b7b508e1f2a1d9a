"""neurons: a declarative, config-driven experiment runner for neural-network research.

The engine (kernels -> layers -> graph -> train) is plain numpy/numba; Hydra only appears in
`neurons.__main__`, `neurons.config`, `neurons.searchpath` and the notebook API `neurons.api`
(`neurons.compose`, `neurons.fit`, `neurons.load_sweep`; `neurons.load_model` comes from
`neurons.inference` and needs no Hydra). Nothing here imports PyTorch.
"""

import os

# OpenBLAS threads busy-wait ~0.1 s after every call and then fight numba's thread pool for the
# cores (measured: 2-5x slower kernels on 2 cores). Only effective before numpy is first imported.
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

__version__ = "0.1.0"

# The notebook API (neurons/api.py), imported on first use so `import neurons` stays light.
_API = ("compose", "fit", "load_sweep", "Run", "RunFailed", "Sweep")
_INFERENCE = ("load_model", "Predictor", "CheckpointError")
__all__ = ["__version__", *_API, *_INFERENCE]


def __getattr__(name: str) -> object:  # PEP 562: load neurons.api / neurons.inference on first use
    if name in _API:
        from neurons import api

        return getattr(api, name)
    if name in _INFERENCE:
        from neurons import inference

        return getattr(inference, name)
    raise AttributeError(f"module 'neurons' has no attribute {name!r}")
