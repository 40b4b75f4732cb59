"""Subject state tokens: one token per player slot and latent frame, carrying that player's state.

For each player slot p (8 slots; absent players masked) and latent frame t, a token carries the
player's state s(t, p) (:mod:`.state`), denoised with the video:

* ``input`` = embed(action a(t, p)) + embed(slot p) + embed(the clean previous facing)
  + embed(action, previous facing) [ours, ``action_facing``: the joint embedding hands the
  network the move an action makes from that facing] + the glimpse [ours, :mod:`.glimpse`] +
  embed(noisy state - previous state), turned into the player's own frame with ``egocentric`` [ours];
* ``spatial RoPE`` (the paper's): the token's rotary position is (t, y_ref, x_ref), its player's
  previous position (:meth:`SubjectTokens.positions`); ablation ``no_rope_sa``: the tokens have
  no spatial position at all (``ExtraTokens.placed``: every self-attention score involving one
  compares time only);
* ``subject-isolated self-attention`` (MSA, the paper's): a state token of player p sees the
  video and p's own state tokens; video tokens see everything (:meth:`SubjectTokens.isolation_mask`);
  ablation ``no_msa``;
* ``masked action cross-attention`` (MCA, the paper's): :mod:`.mca`;
* ``output``: the state head predicts the clean state (:meth:`SubjectTokens.predict_state`),
  added to the previous state with the residual prior;
* ``state_first`` (ours): the state has its own noise level and sampling finishes it before the
  video; ``state_render`` (ours): the video is drawn from it (:mod:`.render`).
"""

from __future__ import annotations

import torch
from torch import nn

from actionparty.games.actions import PLAYER_SLOTS
from actionparty.model.attention import and_masks
from actionparty.model.conditioning.glimpse import Glimpse, own_cell, read_glimpse
from actionparty.model.conditioning.inputs import NO_ACTION, CallLayout, SubjectInputs
from actionparty.model.conditioning.mca import ActionTokens
from actionparty.model.conditioning.render import StateRender
from actionparty.model.conditioning.state import STATE_DIM, StateGrid, facing_of, to_own_frame
from actionparty.model.dit import VIDEO_TAG, DiTConditioning, DiTOutput, ExtraTokens, TokenLayout
from actionparty.model.flow import TIMESTEP_SCALE
from actionparty.variants import SubjectConditioning


