"""A lean adapter from a catalogue game to a running dmlab2d substrate.

``GameEnv`` drives ``dmlab2d.Lab2d`` directly instead of Melting Pot's wrapper stack: it asks
only for the observations it records (``WORLD.RGB`` and each player's ``POSITION`` and
``ORIENTATION``; never the per-player ``RGB`` views) and turns canonical actions into the
dmlab2d action vector with one fancy-indexing assignment. Per step it records, for P players:

    frame            uint8 (H, W, 3)  the whole mini map, H = 8 * height_cells, W = 8 * width_cells
    position         int16 (P, 2)     cell (x=column, y=row) in the ascii map
    facing           int8  (P,)       0..3 = N, E, S, W
    visible          bool  (P,)       the avatar is drawn (see ``visible`` below)
    interact_effect  bool  (P,)       the player's INTERACT changed something (see below)

**visible.** A zapped/removed avatar is taken off the grid (Melting Pot's "wait" state) while its
``POSITION`` keeps being reported. Each avatar's view is shrunk to its own cell (see
``lab2d.OWN_CELL_VIEW``), so its ``<i>.LAYER`` observation holds the sprite id on each layer of
that cell; an avatar that is off the grid sees only the out-of-view sprite, the same non-zero id on
every layer. visible = not that. (The avatar's own sprite is on one of the layers, so an avatar
on the grid never sees a uniform column.)

**interact_effect.** True when the player chose INTERACT this step, was visible before and
after, and the pixels of its own cell or of the cell in front of it (along its facing) changed
between the previous frame and this one, while no other player stood in those two cells on
either frame (so players walking past do not count). This covers beams (zaps, cleaning,
claiming, the matrix games' interaction beam), picking up, dropping, mining, eating and
refining; an INTERACT on cooldown or facing an empty floor has no effect.

Melting Pot's Lua prints warnings on the process's stdout (fd 1). Every call into dmlab2d runs
with fd 1 pointed at a private temporary file; its text is logged at DEBUG level on
``reset``/``close`` (logger ``actionparty.games.env``), then dropped.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from actionparty.games import lab2d
from actionparty.games.actions import CELL_PX, FACING_STEP, INTERACT
from actionparty.games.catalogue import GameSpec

log = logging.getLogger(__name__)

_MAX_SEED = 2**31 - 1


@dataclass
class StepRecord:
    """One step of one game; shapes as in the module docstring (P players)."""

    frame: np.ndarray  # uint8 (H, W, 3)
    position: np.ndarray  # int16 (P, 2), (x, y) cells
    facing: np.ndarray  # int8 (P,), 0..3 = N, E, S, W
    visible: np.ndarray  # bool (P,)
    interact_effect: np.ndarray  # bool (P,), all False after reset


class _StdoutCapture:
    """Points fd 1 at a temporary file while dmlab2d runs (Lua prints there)."""

    def __init__(self):
        self._file = tempfile.TemporaryFile(mode="w+b")

    @contextmanager
    def __call__(self):
        sys.stdout.flush()  # Python's own buffered text must not land in the file
        saved = os.dup(1)
        os.dup2(self._file.fileno(), 1)
        try:
            yield
        finally:
            os.dup2(saved, 1)
            os.close(saved)

    def drain(self) -> None:
        """Log what Lua printed (DEBUG) and empty the file, so it never grows."""
        if log.isEnabledFor(logging.DEBUG):
            self._file.seek(0)
            for line in self._file.read().decode(errors="replace").splitlines():
                log.debug("lua: %s", line)
        self._file.seek(0)
        self._file.truncate()

    def close(self) -> None:
        self.drain()
        self._file.close()


@functools.lru_cache(maxsize=64)
def _dmlab2d_settings(substrate: str, roles: tuple[str, ...], ascii_map: tuple[str, ...], overrides_json: str):
    """The flattened dmlab2d settings of a game, cached per process: episodes of one game
    rebuild the Lua environment at every reset, but the settings never change."""
    settings = lab2d.game_settings(substrate, roles, ascii_map, json.loads(overrides_json))
    return lab2d.flatten_settings(settings)


class GameEnv:
    """One dmlab2d substrate built from a GameSpec; a context manager.

    ``reset()`` rebuilds the Lua environment (Melting Pot does the same: reusing it crashed
    clean_up) with a fresh seed drawn from ``seed``; ``step(actions)`` takes (P,) canonical
    action ids. Both return a :class:`StepRecord`.
    """

    def __init__(self, spec: GameSpec, seed: int):
        self.spec = spec
        self.num_players = spec.num_players
        self.frame_shape = (spec.height_cells * CELL_PX, spec.width_cells * CELL_PX, 3)
        overrides = json.dumps(spec.settings, sort_keys=True, default=_plain_json)
        self._settings = _dmlab2d_settings(spec.substrate, tuple(spec.roles), tuple(spec.ascii_map), overrides)
        self._seeds = np.random.default_rng(seed)
        self._episode = 0
        self._capture = _StdoutCapture()
        self._env = None
        self._running = False
        players = range(1, self.num_players + 1)
        self._position_names = [f"{i}.POSITION" for i in players]
        self._orientation_names = [f"{i}.ORIENTATION" for i in players]
        self._layer_names = [f"{i}.LAYER" for i in players]
        # canonical id -> the dmlab2d values of the substrate action it stands for: (8, K)
        substrate_actions = lab2d.action_set(spec.substrate)
        self._action_keys = sorted({key for entry in substrate_actions for key in entry})
        self._action_values = np.array(
            [[substrate_actions[index].get(key, 0) for key in self._action_keys] for index in spec.action_map],
            dtype=np.int32,
        )
        self._interact_is_noop = not self._action_values[INTERACT].any()
        self._action_columns = None  # (P, K) indices into the dmlab2d action vector, set on build
        self._previous = None  # last StepRecord

    # -- lifecycle ---------------------------------------------------------------------

    def __enter__(self) -> "GameEnv":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Release the Lua environment and flush captured Lua output to the log."""
        self._env = None
        self._running = False
        if self._capture is not None:
            self._capture.close()
            self._capture = None

    def _build(self) -> None:
        import dmlab2d
        from dmlab2d import runfiles_helper

        settings = dict(self._settings, env_seed=str(int(self._seeds.integers(1, _MAX_SEED))))
        self._env = None  # drop the previous Lua state before building the next
        self._env = dmlab2d.Lab2d(runfiles_helper.find(), settings)
        self._status_running = dmlab2d.RUNNING
        if self._action_columns is None:
            names = {name: i for i, name in enumerate(self._env.action_discrete_names())}
            self._action_columns = np.array(
                [[names[f"{p}.{key}"] for key in self._action_keys] for p in range(1, self.num_players + 1)],
                dtype=np.intp,
            )
            self._action_vector = np.zeros(len(names), dtype=np.int32)

    # -- observations ------------------------------------------------------------------

    def _observe(self):
        env = self._env
        frame = np.array(env.observation("WORLD.RGB"), dtype=np.uint8)
        if frame.shape != self.frame_shape:
            raise RuntimeError(
                f"game '{self.spec.name}': WORLD.RGB is {frame.shape}, expected {self.frame_shape} "
                "(the map is not what the catalogue says)"
            )
        position = np.array([env.observation(name) for name in self._position_names], dtype=np.int16)
        facing = np.array([env.observation(name) for name in self._orientation_names], dtype=np.int8)
        layers = np.array([np.ravel(env.observation(name)) for name in self._layer_names])
        return frame, position, facing, self._on_grid(layers)

    @staticmethod
    def _on_grid(layers: np.ndarray) -> np.ndarray:
        """(P, L) sprite ids of each avatar's own cell -> (P,) bool: the avatar is on the grid."""
        off_grid = (layers == layers[:, :1]).all(axis=1) & (layers[:, 0] != 0)
        return ~off_grid

    def _interact_effect(self, actions, frame, position, facing, visible) -> np.ndarray:
        effect = np.zeros(self.num_players, bool)
        prev = self._previous
        h, w = self.spec.height_cells, self.spec.width_cells
        if self._interact_is_noop:  # e.g. coins, which has no interaction action
            return effect
        for p in np.flatnonzero(actions == INTERACT):
            if not (visible[p] and prev.visible[p]):
                continue
            x, y = int(position[p, 0]), int(position[p, 1])
            dx, dy = FACING_STEP[int(facing[p])]
            cells = {(x, y)}
            if 0 <= x + dx < w and 0 <= y + dy < h:
                cells.add((x + dx, y + dy))
            others = {
                (int(pos[q, 0]), int(pos[q, 1]))
                for pos, vis in ((position, visible), (prev.position, prev.visible))
                for q in range(self.num_players)
                if q != p and vis[q]
            }
            if cells & others:
                continue
            effect[p] = any(
                not np.array_equal(
                    frame[cy * CELL_PX : (cy + 1) * CELL_PX, cx * CELL_PX : (cx + 1) * CELL_PX],
                    prev.frame[cy * CELL_PX : (cy + 1) * CELL_PX, cx * CELL_PX : (cx + 1) * CELL_PX],
                )
                for cx, cy in cells
            )
        return effect

    # -- dm_env-like API ---------------------------------------------------------------

    def reset(self) -> StepRecord:
        """Build a fresh Lua environment, start an episode and return its first state."""
        if self._capture is None:
            raise RuntimeError(f"game '{self.spec.name}': environment is closed")
        with self._capture():
            self._build()
            self._env.start(self._episode, int(self._seeds.integers(0, _MAX_SEED)))
            frame, position, facing, visible = self._observe()
        self._capture.drain()
        self._episode += 1
        self._running = True
        self._previous = StepRecord(frame, position, facing, visible, np.zeros(self.num_players, bool))
        return self._previous

    def step(self, actions) -> StepRecord:
        """Advance one step; ``actions`` is (P,) canonical action ids (0..7)."""
        if not self._running:
            raise RuntimeError(f"game '{self.spec.name}': call reset() first (or the episode has ended)")
        actions = np.asarray(actions)
        if actions.shape != (self.num_players,):
            raise ValueError(f"game '{self.spec.name}': expected {self.num_players} actions, got {actions.shape}")
        self._action_vector[self._action_columns] = self._action_values[actions]
        with self._capture():
            self._env.act_discrete(self._action_vector)
            status, _ = self._env.advance()
            frame, position, facing, visible = self._observe()
        self._running = status == self._status_running
        effect = self._interact_effect(actions, frame, position, facing, visible)
        self._previous = StepRecord(frame, position, facing, visible, effect)
        return self._previous

    @property
    def running(self) -> bool:
        """False once the substrate ended its episode (then reset() starts a new one)."""
        return self._running


def _plain_json(value):
    """json.dumps fallback for catalogue settings (immutable mappings, tuples)."""
    if hasattr(value, "items"):
        return dict(value.items())
    if isinstance(value, (tuple, list, set, frozenset)):
        return list(value)
    raise TypeError(f"cannot serialise {type(value).__name__} in game settings")
