"""The Wan2.1 text-to-video diffusion transformer (DiT), made block-causal for autoregressive rollout.

Architecture and parameter names follow Wan2.1's ``wan/modules/model.py`` so that the official
Wan2.1-T2V-1.3B weights load unchanged (see :mod:`actionparty.model.checkpoint_io`):

    patch_embedding            Conv3d(in_dim, dim, patch, stride=patch)
    text_embedding.{0,2}       Linear(text_dim, dim) - GELU(tanh) - Linear(dim, dim)
    time_embedding.{0,2}       Linear(freq_dim, dim) - SiLU - Linear(dim, dim)   on sinusoidal(t)
    time_projection.1          SiLU - Linear(dim, 6 * dim)                          adaLN input
    blocks.i.norm1             LayerNorm (no affine)       -> modulated self-attention
    blocks.i.self_attn.{q,k,v,o,norm_q,norm_k}             RMS qk-norm over all heads, 3-D RoPE
    blocks.i.norm3             LayerNorm (affine)          -> text cross-attention (not modulated)
    blocks.i.cross_attn.{q,k,v,o,norm_q,norm_k}
    blocks.i.norm2             LayerNorm (no affine)       -> modulated FFN
    blocks.i.ffn.{0,2}         Linear - GELU(tanh) - Linear
    blocks.i.modulation        (1, 6, dim): shift/scale/gate for attention, shift/scale/gate for FFN
    head.head, head.modulation Linear(dim, prod(patch) * out_dim), (1, 2, dim): shift/scale

What differs from Wan (all additions; with defaults the computation is Wan's):

* **Per-frame timesteps** ``t`` (B, T): each latent frame has its own noise level (Self-Forcing
  style); a frame's adaLN vector is shared by its tokens (stored once per frame, not per token).
* **Block-causal attention** over chunks of ``config.chunk_frames`` latent frames, and a
  :class:`KVCache` for chunk-by-chunk rollout with a sliding window.
* **Extra tokens** (:class:`ExtraTokens`) appended to the video sequence, each with its own
  rotary position (t, y, x) (floats allowed), own adaLN input, frame index and tag; they take
  part in self- and cross-attention and come back as hidden states (no head is applied).
* **Extra cross-attention hook**: an optional module per block, ``blocks.i.extra_cross_attn``,
  called between self- and text cross-attention (``x = x + module(x, BlockContext)``).
* **One extension point for conditioning**: everything a conditioning module adds to a call
  (extra tokens, an attention mask, per-frame adaLN input, a spatial map on the video tokens or
  on the head's output, the hook modules' payload) travels in one :class:`DiTConditioning`.
* Sublayers run in the parameters' dtype (or under autocast), while the residual stream,
  the modulation and the norms stay fp32: bf16-safe.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn
from torch.utils.checkpoint import checkpoint

from .attention import attention, block_causal_mask, video_token_frames
from .rope import Rope3D, apply_rope
from .sizes import DIT_SIZES

VIDEO_TAG = -1  # tag of video tokens in TokenLayout / KVCache (extra tokens carry their own tags, >= 0)


# =============================================================================================
# Config and named sizes
# =============================================================================================


@dataclass
class DiTConfig:
    """Constructor arguments of :class:`WanDiT` (defaults: Wan2.1-T2V-1.3B, bidirectional)."""

    in_dim: int = 16  # latent channels in
    out_dim: int = 16  # channels predicted per latent position
    dim: int = 1536
    ffn_dim: int = 8960
    num_heads: int = 12
    num_layers: int = 30
    patch_size: tuple[int, int, int] = (1, 2, 2)  # (t, h, w) latent positions per token
    text_dim: int = 4096  # width of the text encoder's embeddings
    text_len: int = 512  # text is zero-padded to this many tokens (as Wan does)
    freq_dim: int = 256  # sinusoidal timestep embedding width
    eps: float = 1e-6
    qk_norm: bool = True
    cross_attn_norm: bool = True  # norm3 (affine LayerNorm before text cross-attention)
    chunk_frames: int | None = None  # block-causal chunk length in latent frames; None = bidirectional
    rope_max_pos: int = 1024  # size of the precomputed RoPE tables (larger positions still work)
    rope_theta: float = 10000.0
    zero_init: bool = True  # adaLN-Zero for training from scratch: zero modulation and output layers

    def __post_init__(self):
        self.patch_size = tuple(int(p) for p in self.patch_size)
        if len(self.patch_size) != 3:
            raise ValueError(f"patch_size must have 3 entries (t, h, w), got {self.patch_size}")
        if self.dim % self.num_heads:
            raise ValueError(f"dim {self.dim} is not divisible by num_heads {self.num_heads}")
        if self.head_dim % 2 or self.freq_dim % 2:
            raise ValueError(f"head dim ({self.head_dim}) and freq_dim ({self.freq_dim}) must be even")
        if self.chunk_frames is not None and self.chunk_frames < 1:
            raise ValueError(f"chunk_frames must be >= 1 or None, got {self.chunk_frames}")

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads


def dit_config(size: str, **overrides) -> DiTConfig:
    """The :class:`DiTConfig` of a named size, with keyword overrides (unknown keys fail by name)."""
    if size not in DIT_SIZES:
        raise ValueError(f"unknown DiT size {size!r}; known: {', '.join(DIT_SIZES)}")
    known = {f.name for f in dataclasses.fields(DiTConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"unknown DiT config key {unknown[0]!r}")
    return DiTConfig(**{**DIT_SIZES[size], **overrides})


def make_dit(size: str, **overrides) -> "WanDiT":
    """Build a :class:`WanDiT` of a named size (see :data:`DIT_SIZES`)."""
    return WanDiT(dit_config(size, **overrides))


# =============================================================================================
# Small helpers: timestep embedding, norms, per-token modulation
# =============================================================================================


def sinusoidal_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Timesteps (...) -> (..., dim) fp32 as ``[cos | sin]`` with Wan's frequencies (computed in fp64)."""
    half = dim // 2
    freqs = torch.pow(10000.0, -torch.arange(half, dtype=torch.float64, device=t.device) / half)
    angles = t.to(torch.float64)[..., None] * freqs
    return torch.cat([angles.cos(), angles.sin()], dim=-1).float()


