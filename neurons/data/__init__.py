"""Datasets for `neurons`: configs, readers, a verified downloader and `load_dataset`.

Produces plain float32 numpy arrays; it knows nothing of models, training or Hydra.
"""

from .builtin import DATASETS
from .config import DatasetConfig, validate_config
from .errors import DatasetError
from .fetch import data_dir, fetch
from .loaders import Dataset, load_dataset
from .readers import read_cifar_bin, read_csv_dataset, read_idx
from .spec import DatasetSpec, Raw

__all__ = [
    "DATASETS",
    "Dataset",
    "DatasetConfig",
    "DatasetError",
    "DatasetSpec",
    "Raw",
    "data_dir",
    "fetch",
    "load_dataset",
    "read_cifar_bin",
    "read_csv_dataset",
    "read_idx",
    "validate_config",
]
