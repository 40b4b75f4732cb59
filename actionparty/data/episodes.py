"""Episode generation: seeded random players in a real Melting Pot substrate.

One episode file (``ep_00000.npz``) holds, for T actions and P players:

=================  ======================  ==================================================
name               dtype, shape            meaning
=================  ======================  ==================================================
frames             uint8 (T+1, H, W, 3)    global frame, mini map centred on the canvas
actions            int8  (T, P)            canonical action taken at step t (frame t -> t+1)
position           int16 (T+1, P, 2)       (x, y) cell on the canvas (map offset included)
facing             int8  (T+1, P)          0..3 = N, E, S, W
visible            bool  (T+1, P)          the avatar is drawn in that frame
interact_effect    bool  (T, P)            the step's INTERACT had an effect (see games.env)
=================  ======================  ==================================================

Frames t and t+1 bracket action t. The policy does not look at observations, so the
episode's whole action sequence is drawn up front from its own seeded stream.

The policy is the evaluation protocol's (:func:`protocol_actions`): the train, val and test
splits are played by the profile's sticky policy (protocol ``episodes``); an extra protocol
(``one_mover``, ``uniform``) replays the test split's seeds, hence its engine starts, with its
own policy (``data/episodes/test_<protocol>/<game>``, manifest field ``protocol``).
"""

from __future__ import annotations

import json
import multiprocessing as mp
import multiprocessing.connection
import os
import signal
import time
import zlib
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

from actionparty.atomic import atomic_path, remove_stale_temporaries, write_json
from actionparty.config import DEFAULT_PROTOCOL, PROTOCOLS, SPLIT_SEED_STRIDE, SPLITS, Profile
from actionparty.data.npz import save_npz
from actionparty.errors import UserError
from actionparty.games import CELL_PX, GameEnv, GameSpec

EPISODE_SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"


def episode_seed(base_seed: int, split: str, index: int) -> int:
    """Env seed of episode ``index`` of ``split``; split ranges never overlap."""
    return base_seed + SPLIT_SEED_STRIDE * SPLITS.index(split) + index


def sticky_actions(rng: np.random.Generator, steps: int, players: int, probs, stickiness: float) -> np.ndarray:
    """(steps, players) int8 canonical actions: each step a player repeats its previous
    action with probability ``stickiness``, else draws a fresh one from ``probs``."""
    fresh = rng.choice(len(probs), size=(steps, players), p=probs).astype(np.int8)
    keep = rng.random((steps, players)) < stickiness
    keep[0] = False
    actions = fresh.copy()
    for t in range(1, steps):
        actions[t] = np.where(keep[t], actions[t - 1], fresh[t])
    return actions


def one_mover_actions(rng: np.random.Generator, steps: int, players: int) -> np.ndarray:
    """(steps, players) int8: at every step one player, drawn uniformly, takes an action drawn
    uniformly from the non-NOOP actions; every other player does NOOP (protocol ``one_mover``)."""
    from actionparty.games.actions import CANONICAL_ACTIONS, NOOP

    moves = np.array([a for a in range(len(CANONICAL_ACTIONS)) if a != NOOP], np.int8)
    mover = rng.integers(players, size=steps)
    action = moves[rng.integers(len(moves), size=steps)]
    actions = np.full((steps, players), NOOP, np.int8)
    actions[np.arange(steps), mover] = action
    return actions


def uniform_actions(rng: np.random.Generator, steps: int, players: int) -> np.ndarray:
    """(steps, players) int8: every player draws every step uniformly from all actions, no
    stickiness (protocol ``uniform``)."""
    from actionparty.games.actions import CANONICAL_ACTIONS

    return rng.integers(len(CANONICAL_ACTIONS), size=(steps, players)).astype(np.int8)


def protocol_actions(protocol: str, rng: np.random.Generator, steps: int, players: int, probs,
                     stickiness: float) -> np.ndarray:
    """The episode's (steps, players) actions under ``protocol`` (``probs`` and ``stickiness``:
    the profile's sticky policy, protocol ``episodes``)."""
    if protocol == DEFAULT_PROTOCOL:
        return sticky_actions(rng, steps, players, probs, stickiness)
    if protocol == "one_mover":
        return one_mover_actions(rng, steps, players)
    if protocol == "uniform":
        return uniform_actions(rng, steps, players)
    raise UserError(f"unknown protocol '{protocol}'; known: {', '.join(PROTOCOLS)}")