class RMSNorm(nn.Module):
    """RMS norm over the last dim, computed in fp32 (Wan's qk-norm, over all heads at once)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x) * self.weight.to(x.dtype)


class FP32LayerNorm(nn.LayerNorm):
    """LayerNorm computed in fp32, returned in the input's dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight.float() if self.weight is not None else None
        b = self.bias.float() if self.bias is not None else None
        return F.layer_norm(x.float(), self.normalized_shape, w, b, self.eps).type_as(x)


@dataclass
class TokenModulation:
    """adaLN vectors of a [video; extra] token sequence, stored compactly.

    ``video`` (B, T, K, C): one set per latent frame, shared by that frame's ``tokens_per_frame``
    tokens (the video part of the sequence is in (t h w) order). ``extra`` (B, M, K, C) or None:
    one set per extra token. K = 6 in blocks, 2 in the head. All fp32.
    """

    video: torch.Tensor
    extra: torch.Tensor | None
    tokens_per_frame: int

    def plus(self, table: torch.Tensor) -> "TokenModulation":
        """Add a learned (1, K, C) table (a block's or the head's ``modulation``)."""
        table = table.float()[:, None]  # (1, 1, K, C)
        extra = None if self.extra is None else self.extra + table
        return TokenModulation(self.video + table, extra, self.tokens_per_frame)

    def _per_token(self, x: torch.Tensor, fn: Callable, *idx: int) -> torch.Tensor:
        """Apply ``fn(x_part, *vectors)`` with each token's vectors ``idx`` broadcast to it."""
        num_frames = self.video.shape[1]
        num_video = num_frames * self.tokens_per_frame
        xv = x[:, :num_video].unflatten(1, (num_frames, self.tokens_per_frame))  # (B, T, S, C)
        out = fn(xv, *(self.video[:, :, None, i] for i in idx)).flatten(1, 2)
        if self.extra is None:
            return out
        return torch.cat([out, fn(x[:, num_video:], *(self.extra[:, :, i] for i in idx))], dim=1)

    def modulate(self, x: torch.Tensor, shift: int, scale: int) -> torch.Tensor:
        """``x * (1 + scale) + shift`` in fp32."""
        return self._per_token(x.float(), lambda u, sh, sc: u * (1 + sc) + sh, shift, scale)

    def gated_residual(self, x: torch.Tensor, y: torch.Tensor, gate: int) -> torch.Tensor:
        """``x + y * gate`` in fp32 (``x`` is the fp32 residual stream)."""
        return x + self._per_token(y.float(), lambda u, g: u * g, gate)


# =============================================================================================
# Extra tokens, block hook context, outputs
# =============================================================================================


@dataclass
class ExtraTokens:
    """Tokens appended after the video tokens (e.g. the next stage's per-player state tokens).

    tokens:    (B, M, dim) already embedded inputs.
    positions: (B, M, 3) rotary positions (t, y, x) in token-grid units (latent frame, patch
               row, patch column); floats allowed; (0, 0, 0) means "no rotation". t is absolute
               (counts on through a rollout, like the video frames).
    timesteps: (B, M) noise level of each token -> its own adaLN modulation (shared embedders).
    frames:    (M,) long latent frame each token belongs to: block-causal masks and KV-cache
               eviction treat it like a video token of that frame.
    cond:      optional (B, M, dim) added to the token's timestep embedding (adaLN input).
    tags:      optional (M,) long >= 0 (default 0) kept in TokenLayout / KVCache, so that masks can
               tell tokens apart (e.g. player slot for subject isolation).
    placed:    False: the tokens have no spatial position (only ``positions``' t is used): in
               self-attention, every score between one of them and any token compares the two
               tokens' time only (:func:`unplaced_pairs`); True: the full rotary (t, y, x).
    """

    tokens: torch.Tensor
    positions: torch.Tensor
    timesteps: torch.Tensor
    frames: torch.Tensor
    cond: torch.Tensor | None = None
    tags: torch.Tensor | None = None
    placed: bool = True

    @property
    def num_tokens(self) -> int:
        return self.tokens.shape[1]


