"""A trained run leaves the lab: load_model, predict (arrays, CSV, images, --split), safetensors
round trips, ONNX of a trained run, and clear errors for damaged or mismatching checkpoints."""

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from neurons import tensorfile
from neurons.export import build_onnx, export_safetensors
from neurons.export import main as export_main
from neurons.inference import CheckpointError, load_model
from neurons.predict import main as predict_main
from neurons.predict import read_image
from neurons.record import read_json
from neurons.run import run_job
from neurons.schema import register_schema

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
register_schema()


def train(run: Path, *overrides: str) -> Path:
    """A tiny run recorded as `python -m neurons` records it (config saved in .hydra/)."""
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        cfg = compose(config_name="config", overrides=["train.progress=false", *overrides])
    (run / ".hydra").mkdir(parents=True)
    OmegaConf.save(cfg, run / ".hydra" / "config.yaml")
    assert run_job(cfg, run, progress=False)
    return run


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("runs")
    return {
        "iris": train(
            base / "iris",
            "arch=mlp_looping",
            "arch.skip=true",
            "dataset=iris",
            "dataset.val_split=0.2",
            "train.epochs=3",
        ),
        "digits": train(
            base / "digits",
            "arch=cnn_feedback",
            "arch.filters=2",
            "dataset=digits",
            "train.epochs=1",
            "dataset.normalize=standardize",
        ),
        "best": train(  # diverges after epoch 4: restore_best keeps an earlier epoch
            base / "best",
            "dataset=iris",
            "dataset.val_split=0.2",
            "train.epochs=8",
            "optimizer.lr=0.2",
            "train.early_stopping.enabled=true",
            "train.early_stopping.restore_best=true",
            "train.early_stopping.patience=10",
        ),
        "reg": train(
            base / "reg",
            "arch=mlp_plain",
            "dataset=xor",
            "dataset.task=regression",
            "dataset.normalize_targets=standardize",
            "train.epochs=2",
        ),
    }


def iris_raw(n=10):
    from sklearn.datasets import load_iris

    return load_iris().data[:n].astype(np.float32)


def run_predict(capsys, *args) -> tuple[int, str, str]:
    code = predict_main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


# ------------------------------------------------------------------------------ predict --split
@pytest.mark.parametrize("name", ["iris", "digits", "reg"])
def test_split_evaluation_reproduces_summary(runs, name, capsys):
    run = runs[name]
    summary = read_json(run / "summary.json")
    code, out, _ = run_predict(capsys, run, "--split", "val", "--json")
    assert code == 0
    val = json.loads(out)
    assert val["loss"] == pytest.approx(summary["final"]["val_loss"], rel=1e-12)
    if name == "reg":
        assert val["acc"] is None
    else:
        assert val["acc"] == summary["final"]["val_acc"]
    if summary["test"] is not None:  # iris carves val from train: test is its own split
        code, out, _ = run_predict(capsys, run, "--split", "test")
        assert code == 0
        acc = f"acc {summary['test']['acc']:.4f}"
        assert out.startswith("test: loss") and acc in out
        assert load_model(run).evaluate("test")["acc"] == summary["test"]["acc"]


def test_a_run_that_restored_its_best_epoch_loads_best(runs):
    run = runs["best"]
    summary = read_json(run / "summary.json")
    assert summary["best"]["epoch"] < summary["epochs_run"]
    p = load_model(run)
    assert p.checkpoint == run / "checkpoints" / "best.npz"
    val, test = p.evaluate("val"), p.evaluate("test")
    assert val["loss"] == pytest.approx(summary["best"]["val_loss"], rel=1e-12)
    assert val["acc"] == summary["best"]["val_acc"]
    assert test["acc"] == summary["test"]["acc"]
    last = load_model(run / "checkpoints" / "last.npz").evaluate("val")
    assert last["loss"] == pytest.approx(summary["final"]["val_loss"], rel=1e-12)


def test_probe_split_reproduces_the_runs_probes(runs):
    p = load_model(runs["iris"])
    probes = read_json(runs["iris"] / "summary.json")["probes"]
    assert probes["split"] == "val"
    for probe, kw in (("no_feedback", {"recurrent": False}), ("no_skip", {"skips": False})):
        res = p.evaluate("val", **kw)
        assert res["loss"] == pytest.approx(probes[probe]["loss"], rel=1e-12)
        assert res["acc"] == probes[probe]["acc"]


