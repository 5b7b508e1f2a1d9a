"""`python -m neurons.predict <run dir or checkpoint> <input>`: predictions from a trained model.

Inputs: `.npy` (no pickle), `.csv` (numeric, optional header) or image files (PNG/JPEG, read
with Pillow, converted to the run's channels and size, scaled to its pixel range); `--split
test|val` evaluates the run's own split instead. `--json` prints one machine-readable object.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np

from neurons.inference import CheckpointError, Predictor, load_model

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff")


class InputError(ValueError):
    """An input file cannot be turned into samples; the message names the file."""


def read_npy(path: Path) -> np.ndarray:
    try:
        x = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise InputError(f"{path}: not a readable .npy array ({e})") from None
    if not isinstance(x, np.ndarray) or not np.issubdtype(x.dtype, np.number):
        raise InputError(f"{path}: expected a numeric array, found dtype {getattr(x, 'dtype', x)}")
    return x.astype(np.float32)


def read_csv(path: Path, feature_names: list[str] | None = None) -> np.ndarray:
    """Numeric rows. A first row that is not numeric is a header: when it names every one of
    the run's feature columns (`feature_names`), those columns are taken in the run's order and
    the others (labels, ids, targets) ignored; otherwise the header is skipped."""
    try:
        with path.open(newline="") as f:
            rows = [r for r in csv.reader(f) if r and any(c.strip() for c in r)]
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: cannot read ({e})") from None
    cols: list[int] | None = None
    if rows and not all(_is_number(c) for c in rows[0]):
        header = [c.strip() for c in rows[0]]
        rows = rows[1:]
        if feature_names and all(n in header for n in feature_names):
            cols = [header.index(n) for n in feature_names]
    if not rows:
        raise InputError(f"{path}: no data rows")
    width = len(rows[0])
    use = cols if cols is not None else list(range(width))
    out = np.empty((len(rows), len(use)), dtype=np.float32)
    for i, r in enumerate(rows):
        if len(r) != width:
            raise InputError(f"{path}: data row {i + 1} has {len(r)} columns, expected {width}")
        for j, c in enumerate(use):
            if not _is_number(r[c]):
                raise InputError(
                    f"{path}: data row {i + 1}, column {c + 1}: {r[c]!r} is not a number"
                )
            out[i, j] = float(r[c])
    return out


def _is_number(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True


def read_image(path: Path, p: Predictor) -> np.ndarray:
    """One image as a raw sample (C, H, W) with values in the dataset's range 0..pixel_max."""
    prep = p.preprocessing
    if len(prep.raw_shape) != 3 or prep.pixel_max is None:
        raise InputError(
            f"{path}: this model takes samples of shape {prep.raw_shape}, not images; "
            f"use a .npy or .csv file"
        )
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - Pillow ships with matplotlib
        raise InputError(f"{path}: reading images needs Pillow (pip install pillow)") from None
    c, h, w = prep.raw_shape
    if c not in (1, 3):
        raise InputError(f"{path}: the model takes {c}-channel images; only 1 or 3 are readable")
    try:
        with Image.open(path) as im:
            im = im.convert("L" if c == 1 else "RGB")
            if im.size != (w, h):  # shrink by area averaging (as dataset.downsample does)
                shrink = im.size[0] >= w and im.size[1] >= h
                im = im.resize(
                    (w, h), Image.Resampling.BOX if shrink else Image.Resampling.BILINEAR
                )
            a = np.asarray(im, dtype=np.float32)  # (H, W) or (H, W, 3), 0..255
    except OSError as e:
        raise InputError(f"{path}: not a readable image ({e})") from None
    a = a[None] if c == 1 else a.transpose(2, 0, 1)  # (C, H, W)
    return a * np.float32(prep.pixel_max / 255.0)


