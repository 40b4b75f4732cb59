"""The glimpse (ours): a state token reads the previous frame's latents around its player's cell.

What a move of this player would run into: the latent at its cell and the 8 cells around it, at
the cells' centres (raw latents, no map feature). In the own frame (``egocentric``) the 3 x 3
cells are taken turned by the player's facing, so their first row is the one in front of it.
Ablation ``no_glimpse``.
"""

from __future__ import annotations

import torch
from torch import nn

from actionparty.model.conditioning.state import StateGrid, turn_to_canvas

GLIMPSE_CELLS = 9  # the player's cell and the 8 around it
CENTRE = GLIMPSE_CELLS // 2  # the player's own cell in the glimpse


def read_glimpse(latents: torch.Tensor, state: torch.Tensor, grid: StateGrid,
                 facing: torch.Tensor | None = None) -> torch.Tensor:
    """(B, T, S, 9 * C): each frame's latents (B, C, T, h, w) sampled at the centres of the 3 x 3
    cells around each player's cell in ``state`` (B, T, S, 6); zero off the canvas. With
    ``facing`` (B, T, S) the cells are taken in the player's own frame, else in the canvas's
    (the first row is north)."""
    b, c, t, h, w = latents.shape
    s = state.shape[2]
    cells = grid.decode(state)[0].round()  # (B, T, S, 2) x, y
    offsets = torch.tensor([(dx, dy) for dy in (-1, 0, 1) for dx in (-1, 0, 1)], device=state.device,
                           dtype=cells.dtype)
    if facing is not None:  # (B, T, S, 9, 2): each offset turned into the canvas's frame
        offsets = turn_to_canvas(offsets, facing[..., None])
    points = cells[..., None, :] + offsets  # (B, T, S, 9, 2) cells (x, y)
    # Cell centres in grid_sample's normalised coordinates (align_corners=False: -1 and 1 are
    # the latent's outer edges, which are the canvas's edges).
    norm = (points + 0.5) / grid.canvas_cells * 2 - 1
    frames = latents.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)
    out = torch.nn.functional.grid_sample(frames, norm.reshape(b * t, s, GLIMPSE_CELLS, 2).to(frames.dtype),
                                          mode="bilinear", padding_mode="zeros", align_corners=False)
    return out.view(b, t, c, s, GLIMPSE_CELLS).permute(0, 1, 3, 4, 2).flatten(3)


def own_cell(seen: torch.Tensor) -> torch.Tensor:
    """(B, T, S, C): the player's own cell of a glimpse (B, T, S, 9 * C)."""
    return seen.unflatten(-1, (GLIMPSE_CELLS, -1))[..., CENTRE, :]


class Glimpse(nn.Module):
    """The glimpse into a state token: Linear(9 * latent channels -> dim)."""

    def __init__(self, latent_channels: int, dim: int):
        super().__init__()
        self.proj = nn.Linear(GLIMPSE_CELLS * latent_channels, dim)

    def forward(self, seen: torch.Tensor) -> torch.Tensor:
        """(B, T, S, 9 * C) glimpse -> (B, T, S, dim) added to the state tokens."""
        return self.proj(seen)
