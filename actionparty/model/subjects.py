"""ActionParty's action conditioning: subject state tokens, subject isolation, action cross-attention.

For each player slot p (8 slots; absent players masked) and latent frame t, a **state token**
carries the player's state s(t, p) = (x, y, facing):

* ``state vector``: x, y in cell units about the canvas centre and the facing one-hot scaled
  to {-1, 1} (6 numbers), denoised with the video (at its frame's noise level, or first, with
  ``state_first``; the context frame's state is clean);
* ``input`` = embed(noisy state - previous state) + embed(action a(t, p)) + embed(slot p)
  + embed(the player's clean previous facing) + embed(action, previous facing) — actions are
  relative to the facing, and the joint embedding hands the network the move an action makes
  from that facing instead of leaving it to compute the product from a sum of embeddings;
* ``spatial RoPE``: the token's rotary position is (t, y_ref, x_ref), the player's previous
  position (ground truth in training, the model's own prediction in rollout), so its attention
  is biased towards its player's neighbourhood (ablation ``no_rope_sa``: no spatial rotation);
* ``subject-isolated self-attention`` (MSA): state tokens of player p see the video and p's
  own state tokens; video tokens see everything (ablation ``no_msa``: everyone sees everyone);
* ``masked action cross-attention`` (MCA): a cross-attention added to every block, from video
  tokens to per-step action tokens (embed(action, previous facing) + embed(slot)), with spatial
  RoPE on both sides; frame-wise (video of step t sees the actions of step t), or ``clipwise``
  (sees every action of the call) or off (``no_mca``);
* ``output``: a head on the state tokens predicts the clean state (added to the previous state
  with the residual prior); loss = video + lambda * state.
* ``glimpse``: the state token also reads the previous frame's latents at its player's cell and
  the 8 cells around it (what a move would run into; raw latents, no map feature);
* ``egocentric`` (own frame): the glimpse is read turned by the player's previous facing (its
  first row is in front of the player), the noisy state change enters turned into that frame and
  the head's output is turned back (``to_own_frame``), so a move is one case at every facing;
* ``state_first``: the state has its own noise level; a training clip is either a state example
  (noisy state, video pure noise, state loss) or a video example (clean state, video loss), and
  sampling finishes the states before drawing the video (model.rollout);
* ``state_render``: every player is drawn onto the video tokens at its state's cell and at its
  previous cell (slot, facing and look embeddings, bilinear over the nearest cells), through two
  zero-initialised gates: into the tokens and straight into their output.

The baselines share the same backbone: ``global_action`` adds an embedding of all players'
actions of a step to that frame's adaLN input; ``text_action`` writes them into the prompt
(see model.text_conditioning).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from actionparty.games.actions import CANONICAL_ACTIONS, PLAYER_SLOTS
from actionparty.model.attention import and_masks, attention
from actionparty.model.dit import VIDEO_TAG, BlockContext, DiTConfig, ExtraTokens, RMSNorm
from actionparty.model.rope import apply_rope
from actionparty.model.world import WorldModel, to_x0_and_velocity

STATE_DIM = 6  # x, y, facing one-hot (N, E, S, W)
NO_ACTION = len(CANONICAL_ACTIONS)  # the context frame's token has no action
GLIMPSE_CELLS = 9  # a state token's glimpse: its player's cell and the 8 around it


# ------------------------------------------------------------------------------ state vectors


@dataclass(frozen=True)
class StateGrid:
    """Canvas cells <-> token-grid units <-> normalised state coordinates."""

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

        x, y are in cell units about the canvas centre, so that a one-cell move changes the
        state by 1, as much as a facing entry (in a [-1, 1] scale of the whole canvas a move
        is a small fraction of the loss and of the unit noise, and is learnt last)."""
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


# ------------------------------------------------------------------------------ variants


@dataclass(frozen=True)
class Conditioning:
    """Which mechanisms a variant uses (params/variants.yaml)."""

    kind: str  # "subject" | "global" | "text" | "none"
    state: bool = True  # denoise the state (else the tokens carry the action only)
    msa: bool = True
    mca: str = "framewise"  # "framewise" | "clipwise" | "none"
    spatial_rope: bool = True
    state_loss_weight: float = 1.0
    state_first: bool = False  # the state's noise level is its own; sampling finishes it first
    state_render: bool = False  # video tokens read each player's state at the cell it puts them in
    glimpse: bool = False  # state tokens read the previous frame's latents at and around their cell
    egocentric: bool = False  # the state path works in each player's own frame (its previous facing)


