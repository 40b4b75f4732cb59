"""Same seed, same bytes: play the same episodes in separate fresh processes and compare.

    python -m actionparty.data.reproducibility --profile params/paper.yaml [--games a b ...]
        [--episodes 2] [--steps 100] [--workers 2]

For every game, two fresh processes (``spawn``: their own address-space layout and heap) each
play ``episodes`` episodes of the profile's val split with the profile's policy, and then the
first one once more after the others (a later Lua state in a used process). Every episode is
summarised by the sha256 of all its arrays (the same arrays give the same ``.npz`` bytes, see
data.npz). A game is reproducible when all of them agree; the command prints one row per game
and exits 1 if any game is not.
"""

from __future__ import annotations

import argparse
import hashlib
import multiprocessing as mp
import sys
import time
from dataclasses import replace

from actionparty.data.episodes import episode_tasks, run_episode
from actionparty.games import GameSpec


def array_digest(arrays: dict) -> str:
    """sha256 over the names, dtypes, shapes and bytes of ``arrays`` (in name order)."""
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = arrays[name]
        h.update(f"{name}:{a.dtype.str}:{a.shape};".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def play_digests(spec: GameSpec, profile, episodes: int, steps: int | None) -> list[str]:
    """Digests of the first ``episodes`` val episodes, then of the first one again."""
    tasks = episode_tasks(spec, "val", profile, "unused", episodes)
    if steps is not None:
        tasks = [replace(t, steps=steps) for t in tasks]
    return [array_digest(run_episode(t)) for t in tasks + tasks[:1]]


def _worker(args) -> tuple[str, list[str]]:
    profile_path, name, episodes, steps = args
    from actionparty.config import load_profile
    from actionparty.games import resolve_games

    profile = load_profile(profile_path)
    (spec,) = resolve_games(profile, [name])
    return name, play_digests(spec, profile, episodes, steps)


def check_games(profile_path: str, names: list[str], episodes: int = 2, steps: int | None = 100,
                workers: int = 2) -> dict[str, bool]:
    """{game: reproducible} over two fresh processes per game (see the module docstring)."""
    jobs = [(profile_path, name, episodes, steps) for name in names for _ in range(2)]
    runs: dict[str, list[list[str]]] = {name: [] for name in names}
    result = {}
    # maxtasksperchild=1: every run gets a process of its own, never one a run has used.
    with mp.get_context("spawn").Pool(workers, maxtasksperchild=1) as pool:
        for name, digests in pool.imap_unordered(_worker, jobs):
            runs[name].append(digests)
            if len(runs[name]) < 2:
                continue
            a, b = runs[name]
            same_across = a == b
            same_within = a[0] == a[-1] and b[0] == b[-1]
            result[name] = same_across and same_within
            print(f"{name:45s} {'ok' if result[name] else 'DIFFERS'}"
                  f"{'' if same_across else '  (across processes)'}{'' if same_within else '  (within a process)'}",
                  flush=True)
    return {name: result[name] for name in names}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m actionparty.data.reproducibility",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default="params/paper.yaml")
    parser.add_argument("--games", nargs="*", help="default: the profile's games")
    parser.add_argument("--episodes", type=int, default=2)
    parser.add_argument("--steps", type=int, default=100, help="actions per episode (default 100)")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)

    from actionparty.config import load_profile
    from actionparty.errors import UserError
    from actionparty.games import resolve_games

    try:
        names = [s.name for s in resolve_games(load_profile(args.profile), args.games or None)]
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    start = time.perf_counter()
    result = check_games(args.profile, names, args.episodes, args.steps, args.workers)
    good = sum(result.values())
    print(f"{good} of {len(result)} games byte-reproducible ({args.episodes} episodes of {args.steps} steps, "
          f"2 processes each, {time.perf_counter() - start:.0f} s)")
    return 0 if good == len(result) else 1


if __name__ == "__main__":
    sys.exit(main())
