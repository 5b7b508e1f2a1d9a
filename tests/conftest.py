"""Shared fixtures: a seeded generator per test and strict floating-point error checking."""

import numpy as np
import pytest


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture(autouse=True)
def _strict_fp():
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        yield
