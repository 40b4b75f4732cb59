"""The real game of a play session: a Melting Pot substrate on the profile's canvas.

A start is an episode seed and a step: ``start(seed, 0)`` is a fresh reset; a test window is
the test split's episode seed (:func:`actionparty.data.episodes.episode_seed`) and a step
inside it, reached by replaying that episode's own policy from its reset, exactly as episode
generation played it. The episode policy (the seeded sticky players of data.episodes) keeps
driving every player that no person controls.

Frames, positions and facings are on the canvas, as the datasets and the model have them: the
mini map centred, positions with the map offset added.
"""

from __future__ import annotations

import threading
import zlib
from dataclasses import dataclass

import numpy as np

from actionparty.config import Profile
from actionparty.data.episodes import map_offset, sticky_actions
from actionparty.games import CELL_PX, GameEnv, GameSpec

# GameEnv points the process's fd 1 at a private file during every dmlab2d call (Lua prints
# there); two threads doing so at once would leave stdout pointing at a file. Engine calls are
# ~0.1 ms, so sessions simply take turns.
ENGINE_LOCK = threading.Lock()


@dataclass
class CanvasState:
    """One engine state on the canvas (P players)."""

    frame: np.ndarray  # uint8 (canvas_px, canvas_px, 3)
    position: np.ndarray  # int64 (P, 2) canvas cells (x, y)
    facing: np.ndarray  # int64 (P,) 0..3 = N, E, S, W
    visible: np.ndarray  # bool (P,)


class EpisodePolicy:
    """The sticky episode policy of one episode seed, step by step (data.episodes.run_episode
    draws ``steps`` actions up front from this stream; past them, the next block is drawn)."""

    def __init__(self, spec: GameSpec, profile: Profile, seed: int):
        cfg = profile.episodes
        self._rng = np.random.default_rng([seed, zlib.crc32(spec.name.encode())])
        self._block = (cfg.steps, spec.num_players, tuple(cfg.policy.probabilities()), cfg.policy.stickiness)
        self._actions = np.zeros((0, spec.num_players), np.int64)

    def __call__(self, t: int) -> np.ndarray:
        """(P,) the policy's actions at episode step ``t``."""
        while t >= len(self._actions):
            steps, players, probs, stickiness = self._block
            more = sticky_actions(self._rng, steps, players, probs, stickiness).astype(np.int64)
            self._actions = np.concatenate([self._actions, more])
        return self._actions[t]


class EnginePane:
    """The real engine of one session. Not thread-safe on its own: a session steps it from one
    thread at a time; the process-wide :data:`ENGINE_LOCK` covers dmlab2d's stdout redirection."""

    def __init__(self, spec: GameSpec, profile: Profile):
        self.spec, self.profile = spec, profile
        self.offset = np.array(map_offset(spec, profile.canvas_cells), np.int64)
        self._env: GameEnv | None = None
        self.policy: EpisodePolicy | None = None
        self.t = 0  # episode step of the current state
        self.state: CanvasState | None = None

    def _canvas(self, rec) -> CanvasState:
        px = self.profile.canvas_px
        frame = np.zeros((px, px, 3), np.uint8)
        h, w = rec.frame.shape[:2]
        y0, x0 = int(self.offset[1]) * CELL_PX, int(self.offset[0]) * CELL_PX
        frame[y0 : y0 + h, x0 : x0 + w] = rec.frame
        return CanvasState(frame, rec.position.astype(np.int64) + self.offset, rec.facing.astype(np.int64),
                           rec.visible.copy())

    def start(self, seed: int, step: int = 0) -> CanvasState:
        """Reset with episode seed ``seed`` and play the episode policy up to ``step``."""
        self.close()
        self.policy = EpisodePolicy(self.spec, self.profile, seed)
        with ENGINE_LOCK:
            self._env = GameEnv(self.spec, seed)
            rec = self._env.reset()
            for t in range(step):
                rec = self._env.step(self.policy(t))
        self.t = step
        self.state = self._canvas(rec)
        return self.state

    @property
    def running(self) -> bool:
        return self._env is not None and self._env.running

    def step(self, actions: np.ndarray) -> CanvasState:
        """Advance one step with (P,) canonical actions."""
        with ENGINE_LOCK:
            rec = self._env.step(actions)
        self.t += 1
        self.state = self._canvas(rec)
        return self.state

    def close(self) -> None:
        if self._env is not None:
            with ENGINE_LOCK:
                self._env.close()
            self._env = None
