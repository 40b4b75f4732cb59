"""The Global-Action baseline: all players' actions of a step in that frame's adaLN input.

The single-agent world-model way of conditioning on actions: one frame's actions of every slot,
one-hot (absent slots zero), through an MLP into the frame's time embedding; the last layer
starts at zero so that the pretrained video model is unchanged at first. Nothing says which
player an action belongs to but its position in the vector.
"""

from __future__ import annotations

import torch
from torch import nn

from actionparty.games.actions import PLAYER_SLOTS
from actionparty.model.conditioning.inputs import NO_ACTION, CallLayout, SubjectInputs
from actionparty.model.dit import DiTConditioning


class GlobalAction(nn.Module):
    takes_actions = True
    has_state = False
    state_first = False

    def __init__(self, dit):
        super().__init__()
        dim = dit.config.dim
        self.net = nn.Sequential(nn.Linear(PLAYER_SLOTS * (NO_ACTION + 1), dim), nn.SiLU(), nn.Linear(dim, dim))
        nn.init.zeros_(self.net[2].weight)
        nn.init.zeros_(self.net[2].bias)

    def forward(self, dit, subjects: SubjectInputs, call: CallLayout) -> DiTConditioning:
        onehot = torch.nn.functional.one_hot(subjects.actions, NO_ACTION + 1).float()
        onehot = onehot * subjects.present[:, None, :, None]
        return DiTConditioning(frame_cond=self.net(onehot.flatten(2)))