def legacy_conditioning(variant) -> Conditioning:
    c = variant.conditioning
    if c.kind != "subject":
        return Conditioning(c.kind)
    return Conditioning("subject", c.state, c.msa, c.mca, c.spatial_rope, 1.0, state_first=c.state_first,
                        state_render=c.state_render, glimpse=c.glimpse, egocentric=c.egocentric)


# ------------------------------------------------------------------------------ MCA


class ActionCrossAttention(nn.Module):
    """Video tokens -> action tokens cross-attention with RoPE on both sides (MCA).

    Called by a DiT block as ``x + module(x, ctx)``; ``ctx.payload`` holds the action tokens
    (B, A, dim), their rotary cos/sin (B, A, head_dim/2) and the mask (B, Nv, A). The output
    projection starts at zero so that the pretrained video model is unchanged at first.
    """

    def __init__(self, dim: int, num_heads: int, eps: float = 1e-6):
        super().__init__()
        self.num_heads = num_heads
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.norm_q, self.norm_k = RMSNorm(dim, eps), RMSNorm(dim, eps)
        nn.init.zeros_(self.o.weight)
        nn.init.zeros_(self.o.bias)

    def forward(self, x: torch.Tensor, ctx: BlockContext) -> torch.Tensor:
        payload = ctx.payload
        if payload is None:
            return torch.zeros_like(x)
        nv = ctx.layout.num_video
        heads = lambda t: t.unflatten(-1, (self.num_heads, -1))  # noqa: E731
        video = self.norm(x[:, :nv]).to(self.q.weight.dtype)
        q = apply_rope(heads(self.norm_q(self.q(video))), ctx.rope_cos[:, :nv], ctx.rope_sin[:, :nv])
        tokens = payload["tokens"].to(self.k.weight.dtype)
        k = apply_rope(heads(self.norm_k(self.k(tokens))), payload["cos"], payload["sin"])
        v = heads(self.v(tokens))
        y = self.o(attention(q, k, v, payload["mask"]).flatten(2)).float()
        return torch.cat([y, torch.zeros_like(x[:, nv:])], dim=1)


# ------------------------------------------------------------------------------ the model


