"""Shared fixtures: a seeded generator per test and strict floating-point error checking."""

import os

os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")  # as neurons/__init__.py, before numpy

import numpy as np  # noqa: E402
import pytest


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture(autouse=True)
def _strict_fp():
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        yield
