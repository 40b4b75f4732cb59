"""Shared fixtures: paths, and synthetic episode folders in the real on-disk format."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

from actionparty.atomic import write_json
from actionparty.data.episodes import EPISODE_SCHEMA_VERSION, MANIFEST_NAME
from actionparty.data.npz import save_npz

REPO = Path(__file__).resolve().parents[1]
WORKFLOW_FILES = ("Snakefile", "workflow", "params", "profiles")


def copy_workflow(dest: Path, files=WORKFLOW_FILES) -> Path:
    """Copy the workflow (Snakefile, rules, params, profiles) into ``dest`` for a real run."""
    import shutil

    for name in files:
        src = REPO / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, dest / name)
    return dest


@pytest.fixture(scope="session")
def smoke_build(tmp_path_factory) -> Path:
    """The whole smoke DAG (`snakemake all`), built once per test run by the real Snakemake.

    Read-only: the DAG, DVC and SLURM tests each take a copy (:func:`copy_build`), so that one
    module's edits and reruns never reach another's.
    """
    import subprocess

    work = copy_workflow(tmp_path_factory.mktemp("smoke_build"))
    run = subprocess.run(["snakemake", "all", "--cores", "2", "--configfile", "params/smoke.yaml"], cwd=work,
                         env=subprocess_env(), capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    (work / "logs/snakemake_all.log").write_text(run.stdout + run.stderr)
    return work


def copy_build(build: Path, dest: Path) -> Path:
    """A copy of a built workspace, modification times kept (Snakemake's and DVC's view of it)."""
    import shutil

    shutil.copytree(build, dest, symlinks=True, dirs_exist_ok=True)
    return dest


def job_counts(output: str) -> dict[str, int]:
    """Snakemake's 'Job stats' table (of a dry run) as {rule: count}."""
    counts, table = {}, False
    for line in output.splitlines():
        parts = line.split()
        if parts[:2] == ["job", "count"]:
            table = True
        elif table and len(parts) == 2 and parts[1].isdigit():
            counts[parts[0]] = int(parts[1])
        elif table and counts and not parts:
            break
    return counts


@pytest.fixture
def one_thread():
    """Torch on one thread: two threads on a shared 2-core machine can be 20x slower than one
    (spinning OpenMP workers)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def repo() -> Path:
    return REPO


def flat_keys(data: dict, prefix: str = "") -> dict:
    """A nested mapping as {"dotted.key": leaf value}."""
    out = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(flat_keys(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def subprocess_env() -> dict:
    """Environment for subprocesses: the running interpreter's bin first on PATH."""
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    return env


@pytest.fixture
def venv_env() -> dict:
    return subprocess_env()


def write_synthetic_episodes(folder: Path, game: str, split: str, episodes: int, steps: int, players: int,
                             canvas_cells: int = 6, seed: int = 0) -> dict:
    """An episode folder with random content in the format of data.episodes."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    px = canvas_cells * 8
    entries = []
    for i in range(episodes):
        arrays = dict(
            frames=rng.integers(0, 256, (steps + 1, px, px, 3), dtype=np.uint8),
            actions=rng.integers(0, 8, (steps, players), dtype=np.int8),
            position=rng.integers(0, canvas_cells, (steps + 1, players, 2)).astype(np.int16),
            facing=rng.integers(0, 4, (steps + 1, players)).astype(np.int8),
            visible=rng.random((steps + 1, players)) < 0.9,
            interact_effect=rng.random((steps, players)) < 0.1,
        )
        name = f"ep_{i:05d}.npz"
        entries.append({"file": name, "seed": seed + i, "sha256": save_npz(folder / name, arrays)})
    manifest = {"schema_version": EPISODE_SCHEMA_VERSION, "game": game, "substrate": game, "split": split,
                "num_players": players, "steps": steps, "canvas_cells": canvas_cells, "map_offset": [0, 0],
                "map_cells": [canvas_cells, canvas_cells], "episodes": entries}
    write_json(folder / MANIFEST_NAME, manifest)
    return manifest