# ------------------------------------------------------------------------------ predict inputs
def test_predict_json_from_npy_and_csv(runs, tmp_path, capsys):
    run, x = runs["iris"], iris_raw()
    np.save(tmp_path / "x.npy", x)
    code, out, _ = run_predict(capsys, run, tmp_path / "x.npy", "--json")
    assert code == 0
    res = json.loads(out)
    assert list(res) == ["predictions", "probabilities"]
    p = load_model(run)
    np.testing.assert_array_equal(res["predictions"], p.predict(x))
    np.testing.assert_allclose(res["probabilities"], p.predict_proba(x), rtol=0, atol=1e-7)
    np.testing.assert_allclose(np.sum(res["probabilities"], axis=1), 1, rtol=1e-5)
    csv = "sepal length,sepal width,petal length,petal width\n"
    csv += "\n".join(",".join(f"{v:.1f}" for v in row) for row in x)
    (tmp_path / "x.csv").write_text(csv + "\n")
    code, out2, _ = run_predict(capsys, run, tmp_path / "x.csv", "--json")
    assert code == 0 and json.loads(out2) == res
    # a header naming the run's feature columns: they are picked by name, in the run's order
    names = p.preprocessing.feature_names
    assert names is not None and len(names) == 4
    order = [3, 0, 2, 1]
    lines = ["id,species," + ",".join(names[k] for k in order)]
    lines += [f"{i},setosa," + ",".join(f"{row[k]:.1f}" for k in order) for i, row in enumerate(x)]
    (tmp_path / "named.csv").write_text("\n".join(lines) + "\n")
    code, out3, _ = run_predict(capsys, run, tmp_path / "named.csv", "--json")
    assert code == 0 and json.loads(out3) == res
    code, human, _ = run_predict(capsys, run, tmp_path / "x.npy")
    classes = p.classes
    assert human.splitlines()[0].startswith(f"[0]: {classes[res['predictions'][0]]} (p=")


def test_predict_regression_outputs_in_target_units(runs, tmp_path, capsys):
    run = runs["reg"]
    x = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=np.float32)
    np.save(tmp_path / "x.npy", x)
    code, out, _ = run_predict(capsys, run, tmp_path / "x.npy", "--json")
    assert code == 0
    res = json.loads(out)
    assert list(res) == ["outputs"]
    p = load_model(run)
    ds = p.dataset()
    raw = p.network.predict(x)  # xor: normalize none, so raw inputs are the network inputs
    np.testing.assert_allclose(res["outputs"], raw * ds.target_scale + ds.target_shift, rtol=1e-6)


def test_predict_images_are_converted_resized_and_scaled(runs, tmp_path, capsys):
    from PIL import Image
    from sklearn.datasets import load_digits

    run = runs["digits"]
    p = load_model(run)
    imgs = load_digits().images[:3]  # 8x8, values 0..16
    paths = []
    for i, im in enumerate(imgs):
        rgb = np.repeat((im * 255 / 16).round().astype(np.uint8)[:, :, None], 3, axis=2)
        big = Image.fromarray(rgb, "RGB").resize((16, 16), Image.Resampling.NEAREST)
        big.save(tmp_path / f"d{i}.png")
        paths.append(tmp_path / f"d{i}.png")
    a = read_image(paths[0], p)
    assert a.shape == (1, 8, 8) and 0 <= a.min() and a.max() <= 16.0 + 1e-5
    np.testing.assert_allclose(a[0], imgs[0], atol=16 / 255 + 1e-5)  # grey, 8x8 again, 0..16
    code, out, _ = run_predict(capsys, run, *paths, "--json")
    assert code == 0
    res = json.loads(out)
    want = p.predict_proba(np.stack([read_image(q, p) for q in paths]))
    np.testing.assert_allclose(res["probabilities"], want, atol=1e-7)
    code, human, _ = run_predict(capsys, run, *paths)
    assert human.splitlines()[1].startswith(f"{paths[1]}: ")


def test_predict_rejects_bad_inputs(runs, tmp_path, capsys):
    np.save(tmp_path / "wrong.npy", np.zeros((3, 5), np.float32))
    code, _, err = run_predict(capsys, runs["iris"], tmp_path / "wrong.npy")
    assert code == 1 and "wrong.npy" in err and "(4,)" in err and "(3, 5)" in err
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    code, _, err = run_predict(capsys, runs["iris"], tmp_path / "obj.npy")
    assert code == 1 and "obj.npy" in err
    (tmp_path / "x.png").write_bytes(b"not an image")
    code, _, err = run_predict(capsys, runs["iris"], tmp_path / "x.png")
    assert code == 1 and "not images" in err


