"""Iris and digits are read from the files scikit-learn ships, without importing sklearn: the
arrays must equal what `sklearn.datasets.load_iris` / `load_digits` return (the obvious twin)."""

import subprocess
import sys

import numpy as np
import pytest
from sklearn.datasets import load_digits, load_iris

from neurons.data import builtin
from neurons.data.config import DatasetConfig


def _raw(name: str, monkeypatch) -> builtin.Raw:
    seen = {}
    monkeypatch.setattr(builtin, "fraction_split", lambda raw, cfg, what: seen.setdefault(0, raw))
    getattr(builtin, f"_{name}")(DatasetConfig(name=name))
    return seen[0]


def test_iris_equals_sklearn_load_iris(monkeypatch):
    raw, ref = _raw("iris", monkeypatch), load_iris()
    np.testing.assert_array_equal(raw.x_train, ref.data.astype(np.float32))
    np.testing.assert_array_equal(raw.y_train, ref.target)
    assert raw.classes == list(ref.target_names) and raw.feature_names == ref.feature_names


def test_digits_equals_sklearn_load_digits(monkeypatch):
    raw, ref = _raw("digits", monkeypatch), load_digits()
    np.testing.assert_array_equal(raw.x_train, ref.images[:, None].astype(np.float32))
    np.testing.assert_array_equal(raw.y_train, ref.target)


@pytest.mark.parametrize("name", ["iris", "digits"])
def test_loading_does_not_import_sklearn(name):
    code = (
        "import sys; from neurons.data import load_dataset; from neurons.data.config import "
        f"DatasetConfig; d = load_dataset(DatasetConfig(name={name!r})); "
        "print(len(d.x_train), 'sklearn' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    n, imported = out.stdout.split()
    assert int(n) > 0 and imported == "False"
