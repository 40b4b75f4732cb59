"""Attention and attention masks.

One function, :func:`attention`, is used by every attention layer of the model. It runs
``torch.nn.functional.scaled_dot_product_attention`` with an explicit boolean mask; the
flash-attn kernel is used only when it is installed, the tensors are fp16/bf16 on a GPU,
and there is no mask (flash-attn takes no arbitrary masks).

Masks are plain boolean tensors, ``True`` = "query may attend to key", built from per-token
metadata (the latent frame each token belongs to) so that they compose with ``&``:
``block_causal_mask(...) & my_isolation_mask``. Shapes are ``(Nq, Nk)`` or ``(B, Nq, Nk)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

try:  # optional GPU kernel
    from flash_attn import flash_attn_func as _flash_attn_func
except ImportError:  # pragma: no cover - depends on the machine
    _flash_attn_func = None


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Multi-head attention.

    Args:
        q: (B, Nq, H, D); k, v: (B, Nk, H, D), all in the same dtype.
        mask: boolean, broadcastable to (B, Nq, Nk); True where attention is allowed.
            A query whose row is all False gets a zero output (instead of NaN).

    Returns:
        (B, Nq, H, D) in the dtype of ``v``.
    """
    if mask is None and _flash_attn_func is not None and q.is_cuda and q.dtype in (torch.float16, torch.bfloat16):
        return _flash_attn_func(q, k, v)
    q, k, v = (u.transpose(1, 2) for u in (q, k, v))  # (B, H, N, D)
    empty_rows = None
    if mask is not None:
        if mask.dtype != torch.bool:
            raise TypeError(f"attention mask must be boolean, got {mask.dtype}")
        if mask.dim() == 2:
            mask = mask[None]
        mask = mask[:, None]  # (B|1, 1, Nq, Nk): same mask for every head
        # SDPA returns NaN for a query that may attend to nothing; let it attend anywhere, then zero
        # it (unconditionally: branching on the data would sync the GPU in every layer).
        empty_rows = ~mask.any(dim=-1, keepdim=True)
        mask = mask | empty_rows
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    if empty_rows is not None:
        out = out.masked_fill(empty_rows, 0.0)
    return out.transpose(1, 2)


# ---------------------------------------------------------------------------------------------
# Token metadata and mask builders
# ---------------------------------------------------------------------------------------------


def video_token_frames(num_frames: int, tokens_per_frame: int, frame_offset: int = 0, device=None) -> torch.Tensor:
    """Latent-frame index of each video token in ``(t h w)`` order: (num_frames * tokens_per_frame,) long."""
    frames = torch.arange(frame_offset, frame_offset + num_frames, device=device)
    return frames.repeat_interleave(tokens_per_frame)


def block_causal_mask(
    q_frames: torch.Tensor,
    k_frames: torch.Tensor,
    chunk_frames: int | None,
    window_frames: int | None = None,
    sink_frames: int = 0,
) -> torch.Tensor:
    """Block-causal mask over chunks of ``chunk_frames`` latent frames (Self-Forcing style).

    A query in chunk ``c`` (frames ``[c*chunk_frames, (c+1)*chunk_frames)``) sees every key of
    chunks ``<= c``; with ``window_frames`` it additionally sees only keys at most
    ``window_frames`` frames before the start of its own chunk (the sliding window that the
    :class:`~actionparty.model.dit.KVCache` implements by evicting old frames), except that the
    first ``sink_frames`` frames (e.g. the clean context frame) stay visible to all later chunks.

    Args:
        q_frames: (Nq,) or (B, Nq) long latent-frame index per query token.
        k_frames: (Nk,) or (B, Nk) long latent-frame index per key token.
        chunk_frames: frames per chunk; None = no causality (only the window applies).
        window_frames: past frames visible before the query's chunk; None = unlimited.
        sink_frames: frames [0, sink_frames) exempt from the window (still causal).

    Returns:
        bool (Nq, Nk) or (B, Nq, Nk).
    """
    qf, kf = q_frames.unsqueeze(-1), k_frames.unsqueeze(-2)
    if chunk_frames is None:
        mask = torch.ones(torch.broadcast_shapes(qf.shape, kf.shape), dtype=torch.bool, device=qf.device)
        chunk_start = qf
    else:
        if chunk_frames < 1:
            raise ValueError(f"chunk_frames must be >= 1, got {chunk_frames}")
        q_chunk = torch.div(qf, chunk_frames, rounding_mode="floor")
        mask = torch.div(kf, chunk_frames, rounding_mode="floor") <= q_chunk
        chunk_start = q_chunk * chunk_frames
    if window_frames is not None:
        mask = mask & ((kf >= chunk_start - window_frames) | (kf < sink_frames))
    return mask


def and_masks(*masks: torch.Tensor | None) -> torch.Tensor | None:
    """Intersection of boolean masks (broadcasting); ``None`` entries mean "no restriction"."""
    present = [m for m in masks if m is not None]
    if not present:
        return None
    out = present[0]
    for m in present[1:]:
        out = out & m
    return out


def key_padding_mask(key_valid: torch.Tensor) -> torch.Tensor:
    """(B, Nk) bool "this key exists" -> (B, 1, Nk), to ``&`` with any (B, Nq, Nk) mask."""
    return key_valid[:, None, :].bool()