class ActionWorldModel(WorldModel):
    """A :class:`WorldModel` conditioned on every player's actions (ActionParty and baselines).

    Conditioning inputs (``inputs`` of :meth:`WorldModel.forward`), for the T frames of a call:
      actions (B, T, S) long: the action that leads *into* each frame (NO_ACTION for a context frame)
      present (B, S) bool: the slot holds a player
      aux (B, T, S, 6) noisy states; aux_anchor (B, T, S, 6) clean previous states (reference
      position for RoPE, previous facing)
    """

    def __init__(self, dit, conditioning: Conditioning, grid: StateGrid, prediction: str = "x0",
                 residual_prior: bool = True):
        super().__init__(dit, prediction, residual_prior)
        self.conditioning = conditioning
        self.grid = grid
        cfg: DiTConfig = dit.config
        dim = cfg.dim
        c = conditioning
        if c.kind == "subject":
            self.aux_dim = STATE_DIM if c.state else 0
            self.state_first = c.state and c.state_first
            self.action_embed = nn.Embedding(NO_ACTION + 1, dim)
            self.slot_embed = nn.Embedding(PLAYER_SLOTS, dim)
            self.facing_embed = nn.Embedding(4, dim)
            # The action as seen from the player's previous facing (FORWARD while facing north is
            # another move than FORWARD while facing east): one embedding per (action, facing).
            self.turned_action_embed = nn.Embedding((NO_ACTION + 1) * 4, dim)
            if c.state_render:
                # Each player drawn onto the video tokens at its (noisy or finished) state's cell:
                # slot and facing embeddings, spread over the 4 nearest cells; zero-initialised gate.
                # The previous state is drawn the same way at its own cell, with its own embeddings,
                # so that a token can tell "arrives here" from "leaves here" from "stays".
                # Both also carry the player's look: the previous frame's latent at its previous cell.
                self.render_slot = nn.Embedding(PLAYER_SLOTS, dim)
                self.render_facing = nn.Linear(STATE_DIM - 2, dim)
                self.render_look = nn.Linear(cfg.in_dim, dim)
                self.render_prev_slot = nn.Embedding(PLAYER_SLOTS, dim)
                self.render_prev_facing = nn.Linear(STATE_DIM - 2, dim)
                self.render_prev_look = nn.Linear(cfg.in_dim, dim)
                # Two zero-initialised gates: into the video tokens, and straight into their output
                # (a linear path from "who arrives / leaves here, facing where" to the cell's pixels).
                self.render_out = nn.Linear(dim, dim)
                self.render_skip = nn.Linear(dim, math.prod(cfg.patch_size) * cfg.out_dim)
                for layer in (self.render_out, self.render_skip):
                    nn.init.zeros_(layer.weight)
                    nn.init.zeros_(layer.bias)
            if c.glimpse:
                # The previous frame's latent at the player's cell and its 8 neighbours, read at
                # the cells' centres: what a move of this player would run into.
                self.glimpse_in = nn.Linear(GLIMPSE_CELLS * cfg.in_dim, dim)
            if c.state:
                self.state_in = nn.Linear(STATE_DIM, dim)
                self.state_head = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, STATE_DIM))
                nn.init.zeros_(self.state_head[1].weight)  # residual prior: "stays where it was"
                nn.init.zeros_(self.state_head[1].bias)
            if c.mca != "none":
                self.mca_action_embed = nn.Embedding((NO_ACTION + 1) * 4, dim)  # per (action, previous facing)
                self.mca_slot_embed = nn.Embedding(PLAYER_SLOTS, dim)
                dit.install_extra_cross_attn(lambda i, cfg: ActionCrossAttention(cfg.dim, cfg.num_heads, cfg.eps))
        elif c.kind == "global":
            # One frame's actions of all slots, one-hot, -> the frame's adaLN input; zero-init gate.
            self.global_action = nn.Sequential(nn.Linear(PLAYER_SLOTS * (NO_ACTION + 1), dim), nn.SiLU(),
                                               nn.Linear(dim, dim))
            nn.init.zeros_(self.global_action[2].weight)
            nn.init.zeros_(self.global_action[2].bias)
        elif c.kind not in ("text", "none"):
            raise ValueError(f"unknown conditioning kind {c.kind!r}")

    def inputs_from_batch(self, batch: dict[str, torch.Tensor], device) -> dict[str, torch.Tensor]:
        """Training inputs from a ClipDataset batch: clean states (B, 1+K, S, 6), the actions
        leading into each frame (B, 1+K, S; NO_ACTION for the context) and the occupied slots."""
        actions = batch["actions"].to(device)
        context = torch.full_like(actions[:, :1], NO_ACTION)
        return {
            "state": self.grid.encode(batch["position"].to(device), batch["facing"].to(device)),
            "actions": torch.cat([context, actions], dim=1),
            "present": batch["present"].to(device),
        }

    # -------------------------------------------------------------------------- tokens

    def _positions(self, frames: torch.Tensor, anchor: torch.Tensor, spatial: bool) -> torch.Tensor:
        """(B, T, S, 3) rotary positions (t, y, x) of per-(frame, slot) tokens."""
        b, t, s = anchor.shape[:3]
        pos_t = frames.float().view(1, t, 1, 1).expand(b, t, s, 1)
        yx = self.grid.grid_position(anchor) if spatial else torch.zeros(b, t, s, 2, device=anchor.device)
        return torch.cat([pos_t, yx], dim=-1)

    def condition(self, inputs: dict[str, Any], frame_offset: int, num_frames: int, sigma: torch.Tensor,
                  kv_cache, window_frames: int | None) -> dict[str, Any]:
        c = self.conditioning
        if c.kind in ("none", "text"):
            return super().condition(inputs, frame_offset, num_frames, sigma, kv_cache, window_frames)
        actions = inputs["actions"]  # (B, T, S)
        b, t, s = actions.shape
        if c.kind == "global":
            onehot = torch.nn.functional.one_hot(actions, NO_ACTION + 1).float()
            onehot = onehot * inputs["present"][:, None, :, None]
            out = super().condition(inputs, frame_offset, num_frames, sigma, kv_cache, window_frames)
            return {**out, "frame_cond": self.global_action(onehot.flatten(2))}

        present, anchor = inputs["present"], inputs["aux_anchor"]
        device = actions.device
        frames = torch.arange(frame_offset, frame_offset + t, device=device)
        slots = torch.arange(s, device=device)
        facing = anchor[..., 2:].argmax(-1)
        tokens = (self.action_embed(actions) + self.slot_embed(slots)[None, None] + self.facing_embed(facing)
                  + self.turned_action_embed(actions * 4 + facing))
        if c.glimpse or c.state_render:
            seen = self.glimpse(inputs["video_anchor"], anchor, facing if c.egocentric else None)  # (B, T, S, 9 * C)
        if c.glimpse:
            tokens = tokens + self.glimpse_in(seen)
        if c.state:
            # The noisy state relative to the previous one: the previous position is in the token
            # only as its rotary position, which attention can compare but not read, so an absolute
            # noisy position would leave the move it implies out of reach of the state head.
            change = inputs["aux"] - anchor
            tokens = tokens + self.state_in(to_own_frame(change, facing) if c.egocentric else change)
        extra = ExtraTokens(
            tokens=tokens.flatten(1, 2),
            positions=self._positions(frames, anchor, c.spatial_rope).flatten(1, 2),
            timesteps=(inputs["aux_sigma"][:, :, None].expand(b, t, s) * 1000.0).flatten(1, 2),
            frames=frames.repeat_interleave(s),
            tags=slots.repeat(t),
        )
        layout = self.dit.token_layout(inputs["latent_shape"], extra, kv_cache, frame_offset)
        window = (kv_cache.window_frames, kv_cache.sink_frames) if kv_cache is not None else (window_frames, 0)
        mask = and_masks(self.dit.default_attn_mask(layout, *window), self.subject_mask(layout, present))
        kwargs = {"extra": extra, "attn_mask": mask}
        if c.mca != "none":
            kwargs["extra_cross_ctx"] = self.action_payload(actions, present, anchor, facing, frames, layout)
        if c.state_render:
            grid_hw = layout.grid[1:]
            look = seen.unflatten(-1, (GLIMPSE_CELLS, -1))[..., GLIMPSE_CELLS // 2, :]  # (B, T, S, C) own cell
            new = self.render_slot(slots) + self.render_facing(inputs["aux"][..., 2:]) + self.render_look(look)
            old = self.render_prev_slot(slots) + self.render_prev_facing(anchor[..., 2:]) + self.render_prev_look(look)
            drawn = (self.render_map(inputs["aux"], present, grid_hw, new)
                     + self.render_map(anchor, present, grid_hw, old))
            kwargs["video_cond"] = self.render_out(drawn)
            kwargs["out_cond"] = self.render_skip(drawn)
        return kwargs

    def glimpse(self, latents: torch.Tensor, state: torch.Tensor, facing: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T, S, 9 * C): each frame's latents (B, C, T, h, w) sampled at the centres of the
        3 x 3 cells around each player's cell in ``state`` (B, T, S, 6); zero off the canvas.
        With ``facing`` (B, T, S) the 3 x 3 cells are taken in the player's own frame (the first
        row is the one in front of it), else in the canvas's (the first row is north)."""
        b, c, t, h, w = latents.shape
        s = state.shape[2]
        cells = self.grid.decode(state)[0].round()  # (B, T, S, 2) x, y
        offsets = torch.tensor([(dx, dy) for dy in (-1, 0, 1) for dx in (-1, 0, 1)], device=state.device,
                               dtype=cells.dtype)
        if facing is not None:  # (B, T, S, 9, 2): each offset turned into the canvas's frame
            offsets = turn_to_canvas(offsets, facing[..., None])
        points = cells[..., None, :] + offsets  # (B, T, S, 9, 2) cells (x, y)
        # Cell centres in grid_sample's normalised coordinates (align_corners=False: -1 and 1
        # are the latent's outer edges, which are the canvas's edges).
        norm = (points + 0.5) / self.grid.canvas_cells * 2 - 1
        frames = latents.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)
        out = torch.nn.functional.grid_sample(frames, norm.reshape(b * t, s, GLIMPSE_CELLS, 2).to(frames.dtype),
                                              mode="bilinear", padding_mode="zeros", align_corners=False)
        return out.view(b, t, c, s, GLIMPSE_CELLS).permute(0, 1, 3, 4, 2).flatten(3)  # (B, T, S, 9 * C)

    def render_map(self, state: torch.Tensor, present: torch.Tensor, grid_hw: tuple[int, int],
                   feature: torch.Tensor) -> torch.Tensor:
        """(B, T*h*w, dim): every present player's ``feature`` (B, T, S, dim) at the token-grid
        position of its state (B, T, S, 6), split over the nearest cells with bilinear weights
        (a finished state lands on one cell, a noisy one spreads)."""
        h, w = grid_hw
        yx = self.grid.grid_position(state)  # (B, T, S, 2)
        rows = torch.arange(h, device=state.device, dtype=yx.dtype)
        cols = torch.arange(w, device=state.device, dtype=yx.dtype)
        wy = (1 - (yx[..., :1] - rows).abs()).clamp_min(0)  # (B, T, S, h)
        wx = (1 - (yx[..., 1:] - cols).abs()).clamp_min(0)  # (B, T, S, w)
        weight = wy[..., :, None] * wx[..., None, :] * present[:, None, :, None, None].to(yx.dtype)
        return torch.einsum("btshw,btsd->bthwd", weight, feature).flatten(1, 3)

    def subject_mask(self, layout, present: torch.Tensor) -> torch.Tensor:
        """(B, Nq, Nk): absent players' tokens are never attended to; with MSA a state token
        sees the video and its own player's state tokens only."""
        q, k = layout.q_tags, layout.k_tags
        key_slot = k.clamp_min(0)
        key_ok = (k == VIDEO_TAG)[None] | present[:, key_slot]  # (B, Nk)
        mask = key_ok[:, None, :].expand(present.shape[0], len(q), len(k))
        if self.conditioning.msa:
            isolate = (q[:, None] == VIDEO_TAG) | (k[None, :] == VIDEO_TAG) | (q[:, None] == k[None, :])
            mask = mask & isolate[None]
        return mask

    def action_payload(self, actions, present, anchor, facing, frames, layout) -> dict[str, torch.Tensor]:
        """Action tokens of this call for MCA: embeddings, rotary angles at the players'
        reference positions, and the (B, Nv, T*S) mask."""
        b, t, s = actions.shape
        slots = torch.arange(s, device=actions.device)
        tokens = (self.mca_action_embed(actions * 4 + facing) + self.mca_slot_embed(slots)[None, None]).flatten(1, 2)
        cos, sin = self.dit.rope(self._positions(frames, anchor, True).flatten(1, 2))
        key_ok = present[:, None, :].expand(b, t, s).flatten(1)  # (B, T*S)
        video_frames = layout.q_frames[: layout.num_video]
        if self.conditioning.mca == "framewise":
            same = video_frames[:, None] == frames.repeat_interleave(s)[None, :]  # (Nv, T*S)
            mask = same[None] & key_ok[:, None, :]
        else:  # clipwise: every action of the call
            mask = key_ok[:, None, :].expand(b, layout.num_video, t * s)
        return {"tokens": tokens, "cos": cos, "sin": sin, "mask": mask}

    # -------------------------------------------------------------------------- outputs

    def predict_aux(self, out, inputs, sigma):
        b, t, s, _ = inputs["aux"].shape
        head = self.state_head(out.extra.view(b, t, s, -1))
        if self.conditioning.egocentric:  # the head speaks in the player's own frame
            head = to_own_frame(head, inputs["aux_anchor"][..., 2:].argmax(-1), inverse=True)
        return to_x0_and_velocity(head, inputs["aux"], sigma[:, :, None, None], inputs["aux_anchor"], self.prediction,
                                  self.residual_prior, self.min_sigma)
