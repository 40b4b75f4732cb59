"""The text conditioning of a model, and the Text-Action baseline: actions written into the prompt.

Every model reads its game's description through the text cross-attention. The Text-Action
baseline (``conditioning.kind: text``) writes every present player's actions of the chunk in
front of the description ("actions : player 1 forward , player 2 turn left . <description>"),
so that the only path from an action to the video is the text encoder and the cross-attention
(actions come first so that a short text encoder never truncates them).
"""

from __future__ import annotations

from typing import Sequence

import torch

from actionparty.games.actions import CANONICAL_ACTIONS
from actionparty.model.conditioning.inputs import NO_ACTION
from actionparty.model.text import TextEmbedder

ACTION_WORDS = {i: name.lower().replace("_", " ") for i, name in enumerate(CANONICAL_ACTIONS)}
# Words of the text-action prompts, added to the tiny encoder's vocabulary.
PROMPT_VOCABULARY = "actions step player none " + " ".join(ACTION_WORDS.values()) + " " + " ".join(
    str(i) for i in range(1, 9)) + " : ; , ."


def action_prompt(description: str, actions: torch.Tensor, present: torch.Tensor) -> str:
    """The text-action prompt: every present player's actions (T, S) of the T steps, then the
    game description."""
    steps = []
    for t in range(actions.shape[0]):
        moves = [f"player {p + 1} {ACTION_WORDS.get(int(actions[t, p]), 'none')}"
                 for p in range(actions.shape[1]) if present[p] and int(actions[t, p]) != NO_ACTION]
        steps.append(f"step {t + 1} : " + " , ".join(moves) if actions.shape[0] > 1 else " , ".join(moves))
    return "actions : " + " ; ".join(steps) + " . " + description


class TextConditioner:
    """``(games, actions=None, present=None) -> (emb (B, L, D), mask (B, L))``.

    Plain models get each game's cached description embedding; with ``with_actions`` (the
    Text-Action baseline) a prompt with the players' actions (T, S per clip) in front of it."""

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