def map_offset(spec: GameSpec, canvas_cells: int) -> tuple[int, int]:
    """(x, y) cell at which the mini map's top-left corner sits on the canvas (centred)."""
    if spec.width_cells > canvas_cells or spec.height_cells > canvas_cells:
        raise UserError(
            f"game '{spec.name}': map {spec.width_cells}x{spec.height_cells} cells does not fit "
            f"the profile's canvas of {canvas_cells}x{canvas_cells} cells"
        )
    return (canvas_cells - spec.width_cells) // 2, (canvas_cells - spec.height_cells) // 2


@dataclass(frozen=True)
class EpisodeTask:
    spec: GameSpec
    seed: int
    steps: int
    canvas_cells: int
    probs: tuple[float, ...]
    stickiness: float
    path: str
    zlib_level: int = 1
    protocol: str = DEFAULT_PROTOCOL  # the policy (protocol_actions)


def run_episode(task: EpisodeTask) -> dict[str, np.ndarray]:
    """Play one episode and return its arrays (see the module docstring)."""
    spec, steps = task.spec, task.steps
    players = spec.num_players
    ox, oy = map_offset(spec, task.canvas_cells)
    canvas_px = task.canvas_cells * CELL_PX
    policy_rng = np.random.default_rng([task.seed, zlib.crc32(spec.name.encode())])
    actions = protocol_actions(task.protocol, policy_rng, steps, players, task.probs, task.stickiness)

    frames = np.zeros((steps + 1, canvas_px, canvas_px, 3), np.uint8)
    position = np.zeros((steps + 1, players, 2), np.int16)
    facing = np.zeros((steps + 1, players), np.int8)
    visible = np.zeros((steps + 1, players), bool)
    effect = np.zeros((steps, players), bool)
    h, w = spec.height_cells * CELL_PX, spec.width_cells * CELL_PX
    y0, x0 = oy * CELL_PX, ox * CELL_PX

    def record(t, rec):
        frames[t, y0 : y0 + h, x0 : x0 + w] = rec.frame
        position[t] = rec.position
        facing[t] = rec.facing
        visible[t] = rec.visible

    with GameEnv(spec, task.seed) as env:
        record(0, env.reset())
        for t in range(steps):
            rec = env.step(actions[t])
            record(t + 1, rec)
            effect[t] = rec.interact_effect
    position += np.array([ox, oy], np.int16)
    return dict(frames=frames, actions=actions, position=position, facing=facing, visible=visible,
                interact_effect=effect)


def episode_tasks(spec: GameSpec, split: str, profile: Profile, folder: str | Path, count: int,
                  protocol: str = DEFAULT_PROTOCOL) -> list[EpisodeTask]:
    """The first ``count`` episodes of ``spec`` in ``split``, to be written into ``folder``."""
    cfg = profile.episodes
    return [
        EpisodeTask(spec, episode_seed(cfg.seed, split, i), cfg.steps, profile.canvas_cells,
                    tuple(cfg.policy.probabilities()), cfg.policy.stickiness, str(Path(folder) / f"ep_{i:05d}.npz"),
                    profile.lmdb.zlib_level, protocol)
        for i in range(count)
    ]


def generate_one(task: EpisodeTask) -> tuple[str, str]:
    """Play and write one episode; returns (file name, sha256)."""
    arrays = run_episode(task)
    digest = save_npz(task.path, arrays, level=task.zlib_level)
    return os.path.basename(task.path), digest


# An episode whose seed makes the engine abort is replaced by the next spare seed of its split,
# at most this many times per episode.
MAX_REPLACEMENTS = 8


def _child(task: EpisodeTask, conn) -> None:
    try:
        conn.send(("ok", generate_one(task)[1]))
    except BaseException as err:  # noqa: BLE001 - handed to the parent, which re-raises it
        try:
            conn.send(("error", err))
        except Exception:  # an exception that does not pickle: its text still reaches the parent
            conn.send(("error", RuntimeError(f"{type(err).__name__}: {err}")))
    finally:
        conn.close()
        os._exit(0)


def play_isolated(tasks: list[EpisodeTask], workers: int):
    """Yield (task, sha256 or None, exit code) for every task, each played and written in a
    forked child process of its own (at most ``workers`` at a time), in completion order.

    Why a process per episode: a few seeds make Melting Pot's Lua fail inside a dmlab2d
    callback (measured: factory_commons, 1 of 40 train episodes of 200 steps, an error in
    factory_of_the_commons/components.lua), and dmlab2d answers with a failed CHECK that
    aborts the whole process (SIGABRT). Such a death takes only its own episode (None); a child
    killed any other way (out of memory, a signal from outside) stops the run with an error,
    since replacing its seed would make the data depend on the machine; a Python exception in
    a child is re-raised here.
    """
    ctx = mp.get_context("fork")
    pending, running = list(tasks), {}
    try:
        yield from _play_loop(ctx, pending, running, workers)
    finally:  # also when the caller stops early: no child outlives the run
        for proc, _ in running.values():
            proc.kill()
            proc.join()


