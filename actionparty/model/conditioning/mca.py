"""Masked action cross-attention (MCA, the paper's): video tokens attend to per-step action tokens.

A cross-attention added to every DiT block (``blocks.i.extra_cross_attn``, between self- and
text cross-attention), from video tokens to the action tokens of the call: embed(action,
previous facing) + embed(slot), with spatial RoPE on both sides (the action token sits at its
player's reference position). Clip-wise (the paper's), video tokens of a step see the actions
of every step of their clip, the chunk of ``chunk_frames`` frames denoised together (never a
later chunk's: a rollout does not know them yet); frame-wise (``full``, and ablation
``framewise_mca`` of ``paper``), those of their own step only. With one-frame chunks the two are
the same computation. Ablation ``no_mca`` has none. The output projection starts at zero so that
the pretrained video model is unchanged.
"""

from __future__ import annotations

import torch
from torch import nn

from actionparty.model.attention import attention
from actionparty.model.conditioning.inputs import NO_ACTION
from actionparty.model.dit import BlockContext, RMSNorm, TokenLayout
from actionparty.model.rope import apply_rope


class ActionCrossAttention(nn.Module):
    """One block's MCA: ``x + module(x, ctx)``; ``ctx.payload`` is the :class:`ActionTokens` output
    (tokens (B, A, dim), rotary cos/sin (B, A, head_dim/2), mask (B, Nv, A))."""

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


class ActionTokens(nn.Module):
    """The action tokens MCA attends to, and its frame-wise or clip-wise mask.

    Installs an :class:`ActionCrossAttention` into every block of ``dit`` (its parameters are
    ``dit.blocks.i.extra_cross_attn.*``, reported as new when official weights are loaded)."""

    def __init__(self, dit, slots: int, clipwise: bool, action_facing: bool = True):
        super().__init__()
        dim = dit.config.dim
        self.clipwise = clipwise
        self.chunk = dit.config.chunk_frames or 1
        self.action_facing = action_facing  # embed (action, previous facing); else the action alone
        self.action_embed = nn.Embedding((NO_ACTION + 1) * 4, dim)  # per (action, previous facing)
        self.slot_embed = nn.Embedding(slots, dim)
        dit.install_extra_cross_attn(lambda i, cfg: ActionCrossAttention(cfg.dim, cfg.num_heads, cfg.eps))

    def forward(self, actions: torch.Tensor, present: torch.Tensor, facing: torch.Tensor, frames: torch.Tensor,
                cos: torch.Tensor, sin: torch.Tensor, layout: TokenLayout) -> dict[str, torch.Tensor]:
        """actions, facing (B, T, S); frames (T,) latent frames; cos/sin (B, T*S, head_dim/2) at
        the players' reference positions -> the blocks' payload."""
        b, t, s = actions.shape
        slots = torch.arange(s, device=actions.device)
        joint = actions * 4 + (facing if self.action_facing else 0)
        tokens = (self.action_embed(joint) + self.slot_embed(slots)[None, None]).flatten(1, 2)
        key_ok = present[:, None, :].expand(b, t, s).flatten(1)  # (B, T*S)
        video_frames = layout.q_frames[: layout.num_video, None]
        action_frames = frames.repeat_interleave(s)[None, :]
        if self.clipwise:  # every action of the video token's chunk
            same = torch.div(video_frames, self.chunk, rounding_mode="floor") == torch.div(
                action_frames, self.chunk, rounding_mode="floor")
        else:
            same = video_frames == action_frames  # (Nv, T*S)
        mask = same[None] & key_ok[:, None, :]
        return {"tokens": tokens, "cos": cos, "sin": sin, "mask": mask}