# ------------------------------------------------------------------------------ safetensors
def test_safetensors_round_trip_predicts_identically(runs, tmp_path):
    from safetensors.numpy import load_file, save_file

    for name in ("iris", "digits", "reg"):
        p = load_model(runs[name])
        out = export_safetensors(p, tmp_path / f"{name}.safetensors")
        q = load_model(out)
        assert q.config is None and q.card == p.card
        x = p.dataset().x_test if name != "reg" else np.eye(2, dtype=np.float32)
        np.testing.assert_array_equal(
            q.outputs(x, preprocessed=True), p.outputs(x, preprocessed=True)
        )
        # the reference implementation reads our file and we read its file
        ref = load_file(out)
        ours, meta = tensorfile.load(out)
        assert set(ref) == set(ours) == set(p.network.state_dict())
        for k in ref:
            np.testing.assert_array_equal(ref[k], ours[k])
        assert json.loads(meta["neurons"])["model"]["arch"]["name"] == p.card.arch["name"]
        save_file(ref, tmp_path / "ref.safetensors", metadata=meta)
        r = load_model(tmp_path / "ref.safetensors")
        np.testing.assert_array_equal(
            r.outputs(x, preprocessed=True), q.outputs(x, preprocessed=True)
        )
    # the export carries the preprocessing: raw inputs and ONNX work from it alone
    raw = iris_raw()
    q = load_model(tmp_path / "iris.safetensors")
    np.testing.assert_array_equal(q.predict_proba(raw), load_model(runs["iris"]).predict_proba(raw))
    sess = ort.InferenceSession(
        build_onnx(q).SerializeToString(), providers=["CPUExecutionProvider"]
    )
    np.testing.assert_allclose(sess.run(None, {"input": raw})[0], q.predict_proba(raw), atol=1e-5)
    with pytest.raises(CheckpointError, match="no dataset config"):
        q.evaluate("test")