@dataclass
class TokenLayout:
    """Where every query and key token sits, for building attention masks.

    Queries are this call's tokens ``[video (t h w order); extra]``; keys are ``[cached; queries]``.
    ``*_frames`` are latent frame indices (long), ``*_tags`` are ``VIDEO_TAG`` (-1) for video tokens
    and the extra tokens' tags otherwise.
    """

    grid: tuple[int, int, int]  # (T, H, W) token grid of the video part
    frame_offset: int
    q_frames: torch.Tensor  # (Nq,)
    q_tags: torch.Tensor  # (Nq,)
    k_frames: torch.Tensor  # (Nk,)
    k_tags: torch.Tensor  # (Nk,)

    @property
    def tokens_per_frame(self) -> int:
        return self.grid[1] * self.grid[2]

    @property
    def num_video(self) -> int:
        return self.grid[0] * self.tokens_per_frame


@dataclass
class BlockContext:
    """Second argument of a block's ``extra_cross_attn`` module: ``y = module(x, ctx)``.

    ``x`` (B, N, dim) is the fp32 residual stream of [video; extra] tokens after self-attention;
    the module returns an update of the same shape (e.g. zero for the extra tokens) that is
    added to ``x``. It brings its own norm and gate (zero-init its output projection so an
    untrained module leaves a pretrained backbone unchanged).
    """

    layout: TokenLayout
    rope_cos: torch.Tensor  # (B|1, N, head_dim // 2) rotary angles of the query tokens
    rope_sin: torch.Tensor
    payload: Any = None  # ``DiTConditioning.payload`` of the call, unchanged


@dataclass
class DiTConditioning:
    """What a conditioning module adds to one :meth:`WanDiT.forward` call (all optional).

    extra:       tokens appended after the video tokens (:class:`ExtraTokens`).
    attn_mask:   bool (Nq, Nk) or (B, Nq, Nk) over queries [video; extra] and keys
                 [cached; video; extra]; replaces the default block-causal mask (build it from
                 :meth:`WanDiT.token_layout`, e.g. ``and_masks(default_attn_mask(layout), mine)``).
    frame_cond:  (B, T/pt, dim) added to each frame's time embedding (adaLN input).
    video_cond:  (B, T/pt * H/ph * W/pw, dim) added to the video tokens after the patch embedding.
    out_cond:    (B, T/pt * H/ph * W/pw, pt*ph*pw*out_dim) added to the head's output per token.
    payload:     handed to the blocks' ``extra_cross_attn`` modules as ``BlockContext.payload``.
    """

    extra: ExtraTokens | None = None
    attn_mask: torch.Tensor | None = None
    frame_cond: torch.Tensor | None = None
    video_cond: torch.Tensor | None = None
    out_cond: torch.Tensor | None = None
    payload: Any = None


@dataclass
class TextKV:
    """One block's text cross-attention keys/values (B, L, H, D) and key mask (B, 1, L) or None."""

    k: torch.Tensor
    v: torch.Tensor
    mask: torch.Tensor | None


@dataclass
class TextContext:
    """The text side of a forward pass, computed once for many (:meth:`WanDiT.prepare_text`):
    the embedded context (B, L', dim), its mask (B, L') or None, and every block's cross-attention
    keys/values. A rollout draws every frame with the same prompt and the same weights, so its
    sampler prepares the prompt once instead of in each of its passes (the same values: the same
    layers on the same inputs). Valid only while the weights do not change (no training step)."""

    context: torch.Tensor
    mask: torch.Tensor | None
    kv: list[TextKV]


@dataclass
class DiTOutput:
    video: torch.Tensor  # (B, out_dim, T, H, W) fp32, per-position predictions
    extra: torch.Tensor | None = None  # (B, M, dim) fp32 last hidden states of the extra tokens


# =============================================================================================
# Attention layers, block, head
# =============================================================================================


class _Attention(nn.Module):
    """Wan's attention parameters: q, k, v, o projections and RMS norms on q and k."""

    def __init__(self, dim: int, num_heads: int, qk_norm: bool = True, eps: float = 1e-6):
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)
        self.norm_q = RMSNorm(dim, eps) if qk_norm else nn.Identity()
        self.norm_k = RMSNorm(dim, eps) if qk_norm else nn.Identity()

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (self.num_heads, -1))  # (B, N, H, D)


@dataclass
class Unplaced:
    """Tokens without a spatial position in self-attention (``ExtraTokens.placed`` False):
    ``free`` (N,) bool marks them among the call's tokens; ``cos``/``sin`` (B|1, N, D/2) are
    every token's temporal-only rotary angles (the spatial pairs unrotated)."""

    free: torch.Tensor
    cos: torch.Tensor
    sin: torch.Tensor


