"""Build the world model, its frame codec and text conditioning from a profile (and a variant)."""

from __future__ import annotations

from typing import Sequence

import torch

from actionparty.config import Profile
from actionparty.variants import VariantConfig
from actionparty.games.actions import CANONICAL_ACTIONS
from actionparty.model.subjects import NO_ACTION, ActionWorldModel, StateGrid, legacy_conditioning
from actionparty.model.text import TextEmbedder, make_text_embedder
from actionparty.model.world import FrameCodec, WorldModel, build_dit, build_frame_codec

ACTION_WORDS = {i: name.lower().replace("_", " ") for i, name in enumerate(CANONICAL_ACTIONS)}
# Words of the text-action prompts, added to the tiny encoder's vocabulary.
_PROMPT_VOCABULARY = "actions step player none " + " ".join(ACTION_WORDS.values()) + " " + " ".join(
    str(i) for i in range(1, 9)) + " : ; , ."


def action_prompt(description: str, actions: torch.Tensor, present: torch.Tensor) -> str:
    """The text-action prompt: every present player's actions, then the game description.

    actions (T, S) long for the T steps of a chunk/clip. Actions come first so that a short
    text encoder never truncates them.
    """
    steps = []
    for t in range(actions.shape[0]):
        moves = [f"player {p + 1} {ACTION_WORDS.get(int(actions[t, p]), 'none')}"
                 for p in range(actions.shape[1]) if present[p] and int(actions[t, p]) != NO_ACTION]
        steps.append(f"step {t + 1} : " + " , ".join(moves) if actions.shape[0] > 1 else " , ".join(moves))
    return "actions : " + " ; ".join(steps) + " . " + description


class TextConditioner:
    """``(games, actions=None, present=None) -> (emb (B, L, D), mask (B, L))``.

    Plain models get each game's cached description embedding; the text-action baseline gets a
    prompt with the players' actions (T, S per clip) in front of the description.
    """

    def __init__(self, embedder: TextEmbedder, with_actions: bool = False):
        self.embedder = embedder
        self.with_actions = with_actions

    @property
    def dim(self) -> int:
        return self.embedder.dim

    def __call__(self, games: Sequence[str], actions: torch.Tensor | None = None,
                 present: torch.Tensor | None = None, device=None):
        if not self.with_actions:
            return self.embedder(games, device=device)
        prompts = [action_prompt(self.embedder.descriptions[g], actions[i], present[i]) for i, g in enumerate(games)]
        with torch.no_grad():
            emb, mask = self.embedder.encoder.encode(prompts)
        return emb.to(device) if device else emb, mask.to(device) if device else mask


def game_descriptions(profile: Profile) -> dict[str, str]:
    """Every catalogue game's description (the tiny encoder's vocabulary covers all of them)."""
    from actionparty.games import game_descriptions as read_descriptions

    return read_descriptions(profile.catalogue)


def build_text_embedder(profile: Profile, device="cpu") -> TextEmbedder:
    cfg = profile.model
    descriptions = game_descriptions(profile)
    if cfg.text_encoder == "tiny":
        embedder = make_text_embedder("tiny", {**descriptions, "__prompt_vocabulary__": _PROMPT_VOCABULARY},
                                      max_len=cfg.text_len)
        embedder.descriptions = descriptions
        return embedder
    return make_text_embedder("umt5", descriptions, path=cfg.text_path, device=device, max_len=cfg.text_len)


def check_weight_paths(profile: Profile) -> None:
    """Refuse, in one line naming the key, a profile whose local weight files are missing
    (nothing can be downloaded: see docs/TRAINING.md for what to put where)."""
    from pathlib import Path

    from actionparty.errors import UserError

    cfg = profile.model
    needed = [("model.init_checkpoint", cfg.init_checkpoint, False)]
    if cfg.codec == "wan-vae":
        needed.append(("model.vae_path", cfg.vae_path, True))
    if cfg.text_encoder == "umt5":
        needed.append(("model.text_path", cfg.text_path, True))
    for key, path, required in needed:
        if path is None and required:
            raise UserError(f"profile '{profile.profile}': {key} must be set for model.codec={cfg.codec}, "
                            f"model.text_encoder={cfg.text_encoder}")
        if path is not None and not Path(path).exists():
            raise UserError(f"profile '{profile.profile}': {key} = {path} not found "
                            "(weights cannot be downloaded here; see docs/TRAINING.md)")


def build_world_model(profile: Profile, device="cpu", variant: VariantConfig | None = None,
                      ) -> tuple[WorldModel, FrameCodec, TextConditioner]:
    """The profile's world model (weights freshly initialised): the video-only model of exp-138,
    or, with ``variant``, an action-conditioned one."""
    check_weight_paths(profile)
    codec = build_frame_codec(profile.model, device=device)
    embedder = build_text_embedder(profile, device=device)
    dit = build_dit(profile.model, codec.latent_channels, embedder.dim, codec.codec.dit_patch_size)
    if variant is None:
        model = WorldModel(dit, profile.model.prediction, profile.model.residual_prior)
    else:
        side = dit.token_grid((1, *latent_side(profile, codec)))[1]
        grid = StateGrid(profile.canvas_cells, side)
        model = ActionWorldModel(dit, legacy_conditioning(variant), grid,
                                 profile.model.prediction, profile.model.residual_prior)
    text = TextConditioner(embedder, with_actions=variant is not None and variant.conditioning.kind == "text")
    return model.to(device), codec, text


def latent_side(profile: Profile, codec: FrameCodec) -> tuple[int, int]:
    """Latent (h, w) of a frame of the profile's canvas."""
    px = profile.model.resolution or profile.canvas_px
    side = px // codec.codec.spatial_factor
    return side, side
