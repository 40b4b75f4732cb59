#!/usr/bin/env python
"""Are two pipeline runs bit-identical? Compares the results/ folders of two runs on the same data.

    python tools/compare_runs.py RUN_A RUN_B [--rename OLD=NEW ...]

RUN_A and RUN_B are workflow folders (their results/ is compared) or results folders.

Checkpoints (``*.pt``): every tensor of the weights and the EMA, exactly (``torch.equal``), after
renaming parameter-name prefixes of RUN_A with ``--rename`` (a refactor that moves a module);
metadata is not compared. Rollouts (``*.npz``): every array, exactly. Metrics and curves
(``*.json``): equal after parsing, except the ``detectors``/``test_lmdb`` paths. Training logs:
every logged number but the timings. Prints one line per file and exits 1 if anything differs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

IGNORED_JSON_KEYS = {"detectors", "test_lmdb", "tokens_per_s", "seconds"}  # paths and timings


def _tensors(path: Path, renames: list[tuple[str, str]]) -> dict[str, torch.Tensor]:
    state = torch.load(path, map_location="cpu", weights_only=False)
    out = {}
    for part in ("model", "ema", "tile", "idm"):
        weights = state.get(part)
        if isinstance(weights, dict) and "shadow" in weights:
            weights = weights["shadow"]
        if not isinstance(weights, dict):
            continue
        for key, value in weights.items():
            if not torch.is_tensor(value):
                continue
            for old, new in renames:
                if key.startswith(old):
                    key = new + key[len(old):]
            out[f"{part}:{key}"] = value
    return out


def _strip(value):
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if k not in IGNORED_JSON_KEYS}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


def compare(a: Path, b: Path, rel: str, renames) -> str | None:
    """None if equal, else what differs."""
    pa, pb = a / rel, b / rel
    if not pb.exists():
        return "missing in B"
    if rel.endswith(".pt"):
        ta, tb = _tensors(pa, renames), _tensors(pb, renames)
        if set(ta) != set(tb):
            return f"tensor names differ: only A {sorted(set(ta) - set(tb))[:3]}, only B {sorted(set(tb) - set(ta))[:3]}"
        bad = [k for k in ta if ta[k].shape != tb[k].shape or not torch.equal(ta[k], tb[k])]
        return f"{len(bad)} of {len(ta)} tensors differ, e.g. {bad[:3]}" if bad else None
    if rel.endswith(".npz"):
        with np.load(pa) as za, np.load(pb) as zb:
            if set(za.files) != set(zb.files):
                return f"arrays differ: {sorted(set(za.files) ^ set(zb.files))}"
            bad = [k for k in za.files if not np.array_equal(za[k], zb[k])]
        return f"arrays differ: {bad}" if bad else None
    if rel.endswith(".jsonl"):
        la = [_strip(json.loads(line)) for line in pa.read_text().splitlines() if line]
        lb = [_strip(json.loads(line)) for line in pb.read_text().splitlines() if line]
        return None if la == lb else "logged values differ"
    if rel.endswith(".json"):
        return None if _strip(json.loads(pa.read_text())) == _strip(json.loads(pb.read_text())) else "values differ"
    return None if pa.read_bytes() == pb.read_bytes() else "bytes differ"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("a", type=Path)
    parser.add_argument("b", type=Path)
    parser.add_argument("--rename", action="append", default=[], help="OLD=NEW parameter-name prefix of run A")
    args = parser.parse_args()
    renames = [tuple(r.split("=", 1)) for r in args.rename]
    top = args.a / "results" if (args.a / "results").is_dir() else args.a  # a run folder, or results/ itself
    files = sorted(str(p.relative_to(args.a)) for p in top.rglob("*")
                   if p.is_file() and "work" not in p.relative_to(args.a).parts
                   and p.suffix in (".pt", ".npz", ".json", ".jsonl"))
    differ = 0
    for rel in files:
        what = compare(args.a, args.b, rel, renames)
        differ += what is not None
        print(f"{'DIFFERENT' if what else 'identical'}  {rel}{': ' + what if what else ''}")
    print(f"{len(files) - differ} identical, {differ} different of {len(files)} files")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
