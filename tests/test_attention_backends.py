"""Attention backends: one selection rule, and every backend that runs on CPU (FlexAttention, in
torch >= 2.5) agrees with SDPA on the same inputs and masks (block-causal, windowed, subject
isolation with empty rows, text key padding, a KV cache's longer keys). FlexAttention has no
backward on CPU; gradients are compared on a GPU (tests/gpu/)."""

from __future__ import annotations

import sys

import pytest
import torch

from actionparty.model.attention import (
    attention,
    attention_backend,
    available_backends,
    block_causal_mask,
    key_padding_mask,
    select_backend,
    video_token_frames,
)
from actionparty.model.dit import make_dit

CPU_BACKENDS = [b for b in available_backends("cpu") if b != "sdpa"]
attn = sys.modules["actionparty.model.attention"]  # the module (the package exports the function)


def qkv(b=2, nq=24, nk=24, h=2, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, nq, h, d, generator=g), torch.randn(b, nk, h, d, generator=g),
            torch.randn(b, nk, h, d, generator=g))


def masks(nq=24, nk=24, b=2):
    """The model's kinds of masks, as built by its mask builders."""
    frames_k = video_token_frames(nk // 4, 4)
    frames_q = frames_k[-nq:]
    causal = block_causal_mask(frames_q, frames_k, chunk_frames=1)
    windowed = block_causal_mask(frames_q, frames_k, chunk_frames=2, window_frames=2, sink_frames=1)
    # subject isolation: per-sample, some queries see nothing (their output must be 0, not NaN)
    g = torch.Generator().manual_seed(1)
    isolation = causal & (torch.rand(b, nq, nk, generator=g) > 0.4)
    isolation[0, :3] = False
    valid = torch.ones(b, nk, dtype=torch.bool)
    valid[1, nk // 2:] = False
    return {"none": None, "block_causal": causal, "windowed": windowed, "isolation": isolation,
            "key_padding": key_padding_mask(valid)}


def test_selection_rule():
    q = torch.zeros(1, 4, 2, 8)
    assert select_backend(q, None) == "sdpa" and select_backend(q, torch.ones(4, 4, dtype=torch.bool)) == "sdpa"
    assert "flex" in available_backends("cpu") or torch.__version__ < "2.5"
    assert "flash" not in available_backends("cpu")  # flash-attn is GPU-only
    with attention_backend("flex"):
        assert select_backend(q, None) == "flex"
    assert select_backend(q, None) == "sdpa"
    with pytest.raises(RuntimeError, match="flash-attn backend"), attention_backend("flash"):
        attention(q, q, q)
    with pytest.raises(ValueError, match="unknown attention backend 'xformers'"), attention_backend("xformers"):
        pass


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("shape", [(24, 24), (8, 24)])  # (Nq, Nk): full sequence, and a chunk over a cache
def test_backends_agree_with_sdpa(backend, shape):
    nq, nk = shape
    q, k, v = qkv(nq=nq, nk=nk)
    for name, mask in masks(nq, nk).items():
        reference = attention(q, k, v, mask)
        with attention_backend(backend):
            out = attention(q, k, v, mask)
        assert out.shape == reference.shape and not out.isnan().any(), name
        assert torch.allclose(out, reference, atol=1e-5, rtol=1e-5), (name, (out - reference).abs().max())
        if name == "isolation":
            assert out[0, :3].abs().max() == 0  # queries that may attend to nothing


def test_block_mask_is_built_once_per_mask():
    if "flex" not in CPU_BACKENDS:
        pytest.skip(f"no FlexAttention in torch {torch.__version__}")
    q, k, v = qkv()
    mask = masks()["block_causal"]
    with attention_backend("flex"):
        attention(q, k, v, mask)
        first = attn._block_mask_cache[-1]
        attention(q, k, v, mask)  # the next layer: same mask tensor
        assert attn._block_mask_cache[-1] is first
        attention(q, k, v, mask.clone())
        assert attn._block_mask_cache[-1] is not first


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_dit_rollout_with_kv_cache_agrees_across_backends(backend):
    """A block-causal tiny DiT: a full forward and a cached chunk, each backend against SDPA."""
    torch.manual_seed(0)
    dit = make_dit("tiny", chunk_frames=1, zero_init=False).eval()
    torch.nn.init.normal_(dit.head.head.weight, std=0.1)
    x, text = torch.randn(2, 4, 3, 4, 4), torch.randn(2, 5, 32)
    text_mask = torch.tensor([[True] * 5, [True] * 3 + [False] * 2])
    t = torch.tensor([[0.0, 400.0, 800.0], [0.0, 200.0, 900.0]])
    outs = {}
    for name in ("sdpa", backend):
        with attention_backend(name), torch.no_grad():
            full = dit(x, t, text, text_mask).video
            cache = dit.new_kv_cache(window_frames=1, sink_frames=1)
            dit(x[:, :, :2], t[:, :2], text, text_mask, kv_cache=cache, update_cache=True)
            chunk = dit(x[:, :, 2:], t[:, 2:], text, text_mask, kv_cache=cache).video
        outs[name] = (full, chunk)
    for a, b in zip(outs["sdpa"], outs[backend]):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4), (a - b).abs().max()
