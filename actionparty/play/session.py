"""One tab's game: the real engine and a model fed the same actions from the same first frame.

A session starts from a real Melting Pot reset with a seed, or from a window of a test episode
(its seed and a step; see :mod:`actionparty.play.engine`). Each step takes the actions of the
players people drive (the others follow the episode policy; an idle person's player does NOOP),
steps both panes and returns what the page draws:

- both frames (PNG), the engine's player states and, for models with subject states, the
  model's own predicted states (markers);
- per player a live mark: the model's *own predicted state* (cell and facing) against the
  engine's, for state models only (no detector involved; the page says so);
- with the evaluation detectors (``--detectors``), the running MA_changing and SP of the
  session, computed as the metrics compute them (eval.metrics) on the model's frames against
  the engine's states; without them both are shown as unavailable.

Reset restarts from the same start; switching the model restarts from the same start with the
other model. Melting Pot does not always respawn players the same way for one seed (measured on
the tiny games: 1 reset in 2 to 1 in 10 gives the first one's frame), so a restart resets the
engine until its first frame is the earlier one, at most ``START_TRIES`` times and for about
``START_BUDGET_S`` seconds, and says whether it got there.
"""

from __future__ import annotations

import base64
import io
import time
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from actionparty.config import Profile
from actionparty.data.episodes import episode_seed
from actionparty.games import GameSpec
from actionparty.games.actions import ACTION_IDS, CANONICAL_ACTIONS, NOOP
from actionparty.play.engine import CanvasState, EnginePane
from actionparty.play.model import ModelBank, ModelPane, PlayError

START_TRIES = 40
START_BUDGET_S = 4.0  # territory_rooms resets in ~0.9 s, coins in ~0.07 s
MAX_SEED = 2**31 - 1
RECORD_LIMIT = 600  # steps kept by one recording (a minute at 10 steps/s; ~55 KB each)
GIF_SCALE = 3
GIF_GAP_PX = 4


def png(frame: np.ndarray) -> str:
    """uint8 (H, W, 3) -> a PNG data URL (the page upscales it, nearest neighbour)."""
    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="PNG", compress_level=1)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def side_by_side_gif(pairs: list[tuple[np.ndarray, np.ndarray]], duration_ms: int = 100) -> bytes:
    """(real, model) frame pairs -> an animated GIF of both panes, real left, nearest-upscaled."""
    images = []
    for real, gen in pairs:
        h, w = real.shape[:2]
        canvas = np.full((h, 2 * w + GIF_GAP_PX, 3), 255, np.uint8)
        canvas[:, :w], canvas[:, w + GIF_GAP_PX :] = real, gen
        canvas = canvas.repeat(GIF_SCALE, 0).repeat(GIF_SCALE, 1)
        images.append(Image.fromarray(canvas).quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE))
    buf = io.BytesIO()
    images[0].save(buf, format="GIF", save_all=True, append_images=images[1:], duration=duration_ms, loop=0)
    return buf.getvalue()


@dataclass
class Start:
    game: str
    seed: int  # the episode seed
    step: int  # steps of the episode policy played before the start (0: a fresh reset)
    kind: str  # "seed" or "window"
    episode: int | None = None  # test episode of a window


@dataclass
class LiveScore:
    """Running MA_changing and SP of a session (eval.metrics' definitions, one step at a time)."""

    ma_counted: int = 0
    ma_hits: int = 0
    sp_counted: int = 0
    sp_hits: int = 0
    match_counted: int = 0
    match_hits: int = 0

    def summary(self, with_detectors: bool) -> dict:
        def share(hits, counted):
            return None if counted == 0 else round(hits / counted, 4)

        out = {"MA_changing": None, "SP": None, "ma_counted": self.ma_counted, "sp_counted": self.sp_counted,
               "state_match": share(self.match_hits, self.match_counted), "match_counted": self.match_counted,
               "detectors": with_detectors}
        if with_detectors:
            out["MA_changing"] = share(self.ma_hits, self.ma_counted)
            out["SP"] = share(self.sp_hits, self.sp_counted)
        return out


@dataclass
class _Detection:
    cell: np.ndarray  # (P, 2)
    facing: np.ndarray  # (P,)
    count: np.ndarray  # (P,)