def unplaced_pairs(q: torch.Tensor, k: torch.Tensor, rope_cos: torch.Tensor, rope_sin: torch.Tensor,
                   unplaced: Unplaced) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotated queries and keys (B, N, H, 4D) whose dot product is, for every pair of tokens,
    the full rotary score between two placed tokens and the temporal-only one (spatial channels
    compared unrotated: no spatial position at all) wherever one of the two is unplaced.

    Four channel groups [placed.placed | placed q.free k | free q.placed k | free.free]: a
    placed token writes its fully rotated q/k into group 1 and its time-rotated q/k into the
    group of the pairs it meets an unplaced token in, an unplaced token its time-rotated q/k
    into the groups of its own pairs; every other group is zero. q is scaled by 2 so that
    attention's 1/sqrt(4D) is the usual 1/sqrt(D)."""
    q_full, k_full = apply_rope(q, rope_cos, rope_sin), apply_rope(k, rope_cos, rope_sin)
    q_t, k_t = apply_rope(q, unplaced.cos, unplaced.sin), apply_rope(k, unplaced.cos, unplaced.sin)
    free = unplaced.free.view(1, -1, 1, 1)
    zero = torch.zeros_like(q_t)
    pick = lambda on, t: torch.where(on, t, zero)  # noqa: E731
    q_out = torch.cat([pick(~free, q_full), pick(~free, q_t), pick(free, q_t), pick(free, q_t)], dim=-1)
    k_out = torch.cat([pick(~free, k_full), pick(free, k_t), pick(~free, k_t), pick(free, k_t)], dim=-1)
    return 2.0 * q_out, k_out


