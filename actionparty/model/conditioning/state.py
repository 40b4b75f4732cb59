"""The subject state and its geometry: what a player's state is, in which units, in whose frame.

A player's state s = (x, y, facing) is a 6-vector: x, y in cell units about the canvas centre
(a one-cell move changes it by 1, as much as a facing entry) and the facing one-hot (N, E, S, W)
scaled to {-1, 1}. :class:`StateGrid` converts between canvas cells, the token grid (rotary
positions) and this vector; :func:`to_own_frame` turns a state (change) into the frame of a
player facing a given way (the "own frame": actions are relative to the facing).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

STATE_DIM = 6  # x, y, facing one-hot (N, E, S, W)


@dataclass(frozen=True)
class StateGrid:
    """Canvas cells <-> token-grid units <-> state vectors."""

    canvas_cells: int
    grid_side: int  # tokens per side of a latent frame

    @property
    def tokens_per_cell(self) -> float:
        return self.grid_side / self.canvas_cells

    def cells_to_grid(self, cells: torch.Tensor) -> torch.Tensor:
        """(..., 2) cell coordinates -> token-grid coordinates of the cell's centre."""
        return (cells.float() + 0.5) * self.tokens_per_cell - 0.5

    def grid_to_cells(self, grid: torch.Tensor) -> torch.Tensor:
        return (grid + 0.5) / self.tokens_per_cell - 0.5

    def encode(self, position: torch.Tensor, facing: torch.Tensor) -> torch.Tensor:
        """position (..., 2) cells (x, y), facing (...) 0..3 -> state (..., 6).

        In a [-1, 1] scale of the whole canvas a move would be a small fraction of the loss and
        of the unit noise, and would be learnt last: hence cell units."""
        xy = position.float() + 0.5 - self.canvas_cells / 2
        onehot = torch.nn.functional.one_hot(facing.long().clamp(0, 3), 4).float() * 2 - 1
        return torch.cat([xy, onehot], dim=-1)

    def decode(self, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """state (..., 6) -> position (..., 2) float cells, facing (...) long."""
        return state[..., :2] - 0.5 + self.canvas_cells / 2, state[..., 2:].argmax(-1)

    def snap(self, state: torch.Tensor) -> torch.Tensor:
        """The nearest discrete state: a whole cell and one facing."""
        position, facing = self.decode(state)
        return self.encode(position.round(), facing)

    def grid_position(self, state: torch.Tensor) -> torch.Tensor:
        """state (..., 6) -> token-grid (y, x) (..., 2) for rotary positions."""
        return self.cells_to_grid(self.decode(state)[0]).flip(-1)


def facing_of(state: torch.Tensor) -> torch.Tensor:
    """state (..., 6) -> facing (...) long 0..3 (N, E, S, W)."""
    return state[..., 2:].argmax(-1)


# Quarter turns clockwise on the canvas (x right, y down): _TURNS[k] takes a north-facing
# player's frame to the frame of facing k (N, E, S, W), e.g. its forward (0, -1) to FACING_STEP[k].
_TURNS = torch.tensor([[[1, 0], [0, 1]], [[0, -1], [1, 0]], [[-1, 0], [0, -1]], [[0, 1], [-1, 0]]],
                      dtype=torch.float32)


def turn_to_canvas(xy: torch.Tensor, facing: torch.Tensor) -> torch.Tensor:
    """(..., 2) cell vectors in the frame of a player facing ``facing`` (broadcast against ``...``)
    -> the same vectors on the canvas."""
    return (_TURNS.to(xy.device, xy.dtype)[facing] @ xy[..., None])[..., 0]


def to_own_frame(state: torch.Tensor, facing: torch.Tensor, inverse: bool = False) -> torch.Tensor:
    """A state (difference) (..., 6) seen by a player facing ``facing`` (...): x, y turned so that
    its forward is north and its facing one-hot rolled so that its own facing is N.
    ``inverse``: from the player's frame back to the canvas's. Both are exact (quarter turns)."""
    turn = facing if inverse else (-facing) % 4  # the inverse of k quarter turns is 4 - k
    index = (torch.arange(4, device=state.device) - turn[..., None]) % 4
    return torch.cat([turn_to_canvas(state[..., :2], turn), state[..., 2:].gather(-1, index)], dim=-1)
