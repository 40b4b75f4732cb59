"""Same seed, same bytes: real Melting Pot episodes are identical across processes and across
Lua states in one process (see games.lab2d.level_script and games.luajit_seed for why that
takes work)."""

from __future__ import annotations

import ctypes
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from actionparty.games import GameEnv, load_catalogue
from actionparty.games import luajit_seed
from conftest import REPO, subprocess_env

# Spawn permutations differed from run to run in all three before the fix: two spawn groups
# (commons_harvest_partnership), four players on one group (clean_up), and two players whose
# order flipped with the garbage collector's pace (coins).
GAMES = ["commons_harvest_partnership", "clean_up", "coins"]


@pytest.fixture(scope="module")
def catalogue():
    return load_catalogue(REPO / "params" / "games.yaml")


@pytest.fixture
def profile_file(tmp_path) -> Path:
    """The smoke profile with two longer val episodes (more steps, more Lua to diverge in)."""
    data = yaml.safe_load((REPO / "params" / "smoke.yaml").read_text())
    data["catalogue"] = str(REPO / "params" / "games.yaml")
    data["episodes"]["steps"] = 40
    data["episodes"]["per_split"]["val"] = 2
    path = tmp_path / "profile.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _generate_in_fresh_process(profile: Path, out_root: Path) -> dict[str, dict[str, bytes]]:
    """Run `actionparty episodes` for every game of GAMES in one new interpreter; return
    {game: {file name: bytes}} of what it wrote."""
    calls = "; ".join(
        f"assert main(['episodes', '--profile', {str(profile)!r}, '--game', {g!r}, '--split', 'val', "
        f"'--out', {str(out_root / g)!r}, '--quiet']) == 0"
        for g in GAMES
    )
    subprocess.run([sys.executable, "-c", f"from actionparty.cli import main; {calls}"], check=True,
                   env=subprocess_env(), cwd=REPO, capture_output=True)
    return {g: {p.name: p.read_bytes() for p in sorted((out_root / g).iterdir())} for g in GAMES}


def test_episodes_are_byte_identical_across_processes(profile_file, tmp_path):
    first = _generate_in_fresh_process(profile_file, tmp_path / "a")
    second = _generate_in_fresh_process(profile_file, tmp_path / "b")
    for game in GAMES:
        assert sorted(first[game]) == ["ep_00000.npz", "ep_00001.npz", "manifest.json"]
        for name in first[game]:
            assert first[game][name] == second[game][name], f"{game}/{name} differs between two processes"
        episodes = json.loads(first[game]["manifest.json"])["episodes"]
        assert episodes[0]["sha256"] != episodes[1]["sha256"]  # two seeds, two episodes


def _play(spec, seed: int, resets: int, steps: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    frames = []
    with GameEnv(spec, seed) as env:
        for _ in range(resets):
            rec = env.reset()
            frames += [rec.frame, rec.position]
            for _ in range(steps):
                rec = env.step(rng.integers(0, 8, spec.num_players))
                frames += [rec.frame, rec.position]
    return frames


@pytest.mark.parametrize("name", GAMES)
def test_same_seed_same_episodes_within_one_process(catalogue, name):
    """Two envs with one seed give the same sequence of episodes, each reset a fresh Lua state
    built while other states came and went (the case that used to differ most)."""
    spec = catalogue[name]
    a = _play(spec, seed=5, resets=3, steps=15)
    b = _play(spec, seed=5, resets=3, steps=15)
    assert len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))
    c = _play(spec, seed=6, resets=1, steps=15)
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))  # the seed does reach the game


def test_luajit_slot_is_restored_even_when_the_build_fails():
    """The seeded PRNG is a patch of dmlab2d's import of `syscall` for the duration of the
    block only; afterwards (also after an error) the slot holds libc's syscall again."""
    slots, real, _mprotect, _forward = luajit_seed._patch_site()
    with pytest.raises(ZeroDivisionError):
        with luajit_seed.seeded_luajit(1):
            assert all(ctypes.c_void_p.from_address(s).value != real for s in slots)
            1 / 0
    assert all(ctypes.c_void_p.from_address(s).value == real for s in slots)