class SelfAttention(_Attention):
    def forward(
        self,
        x: torch.Tensor,
        rope_cos: torch.Tensor,
        rope_sin: torch.Tensor,
        mask: torch.Tensor | None = None,
        past_kv: tuple[torch.Tensor, torch.Tensor] | None = None,
        unplaced: Unplaced | None = None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """x (B, N, C); rope (B|1, N, D/2); mask over keys [past; x]; ``unplaced``: tokens
        without a spatial position (:func:`unplaced_pairs`; keys then have 4D channels).

        Returns the output (B, N, C) and this call's (k, v), each (B, N, H, D) with RoPE on k.
        """
        q, k = self._heads(self.norm_q(self.q(x))), self._heads(self.norm_k(self.k(x)))
        if unplaced is None:
            q, k = apply_rope(q, rope_cos, rope_sin), apply_rope(k, rope_cos, rope_sin)
        else:
            q, k = unplaced_pairs(q, k, rope_cos, rope_sin, unplaced)
        v = self._heads(self.v(x))
        k_all, v_all = (k, v) if past_kv is None else (torch.cat([past_kv[0], k], 1), torch.cat([past_kv[1], v], 1))
        out = attention(q, k_all, v_all, mask)
        return self.o(out.flatten(2)), (k, v)


class CrossAttention(_Attention):
    def context_kv(self, context: torch.Tensor, context_mask: torch.Tensor | None = None) -> "TextKV":
        """The keys and values of the text context (B, L, C) and its key mask (B, 1, L) or None."""
        mask = None if context_mask is None else context_mask[:, None, :]
        return TextKV(self._heads(self.norm_k(self.k(context))), self._heads(self.v(context)), mask)

    def forward(self, x: torch.Tensor, context: torch.Tensor, context_mask: torch.Tensor | None = None,
                kv: "TextKV | None" = None) -> torch.Tensor:
        """x (B, N, C) attends to context (B, L, C); context_mask (B, L) bool, True = real token.
        ``kv``: this layer's :meth:`context_kv` of the same context, computed earlier (a
        :class:`TextContext`); then ``context`` and ``context_mask`` are not read."""
        q = self._heads(self.norm_q(self.q(x)))
        kv = self.context_kv(context, context_mask) if kv is None else kv
        return self.o(attention(q, kv.k, kv.v, kv.mask).flatten(2))


class WanBlock(nn.Module):
    """adaLN-modulated self-attention, (hook), text cross-attention, FFN — Wan's block."""

    def __init__(self, cfg: DiTConfig, index: int = 0):
        super().__init__()
        dim = cfg.dim
        self.index = index
        self.norm1 = FP32LayerNorm(dim, cfg.eps, elementwise_affine=False)
        self.self_attn = SelfAttention(dim, cfg.num_heads, cfg.qk_norm, cfg.eps)
        self.norm3 = FP32LayerNorm(dim, cfg.eps, elementwise_affine=True) if cfg.cross_attn_norm else nn.Identity()
        self.cross_attn = CrossAttention(dim, cfg.num_heads, cfg.qk_norm, cfg.eps)
        self.norm2 = FP32LayerNorm(dim, cfg.eps, elementwise_affine=False)
        self.ffn = nn.Sequential(nn.Linear(dim, cfg.ffn_dim), nn.GELU(approximate="tanh"), nn.Linear(cfg.ffn_dim, dim))
        self.modulation = nn.Parameter(torch.randn(1, 6, dim) / dim**0.5)
        self.extra_cross_attn: nn.Module | None = None  # installed by WanDiT.install_extra_cross_attn

    def forward(
        self,
        x: torch.Tensor,
        mod: TokenModulation,
        rope_cos: torch.Tensor,
        rope_sin: torch.Tensor,
        context: torch.Tensor,
        context_mask: torch.Tensor | None,
        attn_mask: torch.Tensor | None,
        past_kv: tuple[torch.Tensor, torch.Tensor] | None,
        hook_ctx: BlockContext | None,
        unplaced: Unplaced | None = None,
        text_kv: "TextKV | None" = None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """x (B, N, C) fp32 residual stream -> (x, this call's self-attention (k, v)); ``text_kv``:
        the text cross-attention's keys/values, computed earlier (:class:`TextContext`)."""
        dtype = self.ffn[0].weight.dtype  # sublayers compute in the parameters' dtype
        m = mod.plus(self.modulation)  # chunks: 0 shift, 1 scale, 2 gate (attn); 3, 4, 5 (ffn)
        y, kv = self.self_attn(m.modulate(self.norm1(x), 0, 1).to(dtype), rope_cos, rope_sin, attn_mask, past_kv,
                               unplaced)
        x = m.gated_residual(x, y, 2)
        if self.extra_cross_attn is not None:
            x = x + self.extra_cross_attn(x, hook_ctx).float()
        x = x + self.cross_attn(self.norm3(x).to(dtype), context, context_mask, text_kv).float()
        x = m.gated_residual(x, self.ffn(m.modulate(self.norm2(x), 3, 4).to(dtype)), 5)
        return x, kv


class Head(nn.Module):
    """Modulated LayerNorm + Linear to ``prod(patch) * out_dim`` values per token."""

    def __init__(self, dim: int, out_dim: int, patch_size: tuple[int, int, int], eps: float = 1e-6):
        super().__init__()
        self.norm = FP32LayerNorm(dim, eps, elementwise_affine=False)
        self.head = nn.Linear(dim, math.prod(patch_size) * out_dim)
        self.modulation = nn.Parameter(torch.randn(1, 2, dim) / dim**0.5)

    def forward(self, x: torch.Tensor, e: torch.Tensor, tokens_per_frame: int) -> torch.Tensor:
        """x (B, T*S, C) video tokens; e (B, T, C) per-frame time embedding -> (B, T*S, prod(patch)*out)."""
        m = TokenModulation(e[:, :, None].float(), None, tokens_per_frame).plus(self.modulation)
        return self.head(m.modulate(self.norm(x), 0, 1).to(self.head.weight.dtype))


# =============================================================================================
# KV cache
# =============================================================================================


class KVCache:
    """Self-attention keys/values of already generated tokens, per block, for chunk-wise rollout.

    Usage (one chunk = ``chunk_frames`` latent frames; ``cache.next_frame`` is where it starts)::

        cache = model.new_kv_cache(window_frames=4)
        model(context_latent, t0, text, kv_cache=cache, update_cache=True)   # clean context frame
        for step in range(n):
            for t in denoising_schedule:                                      # reads the cache
                pred = model(x_t, t, text, kv_cache=cache).video
                ...
            model(x_clean, zeros, text, kv_cache=cache, update_cache=True)    # appends the chunk

    A call with ``update_cache=True`` appends its tokens (video and extra) after computing them;
    other calls only read. Frames older than ``window_frames`` before the next chunk are evicted
    (``None`` keeps everything), so a chunk sees at most ``window_frames`` past frames plus itself;
    the first ``sink_frames`` frames of the rollout (e.g. the clean context frame) are never evicted.
    Cached keys/values are detached: no gradient flows into earlier chunks through the cache.

    RoPE positions: **absolute positions continue** (frame f of the rollout has temporal position
    f; keys are cached already rotated and are never re-rotated). Rotary scores depend only on
    position differences, so a window late in a rollout attends exactly as the same window would
    at positions starting from 0; the cached rollout equals the uncached computation with the
    windowed block-causal mask (:func:`~actionparty.model.attention.block_causal_mask`).
    """

    def __init__(self, num_layers: int, window_frames: int | None = None, sink_frames: int = 0):
        if window_frames is not None and window_frames < 0:
            raise ValueError(f"window_frames must be >= 0 or None, got {window_frames}")
        self.num_layers = num_layers
        self.window_frames = window_frames
        self.sink_frames = sink_frames
        self.reset()

    def reset(self) -> None:
        self.keys: list[torch.Tensor | None] = [None] * self.num_layers  # (B, Nc, H, D) each
        self.values: list[torch.Tensor | None] = [None] * self.num_layers
        self.frames: torch.Tensor | None = None  # (Nc,) long latent frame of each cached token
        self.tags: torch.Tensor | None = None  # (Nc,) long, VIDEO_TAG or the extra token's tag
        self.next_frame = 0  # first frame of the next chunk
        self._staged: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * self.num_layers

    @property
    def num_tokens(self) -> int:
        return 0 if self.frames is None else int(self.frames.numel())

    def layer(self, i: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        return None if self.keys[i] is None else (self.keys[i], self.values[i])

    def stage(self, i: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """Hold block ``i``'s new keys/values until :meth:`commit` (the forward pass is not over yet)."""
        self._staged[i] = (k.detach(), v.detach())

    def commit(self, frames: torch.Tensor, tags: torch.Tensor) -> None:
        """Append the staged keys/values of tokens at ``frames``/``tags`` (N,), then slide the window."""
        if any(s is None for s in self._staged):
            raise RuntimeError("KVCache.commit: not every block staged its keys/values")
        for i, (k, v) in enumerate(self._staged):
            self.keys[i] = k if self.keys[i] is None else torch.cat([self.keys[i], k], 1)
            self.values[i] = v if self.values[i] is None else torch.cat([self.values[i], v], 1)
        self.frames = frames if self.frames is None else torch.cat([self.frames, frames])
        self.tags = tags if self.tags is None else torch.cat([self.tags, tags])
        self.next_frame = max(self.next_frame, int(frames.max()) + 1)
        self._staged = [None] * self.num_layers
        if self.window_frames is not None:
            keep = (self.frames >= self.next_frame - self.window_frames) | (self.frames < self.sink_frames)
            if not bool(keep.all()):
                idx = keep.nonzero().squeeze(1)
                self.keys = [k.index_select(1, idx) for k in self.keys]
                self.values = [v.index_select(1, idx) for v in self.values]
                self.frames, self.tags = self.frames[idx], self.tags[idx]


# =============================================================================================
# The model
# =============================================================================================


class WanDiT(nn.Module):
    """Wan2.1 T2V DiT with per-frame timesteps, block-causal attention, KV cache and extension points."""

    def __init__(self, config: DiTConfig | None = None, **kwargs):
        super().__init__()
        cfg = dataclasses.replace(config, **kwargs) if config is not None else DiTConfig(**kwargs)
        self.config = cfg
        dim = cfg.dim
        self.patch_embedding = nn.Conv3d(cfg.in_dim, dim, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        self.text_embedding = nn.Sequential(
            nn.Linear(cfg.text_dim, dim), nn.GELU(approximate="tanh"), nn.Linear(dim, dim))
        self.time_embedding = nn.Sequential(nn.Linear(cfg.freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        self.blocks = nn.ModuleList([WanBlock(cfg, i) for i in range(cfg.num_layers)])
        self.head = Head(dim, cfg.out_dim, cfg.patch_size, cfg.eps)
        self.rope = Rope3D(cfg.head_dim, cfg.rope_max_pos, cfg.rope_theta)  # no parameters, no state
        self.gradient_checkpointing = False
        self.init_weights()

    # ----------------------------------------------------------------- init and extension points

    def init_weights(self) -> None:
        """Wan's init (xavier linears, N(0, 0.02) embedders, zero output); adaLN-Zero if configured."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.xavier_uniform_(self.patch_embedding.weight.view(self.config.dim, -1))
        nn.init.zeros_(self.patch_embedding.bias)
        for m in [*self.text_embedding, *self.time_embedding]:
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.02)
        nn.init.zeros_(self.head.head.weight)
        if self.config.zero_init:
            # Every block starts as the identity on the residual stream (gates 0), output 0.
            nn.init.zeros_(self.time_projection[1].weight)
            nn.init.zeros_(self.time_projection[1].bias)
            for block in self.blocks:
                nn.init.zeros_(block.modulation)
            nn.init.zeros_(self.head.modulation)

    def install_extra_cross_attn(self, factory: Callable[[int, DiTConfig], nn.Module]) -> None:
        """Put ``factory(block_index, config)`` in every block as ``blocks.i.extra_cross_attn``.

        The module is called as ``x = x + module(x, ctx: BlockContext)`` between self-attention
        and text cross-attention; its parameters are named ``blocks.i.extra_cross_attn.*``
        (reported as new when official weights are loaded).
        """
        for i, block in enumerate(self.blocks):
            block.extra_cross_attn = factory(i, self.config)

    def new_kv_cache(self, window_frames: int | None = None, sink_frames: int = 0) -> KVCache:
        return KVCache(self.config.num_layers, window_frames, sink_frames)

    @property
    def param_dtype(self) -> torch.dtype:
        return self.patch_embedding.weight.dtype

    # ----------------------------------------------------------------- conditioning

    def embed_time(self, t: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """Timesteps (B, N) -> time embedding (B, N, dim) fp32 (+ optional cond (B, N, dim))."""
        e = self.time_embedding(sinusoidal_embedding(t, self.config.freq_dim).to(self.param_dtype)).float()
        return e if cond is None else e + cond.float()

    def project_time(self, e: torch.Tensor) -> torch.Tensor:
        """Time embedding (B, N, dim) -> block adaLN input (B, N, 6, dim) fp32."""
        return self.time_projection(e.to(self.param_dtype)).float().unflatten(-1, (6, self.config.dim))

    def embed_text(self, text: torch.Tensor, text_mask: torch.Tensor | None = None):
        """Text (B, L, text_dim) -> context (B, max(L, text_len), dim) and mask (B, ·) or None.

        Like Wan (``WanModel.forward``: ``u.new_zeros(text_len - len(u))``, ``context_lens =
        None``), shorter text is zero-padded to ``text_len`` and the padding is attended to unless
        a mask is given. The umT5 encoder gives an all-True mask (the official treatment, see
        :mod:`~actionparty.model.text`), the ``tiny`` encoder its real words.
        """
        cfg = self.config
        if text.dim() != 3 or text.shape[-1] != cfg.text_dim:
            raise ValueError(f"text must be (B, L, {cfg.text_dim}), got {tuple(text.shape)}")
        pad = cfg.text_len - text.shape[1]
        if pad > 0:
            text = F.pad(text, (0, 0, 0, pad))
            if text_mask is not None:
                text_mask = F.pad(text_mask.bool(), (0, pad), value=False)
        if text_mask is not None and text.is_cuda and bool(text_mask.all()):
            # An all-True mask is no mask: on a GPU the unmasked kernel (flash-attn) can then run
            # (one host sync per forward, not per layer). On CPU the mask stays, so CPU results
            # are bit-identical to before.
            text_mask = None
        return self.text_embedding(text.to(self.param_dtype)), None if text_mask is None else text_mask.bool()

    def prepare_text(self, text: torch.Tensor, text_mask: torch.Tensor | None = None) -> TextContext:
        """:meth:`embed_text` and every block's text keys/values, for passing as ``text`` to
        many :meth:`forward` calls (their ``text_mask`` then None)."""
        context, mask = self.embed_text(text, text_mask)
        return TextContext(context, mask, [block.cross_attn.context_kv(context, mask) for block in self.blocks])

    # ----------------------------------------------------------------- layout and masks

    def token_grid(self, latent_shape: tuple[int, int, int]) -> tuple[int, int, int]:
        """Latent (T, H, W) -> token grid (T/pt, H/ph, W/pw); fails if not divisible."""
        if any(s % p for s, p in zip(latent_shape, self.config.patch_size)):
            raise ValueError(f"latent shape (T, H, W) = {tuple(latent_shape)} is not divisible by patch_size "
                             f"{self.config.patch_size}")
        return tuple(s // p for s, p in zip(latent_shape, self.config.patch_size))

    def token_layout(
        self,
        latent_shape: tuple[int, int, int],
        extra: ExtraTokens | None = None,
        kv_cache: KVCache | None = None,
        frame_offset: int | None = None,
        device=None,
    ) -> TokenLayout:
        """Frames and tags of this call's queries [video; extra] and keys [cached; queries]."""
        grid = self.token_grid(latent_shape)
        if frame_offset is None:
            frame_offset = kv_cache.next_frame if kv_cache is not None else 0
        q_frames = video_token_frames(grid[0], grid[1] * grid[2], frame_offset, device)
        q_tags = torch.full_like(q_frames, VIDEO_TAG)
        if extra is not None:
            tags = extra.tags if extra.tags is not None else torch.zeros_like(extra.frames)
            q_frames = torch.cat([q_frames, extra.frames.to(q_frames)])
            q_tags = torch.cat([q_tags, tags.to(q_tags)])
        k_frames, k_tags = q_frames, q_tags
        if kv_cache is not None and kv_cache.num_tokens:
            k_frames = torch.cat([kv_cache.frames.to(q_frames), q_frames])
            k_tags = torch.cat([kv_cache.tags.to(q_tags), q_tags])
        return TokenLayout(grid, frame_offset, q_frames, q_tags, k_frames, k_tags)

    def default_attn_mask(self, layout: TokenLayout, window_frames: int | None = None,
                          sink_frames: int = 0) -> torch.Tensor | None:
        """Block-causal (``config.chunk_frames``) mask over the layout, windowed; None if all-visible.

        Compose with your own: ``and_masks(model.default_attn_mask(layout), my_mask)``.
        """
        chunk = self.config.chunk_frames
        if chunk is None and window_frames is None:
            return None
        mask = block_causal_mask(layout.q_frames, layout.k_frames, chunk, window_frames, sink_frames)
        return None if bool(mask.all()) else mask

    # ----------------------------------------------------------------- forward

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        text: "torch.Tensor | TextContext",
        text_mask: torch.Tensor | None = None,
        *,
        cond: DiTConditioning | None = None,
        kv_cache: KVCache | None = None,
        update_cache: bool = False,
        frame_offset: int | None = None,
    ) -> DiTOutput:
        """Predict ``out_dim`` values per latent position (the embedding of the inputs is
        :meth:`_embed`; what remains here is the block loop and the head).

        Args:
            x: video latents (B, in_dim, T, H, W).
            t: timesteps (B, T/pt) one per latent (token) frame, or (B,) for all frames; Wan's scale
                (0..1000).
            text: (B, L, text_dim) text embeddings; text_mask (B, L) bool, True = real token. Or
                a :class:`TextContext` of :meth:`prepare_text` (computed once for many calls).
            cond: what a conditioning module adds (:class:`DiTConditioning`); none: plain Wan.
            kv_cache: read cached keys/values of earlier frames (and append these tokens if
                ``update_cache``). Frames are numbered from ``frame_offset`` (default: the
                cache's ``next_frame``, else 0) for RoPE and masks.

        Returns:
            :class:`DiTOutput` with ``video`` (B, out_dim, T, H, W) fp32 and ``extra`` (B, M, dim)
            fp32 last hidden states of the extra tokens (None without extra tokens).
        """
        cfg = self.config
        if x.dim() != 5 or x.shape[1] != cfg.in_dim:
            raise ValueError(f"x must be (B, {cfg.in_dim}, T, H, W), got {tuple(x.shape)}")
        if update_cache and kv_cache is None:
            raise ValueError("update_cache=True needs a kv_cache")
        cond = cond or DiTConditioning()
        layout = self.token_layout(tuple(x.shape[2:]), cond.extra, kv_cache, frame_offset, x.device)
        tokens, e_video, mod, rope_cos, rope_sin = self._embed(x, t, cond, layout)
        unplaced = self._unplaced(cond.extra, layout, rope_cos, rope_sin)
        if isinstance(text, TextContext):
            if text_mask is not None:
                raise ValueError("text is a TextContext (prepare_text): its mask is in it, text_mask must be None")
            context, context_mask, text_kv = text.context, text.mask, text.kv
        else:
            context, context_mask = self.embed_text(text, text_mask)
            text_kv = [None] * len(self.blocks)
        attn_mask = cond.attn_mask
        if attn_mask is None:
            window = (kv_cache.window_frames, kv_cache.sink_frames) if kv_cache is not None else (None, 0)
            attn_mask = self.default_attn_mask(layout, *window)
        hook_ctx = BlockContext(layout, rope_cos, rope_sin, cond.payload)

        for i, block in enumerate(self.blocks):
            args = (tokens, mod, rope_cos, rope_sin, context, context_mask, attn_mask,
                    kv_cache.layer(i) if kv_cache is not None else None, hook_ctx, unplaced, text_kv[i])
            if self.gradient_checkpointing and torch.is_grad_enabled():
                tokens, kv = checkpoint(block, *args, use_reentrant=False)
            else:
                tokens, kv = block(*args)
            if update_cache:
                kv_cache.stage(i, *kv)
        if update_cache:
            kv_cache.commit(layout.q_frames, layout.q_tags)

        num_frames, height, width = layout.grid
        out = self.head(tokens[:, : layout.num_video], e_video, height * width)
        if cond.out_cond is not None:
            out = out + cond.out_cond.to(out.dtype)
        pt, ph, pw = cfg.patch_size
        video = rearrange(out, "b (t h w) (pt ph pw c) -> b c (t pt) (h ph) (w pw)",
                          t=num_frames, h=height, w=width, pt=pt, ph=ph, pw=pw)
        return DiTOutput(video.float(), tokens[:, layout.num_video :] if cond.extra is not None else None)

    def _unplaced(self, extra: ExtraTokens | None, layout: TokenLayout, rope_cos: torch.Tensor,
                  rope_sin: torch.Tensor) -> Unplaced | None:
        """The :class:`Unplaced` of a call whose extra tokens have no spatial position, else None."""
        if extra is None or extra.placed:
            return None
        free = torch.zeros(rope_cos.shape[1], dtype=torch.bool, device=rope_cos.device)
        free[layout.num_video :] = True
        time_pairs = self.rope.axis_dims[0] // 2  # the temporal pairs come first (Rope3D)
        cos, sin = rope_cos.clone(), rope_sin.clone()
        cos[..., time_pairs:], sin[..., time_pairs:] = 1.0, 0.0
        return Unplaced(free, cos, sin)

    def _embed(self, x: torch.Tensor, t: torch.Tensor, cond: DiTConditioning, layout: TokenLayout):
        """The block input: tokens [video; extra] (B, N, dim) fp32, the video's per-frame time
        embedding (B, T, dim) (the head's modulation input), every token's adaLN vectors and
        rotary angles (B|1, N, head_dim / 2)."""
        cfg, (batch, device) = self.config, (x.shape[0], x.device)
        num_frames, height, width = layout.grid
        tokens = rearrange(self.patch_embedding(x.to(self.param_dtype)), "b c t h w -> b (t h w) c").float()
        if cond.video_cond is not None:
            if tuple(cond.video_cond.shape) != tuple(tokens.shape):
                raise ValueError(f"video_cond must be {tuple(tokens.shape)}, got {tuple(cond.video_cond.shape)}")
            tokens = tokens + cond.video_cond.float()
        if t.dim() == 1:
            t = t[:, None].expand(batch, num_frames)
        if tuple(t.shape) != (batch, num_frames):
            raise ValueError(f"t must be (B, T) = ({batch}, {num_frames}) or (B,), got {tuple(t.shape)}")
        e_video = self.embed_time(t, cond.frame_cond)
        e0_extra = None
        rope_cos, rope_sin = (u[None] for u in self.rope.grid(num_frames, height, width, layout.frame_offset, device))
        extra = cond.extra
        if extra is not None:
            m = extra.num_tokens
            expect = {"tokens": (batch, m, cfg.dim), "positions": (batch, m, 3), "timesteps": (batch, m)}
            for name, shape in expect.items():
                if tuple(getattr(extra, name).shape) != shape:
                    raise ValueError(f"extra.{name} must be {shape}, got {tuple(getattr(extra, name).shape)}")
            tokens = torch.cat([tokens, extra.tokens.float()], dim=1)
            e0_extra = self.project_time(self.embed_time(extra.timesteps, extra.cond))
            cos_x, sin_x = self.rope(extra.positions)
            rope_cos = torch.cat([rope_cos.expand(batch, -1, -1), cos_x], dim=1)
            rope_sin = torch.cat([rope_sin.expand(batch, -1, -1), sin_x], dim=1)
        mod = TokenModulation(self.project_time(e_video), e0_extra, height * width)
        return tokens, e_video, mod, rope_cos, rope_sin
