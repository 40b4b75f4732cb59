"""The state render (ours): every player drawn onto the video tokens where its state puts it.

The video is drawn from the finished state (state-first sampling): each player's slot, facing
and look (the previous frame's latent at its previous cell) are spread over the token-grid cells
nearest to its (noisy or finished) state, bilinearly (a finished state lands on one cell, a
noisy one spreads); the previous state is drawn the same way with its own embeddings, so that a
token can tell "arrives here" from "leaves here" from "stays". Two zero-initialised gates take
the map into the video tokens and straight into their output (a linear path from "who arrives /
leaves here, facing where" to the cell's pixels). Ablation ``no_state_render``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from actionparty.model.conditioning.state import STATE_DIM, StateGrid


def render_map(state: torch.Tensor, present: torch.Tensor, grid: StateGrid, grid_hw: tuple[int, int],
               feature: torch.Tensor) -> torch.Tensor:
    """(B, T*h*w, dim): every present player's ``feature`` (B, T, S, dim) at the token-grid
    position of its state (B, T, S, 6), split over the nearest cells with bilinear weights."""
    h, w = grid_hw
    yx = grid.grid_position(state)  # (B, T, S, 2)
    rows = torch.arange(h, device=state.device, dtype=yx.dtype)
    cols = torch.arange(w, device=state.device, dtype=yx.dtype)
    wy = (1 - (yx[..., :1] - rows).abs()).clamp_min(0)  # (B, T, S, h)
    wx = (1 - (yx[..., 1:] - cols).abs()).clamp_min(0)  # (B, T, S, w)
    weight = wy[..., :, None] * wx[..., None, :] * present[:, None, :, None, None].to(yx.dtype)
    return torch.einsum("btshw,btsd->bthwd", weight, feature).flatten(1, 3)


class StateRender(nn.Module):
    """Slot, facing and look embeddings of the new and the previous state, and the two gates."""

    def __init__(self, slots: int, latent_channels: int, dim: int, head_out: int):
        super().__init__()
        self.slot = nn.Embedding(slots, dim)
        self.facing = nn.Linear(STATE_DIM - 2, dim)
        self.look = nn.Linear(latent_channels, dim)
        self.prev_slot = nn.Embedding(slots, dim)
        self.prev_facing = nn.Linear(STATE_DIM - 2, dim)
        self.prev_look = nn.Linear(latent_channels, dim)
        self.out = nn.Linear(dim, dim)  # gate into the video tokens
        self.skip = nn.Linear(dim, head_out)  # gate into the head's output
        for layer in (self.out, self.skip):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    @staticmethod
    def head_out(cfg) -> int:
        """Values per token of the DiT's head output (what the skip gate adds to)."""
        return math.prod(cfg.patch_size) * cfg.out_dim

    def forward(self, state: torch.Tensor, prev_state: torch.Tensor, look: torch.Tensor, present: torch.Tensor,
                grid: StateGrid, grid_hw: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """state, prev_state (B, T, S, 6); look (B, T, S, C) the latent at the previous cell ->
        (video_cond (B, T*h*w, dim), out_cond (B, T*h*w, head_out))."""
        slots = torch.arange(state.shape[2], device=state.device)
        new = self.slot(slots) + self.facing(state[..., 2:]) + self.look(look)
        old = self.prev_slot(slots) + self.prev_facing(prev_state[..., 2:]) + self.prev_look(look)
        drawn = render_map(state, present, grid, grid_hw, new) + render_map(prev_state, present, grid, grid_hw, old)
        return self.out(drawn), self.skip(drawn)
