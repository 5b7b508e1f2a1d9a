"""`python -m neurons.compat replay <fixture.json> [--json]`: retrain a crate fixture here.

`python -m neurons.compat ablation <grid sweep> <ablation sweep> --out FILE.md`: the paired
reading of a compat ablation (see neurons.compat.ablation).

Prints the per-epoch train_loss / val_loss / val_acc, before/after-training values, probes and
final weights (with --json: one object with the fixture's field names and weight layouts).
With --check, also prints the largest difference per key against the fixture's numbers.
"""

from __future__ import annotations

import argparse
import json
import sys

from neurons.compat.replay import FixtureError, differences, load_case, replay


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m neurons.compat", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    rp = sub.add_parser("replay", help="train our engine in compat mode on a crate fixture")
    rp.add_argument("fixture", help="a fixture .json (e.g. ../shared/fixtures/neurons-crate/...)")
    rp.add_argument("--json", action="store_true", help="print one JSON object")
    rp.add_argument("--check", action="store_true", help="also compare with the fixture")
    ab = sub.add_parser("ablation", help="paired reading of an ablation sweep vs its grid")
    ab.add_argument("grid", help="sweep directory with every quirk on")
    ab.add_argument("ablation", help="sweep directory with one quirk off per job")
    ab.add_argument("--out", required=True, help="Markdown file to write")
    ab.add_argument("--reference", default=None, help="a jobs.csv of compat=none runs")
    args = parser.parse_args(argv)
    if args.command == "ablation":
        from pathlib import Path

        from neurons.compat.ablation import write

        for d in (args.grid, args.ablation):
            if not Path(d).is_dir():
                print(f"error: no such sweep directory: {d}", file=sys.stderr)
                return 2
        ref = Path(args.reference) if args.reference else None
        print(f"written {write(Path(args.grid), Path(args.ablation), Path(args.out), ref)}")
        return 0
    try:
        case = load_case(args.fixture)
        result = replay(case)
    except FixtureError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.check:
        result["differences"] = differences(result, case.raw)
    if args.json:
        json.dump(result, sys.stdout)
        sys.stdout.write("\n")
        return 0
    print(
        f"case {result['case']}: {result['epochs_run']} epoch(s), compat quirks on: "
        f"{', '.join(result['compat']['on'])}"
    )
    b = result["before_training"]
    print(
        f"before_training  val_loss {b['val_loss']}  val_acc {b['val_acc']}  "
        f"train_loss {b['train_loss']}  train_acc {b['train_acc']}"
    )
    print(f"{'epoch':>5}  {'train_loss':>12}  {'val_loss':>12}  {'val_acc':>10}")
    for e, (tl, vl, va) in enumerate(
        zip(result["train_loss"], result["val_loss"], result["val_acc"], strict=True), 1
    ):
        print(f"{e:>5}  {tl:>12}  {vl:>12}  {va:>10}")
    a = result["after_training"]
    print(
        f"after_training  train_loss_eval {a['train_loss_eval']}  "
        f"train_acc_eval {a['train_acc_eval']}"
    )
    for probe, vals in result["probes_after_training"].items():
        print(f"probe {probe}  tst_loss {vals['tst_loss']}  tst_acc {vals['tst_acc']}")
    for w in result["final_weights"]:
        where = f"layer {w['layer']}" + (
            "" if w["block_unrolled_index"] is None else f" (unrolled {w['block_unrolled_index']})"
        )
        print(f"final_weights {where} {w['shape_out_in']}: first row {w['W'][0][:4]} ...")
    if args.check:
        for key, d in result["differences"].items():
            print(f"diff {key}: {d:.3g}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
