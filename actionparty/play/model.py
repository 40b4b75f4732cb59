"""The models a play server offers, and the model side of a session.

:class:`ModelBank` loads each ``--model NAME=CHECKPOINT`` once (EMA weights, eval mode,
gradients off) and names it to the page by NAME only. :class:`ModelPane` rolls one model out a
game step at a time through the rollout :class:`~actionparty.rollout.sampler.Sampler` that the
metrics use, set up as ``rollout.generate`` sets it up for one window (the profile's Euler steps,
state pass, timestep shift, context noise, KV-cache window, and a generator seeded with
``rollout.seed`` at every start): the same start and actions give the frames ``actionparty
rollout`` gives (tests/test_play.py pins it).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from actionparty.config import Profile
from actionparty.errors import UserError
from actionparty.games import PLAYER_SLOTS
from actionparty.rollout.generate import LoadedModel, context_states, load_for_rollout, make_sampler, window_frames
from actionparty.rollout.sampler import Sampler

MODEL_NAME = re.compile(r"[a-z][a-z0-9_]*(-s[0-9]+)?")


class PlayError(UserError):
    """Bad input from the page or the command line, in one line (shown in the page)."""


def parse_model_args(values: list[str]) -> dict[str, Path]:
    """``["full=results/finetune/full/checkpoint.pt", ...]`` -> {name: path} (PlayError on a bad entry)."""
    models: dict[str, Path] = {}
    for value in values:
        name, sep, path = value.partition("=")
        if not sep or not path:
            raise PlayError(f"--model {value!r}: expected NAME=CHECKPOINT (e.g. full=results/finetune/full/checkpoint.pt)")
        if not MODEL_NAME.fullmatch(name):
            raise PlayError(f"--model {value!r}: model name {name!r} must be a variant name (lower-case word)")
        if name in models:
            raise PlayError(f"--model {value!r}: model {name!r} given twice")
        models[name] = Path(path)
    if not models:
        raise PlayError("--model: give at least one NAME=CHECKPOINT")
    return models


@dataclass
class PlayModel:
    name: str
    loaded: LoadedModel
    window_frames: int

    @property
    def model(self):
        return self.loaded.model

    @property
    def has_state(self) -> bool:
        return self.loaded.model.has_state

    def describe(self) -> dict:
        m = self.loaded.model
        kind = "subject states" if m.has_state else "actions" if m.takes_actions else "no actions"
        if self.loaded.text.with_actions:
            kind = "actions in the text prompt"
        return {"name": self.name, "conditioning": kind, "predicts_state": bool(m.has_state),
                "step": int(self.loaded.state.get("step", 0))}


class ModelBank:
    """Every model the server offers, loaded once; sessions only read them."""

    def __init__(self, profile: Profile, checkpoints: dict[str, Path], device: str = "cpu"):
        self.profile = profile
        self.models: dict[str, PlayModel] = {}
        for name, path in checkpoints.items():
            loaded = load_for_rollout(profile, path, device=device)
            if loaded.model.chunk_frames != 1:
                raise PlayError(f"{path}: model '{name}' draws chunks of {loaded.model.chunk_frames} frames; "
                                "play steps a model one game step at a time (chunks of one frame)")
            variant = loaded.state.get("variant")
            base = name.split("-s")[0]
            if variant is not None and variant.split("-s")[0] != base:
                raise PlayError(f"{path}: checkpoint of '{variant}', not of model '{name}'")
            loaded.model.requires_grad_(False)
            self.models[name] = PlayModel(name, loaded, window_frames(profile, loaded))

    def names(self) -> list[str]:
        return list(self.models)

    def get(self, name) -> PlayModel:
        if not isinstance(name, str) or name not in self.models:
            raise PlayError(f"unknown model {name!r} (this server offers: {', '.join(self.models)})")
        return self.models[name]


def _pad(values: np.ndarray, fill=0) -> np.ndarray:
    """(P, ...) -> (PLAYER_SLOTS, ...), absent slots filled as the datasets fill them."""
    out = np.full((PLAYER_SLOTS,) + values.shape[1:], fill, dtype=values.dtype)
    out[: len(values)] = values
    return out


class ModelPane:
    """One rollout of one model, a game step at a time (batch of one, chunks of one frame)."""

    def __init__(self, play_model: PlayModel, profile: Profile, game: str, players: int):
        self.play_model, self.profile, self.game, self.players = play_model, profile, game, players
        self.device = next(play_model.model.parameters()).device
        present = np.zeros(PLAYER_SLOTS, bool)
        present[:players] = True
        self.present = torch.from_numpy(present)[None].to(self.device)
        self.sampler: Sampler | None = None
        self._context = None
        self._actions: torch.Tensor | None = None  # (1, 1, S) the step's actions (text-action prompts)

    @torch.inference_mode()
    def start(self, frame: np.ndarray, position: np.ndarray, facing: np.ndarray) -> None:
        """Begin from a canvas frame uint8 (H, W, 3) and its players' (P, 2) cells and (P,) facings."""
        loaded = self.play_model.loaded
        frames = torch.from_numpy(np.ascontiguousarray(frame)).permute(2, 0, 1)[None, None].to(self.device)
        context = loaded.codec.encode(frames)
        pos = torch.from_numpy(_pad(np.asarray(position, np.int64)))[None, None].to(self.device)
        fac = torch.from_numpy(_pad(np.asarray(facing, np.int64)))[None, None].to(self.device)
        context_state = context_states(loaded, pos, fac)
        # The prompt of the chunk being drawn is of the step's actions (the context reads the first step's).
        self.sampler = make_sampler(loaded, self.profile, [self.game], self.present,
                                    torch.Generator().manual_seed(self.profile.rollout.seed),
                                    lambda s, n: self._actions)
        # Sampler.start runs no pass; it waits for the first actions (a text-action prompt needs them).
        self._context = (context, context_state)
        self.steps = 0

    @torch.inference_mode()  # ~10% faster than no_grad on these small tensors; the same values
    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """(P,) canonical actions -> (frame uint8 (H, W, 3), predicted cells (P, 2) float or None,
        predicted facings (P,) or None)."""
        loaded = self.play_model.loaded
        self._actions = torch.from_numpy(_pad(np.asarray(actions, np.int64)))[None, None].to(self.device)
        if self._context is not None:
            self.sampler.start(*self._context)
            self._context = None
        latents, state = self.sampler.step(self._actions if loaded.model.takes_actions else None)
        frame = loaded.codec.decode(latents, self.profile.canvas_px)[0, 0].permute(1, 2, 0).cpu().numpy()
        self.steps += 1
        if state is None:
            return frame, None, None
        position, facing = loaded.model.grid.decode(state[0, 0, : self.players].cpu())
        return frame, position.float().numpy(), facing.numpy()

    def cache_bytes(self) -> int:
        """Bytes held by this rollout's KV cache."""
        cache = None if self.sampler is None else getattr(self.sampler, "cache", None)
        if cache is None:
            return 0
        return sum(t.numel() * t.element_size() for t in list(cache.keys or []) + list(cache.values or [])
                   if isinstance(t, torch.Tensor))


def load_play(args):
    """(profile, {name: GameSpec}, ModelBank, detectors or None) from the command line."""
    import torch

    from actionparty.config import load_profile
    from actionparty.games import resolve_games

    checkpoints = parse_model_args(args.model)
    torch.set_num_threads(args.threads)
    profile = load_profile(args.profile)
    specs = {spec.name: spec for spec in resolve_games(profile)}
    bank = ModelBank(profile, checkpoints)
    detectors = None
    if getattr(args, "detectors", None) is not None:
        from actionparty.eval.detectors import load_detectors

        detectors = load_detectors(args.detectors)
    return profile, specs, bank, detectors
