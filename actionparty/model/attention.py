"""Attention and attention masks.

One function, :func:`attention`, is used by every attention layer of the model. Which kernel runs
is decided in one place, :func:`select_backend`:

* ``flash``: the flash-attn package, for a call **without a mask** on a GPU in fp16/bf16 (when
  installed; flash-attn takes no arbitrary masks). The text cross-attention of the pretrained-Wan
  profiles is such a call (Wan attends to every text position, see
  :mod:`~actionparty.model.text`), and so is bidirectional self-attention.
* ``flex``: PyTorch's FlexAttention with a block mask, for a call **with a query x key mask on a
  GPU** (block-causal chunks, sliding windows, subject isolation): blocks of 128 x 128 query/key
  positions that the mask rules out entirely are skipped, instead of SDPA's dense masked kernel.
  The block mask is built once per mask tensor and reused by every layer of a forward pass.
  FlexAttention has no backward on CPU (torch 2.13): on CPU it is for inference and tests only.
* ``sdpa``: ``torch.nn.functional.scaled_dot_product_attention`` with a boolean mask, everywhere
  else (CPU, fp32, no flash-attn).

:func:`attention_backend` forces one for a block of code (tests compare the backends; FlexAttention
also runs on CPU, unfused). All backends give a zero output for a query whose mask row is all False.

Masks are plain boolean tensors, ``True`` = "query may attend to key", built from per-token
metadata (the latent frame each token belongs to) so that they compose with ``&``:
``block_causal_mask(...) & my_isolation_mask``. Shapes are ``(Nq, Nk)`` or ``(B, Nq, Nk)``.
"""

from __future__ import annotations

import contextlib
import warnings

import torch
import torch.nn.functional as F

try:  # optional GPU kernel
    from flash_attn import flash_attn_func as _flash_attn_func
except ImportError:  # pragma: no cover - depends on the machine
    _flash_attn_func = None

try:  # torch >= 2.5
    from torch.nn.attention.flex_attention import create_block_mask as _create_block_mask
    from torch.nn.attention.flex_attention import flex_attention as _flex_attention
except ImportError:  # pragma: no cover - depends on the torch version
    _create_block_mask = _flex_attention = None

BACKENDS = ("sdpa", "flex", "flash")
FLEX_BLOCK = 128  # FlexAttention's block size (its default): the unit of skipped work
_forced: str | None = None
_compiled_flex = None
_block_mask_cache: tuple | None = None  # (mask tensor, Nq, Nk, BlockMask) of the last masked call
_SDPA_MASKS = 4  # masks of one forward pass: self-attention, text, action cross-attention (_sdpa_mask)
_SDPA_MASK_MAX = 1 << 20  # entries of the largest mask kept
_sdpa_mask_cache: tuple = ()  # ((mask tensor, SDPA mask, empty rows), ...) of the last masks


def available_backends(device: str | torch.device = "cpu") -> list[str]:
    """The backends that can run on ``device`` here."""
    cuda = torch.device(device).type == "cuda"
    out = ["sdpa"]
    if _flex_attention is not None:
        out.append("flex")
    if _flash_attn_func is not None and cuda:
        out.append("flash")
    return out


@contextlib.contextmanager
def attention_backend(name: str | None):
    """Force ``name`` (one of :data:`BACKENDS`) for every :func:`attention` call inside the block
    (``None``: automatic). A backend that cannot run a call raises ``RuntimeError``."""
    global _forced
    if name is not None and name not in BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}; known: {', '.join(BACKENDS)}")
    previous, _forced = _forced, name
    try:
        yield
    finally:
        _forced = previous


