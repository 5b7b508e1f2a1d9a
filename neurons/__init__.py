"""neurons: a declarative, config-driven experiment runner for neural-network research.

The engine (kernels -> layers -> graph -> train) is plain numpy/numba; Hydra only appears in
`neurons.__main__` and `neurons.config`. Nothing here imports PyTorch.
"""

__version__ = "0.1.0"
