"""The data layer under faults: killed jobs leave nothing that outlives the next run, and
``--out`` never replaces what the command did not write."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from actionparty import atomic
from actionparty.cli import main
from conftest import REPO, subprocess_env, write_synthetic_episodes

SMOKE = str(REPO / "params" / "smoke.yaml")


def _temporaries(folder: Path, name: str) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.name.startswith(f".{name}."))


def _kill_when_temporary_appears(cmd: list[str], folder: Path, name: str, timeout: float = 60.0) -> None:
    """Start ``cmd``, SIGKILL it as soon as its hidden temporary of ``folder/name`` exists."""
    proc = subprocess.Popen(cmd, env=subprocess_env(), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + timeout
        while not (folder.is_dir() and _temporaries(folder, name)):
            assert proc.poll() is None, "the command ended before its temporary was seen"
            assert time.monotonic() < deadline
            time.sleep(0.005)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()


def test_killed_episodes_run_leaves_a_temporary_that_the_next_run_removes(tmp_path):
    out = tmp_path / "episodes" / "coins"
    cmd = [sys.executable, "-m", "actionparty", "episodes", "--profile", SMOKE, "--game", "coins",
           "--split", "train", "--out", str(out), "--quiet"]
    _kill_when_temporary_appears(cmd, out.parent, "coins")
    assert _temporaries(out.parent, "coins") and not out.exists()
    assert main(cmd[3:]) == 0
    assert not _temporaries(out.parent, "coins")
    assert len(json.loads((out / "manifest.json").read_text())["episodes"]) == 3


def test_killed_lmdb_run_leaves_a_temporary_that_the_next_run_removes(tmp_path):
    folders = []
    for i in range(6):  # enough frames that the build takes a while
        folders.append(tmp_path / f"eps/g{i}")
        write_synthetic_episodes(folders[-1], f"g{i}", "train", episodes=4, steps=40, players=2, seed=i)
    out = tmp_path / "lmdb" / "train.lmdb"
    cmd = [sys.executable, "-m", "actionparty", "lmdb", "--profile", SMOKE, "--split", "train", "--out", str(out),
           "--quiet", *map(str, folders)]
    _kill_when_temporary_appears(cmd, out.parent, "train.lmdb")
    assert _temporaries(out.parent, "train.lmdb") and not out.exists()
    assert main(cmd[3:]) == 0
    assert not _temporaries(out.parent, "train.lmdb") and (out / "data.mdb").is_file()


def test_only_temporaries_of_dead_processes_on_this_host_are_removed(tmp_path):
    target = tmp_path / "thing.json"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = atomic._host()
    stale = tmp_path / f".thing.json.{host}.{dead.pid}.0a1b2c3d.tmp"
    live = tmp_path / f".thing.json.{host}.{os.getppid()}.0a1b2c3d.tmp"  # a running process
    other_host = tmp_path / f".thing.json.elsewhere.{dead.pid}.0a1b2c3d.tmp"
    other_name = tmp_path / f".other.json.{host}.{dead.pid}.0a1b2c3d.tmp"
    not_ours = tmp_path / ".thing.json.notes.tmp"
    for folder in (stale, live, other_host, other_name, not_ours):
        folder.mkdir()
        (folder / "content").write_text("x")
    atomic.write_json(target, {"a": 1})
    assert json.loads(target.read_text()) == {"a": 1}
    assert not stale.exists()
    assert all(p.exists() for p in (live, other_host, other_name, not_ours))


def _episodes(out: Path) -> int:
    return main(["episodes", "--profile", SMOKE, "--game", "coins", "--split", "val", "--out", str(out), "--quiet"])


@pytest.mark.parametrize("kind", ["foreign folder", "file", "stray file in our folder"])
def test_episodes_out_refuses_what_it_did_not_write(tmp_path, capsys, kind):
    out = tmp_path / "out"
    if kind == "foreign folder":
        (out / "sub").mkdir(parents=True)
        (out / "thesis.tex").write_text("precious")
        precious = out / "thesis.tex"
    elif kind == "file":
        out.write_text("precious")
        precious = out
    else:
        assert _episodes(out) == 0
        (out / "notes.txt").write_text("precious")
        precious = out / "notes.txt"
    capsys.readouterr()
    assert _episodes(out) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "refusing to replace" in err and str(out) in err
    assert precious.read_text() == "precious"


def test_episodes_out_replaces_its_own_previous_output(tmp_path):
    out = tmp_path / "out"
    assert _episodes(out) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert _episodes(out) == 0
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # same seed, same bytes
    empty = tmp_path / "empty"
    empty.mkdir()
    assert _episodes(empty) == 0 and (empty / "manifest.json").is_file()


def test_lmdb_out_refuses_a_folder_that_is_not_an_lmdb(tmp_path, capsys):
    write_synthetic_episodes(tmp_path / "eps/alpha", "alpha", "train", episodes=1, steps=3, players=2)
    out = tmp_path / "train.lmdb"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    argv = ["lmdb", "--profile", SMOKE, "--split", "train", "--out", str(out), "--quiet", str(tmp_path / "eps/alpha")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "keep.txt" in err and "refusing to replace" in err
    assert (out / "keep.txt").read_text() == "precious"
    (out / "keep.txt").unlink()
    assert main(argv) == 0 and main(argv) == 0  # an LMDB of ours is replaced


def test_manifest_naming_a_path_outside_its_folder_is_refused(tmp_path, capsys):
    folder = tmp_path / "eps/alpha"
    write_synthetic_episodes(folder, "alpha", "train", episodes=1, steps=3, players=2)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["episodes"][0]["file"] = "../../elsewhere.npz"
    (folder / "manifest.json").write_text(json.dumps(manifest))
    argv = ["lmdb", "--profile", SMOKE, "--split", "train", "--out", str(tmp_path / "x.lmdb"), "--quiet", str(folder)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "episodes[0].file" in err and "manifest.json" in err and len(err.strip().splitlines()) == 1


def test_an_episode_the_engine_aborts_is_replaced_by_the_next_spare_seed(tmp_path, capfd):
    """factory_commons with seed 26 hits a Lua error at step 194 (factory_of_the_commons
    components.lua), and dmlab2d aborts the process. The run survives it: that episode is
    played with the split's next unused seed, and the manifest says which seed it replaces."""
    import yaml

    from actionparty.config import load_profile
    from actionparty.data.episodes import generate_episodes
    from actionparty.games import resolve_games

    data = yaml.safe_load(Path(SMOKE).read_text())
    data["catalogue"] = str(REPO / "params" / "games.yaml")
    data["episodes"].update(seed=26, steps=194)
    data["episodes"]["per_split"]["train"] = 2
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(data))
    profile = load_profile(tmp_path / "p.yaml")
    (spec,) = resolve_games(profile, ["factory_commons"])
    manifest = generate_episodes(spec, "train", profile, tmp_path / "out", workers=2, progress=False)
    assert [(e["file"], e["seed"], e.get("replaces_seed")) for e in manifest["episodes"]] == [
        ("ep_00000.npz", 28, 26), ("ep_00001.npz", 27, None)]
    assert "seed 26 of ep_00000.npz aborted in the engine" in capfd.readouterr().out
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["ep_00000.npz", "ep_00001.npz", "manifest.json"]


def test_nonsense_worker_count_is_one_line(tmp_path, capsys):
    argv = ["episodes", "--profile", SMOKE, "--game", "coins", "--split", "val", "--out", str(tmp_path / "o"),
            "--workers", "0"]
    with pytest.raises(SystemExit) as exit_:  # argparse's usage error, in one line
        main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "argument --workers: 0 is not >= 1" in err, err
    assert not (tmp_path / "o").exists()