def select_backend(q: torch.Tensor, mask: torch.Tensor | None) -> str:
    """The kernel for one call: forced, else flash (no mask, GPU, half precision, installed),
    flex (a mask, GPU), sdpa."""
    if _forced is not None:
        if _forced == "flash" and (mask is not None or _flash_attn_func is None or not q.is_cuda
                                   or q.dtype not in (torch.float16, torch.bfloat16)):
            raise RuntimeError("flash-attn backend: needs flash-attn installed, CUDA fp16/bf16 tensors and no mask")
        if _forced == "flex" and _flex_attention is None:
            raise RuntimeError(f"flex backend: FlexAttention is not in torch {torch.__version__}")
        return _forced
    if q.is_cuda:
        if mask is None and _flash_attn_func is not None and q.dtype in (torch.float16, torch.bfloat16):
            return "flash"
        # A key-padding mask (B, 1, Nk) (text cross-attention of the small profiles) skips no
        # query block, and its per-layer view would rebuild the block mask in every layer: SDPA.
        if mask is not None and _flex_attention is not None and mask.shape[-2] > 1:
            return "flex"
    return "sdpa"


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Multi-head attention.

    Args:
        q: (B, Nq, H, D); k, v: (B, Nk, H, D), all in the same dtype (q and k may be wider
            than v: position-free token pairs, ``dit.unplaced_pairs``; SDPA then, whatever the backend).
        mask: boolean, broadcastable to (B, Nq, Nk); True where attention is allowed.
            A query whose row is all False gets a zero output (instead of NaN).

    Returns:
        (B, Nq, H, D) in the dtype of ``v``.
    """
    if mask is not None and mask.dtype != torch.bool:
        raise TypeError(f"attention mask must be boolean, got {mask.dtype}")
    backend = select_backend(q, mask) if q.shape[-1] == v.shape[-1] else "sdpa"
    if backend == "flash":
        return _flash_attn_func(q, k, v)
    q, k, v = (u.transpose(1, 2) for u in (q, k, v))  # (B, H, N, D)
    if backend == "flex":
        if mask is None:
            out = _flex(q, k, v, None)
        else:
            out = _flex(q, k, v, _block_mask(mask, q.shape[0], q.shape[2], k.shape[2], q.device))
        return out.transpose(1, 2)
    empty_rows = None
    if mask is not None:
        mask, empty_rows = _sdpa_mask(mask)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    if empty_rows is not None:
        out = out.masked_fill(empty_rows, 0.0)
    return out.transpose(1, 2)


def _sdpa_mask(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A boolean mask (B|1, Nq, Nk) or (Nq, Nk) as SDPA takes it, (B|1, 1, Nq, Nk) (the same for
    every head), and its rows that allow no key (B|1, 1, Nq, 1).

    SDPA returns NaN for a query that may attend to nothing; such a row may attend anywhere, and
    its output is zeroed (unconditionally: branching on the data would sync the GPU in every
    layer). Every layer of a forward pass gets the same mask tensor (and a rollout's passes the
    same text mask), so the last few small ones are kept, by identity (masks are never modified in
    place); a large one is not held on to after its pass (its attention costs far more anyway)."""
    global _sdpa_mask_cache
    for entry in _sdpa_mask_cache:
        if entry[0] is mask:
            return entry[1], entry[2]
    m = (mask[None] if mask.dim() == 2 else mask)[:, None]
    empty_rows = ~m.any(dim=-1, keepdim=True)
    out = m | empty_rows
    if mask.numel() > _SDPA_MASK_MAX:
        return out, empty_rows
    # Rebound, never mutated: a thread of the play server reads either the old or the new tuple.
    _sdpa_mask_cache = ((mask, out, empty_rows),) + _sdpa_mask_cache[: _SDPA_MASKS - 1]
    return out, empty_rows


def _flex(q, k, v, block_mask):
    """FlexAttention: compiled (fused kernel) on GPU; eager on CPU, where it materialises the
    scores like a plain implementation (fine for tests, and the only way without a compiler)."""
    global _compiled_flex
    if q.is_cuda:
        if _compiled_flex is None:
            # dynamic=False as Self-Forcing: one kernel per sequence length, and a rollout's
            # lengths repeat (fixed chunks, a sliding window).
            _compiled_flex = torch.compile(_flex_attention, dynamic=False)
        return _compiled_flex(q, k, v, block_mask=block_mask)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*flex_attention called without torch.compile.*")
        return _flex_attention(q, k, v, block_mask=block_mask)


def _block_mask(mask: torch.Tensor, batch: int, nq: int, nk: int, device):
    """A FlexAttention BlockMask reading the dense boolean mask (broadcast to (B|1, Nq, Nk)).

    The masks of this model come as composed dense tensors (block-causal & windows & subject
    isolation), so the mask_mod looks the dense entry up; it is evaluated once per mask tensor
    (every layer of a forward pass gets the same tensor object) and cached.
    """
    global _block_mask_cache
    cached = _block_mask_cache
    if cached is not None and cached[0] is mask and cached[1:3] == (nq, nk) and cached[3] == batch:
        return cached[4]
    dense = mask if mask.dim() == 3 else mask[None]
    dense = dense.expand(dense.shape[0], nq, nk)
    if dense.shape[0] == 1:
        table = dense[0]
        mask_mod = lambda b, h, q_idx, kv_idx: table[q_idx, kv_idx]  # noqa: E731
        b = None
    else:
        if dense.shape[0] != batch:
            raise ValueError(f"attention mask batch {dense.shape[0]} != query batch {batch}")
        table = dense
        mask_mod = lambda b, h, q_idx, kv_idx: table[b, q_idx, kv_idx]  # noqa: E731
        b = batch
    block_mask = _create_block_mask(mask_mod, b, None, nq, nk, device=device)
    _block_mask_cache = (mask, nq, nk, batch, block_mask)
    return block_mask


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
