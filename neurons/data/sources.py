"""Where the standard datasets live: file names, public mirrors, published checksums, system dirs.

Pure data (module-level constants tests may monkeypatch); the search order is in `builtin.py`.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Remote:
    """One downloadable file: its name, checksum ('md5:...' / 'sha256:...') and mirror base URLs."""

    filename: str
    checksum: str
    mirrors: tuple[str, ...]

    def urls(self) -> list[str]:
        return [m.rstrip("/") + "/" + self.filename for m in self.mirrors]


# IDX stems; a file is found as `<stem>.gz` or `<stem>` (raw).
IDX_FILES: dict[str, str] = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}

# MD5s as published by torchvision / the MNIST mirrors (the original yann.lecun.com files).
MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)
# MD5s as published in the Fashion-MNIST README (github.com/zalandoresearch/fashion-mnist).
FASHION_MIRRORS = (
    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
)

REMOTES: dict[str, dict[str, Remote]] = {
    "mnist": {
        "train_images": Remote(
            "train-images-idx3-ubyte.gz", "md5:f68b3c2dcbeaaa9fbdd348bbdeb94873", MNIST_MIRRORS
        ),
        "train_labels": Remote(
            "train-labels-idx1-ubyte.gz", "md5:d53e105ee54ea40749a09fcbcd1e9432", MNIST_MIRRORS
        ),
        "test_images": Remote(
            "t10k-images-idx3-ubyte.gz", "md5:9fb629c4189551a2d022fa330f9573f3", MNIST_MIRRORS
        ),
        "test_labels": Remote(
            "t10k-labels-idx1-ubyte.gz", "md5:ec29112dd5afa0611ce80d1b7f02629c", MNIST_MIRRORS
        ),
    },
    "fashion_mnist": {
        "train_images": Remote(
            "train-images-idx3-ubyte.gz", "md5:8d4fb7e6c68d591d4c3dfef9ec88bf0d", FASHION_MIRRORS
        ),
        "train_labels": Remote(
            "train-labels-idx1-ubyte.gz", "md5:25c81989df183df01b3e8a0aad5dffbe", FASHION_MIRRORS
        ),
        "test_images": Remote(
            "t10k-images-idx3-ubyte.gz", "md5:bef4ecab320f06d8554ea6380940ec79", FASHION_MIRRORS
        ),
        "test_labels": Remote(
            "t10k-labels-idx1-ubyte.gz", "md5:bb300cfdad3c16e7a12a480ee83cd310", FASHION_MIRRORS
        ),
    },
    # The binary version (never the pickled python one), MD5 as published on
    # https://www.cs.toronto.edu/~kriz/cifar.html ("CIFAR-10 binary version").
    "cifar10": {
        "archive": Remote(
            "cifar-10-binary.tar.gz",
            "md5:c32a1d4ab5d03f1284b67883e8d87530",
            ("https://www.cs.toronto.edu/~kriz/",),
        ),
    },
}

CIFAR_DIR = "cifar-10-batches-bin"  # the directory inside the archive
CIFAR_TRAIN = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
CIFAR_TEST = "test_batch.bin"

# Read-only system locations searched after the data directory (Debian: dataset-fashion-mnist).
SYSTEM_DIRS: dict[str, tuple[str, ...]] = {
    "mnist": ("/usr/share/datasets/mnist",),
    "fashion_mnist": ("/usr/share/datasets/fashion-mnist",),
    "cifar10": ("/usr/share/datasets/cifar10", "/usr/share/datasets/cifar-10"),
}

CLASS_NAMES: dict[str, list[str]] = {
    "mnist": [str(i) for i in range(10)],
    "fashion_mnist": [
        "T-shirt/top",
        "Trouser",
        "Pullover",
        "Dress",
        "Coat",
        "Sandal",
        "Shirt",
        "Sneaker",
        "Bag",
        "Ankle boot",
    ],
    "cifar10": [
        "airplane",
        "automobile",
        "bird",
        "cat",
        "deer",
        "dog",
        "frog",
        "horse",
        "ship",
        "truck",
    ],
}