def test_export_cli_onnx_of_a_trained_run_equals_predict(runs, tmp_path, capsys):
    run = runs["digits"]
    assert export_main([str(run), "--format", "onnx", "--out", str(tmp_path / "m.onnx")]) == 0
    assert export_main([str(run / "checkpoints" / "last.npz"), "--format", "safetensors"]) == 0
    assert (run / "checkpoints" / "model.safetensors").is_file()
    capsys.readouterr()
    assert export_main([str(run), "--format", "safetensors", "--probe", "no_skip"]) == 1
    assert "--probe: applies to --format onnx only" in capsys.readouterr().err
    assert export_main([str(tmp_path / "nope"), "--format", "onnx"]) == 1
    assert "nope: no such file or run directory" in capsys.readouterr().err
    p = load_model(run)
    from sklearn.datasets import load_digits

    x = load_digits().images[:50, None].astype(np.float32)
    sess = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    probs, preds = sess.run(None, {"input": x})
    np.testing.assert_allclose(probs, p.predict_proba(x), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(preds, p.predict(x))
    meta = {m.key: m.value for m in __import__("onnx").load(tmp_path / "m.onnx").metadata_props}
    assert json.loads(meta["classes"]) == p.classes
    assert "standardize" in meta["input"]


# ------------------------------------------------------------------------------ bad checkpoints
def _copy_run(run: Path, dst: Path) -> Path:
    shutil.copytree(run, dst)
    return dst


def test_truncated_checkpoint_names_the_file(runs, tmp_path):
    run = _copy_run(runs["iris"], tmp_path / "r")
    ckpt = run / "checkpoints" / "last.npz"
    ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt") as e:
        load_model(run)
    assert str(ckpt) in str(e.value)
    st = export_safetensors(load_model(runs["iris"]), tmp_path / "m.safetensors")
    st.write_bytes(st.read_bytes()[:-7])
    with pytest.raises(CheckpointError, match="truncated") as e:
        load_model(st)
    assert str(st) in str(e.value)


def test_tampered_checkpoint_names_the_file(runs, tmp_path):
    run = _copy_run(runs["iris"], tmp_path / "r")
    ckpt = run / "checkpoints" / "last.npz"
    blob = bytearray(ckpt.read_bytes())
    with zipfile.ZipFile(ckpt) as z:  # flip one byte inside the first stored weight
        info = z.getinfo("model.param.layers.0.w.npy")
    at = info.header_offset + 30 + len(info.filename) + len(info.extra) + 200
    blob[at] ^= 0xFF
    ckpt.write_bytes(bytes(blob))
    with pytest.raises(CheckpointError) as e:
        load_model(run)
    assert str(ckpt) in str(e.value) and "CRC" in str(e.value)
    # a pickled object array in the file is refused, and its code never runs
    marker = tmp_path / "pwned"
    arrays = dict(np.load(runs["iris"] / "checkpoints" / "last.npz", allow_pickle=False))
    arrays["model.param.layers.0.w"] = np.array([_Evil(str(marker))], dtype=object)
    with open(ckpt, "wb") as f:
        np.savez(f, **arrays)
    with pytest.raises(CheckpointError, match="tampered") as e:
        load_model(ckpt)
    assert str(ckpt) in str(e.value) and not marker.exists()
    # safetensors whose header lies about a tensor's size
    st = export_safetensors(load_model(runs["iris"]), tmp_path / "m.safetensors")
    data = st.read_bytes()
    n = int.from_bytes(data[:8], "little")
    header = data[8 : 8 + n].replace(b'"shape":[4,', b'"shape":[5,', 1)
    st.write_bytes(data[:8] + header + data[8 + n :])
    with pytest.raises(CheckpointError, match="tampered") as e:
        load_model(st)
    assert str(st) in str(e.value)


def test_a_config_with_python_tags_is_refused_without_running_them(runs, tmp_path):
    run = _copy_run(runs["iris"], tmp_path / "r")
    marker = tmp_path / "pwned"
    cfg = run / ".hydra" / "config.yaml"
    cfg.write_text(f'x: !!python/object/apply:os.system ["touch {marker}"]\n' + cfg.read_text())
    with pytest.raises(CheckpointError, match="unreadable config") as e:
        load_model(run)
    assert str(cfg) in str(e.value) and not marker.exists()


class _Evil:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def test_wrong_architecture_names_the_file_and_the_mismatch(runs, tmp_path):
    run = _copy_run(runs["iris"], tmp_path / "r")
    cfg = OmegaConf.load(run / ".hydra" / "config.yaml")
    cfg.arch.width = 7
    OmegaConf.save(cfg, run / ".hydra" / "config.yaml")
    ckpt = run / "checkpoints" / "last.npz"
    with pytest.raises(CheckpointError, match="does not match the architecture") as e:
        load_model(ckpt)
    msg = str(e.value)
    assert str(ckpt) in msg and "param.layers.0.w" in msg and "(4, 25)" in msg and "(4, 7)" in msg
    # a checkpoint of another architecture altogether: names the missing/unexpected tensors
    shutil.copy(runs["digits"] / "checkpoints" / "last.npz", ckpt)
    with pytest.raises(CheckpointError, match="missing|unexpected") as e:
        load_model(run)
    assert str(ckpt) in str(e.value)


def test_not_a_model(tmp_path):
    with pytest.raises(CheckpointError, match="no such file"):
        load_model(tmp_path / "nothing.npz")
    (tmp_path / "x.npz").write_bytes(b"")
    with pytest.raises(CheckpointError, match="inside a run directory"):
        load_model(tmp_path / "x.npz")
    with pytest.raises(CheckpointError, match="not a run directory"):
        load_model(tmp_path)


def test_prediction_and_export_never_import_hydra(runs, tmp_path):
    code = (
        "import sys, numpy as np\n"
        "from neurons.inference import load_model\n"
        "from neurons.export import build_onnx\n"
        f"p = load_model({str(runs['iris'])!r})\n"
        "p.predict(np.ones((2, 4), np.float32)); p.evaluate('test'); build_onnx(p)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'hydra'))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.slow
def test_console_entry_points_end_to_end(runs, tmp_path):
    """`python -m neurons.predict` / `python -m neurons.export` as a user runs them."""
    run = runs["iris"]
    np.save(tmp_path / "x.npy", iris_raw(4))
    env = {**os.environ, "NUMBA_NUM_THREADS": "2"}

    def cli(mod, *args):
        p = subprocess.run(
            [sys.executable, "-m", mod, *map(str, args)],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            env=env,
            timeout=300,
        )
        assert p.returncode == 0, p.stderr
        return p.stdout

    summary = read_json(run / "summary.json")
    res = json.loads(cli("neurons.predict", run, "--split", "test", "--json"))
    assert res["acc"] == summary["test"]["acc"]
    script = Path(sys.executable).parent / "neurons-export"  # the console script
    p = subprocess.run(
        [str(script), str(run), "--format", "onnx", "--out", str(tmp_path / "m.onnx")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=300,
    )
    assert p.returncode == 0, p.stderr
    out = Path(p.stdout.strip())
    pred = json.loads(cli("neurons.predict", run, tmp_path / "x.npy", "--json"))
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    probs, _ = sess.run(None, {"input": iris_raw(4)})
    np.testing.assert_allclose(probs, pred["probabilities"], rtol=1e-5, atol=1e-5)
