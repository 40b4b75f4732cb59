"""Episode-generation benchmark: frames/s of the whole generation path (reset, policy, labels,
canvas, compression, atomic write) next to the raw dmlab2d step rate, measured in the same run."""

from __future__ import annotations

import multiprocessing as mp
import tempfile
import time

import numpy as np

from actionparty.config import Profile
from actionparty.data.episodes import episode_tasks, generate_one
from actionparty.games import GameEnv, GameSpec


def raw_rates(spec: GameSpec, steps: int, episodes: int, seed: int = 0) -> tuple[float, float]:
    """(raw steps/s without resets, raw frames/s with one reset per episode of ``steps``)."""
    rng = np.random.default_rng(seed)
    step_time = reset_time = 0.0
    with GameEnv(spec, seed) as env:
        for _ in range(episodes):
            actions = rng.integers(0, 8, (steps, spec.num_players))
            t0 = time.perf_counter()
            env.reset()
            t1 = time.perf_counter()
            for a in actions:
                env.raw_step(a)
            t2 = time.perf_counter()
            reset_time += t1 - t0
            step_time += t2 - t1
    total = episodes * steps
    return total / step_time, (total + episodes) / (step_time + reset_time)


def generation_rate(spec: GameSpec, profile: Profile, episodes: int, workers: int) -> float:
    """Frames/s of generating and writing ``episodes`` episodes with ``workers`` processes."""
    with tempfile.TemporaryDirectory() as tmp:
        tasks = episode_tasks(spec, "train", profile, tmp, episodes)
        t0 = time.perf_counter()
        if workers > 1:
            with mp.get_context("fork").Pool(workers) as pool:
                list(pool.imap_unordered(generate_one, tasks))
        else:
            for task in tasks:
                generate_one(task)
        elapsed = time.perf_counter() - t0
    return episodes * (profile.episodes.steps + 1) / elapsed


def bench_episodes(specs: list[GameSpec], profile: Profile, episodes: int = 8, workers: int = 2) -> list[dict]:
    steps = profile.episodes.steps
    print(f"episode generation, {profile.profile} profile: {steps}-step episodes, {episodes} per game "
          f"(frames/s; raw = dmlab2d act+advance+WORLD.RGB, no labels, no writing)")
    print(f"{'game':30s} {'P':>2s} {'raw step':>9s} {'raw+reset':>9s} {'gen x1':>8s} {'gen x' + str(workers):>8s}"
          f"  {'gen x1 / raw':>12s}  {'gen x1 / raw+reset':>18s}")
    rows = []
    for spec in specs:
        raw, raw_reset = raw_rates(spec, steps, max(2, episodes // 2))
        gen1 = generation_rate(spec, profile, episodes, 1)
        genw = generation_rate(spec, profile, episodes, workers) if workers > 1 else gen1
        row = {"game": spec.name, "players": spec.num_players, "raw_step": raw, "raw_with_reset": raw_reset,
               "generation_1": gen1, f"generation_{workers}": genw}
        rows.append(row)
        print(f"{spec.name:30s} {spec.num_players:2d} {raw:9.0f} {raw_reset:9.0f} {gen1:8.0f} {genw:8.0f}"
              f"  {gen1 / raw:12.0%}  {gen1 / raw_reset:18.0%}")
    return rows