def _play_loop(ctx, pending: list, running: dict, workers: int):
    while pending or running:
        while pending and len(running) < workers:
            task = pending.pop(0)
            recv, send = ctx.Pipe(duplex=False)
            proc = ctx.Process(target=_child, args=(task, send), daemon=True)
            proc.start()
            send.close()
            running[recv] = (proc, task)
        for conn in mp.connection.wait(list(running)):
            proc, task = running.pop(conn)
            try:
                status, value = conn.recv()
            except EOFError:  # died before answering
                status, value = "died", None
            conn.close()
            proc.join()
            if status == "died" and proc.exitcode != -signal.SIGABRT:
                status, value = "error", UserError(
                    f"episode seed {task.seed} ({os.path.basename(task.path)}): the process playing it died "
                    f"(exit {proc.exitcode}); nothing was written")
            if status == "error":
                for other, _ in running.values():
                    other.kill()
                raise value
            if status == "died":
                remove_stale_temporaries(task.path)  # a half-written file of the dead child
                yield task, None, proc.exitcode
            else:
                yield task, value, 0


def check_replaceable(out_dir: str | Path) -> None:
    """Refuse (UserError) an existing ``out_dir`` that this command did not write.

    ``--out`` replaces the whole folder, so it must hold nothing but a previous run's output:
    a ``manifest.json`` of ours and the episode files it lists. Anything else (another kind
    of folder, a file, a symlink, a stray file inside our folder) is refused in one line
    before any work is done. An empty folder holds nothing to lose and is replaced.
    """
    out = Path(out_dir)
    if not os.path.lexists(out):
        return
    if out.is_symlink() or not out.is_dir():
        raise UserError(f"{out}: exists and is not an episode folder; refusing to replace it (choose another --out)")
    entries = sorted(p.name for p in out.iterdir())
    if not entries:
        return
    try:
        manifest = json.loads((out / MANIFEST_NAME).read_text())
        listed = {MANIFEST_NAME} | {str(e["file"]) for e in manifest["episodes"]}
        ours = manifest["schema_version"] == EPISODE_SCHEMA_VERSION and "game" in manifest
    except (OSError, ValueError, KeyError, TypeError):
        ours = False
    if not ours:
        raise UserError(f"{out}: exists and has no episode manifest of ours (it was not written by "
                        f"'actionparty episodes'); refusing to replace it (choose another --out)")
    stray = [name for name in entries if name not in listed]
    if stray:
        raise UserError(f"{out / stray[0]}: not written by 'actionparty episodes'; refusing to replace {out} "
                        f"(move it away first)")


