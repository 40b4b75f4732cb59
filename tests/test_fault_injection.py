"""kill -9 during training: a rerun finishes with exactly the weights of an uninterrupted run and
leaves no temporary behind (pretraining, a finetune, the detectors). Episodes and LMDBs have
their own kill tests (tests/test_data_reliability.py)."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from actionparty.data.lmdb_dataset import build_lmdb
from conftest import REPO, subprocess_env, write_synthetic_episodes

STEPS = 6


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    state = torch.load(path, map_location="cpu", weights_only=True)
    out = {}
    for part in ("model", "ema", "tile", "idm"):
        weights = state.get(part)
        weights = weights.get("shadow", weights) if isinstance(weights, dict) else None
        for key, value in (weights or {}).items():
            if torch.is_tensor(value):
                out[f"{part}:{key}"] = value
    assert out, f"{path}: no weights"
    return out


def _command(stage: str, root: Path, out: Path) -> list[str]:
    base = [sys.executable, "-m", "actionparty", stage, "--profile", str(root / "profile.yaml")]
    if stage == "pretrain":
        return base + ["--train-lmdb", str(root / "train.lmdb"), "--out", str(out), "--quiet"]
    if stage == "finetune":
        return base + ["--variant", "full", "--init", str(root / "exp-138/checkpoint.pt"), "--train-lmdb",
                       str(root / "train.lmdb"), "--out", str(out), "--quiet"]
    return base + ["--train-lmdb", str(root / "train.lmdb"), "--val-lmdb", str(root / "val.lmdb"), "--out",
                   str(out / "detectors.pt"), "--accuracy", str(out / "accuracy.json"), "--quiet"]


def _final(stage: str, out: Path) -> Path:
    return out / ("detectors.pt" if stage == "train-detectors" else "checkpoint.pt")


def _progress(stage: str, out: Path) -> Path:
    """A file that appears once the run has written its first resumable state."""
    return out / ("detectors.pt.resume" if stage == "train-detectors" else "work/last.pt")


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    data = yaml.safe_load((REPO / "params/smoke.yaml").read_text())
    data["catalogue"] = str(REPO / "params/games.yaml")
    for section in ("pretrain", "finetune"):
        data[section].update(steps=STEPS, checkpoint_every=1, batch_size=2)
    data["finetune"]["curve_every"] = 0
    data["eval"].update(train_steps=STEPS * 4, checkpoint_every=2, val_clips_per_game=2)
    (root / "profile.yaml").write_text(yaml.safe_dump(data))
    for split in ("train", "val"):
        for game, players, seed in (("coins", 2, 0), ("clean_up", 4, 3)):
            write_synthetic_episodes(root / split / game, game, split, episodes=2, steps=5, players=players,
                                     canvas_cells=12, seed=seed + (split == "val"))
        build_lmdb([root / split / "coins", root / split / "clean_up"], root / f"{split}.lmdb", split,
                   map_size_mb=64, progress=False)
    run = subprocess.run(_command("pretrain", root, root / "exp-138"), env=subprocess_env(), capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    return root


@pytest.mark.parametrize("stage", ["pretrain", "finetune", "train-detectors"])
def test_kill_9_then_rerun_equals_an_uninterrupted_run(root, tmp_path, stage):
    env = subprocess_env()
    straight = tmp_path / "straight"
    if stage == "pretrain":  # the fixture's exp-138 is that very run, uninterrupted
        straight = root / "exp-138"
    else:
        run = subprocess.run(_command(stage, root, straight), env=env, capture_output=True, text=True, timeout=600)
        assert run.returncode == 0, run.stderr[-2000:]
    killed = tmp_path / "killed"
    rng = random.Random(stage)  # a different, fixed delay per stage
    # Killed after its first resumable state, at a random moment (mid-step or mid-write).
    proc = subprocess.Popen(_command(stage, root, killed), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not _progress(stage, killed).exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(rng.uniform(0.0, 0.3))
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    run = subprocess.run(_command(stage, root, killed), env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    a, b = _tensors(_final(stage, straight)), _tensors(_final(stage, killed))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    leftovers = [p for p in killed.rglob("*") if p.name.endswith(".tmp") or p.name.endswith(".resume")]
    assert not leftovers, leftovers