def read_inputs(paths: list[Path], p: Predictor) -> np.ndarray:
    """Raw samples (N, *raw_shape) from one .npy/.csv file or any number of image files."""
    parts = []
    for path in paths:
        if not path.is_file():
            raise InputError(f"{path}: no such file")
        suffix = path.suffix.lower()
        if suffix == ".npy":
            x = read_npy(path)
        elif suffix == ".csv":
            x = read_csv(path, p.preprocessing.feature_names)
        elif suffix in IMAGE_SUFFIXES:
            x = read_image(path, p)[None]
        else:
            raise InputError(
                f"{path}: expected .npy, .csv or an image ({', '.join(IMAGE_SUFFIXES)}), "
                f"found {suffix or 'no suffix'}"
            )
        raw = p.preprocessing.raw_shape
        if tuple(x.shape) == tuple(raw) or (x.ndim == 1 and x.size == math.prod(raw)):
            x = x.reshape(1, *raw)  # a single sample
        if x.ndim < 2 or math.prod(x.shape[1:]) != math.prod(raw):
            raise InputError(
                f"{path}: expected samples of shape {tuple(raw)} ({math.prod(raw)} values each), "
                f"found an array of shape {x.shape}"
            )
        parts.append(x.reshape(len(x), *raw))
    return np.concatenate(parts)


def result(p: Predictor, x: np.ndarray, **kw: Any) -> dict[str, Any]:
    """The `--json` object: predictions and probabilities, or regression outputs."""
    y = p.outputs(x, **kw)
    if p.classification:
        return {"predictions": y.argmax(axis=1).tolist(), "probabilities": y.tolist()}
    return {"outputs": y.tolist()}


def _human(p: Predictor, res: dict[str, Any], names: list[str]) -> str:
    lines = []
    if p.classification:
        classes = p.classes or [str(i) for i in range(len(res["probabilities"][0]))]
        for i, (k, probs) in enumerate(zip(res["predictions"], res["probabilities"], strict=True)):
            top = ", ".join(f"{classes[j]} {probs[j]:.4f}" for j in np.argsort(probs)[::-1][:3])
            lines.append(f"{names[i]}: {classes[k]} (p={probs[k]:.4f}; top: {top})")
    else:
        for i, row in enumerate(res["outputs"]):
            lines.append(f"{names[i]}: " + " ".join(f"{v:.6g}" for v in row))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m neurons.predict",
        description="Predict with a trained model, or evaluate it on its run's test/val split.",
    )
    ap.add_argument("model", help="a run directory, a checkpoint .npz or a .safetensors export")
    ap.add_argument("inputs", nargs="*", type=Path, help=".npy, .csv or image file(s)")
    ap.add_argument("--split", choices=("test", "val"), help="evaluate the run's own split")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument(
        "--probe",
        default="none",
        choices=("none", "no_feedback", "no_skip"),
        help="switch recurrence or skips off, as the run's probes do",
    )
    args = ap.parse_args(argv)
    if bool(args.inputs) == bool(args.split):
        ap.error("give either input file(s) or --split test|val")
    kw = {"recurrent": args.probe != "no_feedback", "skips": args.probe != "no_skip"}
    try:
        p = load_model(args.model)
        if args.split:
            res = p.evaluate(args.split, **kw)
            if args.json:
                print(json.dumps(res))
            else:
                acc = "" if res["acc"] is None else f"  acc {res['acc']:.4f}"
                print(f"{res['split']}: loss {res['loss']:.6g}{acc}  (n={res['n']})")
            return 0
        x = read_inputs(args.inputs, p)
        res = result(p, x, **kw)
    except (CheckpointError, InputError, ValueError) as e:
        print(f"neurons.predict: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(res))
    else:
        names = []
        for path in args.inputs:
            n = 1 if path.suffix.lower() in IMAGE_SUFFIXES else None
            names += [str(path)] if n == 1 else []
        if len(names) != len(x):
            names = [f"[{i}]" for i in range(len(x))]
        print(_human(p, res, names))
    return 0


if __name__ == "__main__":
    sys.exit(main())
