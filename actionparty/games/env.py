"""A lean adapter from a catalogue game to a running dmlab2d substrate.

``GameEnv`` drives ``dmlab2d.Lab2d`` directly instead of Melting Pot's wrapper stack: it reads
only the observations it records (``WORLD.RGB`` and each player's ``POSITION``, ``ORIENTATION``
and one-cell ``LAYER``; never the per-player ``RGB`` views) and turns canonical actions into the
dmlab2d action vector with one fancy-indexing assignment. Per step it records, for P players:

    frame            uint8 (H, W, 3)  the whole mini map, H = 8 * height_cells, W = 8 * width_cells
    position         int16 (P, 2)     cell (x=column, y=row) in the ascii map
    facing           int8  (P,)       0..3 = N, E, S, W
    visible          bool  (P,)       the avatar is drawn (see ``visible`` below)
    interact_effect  bool  (P,)       the player's INTERACT changed the frame (see below)

**visible.** A zapped/eaten/removed avatar is taken off the grid (Melting Pot's "wait" state)
while its ``POSITION`` keeps being reported (and keeps following its moves). Each avatar's view
is shrunk to its own cell (``lab2d.OWN_CELL_VIEW``), so its ``<i>.LAYER`` observation holds the
sprite id on every layer of that cell; an avatar that is off the grid sees only the out-of-view
sprite, one non-zero id repeated on every layer, while a cell on the grid always has empty (0)
layers (its few sprites fill few of the 8+ layers), so "no empty layer" is an exact test. One more case hides an avatar that is
on the grid: an opaque beam drawn over its cell for one step (territory's claiming beam paints
whole cells); its cell is then one flat colour, which no sprite is. ``visible`` = on the grid
and its cell not one flat colour.

**interact_effect.** True when the player chose INTERACT at this step, was visible before and
after, and the pixels of its own cell or of the cell in front of it (along its facing, inside
the map) differ between the previous frame and this one; a cell that another visible player
occupies in either frame is left out, so players walking past do not count. This catches beams
(zap, clean, claim, gift, mine, the matrix games' interaction beam), picking up and putting down,
grasping and eating what is in front. Known limits, by construction: a beam fired on two
consecutive steps looks the same in both frames (second step: no effect), the vanishing of the
previous step's beam counts as a change, and so does anything else that changes those two cells
in that step (regrowth, another player's beam). Always False where INTERACT is the substrate's
NOOP (coins).

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
from dataclasses import dataclass

import numpy as np

from actionparty.games import lab2d
from actionparty.games.actions import CANONICAL_ACTIONS, CELL_PX, FACING_STEP, INTERACT
from actionparty.games.catalogue import GameSpec
from actionparty.games.luajit_seed import seeded_luajit

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


class _LuaStdout:
    """Points fd 1 at a temporary file while dmlab2d runs (Lua prints there).

    ``enter``/``exit`` instead of a context manager: this runs on every step, and the plain
    calls cost ~1 us against ~4 us for a generator-based context manager.
    """

    def __init__(self):
        self._file = tempfile.TemporaryFile(mode="w+b")
        self._saved = -1

    def enter(self) -> None:
        sys.stdout.flush()  # Python's own buffered text must not land in the file
        self._saved = os.dup(1)
        os.dup2(self._file.fileno(), 1)

    def exit(self) -> None:
        os.dup2(self._saved, 1)
        os.close(self._saved)

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
    """The dmlab2d settings of a game (its level script, see ``lab2d.level_script``), cached
    per process: episodes of one game rebuild the Lua environment at every reset, but the
    settings never change."""
    settings = lab2d.game_settings(substrate, roles, ascii_map, json.loads(overrides_json))
    return lab2d.level_script(lab2d.flatten_settings(settings))


def _plain_json(value):
    """json.dumps fallback for catalogue settings (immutable mappings, tuples)."""
    if hasattr(value, "items"):
        return dict(value.items())
    if isinstance(value, (tuple, list, set, frozenset)):
        return list(value)
    raise TypeError(f"cannot serialise {type(value).__name__} in game settings")


class GameEnv:
    """One dmlab2d substrate built from a GameSpec; a context manager.

    ``reset()`` rebuilds the Lua environment with a fresh seed drawn from ``seed`` (as Melting
    Pot does; restarting one in place aborted the process in clean_up) and returns the first
    state; ``step(actions)`` takes (P,) canonical action ids and returns the next. Every catalogue
    game runs at least 1000 steps before the substrate ends the episode (``running`` turns
    False); stepping further raises. For one ``seed`` the sequence of episodes is the same bytes
    in every process and on every run (see ``lab2d.level_script`` and ``luajit_seed`` for what
    it takes); the records are still the ground truth, nothing replays an env to get a label.
    """

    def __init__(self, spec: GameSpec, seed: int):
        self.spec = spec
        self.num_players = spec.num_players
        self.frame_shape = (spec.height_cells * CELL_PX, spec.width_cells * CELL_PX, 3)
        overrides = json.dumps(spec.settings, sort_keys=True, default=_plain_json)
        self._settings = _dmlab2d_settings(spec.substrate, tuple(spec.roles), tuple(spec.ascii_map), overrides)
        self._seeds = np.random.default_rng(seed)
        self._episode = 0
        self._stdout = _LuaStdout()
        self._env = None
        self._running = False
        self._previous: StepRecord | None = None
        players = range(1, self.num_players + 1)
        # One list, one pass of observation calls per step: P positions, P orientations, P layers.
        self._observation_names = (
            [f"{i}.POSITION" for i in players] + [f"{i}.ORIENTATION" for i in players] + [f"{i}.LAYER" for i in players]
        )
        # Canonical id -> the dmlab2d values of the substrate action it maps to: (8, K) over the
        # substrate's action keys (move, turn, fireZap, ...).
        substrate_actions = lab2d.action_set(spec.substrate)
        self._action_keys = sorted({key for entry in substrate_actions for key in entry})
        self._action_values = np.array(
            [[substrate_actions[index].get(key, 0) for key in self._action_keys] for index in spec.action_map],
            dtype=np.int32,
        )
        self._interact_is_noop = not self._action_values[INTERACT].any()
        self._action_columns = None  # (P, K) positions of "<player>.<key>" in dmlab2d's action vector
        self._action_vector = None  # (D,) int32, reused every step

    # -- lifecycle ---------------------------------------------------------------------

    def __enter__(self) -> "GameEnv":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Release the Lua environment and flush captured Lua output to the log."""
        self._env = None
        self._running = False
        if self._stdout is not None:
            self._stdout.close()
            self._stdout = None

    @property
    def running(self) -> bool:
        """False before reset() and once the substrate has ended the episode."""
        return self._running

    def _build(self) -> None:
        import dmlab2d
        from dmlab2d import runfiles_helper

        env_seed = int(self._seeds.integers(1, _MAX_SEED))
        settings = dict(self._settings, env_seed=str(env_seed))
        self._env = None  # drop the previous Lua state before building the next
        # LuaJIT seeds its own PRNG (string hash ids, so pairs() order) while the state is made.
        with seeded_luajit(env_seed):
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

    def _observe(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(frame, position, facing, visible) of the current Lua state."""
        observe = self._env.observation
        frame = observe("WORLD.RGB")  # a fresh uint8 array on every call, no copy needed
        if frame.shape != self.frame_shape:
            raise RuntimeError(
                f"game '{self.spec.name}': WORLD.RGB is {frame.shape}, expected {self.frame_shape} "
                "(the map is not what the catalogue says)"
            )
        p = self.num_players
        values = [observe(name) for name in self._observation_names]
        position = np.array(values[:p], dtype=np.int16)
        facing = np.array([int(v) for v in values[p : 2 * p]], dtype=np.int8)
        # (P, layers) sprite ids of each avatar's own cell; off the grid = no empty layer left
        # (the out-of-view sprite fills them all, while a cell on the grid always has empty ones).
        off_grid = np.stack(values[2 * p :]).reshape(p, -1).all(axis=1)
        # A cell of one flat colour shows no sprite: an opaque beam is drawn over the avatar.
        h, w = self.spec.height_cells, self.spec.width_cells
        xs = [min(max(x, 0), w - 1) for x, _ in position.tolist()]  # off-grid positions are not
        ys = [min(max(y, 0), h - 1) for _, y in position.tolist()]  # guaranteed to be on the map
        cells = frame.reshape(h, CELL_PX, w, CELL_PX, 3)[ys, :, xs].reshape(p, -1, 3)  # (P, 64, 3)
        flat = (cells == cells[:, :1]).all(axis=(1, 2))
        return frame, position, facing, ~(off_grid | flat)

    def _interact_effect(self, actions, frame, position, facing, visible) -> np.ndarray:
        """(P,) bool, as defined in the module docstring."""
        effect = np.zeros(self.num_players, bool)
        if self._interact_is_noop:
            return effect
        interacting = np.flatnonzero(actions == INTERACT)
        if len(interacting) == 0:
            return effect
        prev = self._previous
        h, w = self.spec.height_cells, self.spec.width_cells
        # Plain Python on <= 14 cells is cheaper here than numpy on tiny arrays.
        now = [tuple(xy) for xy in position.tolist()]
        before = [tuple(xy) for xy in prev.position.tolist()]
        seen = visible.tolist()
        seen_before = prev.visible.tolist()
        for p in interacting.tolist():
            if not (seen[p] and seen_before[p]):
                continue
            x, y = now[p]
            dx, dy = FACING_STEP[int(facing[p])]
            cells = [(x, y)] + ([(x + dx, y + dy)] if 0 <= x + dx < w and 0 <= y + dy < h else [])
            occupied = {now[q] for q in range(self.num_players) if q != p and seen[q]}
            occupied |= {before[q] for q in range(self.num_players) if q != p and seen_before[q]}
            for cx, cy in cells:
                if (cx, cy) in occupied:
                    continue
                rows = slice(cy * CELL_PX, (cy + 1) * CELL_PX)
                cols = slice(cx * CELL_PX, (cx + 1) * CELL_PX)
                if not np.array_equal(frame[rows, cols], prev.frame[rows, cols]):
                    effect[p] = True
                    break
        return effect

    # -- dm_env-like API ---------------------------------------------------------------

    def reset(self) -> StepRecord:
        """Build a fresh Lua environment, start an episode and return its first state."""
        if self._stdout is None:
            raise RuntimeError(f"game '{self.spec.name}': the environment is closed")
        self._stdout.enter()
        try:
            self._build()
            self._env.start(self._episode, int(self._seeds.integers(0, _MAX_SEED)))
            frame, position, facing, visible = self._observe()
        finally:
            self._stdout.exit()
        self._stdout.drain()
        self._episode += 1
        self._running = True
        self._previous = StepRecord(frame, position, facing, visible, np.zeros(self.num_players, bool))
        return self._previous

    def raw_step(self, actions) -> np.ndarray:
        """The bare dmlab2d step (act, advance, ``WORLD.RGB``) with no labels: the reference
        rate that episode generation is benchmarked against. Returns the frame."""
        self._action_vector[self._action_columns] = self._action_values[np.asarray(actions)]
        self._stdout.enter()
        try:
            self._env.act_discrete(self._action_vector)
            self._env.advance()
            return self._env.observation("WORLD.RGB")
        finally:
            self._stdout.exit()

    def step(self, actions) -> StepRecord:
        """Advance one step; ``actions`` is (P,) canonical action ids (0..7)."""
        if not self._running:
            raise RuntimeError(f"game '{self.spec.name}': call reset() first (or the episode has ended)")
        actions = np.asarray(actions)
        if actions.shape != (self.num_players,) or actions.min() < 0 or actions.max() >= len(CANONICAL_ACTIONS):
            raise ValueError(
                f"game '{self.spec.name}': expected {self.num_players} action ids in 0..7, got {actions.tolist()}"
            )
        self._action_vector[self._action_columns] = self._action_values[actions]
        self._stdout.enter()
        try:
            self._env.act_discrete(self._action_vector)
            status, _ = self._env.advance()
            frame, position, facing, visible = self._observe()
        finally:
            self._stdout.exit()
        self._running = status == self._status_running
        effect = self._interact_effect(actions, frame, position, facing, visible)
        self._previous = StepRecord(frame, position, facing, visible, effect)
        return self._previous