def generate_episodes(
    spec: GameSpec, split: str, profile: Profile, out_dir: str | Path, workers: int = 1, progress: bool = True,
    protocol: str = DEFAULT_PROTOCOL,
) -> dict:
    """Write ``per_split[split]`` episodes of ``spec`` into ``out_dir`` (created atomically,
    with a manifest of seeds and sha256 checksums); return the manifest. An existing
    ``out_dir`` is replaced only if a previous run wrote it (:func:`check_replaceable`).

    ``protocol`` other than ``episodes``: the test split's episodes (same seeds, same engine
    starts) played by that protocol's policy; the manifest names it (field ``protocol``)."""
    if split not in SPLITS:
        raise UserError(f"unknown split '{split}'; known: {', '.join(SPLITS)}")
    if protocol not in PROTOCOLS:
        raise UserError(f"unknown protocol '{protocol}'; known: {', '.join(PROTOCOLS)}")
    if protocol != DEFAULT_PROTOCOL and split != "test":
        raise UserError(f"protocol '{protocol}' replays the test split's episodes (--split test), not {split}'s")
    if workers < 1:
        raise UserError(f"--workers {workers}: must be at least 1")
    check_replaceable(out_dir)
    cfg = profile.episodes
    count = getattr(cfg.per_split, split)
    offset = map_offset(spec, profile.canvas_cells)
    start = time.perf_counter()
    GameEnv(spec, 0).close()  # the game's settings, built once here and inherited by every child
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        tasks = episode_tasks(spec, split, profile, tmp, count, protocol)
        label = split if protocol == DEFAULT_PROTOCOL else f"{split}_{protocol}"
        bar = tqdm(total=count, desc=f"episodes {spec.name}/{label}", unit="ep", disable=not progress)
        digests: dict[str, str] = {}
        replaced: dict[str, int] = {}  # file -> the seed it was first played with
        spare = count  # index of the split's next unused seed
        attempts = dict.fromkeys((os.path.basename(t.path) for t in tasks), 0)
        final = {t.path: t for t in tasks}  # file -> the task whose episode it holds
        todo = tasks
        while todo:
            retry = []
            for task, digest, exitcode in play_isolated(todo, min(workers, len(todo))):
                name = os.path.basename(task.path)
                if digest is not None:
                    digests[name] = digest
                    bar.update()
                    continue
                attempts[name] += 1
                if attempts[name] > MAX_REPLACEMENTS or spare >= SPLIT_SEED_STRIDE:
                    raise UserError(f"game '{spec.name}' ({split}): the engine aborted {attempts[name]} seeds in a "
                                    f"row for {name} (last seed {task.seed}, exit {exitcode}); see the log")
                retry.append((task, exitcode))
            # Spare seeds are handed out in file order, so which episode gets which seed does not
            # depend on which child finished first.
            todo = []
            for task, exitcode in sorted(retry, key=lambda r: r[0].path):
                name = os.path.basename(task.path)
                new_seed = episode_seed(cfg.seed, split, spare)
                spare += 1
                replaced.setdefault(name, task.seed)
                bar.write(f"{spec.name}/{split}: seed {task.seed} of {name} aborted in the engine "
                          f"(exit {exitcode}); playing seed {new_seed} instead")
                todo.append(replace(task, seed=new_seed))
                final[task.path] = todo[-1]
        tasks = [final[t.path] for t in tasks]
        bar.close()
        manifest = {
            "schema_version": EPISODE_SCHEMA_VERSION,
            "game": spec.name,
            "substrate": spec.substrate,
            "split": split,
            # Only an extra protocol is named: the test split's own manifests stay as they were.
            **({"protocol": protocol} if protocol != DEFAULT_PROTOCOL else {}),
            "num_players": spec.num_players,
            "steps": cfg.steps,
            "canvas_cells": profile.canvas_cells,
            "map_offset": list(offset),
            "map_cells": [spec.width_cells, spec.height_cells],
            "episodes": [
                {"file": os.path.basename(t.path), "seed": t.seed, "sha256": digests[os.path.basename(t.path)],
                 **({"replaces_seed": replaced[os.path.basename(t.path)]} if os.path.basename(t.path) in replaced else {})}
                for t in tasks
            ],
        }
        write_json(tmp / MANIFEST_NAME, manifest)
    elapsed = time.perf_counter() - start
    print(f"{spec.name}/{label}: {count} episodes, {count * (cfg.steps + 1) / elapsed:.0f} frames/s "
          f"({elapsed:.1f} s, {workers} workers)")
    return manifest


def load_manifest(episode_dir: str | Path) -> dict:
    """Read and check an episode folder's manifest (schema, files present)."""
    episode_dir = Path(episode_dir)
    path = episode_dir / MANIFEST_NAME
    if not path.is_file():
        raise UserError(f"{path}: episode manifest not found (run the episodes stage first)")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(manifest, dict):
        raise UserError(f"{path}: not an episode manifest (a JSON object is expected)")
    if manifest.get("schema_version") != EPISODE_SCHEMA_VERSION:
        raise UserError(f"{path}: episode schema {manifest.get('schema_version')}, expected {EPISODE_SCHEMA_VERSION}")
    for field, kind in (("game", str), ("split", str), ("canvas_cells", int), ("episodes", list)):
        if not isinstance(manifest.get(field), kind):
            raise UserError(f"{path}: field '{field}' is missing or not a {kind.__name__}")
    for i, entry in enumerate(manifest["episodes"]):
        if not (isinstance(entry, dict) and all(isinstance(entry.get(k), str) for k in ("file", "sha256"))):
            raise UserError(f"{path}: field 'episodes[{i}]' needs 'file' and 'sha256' strings")
        # A listed name is a file of this folder, never a path that leads out of it.
        if Path(entry["file"]).name != entry["file"] or entry["file"] in (".", ".."):
            raise UserError(f"{path}: field 'episodes[{i}].file' is not a plain file name: {entry['file']!r}")
        if not (episode_dir / entry["file"]).is_file():
            raise UserError(f"{episode_dir / entry['file']}: listed in the manifest but missing")
    return manifest
