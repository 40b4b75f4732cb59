"""Plot data for ``dvc plots``: the training logs and learning curves as lists of records.

DVC draws JSON, YAML, CSV and TSV, not JSON Lines, and wants one record per x value. The report
writes, from ``results/`` (atomically, one file per run so each is one line):

    results/exp-138/train_log.jsonl,
    results/finetune/{run}/train_log.jsonl   -> plots/train_loss/{exp-138|run}.json
                                                [{"step": 10, "loss": .., "video_loss": .., "state_loss": ..}, ...]
    results/finetune/{variant}/curve.json    -> plots/curves/{variant}.json
                                                [{"step": 100, "MA": .., "BA": .., "SP": ..}, ...]

A record keeps the step and the loss fields (names ending in ``loss``) or the curve's metrics
that the run measured; a null (not logged at that step) is left out of its record.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from actionparty.atomic import write_json


def records(columns: dict[str, np.ndarray], x: str, keys: list[str], x_name: str = "step") -> list[dict]:
    """Column arrays (NaN = missing) -> [{x_name: int, key: float, ...}, ...], one per x value."""
    out = []
    for i, step in enumerate(columns[x]):
        if not np.isfinite(step):
            continue
        record = {x_name: int(step) if float(step).is_integer() else float(step)}
        record.update({k: float(columns[k][i]) for k in keys if k in columns and np.isfinite(columns[k][i])})
        out.append(record)
    return out


def loss_records(log: dict[str, np.ndarray]) -> list[dict]:
    """A train log (:func:`.figures.read_train_log`) -> loss records per logged step."""
    keys = [k for k in sorted(log) if k.endswith("loss") and np.isfinite(log[k]).any()]
    return records(log, "step", keys)


def curve_records(curve: dict[str, np.ndarray]) -> list[dict]:
    """A learning curve (:func:`.figures.read_learning_curve`) -> metric records per snapshot."""
    return records(curve, "steps", [k for k in curve if k != "steps"])


def write_plot_data(pretrain: dict | None, finetune: dict[str, dict], curves: dict[str, dict],
                    folder: str | Path) -> list[Path]:
    """``{folder}/train_loss/*.json`` and ``{folder}/curves/*.json``; returns the paths written."""
    folder = Path(folder)
    paths = []
    logs = ({"exp-138": pretrain} if pretrain is not None else {}) | finetune
    for run, log in logs.items():
        paths.append(folder / "train_loss" / f"{run}.json")
        write_json(paths[-1], loss_records(log))
    for run, curve in curves.items():
        paths.append(folder / "curves" / f"{run}.json")
        write_json(paths[-1], curve_records(curve))
    for kind in ("train_loss", "curves"):  # a run that is gone from results/ leaves no stale line
        for stale in set((folder / kind).glob("*.json")) - set(paths):
            stale.unlink()
    return paths
