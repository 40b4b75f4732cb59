"""3-D rotary position embedding (RoPE) over (t, h, w), as in Wan2.1.

Each head's channels are split into three groups of rotary pairs, one per axis: with head dim
``d``, height and width get ``2 * (d // 6)`` channels each and time gets the rest. Pairs are
adjacent channels ``(2i, 2i+1)`` (Wan's ``view_as_complex`` layout), frequency
``theta ** (-2i / axis_dim)``.

Positions are arbitrary per token, shape (..., N, 3) holding (t, y, x) in units of the token
grid (latent frame index, patch row, patch column). Integer grid positions are looked up in
cos/sin tables precomputed once per device; float positions (e.g. a player's state token at
its continuous coordinate) are computed on the fly with the same float64 formula, so an
integral float position rotates exactly like the grid token at that place. Position 0 on
every axis is the identity rotation (a token placed at (0, 0, 0) gets no positional bias).

Everything here is fp32 (angles in fp64, stored as fp32) whatever the model's dtype; the
tables live outside the module's buffers so ``model.to(torch.bfloat16)`` cannot round them.
"""

from __future__ import annotations

import torch
from torch import nn


def rope_axis_dims(head_dim: int) -> tuple[int, int, int]:
    """Channels given to (t, h, w) for one head, Wan's split: (d - 4*(d//6), 2*(d//6), 2*(d//6))."""
    if head_dim % 2:
        raise ValueError(f"RoPE needs an even head dim, got {head_dim}")
    hw = 2 * (head_dim // 6)
    return head_dim - 2 * hw, hw, hw


class Rope3D(nn.Module):
    """Rotary angles for (t, y, x) positions; no parameters.

    ``forward(positions)`` returns ``(cos, sin)``, each (..., N, head_dim // 2) fp32, to be
    used with :func:`apply_rope`.
    """

    def __init__(self, head_dim: int, max_pos: int = 1024, theta: float = 10000.0):
        super().__init__()
        self.head_dim = head_dim
        self.max_pos = max_pos
        self.theta = theta
        self.axis_dims = rope_axis_dims(head_dim)
        self._tables: dict[torch.device, tuple[list[torch.Tensor], list[torch.Tensor]]] = {}

    def _inv_freqs(self, device) -> list[torch.Tensor]:
        return [
            1.0 / self.theta ** (torch.arange(0, d, 2, dtype=torch.float64, device=device) / d) for d in self.axis_dims
        ]

    def _grid_tables(self, device) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Per-axis fp32 cos/sin tables for integer positions [0, max_pos): (max_pos, d_axis // 2)."""
        device = torch.device("cpu") if device is None else torch.device(device)
        if device not in self._tables:
            pos = torch.arange(self.max_pos, dtype=torch.float64, device=device)
            angles = [torch.outer(pos, f) for f in self._inv_freqs(device)]
            self._tables[device] = ([a.cos().float() for a in angles], [a.sin().float() for a in angles])
        return self._tables[device]

    def grid(self, num_frames: int, height: int, width: int, frame_offset: int = 0, device=None):
        """cos/sin for the video token grid in (t h w) order: each (T*H*W, head_dim // 2).

        Frames are numbered from ``frame_offset`` (absolute positions continue in a rollout).
        """
        if frame_offset + num_frames > self.max_pos or max(height, width) > self.max_pos:
            t, y, x = torch.meshgrid(
                torch.arange(frame_offset, frame_offset + num_frames, device=device),
                torch.arange(height, device=device),
                torch.arange(width, device=device),
                indexing="ij",
            )
            return self(torch.stack([t, y, x], -1).reshape(-1, 3).double())
        cos_tab, sin_tab = self._grid_tables(device)
        sizes, starts = (num_frames, height, width), (frame_offset, 0, 0)

        def expand(tables):
            parts = []
            for axis, (tab, n, s) in enumerate(zip(tables, sizes, starts)):
                shape = [1, 1, 1, tab.shape[-1]]
                shape[axis] = n
                parts.append(tab[s : s + n].view(shape).expand(num_frames, height, width, -1))
            return torch.cat(parts, dim=-1).reshape(num_frames * height * width, -1)

        return expand(cos_tab), expand(sin_tab)

    def forward(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Angles for arbitrary (t, y, x) positions (..., N, 3), float or int -> cos, sin (..., N, head_dim//2)."""
        if positions.shape[-1] != 3:
            raise ValueError(f"positions must end in 3 coordinates (t, y, x), got shape {tuple(positions.shape)}")
        pos = positions.to(torch.float64)
        angles = torch.cat(
            [pos[..., axis, None] * f for axis, f in enumerate(self._inv_freqs(positions.device))], dim=-1
        )
        return angles.cos().float(), angles.sin().float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate adjacent channel pairs of ``x`` (B, N, H, D) by angles given as cos/sin (B|1, N, D//2).

    Computed in fp32, returned in ``x``'s dtype.
    """
    xf = x.float().unflatten(-1, (-1, 2))  # (B, N, H, D/2, 2)
    x1, x2 = xf.unbind(-1)
    cos, sin = cos.unsqueeze(-2), sin.unsqueeze(-2)  # broadcast over heads
    out = torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)
    return out.flatten(-2).type_as(x)
