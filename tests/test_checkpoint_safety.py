"""Hostile and wrong-but-valid inputs to the training and rollout stages: each is one line naming
the file and the field, exit 2, and nothing runs or is written that should not be."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
import yaml

from actionparty.data.lmdb_dataset import build_lmdb
from actionparty.errors import UserError
from actionparty.model.checkpoint import load_checkpoint, save_checkpoint
from conftest import REPO, subprocess_env, write_synthetic_episodes


class _RunsCode:
    """A pickle that, when unpickled without ``weights_only``, creates a file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.makedirs, (self.marker,))


def _cli(*args, cwd=REPO):
    run = subprocess.run([sys.executable, "-m", "actionparty", *map(str, args)], cwd=cwd, env=subprocess_env(),
                         capture_output=True, text=True, timeout=600)
    return run.returncode, run.stderr.strip().splitlines()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A smoke-sized profile, train and test LMDBs of two games, exp-138 and one finetune."""
    root = tmp_path_factory.mktemp("world")
    data = yaml.safe_load((REPO / "params/smoke.yaml").read_text())
    data["catalogue"] = str(REPO / "params/games.yaml")
    data["pretrain"].update(steps=2, checkpoint_every=2)
    data["finetune"].update(steps=2, checkpoint_every=2, self_context=0.0)
    profile = root / "profile.yaml"
    profile.write_text(yaml.safe_dump(data))
    for split in ("train", "test"):
        for game, players, seed in (("coins", 2, 0), ("clean_up", 4, 3)):
            write_synthetic_episodes(root / split / game, game, split, episodes=2, steps=5, players=players,
                                     canvas_cells=12, seed=seed + (split == "test"))
        build_lmdb([root / split / "coins", root / split / "clean_up"], root / f"{split}.lmdb", split, map_size_mb=64,
                   progress=False)
    code, err = _cli("pretrain", "--profile", profile, "--train-lmdb", root / "train.lmdb", "--out", root / "exp-138",
                     "--quiet")
    assert code == 0, err
    code, err = _cli("finetune", "--profile", profile, "--variant", "global_action", "--init",
                     root / "exp-138/checkpoint.pt", "--train-lmdb", root / "train.lmdb", "--out", root / "ga", "--quiet")
    assert code == 0, err
    return root, profile


def test_a_checkpoint_that_would_run_code_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "ran"
    torch.save({"format": "actionparty-checkpoint-2", "model": _RunsCode(marker)}, tmp_path / "evil.pt")
    with pytest.raises(UserError, match="not a readable checkpoint") as err:
        load_checkpoint(tmp_path / "evil.pt")
    assert "\n" not in str(err.value) and not marker.exists()


def test_a_flipped_byte_is_a_checksum_mismatch(tmp_path):
    save_checkpoint(tmp_path / "c.pt", model={"w": torch.arange(4096, dtype=torch.float32)}, step=3, stage="exp-138")
    assert load_checkpoint(tmp_path / "c.pt")["step"] == 3
    raw = bytearray((tmp_path / "c.pt").read_bytes())
    raw[raw.index(torch.tensor([1000.0]).numpy().tobytes())] ^= 0x01  # one bit of one weight
    (tmp_path / "c.pt").write_bytes(bytes(raw))
    with pytest.raises(UserError, match="checksum mismatch"):
        load_checkpoint(tmp_path / "c.pt")


def test_finetune_from_a_finetune_or_from_other_games_is_refused(world, tmp_path):
    root, profile = world
    code, err = _cli("finetune", "--profile", profile, "--variant", "full", "--init", root / "ga/checkpoint.pt",
                     "--train-lmdb", root / "train.lmdb", "--out", tmp_path / "x", "--quiet")
    assert code == 2 and len(err) == 1 and "stage 'global_action', expected 'exp-138'" in err[0], err
    state = load_checkpoint(root / "exp-138/checkpoint.pt")
    state.pop("format")
    save_checkpoint(tmp_path / "other.pt", **{**state, "games": ["coins"]})
    code, err = _cli("finetune", "--profile", profile, "--variant", "full", "--init", tmp_path / "other.pt",
                     "--train-lmdb", root / "train.lmdb", "--out", tmp_path / "y", "--quiet")
    assert code == 2 and len(err) == 1 and "trained on games ['coins']" in err[0], err
    assert not (tmp_path / "x/checkpoint.pt").exists() and not (tmp_path / "y/checkpoint.pt").exists()


@pytest.mark.parametrize("case", ["train_lmdb", "finetune_as_pretrained_ar", "other_variant", "horizon_0",
                                  "out_is_a_folder"])
def test_rollout_refuses_wrong_but_valid_inputs(world, tmp_path, case):
    root, profile = world
    args = {"--model": "global_action", "--checkpoint": root / "ga/checkpoint.pt", "--lmdb": root / "test.lmdb",
            "--horizon": 2, "--out": tmp_path / "h2.npz"}
    expect = {"train_lmdb": "split 'train'", "finetune_as_pretrained_ar": "expected 'exp-138'",
              "other_variant": "expected 'full'", "horizon_0": "--horizon", "out_is_a_folder": "is a folder"}[case]
    if case == "train_lmdb":
        args["--lmdb"] = root / "train.lmdb"
    elif case == "finetune_as_pretrained_ar":
        args["--model"] = "pretrained_ar"
    elif case == "other_variant":
        args["--model"] = "full"
    elif case == "horizon_0":
        args["--horizon"] = 0
    else:
        args["--out"] = tmp_path / "kept"
        (tmp_path / "kept").mkdir()
        (tmp_path / "kept/mine.txt").write_text("not a rollout")
    code, err = _cli("rollout", "--profile", profile, *[x for kv in args.items() for x in kv], "--quiet")
    assert code == 2 and len(err) == 1 and expect in err[0], err
    assert not (tmp_path / "h2.npz").exists()
    if case == "out_is_a_folder":
        assert (tmp_path / "kept/mine.txt").read_text() == "not a rollout"


def test_a_negative_step_count_is_a_usage_error(world, tmp_path):
    root, profile = world
    code, err = _cli("pretrain", "--profile", profile, "--train-lmdb", root / "train.lmdb", "--out", tmp_path / "p",
                     "--stop-after", -1)
    assert code == 2 and len(err) == 1 and "--stop-after" in err[0] and "not >= 1" in err[0], err
    assert not (tmp_path / "p").exists()


def test_a_damaged_resume_state_or_a_cut_log_line_restarts_cleanly(world, tmp_path):
    """kill -9 mid-write of work/last.pt (a full disk) or of the log's last line: the rerun says
    so in one line and trains from step 0 (or from the last good state) to the same weights."""
    root, profile = world
    args = ("pretrain", "--profile", profile, "--train-lmdb", root / "train.lmdb", "--quiet")
    code, err = _cli(*args, "--out", tmp_path / "ok")
    assert code == 0, err
    run = tmp_path / "cut"
    code, err = _cli(*args, "--out", run, "--stop-after", 1)
    assert code == 0 and not (run / "checkpoint.pt").exists()
    (run / "work").mkdir(exist_ok=True)
    (run / "work/last.pt").write_bytes((root / "exp-138/checkpoint.pt").read_bytes()[:500])  # cut short
    with open(run / "work/train_log.jsonl", "a") as log:
        log.write('{"step": 2, "loss": 0.')  # a line the kill cut short
    code, err = _cli(*args, "--out", run)
    assert code == 0, err
    a, b = load_checkpoint(tmp_path / "ok/checkpoint.pt"), load_checkpoint(run / "checkpoint.pt")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    lines = (run / "train_log.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == list(range(1, a["step"] + 1))