class SubjectTokens(nn.Module):
    """The subject-token conditioning of a variant (``conditioning.kind: subject``).

    Each mechanism is a switch of ``config`` and, where it has parameters, a submodule:
    ``glimpse`` (:class:`Glimpse`), ``render`` (:class:`StateRender`), ``mca``
    (:class:`ActionTokens`); the state head is ``state_head``."""

    takes_actions = True

    def __init__(self, dit, config: SubjectConditioning, grid: StateGrid):
        super().__init__()
        cfg = dit.config
        dim = cfg.dim
        self.config = config
        self.grid = grid
        self.action_embed = nn.Embedding(NO_ACTION + 1, dim)
        self.slot_embed = nn.Embedding(PLAYER_SLOTS, dim)
        self.facing_embed = nn.Embedding(4, dim)
        if config.action_facing:
            self.turned_action_embed = nn.Embedding((NO_ACTION + 1) * 4, dim)  # per (action, previous facing)
        # Built in this order so that a seed gives the same initial weights as it always did.
        self.render = StateRender(PLAYER_SLOTS, cfg.in_dim, dim, StateRender.head_out(cfg)) if config.state_render else None
        self.glimpse = Glimpse(cfg.in_dim, dim) if config.glimpse else None
        if config.state:
            self.state_in = nn.Linear(STATE_DIM, dim)
            self.state_head = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, STATE_DIM))
            nn.init.zeros_(self.state_head[1].weight)  # residual prior: "stays where it was"
            nn.init.zeros_(self.state_head[1].bias)
        self.mca = (ActionTokens(dit, PLAYER_SLOTS, config.mca == "clipwise", config.action_facing)
                    if config.mca != "none" else None)

    @property
    def has_state(self) -> bool:
        return self.config.state

    @property
    def state_first(self) -> bool:
        return self.config.state_first

    # ---------------------------------------------------------------------------------- inputs

    def positions(self, frames: torch.Tensor, prev_state: torch.Tensor, spatial: bool) -> torch.Tensor:
        """(B, T, S, 3) rotary positions (t, y, x) of per-(frame, slot) tokens: at the player's
        reference position, or (t, 0, 0) without spatial RoPE (their spatial part is then unused:
        the tokens are passed as not ``placed``)."""
        b, t, s = prev_state.shape[:3]
        pos_t = frames.float().view(1, t, 1, 1).expand(b, t, s, 1)
        yx = self.grid.grid_position(prev_state) if spatial else torch.zeros(b, t, s, 2, device=prev_state.device)
        return torch.cat([pos_t, yx], dim=-1)

    def isolation_mask(self, layout: TokenLayout, present: torch.Tensor) -> torch.Tensor:
        """(B, Nq, Nk): absent players' tokens are never attended to; with MSA a state token
        sees the video and its own player's state tokens only."""
        q, k = layout.q_tags, layout.k_tags
        key_ok = (k == VIDEO_TAG)[None] | present[:, k.clamp_min(0)]  # (B, Nk)
        mask = key_ok[:, None, :].expand(present.shape[0], len(q), len(k))
        if self.config.msa:
            isolate = (q[:, None] == VIDEO_TAG) | (k[None, :] == VIDEO_TAG) | (q[:, None] == k[None, :])
            mask = mask & isolate[None]
        return mask

    def _token_inputs(self, subjects: SubjectInputs, facing: torch.Tensor, seen: torch.Tensor | None) -> torch.Tensor:
        """(B, T, S, dim) the state tokens' embedded inputs."""
        c, actions = self.config, subjects.actions
        tokens = (self.action_embed(actions) + self.slot_embed(torch.arange(actions.shape[2], device=actions.device))
                  [None, None] + self.facing_embed(facing))
        if c.action_facing:
            tokens = tokens + self.turned_action_embed(actions * 4 + facing)
        if self.glimpse is not None:
            tokens = tokens + self.glimpse(seen)
        if c.state:
            # The noisy state relative to the previous one: the previous position is in the token
            # only as its rotary position, which attention can compare but not read, so an absolute
            # noisy position would leave the move it implies out of reach of the state head.
            change = subjects.state - subjects.prev_state
            tokens = tokens + self.state_in(to_own_frame(change, facing) if c.egocentric else change)
        return tokens

    # ---------------------------------------------------------------------------------- a call

    def forward(self, dit, subjects: SubjectInputs, call: CallLayout) -> DiTConditioning:
        """The DiT conditioning of one call: state tokens, their masks, MCA's payload, the render."""
        c, prev = self.config, subjects.prev_state
        b, t, s = subjects.actions.shape
        device = subjects.actions.device
        frames = call.frames(device)[:t]
        facing = facing_of(prev)
        seen = None
        if self.glimpse is not None or self.render is not None:
            seen = read_glimpse(call.video_anchor, prev, self.grid, facing if c.egocentric else None)
        state_sigma = call.sigma if subjects.state_sigma is None else subjects.state_sigma
        slots = torch.arange(s, device=device)
        extra = ExtraTokens(
            tokens=self._token_inputs(subjects, facing, seen).flatten(1, 2),
            positions=self.positions(frames, prev, c.spatial_rope).flatten(1, 2),
            timesteps=(state_sigma[:, :, None].expand(b, t, s) * TIMESTEP_SCALE).flatten(1, 2),
            frames=frames.repeat_interleave(s),
            tags=slots.repeat(t),
            placed=c.spatial_rope,
        )
        layout = dit.token_layout(call.latent_shape, extra, call.kv_cache, call.frame_offset)
        mask = and_masks(dit.default_attn_mask(layout, *call.window), self.isolation_mask(layout, subjects.present))
        cond = DiTConditioning(extra=extra, attn_mask=mask)
        if self.mca is not None:
            cos, sin = dit.rope(self.positions(frames, prev, True).flatten(1, 2))
            cond.payload = self.mca(subjects.actions, subjects.present, facing, frames, cos, sin, layout)
        if self.render is not None:
            cond.video_cond, cond.out_cond = self.render(subjects.state, prev, own_cell(seen), subjects.present,
                                                         self.grid, layout.grid[1:])
        return cond

    def state_output(self, out: DiTOutput, subjects: SubjectInputs) -> torch.Tensor:
        """(B, T, S, 6) the state head's raw output, in the canvas's frame."""
        b, t, s, _ = subjects.state.shape
        head = self.state_head(out.extra.view(b, t, s, -1))
        if self.config.egocentric:  # the head speaks in the player's own frame
            head = to_own_frame(head, facing_of(subjects.prev_state), inverse=True)
        return head