class PlaySession:
    """One tab's state. Methods are called from one thread at a time (the server handles a tab's
    messages one after another); models are shared read-only, engines and KV caches are the
    session's own."""

    def __init__(self, bank: ModelBank, profile: Profile, specs: dict[str, GameSpec], detectors=None):
        self.bank, self.profile, self.specs, self.detectors = bank, profile, specs, detectors
        self.engine: EnginePane | None = None
        self.pane: ModelPane | None = None
        self.start_spec: Start | None = None
        self.model_name: str | None = None
        self.human: list[bool] = []
        self.recording: list[tuple[np.ndarray, np.ndarray]] | None = None
        self._start_frame: np.ndarray | None = None

    # ------------------------------------------------------------------------------- inputs

    def _spec(self, game) -> GameSpec:
        if not isinstance(game, str) or game not in self.specs:
            raise PlayError(f"unknown game {game!r} (this profile's games: {', '.join(self.specs)})")
        return self.specs[game]

    @staticmethod
    def _int(value, name: str, low: int, high: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise PlayError(f"{name} must be a whole number in {low}..{high}, got {value!r}")
        return value

    def _player(self, player) -> int:
        if self.engine is None:
            raise PlayError("no game yet: start one first")
        return self._int(player, "player", 0, self.engine.spec.num_players - 1)

    @staticmethod
    def _action(value) -> int:
        if isinstance(value, str) and value.upper() in ACTION_IDS:
            return ACTION_IDS[value.upper()]
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(CANONICAL_ACTIONS):
            return value
        raise PlayError(f"unknown action {value!r} (actions: {', '.join(CANONICAL_ACTIONS)} or 0..7)")

    # ------------------------------------------------------------------------------- start

    def start(self, game, model, seed=None, episode=None, step=0, human=None) -> dict:
        """A fresh reset of ``game`` with ``seed``, or (``episode`` given) the window of test
        episode ``episode`` at ``step``; ``model`` names a model of the bank."""
        spec = self._spec(game)
        self.bank.get(model)
        if episode is not None:
            episode = self._int(episode, "test episode", 0, self.profile.episodes.per_split.test - 1)
            step = self._int(step, "step", 0, self.profile.episodes.steps - 1)
            start = Start(spec.name, episode_seed(self.profile.episodes.seed, "test", episode), step, "window", episode)
        else:
            seed = self._int(0 if seed is None else seed, "seed", 0, MAX_SEED)
            start = Start(spec.name, seed, 0, "seed")
        self.start_spec, self._start_frame = start, None
        if human is not None:
            if not isinstance(human, list) or len(human) != spec.num_players or not all(isinstance(h, bool) for h in human):
                raise PlayError(f"human must be a list of {spec.num_players} true/false, one per player")
            self.human = list(human)
        else:
            self.human = [p < 2 for p in range(spec.num_players)]  # two people, one keyboard
        return self._begin(model)

    def _begin(self, model: str) -> dict:
        start, spec = self.start_spec, self.specs[self.start_spec.game]
        if self.engine is None or self.engine.spec.name != spec.name:
            self.close()
            self.engine = EnginePane(spec, self.profile)
        same_start = None
        t0 = time.perf_counter()
        for _ in range(START_TRIES):
            state = self.engine.start(start.seed, start.step)
            if self._start_frame is None:
                break
            same_start = bool(np.array_equal(state.frame, self._start_frame))
            if same_start or time.perf_counter() - t0 > START_BUDGET_S:
                break
        engine_ms = (time.perf_counter() - t0) * 1e3
        self._start_frame = state.frame
        self.model_name = model
        self.pane = ModelPane(self.bank.get(model), self.profile, spec.name, spec.num_players)
        self.pane.start(state.frame, state.position, state.facing)
        self.score = LiveScore()
        self.real_prev = state
        self.model_frame = state.frame
        self.pred: tuple[np.ndarray, np.ndarray] | None = None
        self.det_prev = self._detect(state.frame)
        if self.recording is not None:
            self.recording = [(state.frame, state.frame)]
        self.steps = 0
        return self._message(state, same_start=same_start, timing={"engine_ms": engine_ms, "model_ms": 0.0})

    def reset(self) -> dict:
        """Back to the same start with the same model."""
        if self.start_spec is None:
            raise PlayError("no game yet: start one first")
        return self._begin(self.model_name)

    def switch_model(self, name) -> dict:
        """The same start with another model."""
        self.bank.get(name)
        if self.start_spec is None:
            raise PlayError("no game yet: start one first")
        return self._begin(name)

    def set_control(self, player, mode) -> dict:
        p = self._player(player)
        if mode not in ("human", "policy"):
            raise PlayError(f"mode must be 'human' or 'policy', got {mode!r}")
        self.human[p] = mode == "human"
        return {"type": "controls", "human": list(self.human)}

    # ------------------------------------------------------------------------------- step

    def actions_for(self, given) -> np.ndarray:
        """(P,) this step's actions: ``given`` {player: action} for people's players (an idle
        person's player does NOOP), the episode policy for the others."""
        if not isinstance(given, dict):
            raise PlayError("actions must be an object {player: action}")
        players = self.engine.spec.num_players
        chosen = {}
        for key, value in given.items():
            try:
                p = int(key)
            except (TypeError, ValueError):
                raise PlayError(f"player {key!r} is not a player number") from None
            if not 0 <= p < players:
                raise PlayError(f"player {p} does not exist in '{self.engine.spec.name}' (players 0..{players - 1})")
            chosen[p] = self._action(value)
        policy = self.engine.policy(self.engine.t)
        return np.array([chosen.get(p, NOOP) if self.human[p] else int(policy[p]) for p in range(players)], np.int64)

    def step(self, given=None) -> dict:
        if self.engine is None:
            raise PlayError("no game yet: start one first")
        if not self.engine.running:
            raise PlayError("the episode has ended: press Enter to reset")
        actions = self.actions_for(given or {})
        t0 = time.perf_counter()
        real = self.engine.step(actions)
        t1 = time.perf_counter()
        frame, position, facing = self.pane.step(actions)
        t2 = time.perf_counter()
        self.model_frame = frame
        self.pred = None if position is None else (position, facing)
        match = self._score(real, frame)
        self.real_prev = real
        if self.recording is not None and len(self.recording) < RECORD_LIMIT:
            self.recording.append((real.frame, frame))
        self.steps += 1
        return self._message(real, actions=actions, match=match,
                             timing={"engine_ms": (t1 - t0) * 1e3, "model_ms": (t2 - t1) * 1e3})

    # ------------------------------------------------------------------------------- scores

    def _detect(self, frame: np.ndarray) -> _Detection | None:
        if self.detectors is None or self.start_spec.game not in self.detectors.games:
            return None
        from actionparty.eval.detectors import detect

        game = torch.tensor([self.detectors.games.index(self.start_spec.game)])
        with torch.no_grad():
            det, _ = detect(self.detectors.tile, torch.from_numpy(np.ascontiguousarray(frame)).permute(2, 0, 1)[None],
                            game, self.detectors.config.tau, 1)
        p = self.engine.spec.num_players
        return _Detection(det.cell[0, :p], det.facing[0, :p], det.count[0, :p])

    def _score(self, real: CanvasState, frame: np.ndarray) -> list:
        """Per player the state mark (True/False, None where it cannot be judged); updates the score."""
        prev, s = self.real_prev, self.score
        match: list = [None] * self.engine.spec.num_players
        if self.pred is not None:
            cell = np.rint(self.pred[0]).astype(np.int64)
            for p in range(len(match)):
                if real.visible[p]:
                    match[p] = bool((cell[p] == real.position[p]).all() and self.pred[1][p] == real.facing[p])
                    s.match_counted += 1
                    s.match_hits += match[p]
        det = self._detect(frame)
        if det is not None and self.det_prev is not None:
            d0 = self.det_prev
            for p in range(len(match)):
                if real.visible[p]:  # SP: detected exactly once (metrics.presence_outcomes)
                    s.sp_counted += 1
                    s.sp_hits += int(det.count[p] == 1)
                moved = bool((real.position[p] != prev.position[p]).any() or real.facing[p] != prev.facing[p])
                if prev.visible[p] and real.visible[p] and moved:  # MA over changing steps (motion_outcomes)
                    s.ma_counted += 1
                    found = d0.count[p] >= 1 and det.count[p] >= 1
                    same_move = ((det.cell[p] - d0.cell[p]) == (real.position[p] - prev.position[p])).all()
                    same_turn = (det.facing[p] - d0.facing[p]) % 4 == (real.facing[p] - prev.facing[p]) % 4
                    s.ma_hits += int(found and same_move and same_turn)
        self.det_prev = det
        return match

    # ------------------------------------------------------------------------------- output

    def _message(self, real: CanvasState, actions=None, match=None, same_start=None, timing=None) -> dict:
        start = self.start_spec
        p = self.engine.spec.num_players
        return {
            "type": "frame",
            "game": start.game, "model": self.model_name, "step": self.steps, "episode_step": self.engine.t,
            "start": {"kind": start.kind, "seed": start.seed, "step": start.step, "episode": start.episode},
            "same_start": same_start,
            "players": p, "human": list(self.human),
            "real": png(real.frame), "model_frame": png(self.model_frame),
            "real_state": [[int(x), int(y), int(f), bool(v)] for (x, y), f, v in
                           zip(real.position.tolist(), real.facing.tolist(), real.visible.tolist())],
            "pred_state": None if self.pred is None else
            [[round(float(x), 2), round(float(y), 2), int(f)] for (x, y), f in zip(self.pred[0].tolist(), self.pred[1].tolist())],
            "predicts_state": bool(self.pane.play_model.has_state),
            "match": match if match is not None else [None] * p,
            "actions": None if actions is None else [CANONICAL_ACTIONS[a] for a in actions.tolist()],
            "score": self.score.summary(self.detectors is not None and start.game in self.detectors.games),
            "running": self.engine.running,
            "recording": self.recording is not None,
            "timing": {k: round(v, 2) for k, v in (timing or {}).items()},
            "canvas_cells": self.profile.canvas_cells,
        }

    # ------------------------------------------------------------------------------- recording

    def record(self, on) -> bytes | None:
        """Start (``on``) or stop a recording; stopping returns the GIF of both panes."""
        if not isinstance(on, bool):
            raise PlayError(f"record needs on: true or false, got {on!r}")
        if on:
            if self.engine is None:
                raise PlayError("no game yet: start one first")
            self.recording = [(self.real_prev.frame, self.model_frame)]
            return None
        if self.recording is None:
            raise PlayError("not recording")
        pairs, self.recording = self.recording, None
        return side_by_side_gif(pairs)

    def memory_bytes(self) -> int:
        return 0 if self.pane is None else self.pane.cache_bytes()

    def close(self) -> None:
        if self.engine is not None:
            self.engine.close()
            self.engine = None
        self.pane = None
