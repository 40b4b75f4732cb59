"""The Wan DiT: architecture and names, checkpoint loading, masks, KV cache, extension points."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

from actionparty.model.attention import and_masks, attention, block_causal_mask, video_token_frames
from actionparty.model.checkpoint_io import (
    CheckpointError,
    load_wan_checkpoint,
    save_wan_checkpoint,
    wan_parameter_shapes,
)
from actionparty.model.dit import (
    DIT_SIZES,
    VIDEO_TAG,
    BlockContext,
    DiTConditioning,
    ExtraTokens,
    WanDiT,
    dit_config,
    make_dit,
)
from actionparty.model.rope import Rope3D, rope_axis_dims

B, T, H, W = 2, 4, 8, 8  # latent (T, H, W); tiny patch (1, 2, 2) -> 16 tokens per frame
S = (H // 2) * (W // 2)


def tiny(**kw) -> WanDiT:
    """Tiny model with random (not zero) output layers, so that every check sees real signal."""
    torch.manual_seed(0)
    model = make_dit("tiny", zero_init=False, **kw).eval()
    nn.init.normal_(model.head.head.weight, std=0.1)  # Wan zero-inits it
    return model


def inputs(seed=0, frames=T):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, 4, frames, H, W, generator=g)
    t = torch.rand(B, frames, generator=g) * 1000
    text = torch.randn(B, 5, 32, generator=g)
    return x, t, text


def state_tokens(model, frames, seed=1, players=2):
    """Two 'players' per frame at float (y, x) positions, like the next stage's state tokens."""
    g = torch.Generator().manual_seed(seed)
    m = frames * players
    frame_idx = torch.arange(frames).repeat_interleave(players)
    yx = torch.rand(B, m, 2, generator=g) * 3.5
    positions = torch.cat([frame_idx[None, :, None].float().expand(B, m, 1), yx], dim=-1)
    return ExtraTokens(
        tokens=torch.randn(B, m, model.config.dim, generator=g),
        positions=positions,
        timesteps=torch.rand(B, m, generator=g) * 1000,
        frames=frame_idx,
        tags=torch.arange(players).repeat(frames),
    )


def _slice_extra(extra: ExtraTokens, frames: slice, players=2) -> ExtraTokens:
    sel = slice(frames.start * players, frames.stop * players)
    return ExtraTokens(extra.tokens[:, sel], extra.positions[:, sel], extra.timesteps[:, sel],
                       extra.frames[sel], None, extra.tags[sel])


# ---------------------------------------------------------------------------------------------
# Architecture, names, sizes
# ---------------------------------------------------------------------------------------------


def test_output_shapes_and_time_broadcast():
    model = tiny()
    x, t, text = inputs()
    out = model(x, t, text)
    assert out.video.shape == (B, 4, T, H, W) and out.video.dtype == torch.float32 and out.extra is None
    same_t = model(x, t[:, :1].expand(B, T).contiguous(), text).video
    assert torch.allclose(model(x, t[:, 0], text).video, same_t)  # (B,) broadcasts to every frame
    extra = state_tokens(model, T)
    out = model(x, t, text, cond=DiTConditioning(extra=extra))
    assert out.video.shape == (B, 4, T, H, W) and out.extra.shape == (B, extra.num_tokens, model.config.dim)
    with pytest.raises(ValueError, match="t must be"):
        model(x, t[:, :2], text)


# Per-block parameter names of Wan2.1 `WanAttentionBlock` (t2v, qk_norm, cross_attn_norm).
WAN_BLOCK_KEYS = {
    "norm3.weight", "norm3.bias", "modulation",
    *(f"{a}.{p}.{s}" for a in ("self_attn", "cross_attn") for p in "qkvo" for s in ("weight", "bias")),
    *(f"{a}.norm_{p}.weight" for a in ("self_attn", "cross_attn") for p in "qk"),
    "ffn.0.weight", "ffn.0.bias", "ffn.2.weight", "ffn.2.bias",
}
WAN_TOP_KEYS = {
    "patch_embedding.weight", "patch_embedding.bias",
    "text_embedding.0.weight", "text_embedding.0.bias", "text_embedding.2.weight", "text_embedding.2.bias",
    "time_embedding.0.weight", "time_embedding.0.bias", "time_embedding.2.weight", "time_embedding.2.bias",
    "time_projection.1.weight", "time_projection.1.bias",
    "head.head.weight", "head.head.bias", "head.modulation",
}


def wan_param_count(dim, ffn, layers, in_dim, out_dim, patch, text_dim, freq_dim):
    linear = lambda i, o: i * o + o  # noqa: E731
    p = patch[0] * patch[1] * patch[2]
    embed = in_dim * p * dim + dim + linear(text_dim, dim) + linear(dim, dim) + linear(freq_dim, dim) \
        + linear(dim, dim) + linear(dim, 6 * dim)
    attn = 4 * linear(dim, dim) + 2 * dim  # q, k, v, o + RMS norm_q, norm_k
    block = 2 * attn + 2 * dim + linear(dim, ffn) + linear(ffn, dim) + 6 * dim  # + norm3 affine, modulation
    head = linear(dim, p * out_dim) + 2 * dim
    return embed + layers * block + head


def test_wan_1_3b_on_meta_has_official_names_shapes_and_count():
    with torch.device("meta"):
        model = make_dit("wan-1.3b")
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    expected_keys = WAN_TOP_KEYS | {f"blocks.{i}.{k}" for i in range(30) for k in WAN_BLOCK_KEYS}
    assert set(shapes) == expected_keys
    assert shapes["patch_embedding.weight"] == (1536, 16, 1, 2, 2)
    assert shapes["text_embedding.0.weight"] == (1536, 4096)
    assert shapes["time_embedding.0.weight"] == (1536, 256)
    assert shapes["time_projection.1.weight"] == (9216, 1536)
    assert shapes["blocks.29.modulation"] == (1, 6, 1536)
    assert shapes["blocks.0.self_attn.norm_q.weight"] == (1536,)
    assert shapes["blocks.0.ffn.0.weight"] == (8960, 1536)
    assert shapes["head.head.weight"] == (64, 1536)
    assert shapes["head.modulation"] == (1, 2, 1536)
    count = sum(p.numel() for p in model.parameters())
    assert count == wan_param_count(1536, 8960, 30, 16, 16, (1, 2, 2), 4096, 256) == 1_418_996_800


def test_named_sizes():
    assert {"tiny", "small", "wan-1.3b"} <= set(DIT_SIZES)
    assert dit_config("small").dim == 128 and dit_config("small", in_dim=16).in_dim == 16
    with pytest.raises(ValueError, match="unknown DiT size 'huge'"):
        make_dit("huge")
    with pytest.raises(ValueError, match="unknown DiT config key 'widht'"):
        make_dit("tiny", widht=3)


def test_zero_init_starts_at_zero_output():
    model = make_dit("tiny")  # zero_init=True: adaLN-Zero gates and output layer are zero
    x, t, text = inputs()
    assert model(x, t, text).video.abs().max() == 0
    assert all(b.modulation.abs().max() == 0 for b in model.blocks)


def test_bf16_forward_keeps_fp32_rope_and_is_finite():
    model = tiny().to(torch.bfloat16)
    x, t, text = inputs()
    out = model(x, t, text, cond=DiTConditioning(extra=state_tokens(model, T)))
    assert out.video.dtype == torch.float32 and torch.isfinite(out.video).all() and torch.isfinite(out.extra).all()
    cos, _ = model.rope.grid(T, 4, 4)
    assert cos.dtype == torch.float32


def test_gradient_checkpointing_same_output_and_gradients():
    model = tiny(chunk_frames=1).train()
    x, t, text = inputs()
    ref = model(x, t, text).video
    ref.square().mean().backward()
    grad = model.blocks[0].self_attn.q.weight.grad.clone()
    model.zero_grad()
    model.gradient_checkpointing = True
    out = model(x, t, text).video
    out.square().mean().backward()
    assert torch.allclose(out, ref, atol=1e-6)
    assert torch.allclose(model.blocks[0].self_attn.q.weight.grad, grad, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# RoPE and attention
# ---------------------------------------------------------------------------------------------


def test_rope_split_grid_and_float_positions_agree():
    assert rope_axis_dims(128) == (44, 42, 42)  # Wan 1.3B heads
    rope = Rope3D(32)
    cos, sin = rope.grid(3, 4, 5, frame_offset=2)
    t, y, x = torch.meshgrid(torch.arange(2, 5), torch.arange(4), torch.arange(5), indexing="ij")
    pos = torch.stack([t, y, x], -1).reshape(-1, 3).float()
    cos_f, sin_f = rope(pos)
    assert torch.equal(cos, cos_f) and torch.equal(sin, sin_f)  # a token at an integral float = grid token
    cos0, sin0 = rope(torch.zeros(1, 3))
    assert torch.all(cos0 == 1) and torch.all(sin0 == 0)  # (0, 0, 0) = no rotation
    big = Rope3D(32, max_pos=4).grid(2, 2, 2, frame_offset=10)  # beyond the table: computed directly
    assert torch.allclose(big[0], rope.grid(2, 2, 2, frame_offset=10)[0])


def test_block_causal_mask_values():
    frames = video_token_frames(4, 1)  # one token per frame
    m = block_causal_mask(frames, frames, chunk_frames=2)
    assert m.tolist() == [[1, 1, 0, 0], [1, 1, 0, 0], [1, 1, 1, 1], [1, 1, 1, 1]]
    k = torch.arange(6)
    w = block_causal_mask(torch.tensor([4, 5]), k, chunk_frames=1, window_frames=2)
    assert w.tolist() == [[0, 0, 1, 1, 1, 0], [0, 0, 0, 1, 1, 1]]
    sink = block_causal_mask(torch.tensor([4, 5]), k, chunk_frames=1, window_frames=2, sink_frames=1)
    assert sink.tolist() == [[1, 0, 1, 1, 1, 0], [1, 0, 0, 1, 1, 1]]


def test_attention_fully_masked_query_gives_zero():
    q, k, v = (torch.randn(1, 3, 2, 8) for _ in range(3))
    mask = torch.tensor([[True, False, False], [False, False, False], [True, True, True]])
    out = attention(q, k, v, mask)
    assert torch.isfinite(out).all() and out[0, 1].abs().max() == 0
    assert torch.allclose(out[0, 0], v[0, 0])


# ---------------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_official_checkpoint_loads_and_reproduces_forward(tmp_path, suffix):
    src = tiny()
    path = tmp_path / f"diffusion_pytorch_model{suffix}"
    save_wan_checkpoint(src, path)
    expected = WAN_TOP_KEYS | {f"blocks.{i}.{k}" for i in range(2) for k in WAN_BLOCK_KEYS}
    if suffix == ".pth":  # also exercise prefix stripping of trainer checkpoints
        state = torch.load(path, weights_only=True)
        assert set(state) == expected
        torch.save({"state_dict": {f"model.diffusion_model.{k}": v for k, v in state.items()}}, path)
    else:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            assert set(f.keys()) == expected
    dst = make_dit("tiny", zero_init=True).eval()
    report = load_wan_checkpoint(dst, path, strict=True)
    assert report.key_format == "official" and report.ok and not report.new
    assert set(report.loaded) == set(wan_parameter_shapes(dst.config))
    x, t, text = inputs()
    assert torch.equal(dst(x, t, text).video, src(x, t, text).video)


def test_diffusers_checkpoint_loads_and_matches_diffusers_forward(tmp_path):
    from diffusers import WanTransformer3DModel

    torch.manual_seed(0)
    ref = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=32, in_channels=4,
                                out_channels=4, text_dim=32, freq_dim=32, ffn_dim=128, num_layers=2).eval()
    with torch.no_grad():  # randomise everything (diffusers zero-inits nothing, but be sure)
        for p in ref.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    ref.save_pretrained(tmp_path / "transformer")
    model = make_dit("tiny").eval()
    report = load_wan_checkpoint(model, tmp_path, strict=True)  # pipeline folder -> transformer/
    assert report.key_format == "diffusers" and report.ok
    x, t, text = inputs()
    text = torch.randn(B, model.config.text_len, 32)  # full length: no padding on either side
    with torch.no_grad():
        ours = model(x, t, text).video
        theirs = ref(x, t.repeat_interleave(S, dim=1), text, return_dict=False)[0]  # per-token timesteps
    assert torch.allclose(ours, theirs, atol=1e-4), (ours - theirs).abs().max()


def test_shape_mismatch_is_refused_with_one_line(tmp_path):
    state = tiny().state_dict()
    state["blocks.0.self_attn.q.weight"] = torch.zeros(64, 32)
    with pytest.raises(CheckpointError) as err:
        load_wan_checkpoint(tiny(), state)
    msg = str(err.value)
    assert "\n" not in msg
    assert re.search(r"blocks\.0\.self_attn\.q\.weight: checkpoint shape \(64, 32\) != model shape \(64, 64\)", msg)
    with pytest.raises(CheckpointError, match="not found"):
        load_wan_checkpoint(tiny(), tmp_path / "nope.safetensors")


class ZeroGatedCrossAttention(nn.Module):
    """A stand-in for the next stage's action cross-attention (zero-init output, so a no-op at start)."""

    def __init__(self, index, cfg, init=0.0):
        super().__init__()
        self.index = index
        self.proj = nn.Linear(cfg.dim, cfg.dim)
        nn.init.constant_(self.proj.weight, init)
        nn.init.zeros_(self.proj.bias)
        self.calls = []

    def forward(self, x, ctx: BlockContext):
        self.calls.append(ctx)
        return self.proj(x) * ctx.payload["scale"]


def test_load_report_names_new_missing_unexpected():
    model = tiny()
    model.install_extra_cross_attn(ZeroGatedCrossAttention)
    before = model.blocks[1].extra_cross_attn.proj.bias.clone()
    state = {k: v for k, v in tiny().state_dict().items() if k != "head.modulation"}
    state["some.other.weight"] = torch.zeros(3)
    report = load_wan_checkpoint(model, state)
    assert report.missing == ["head.modulation"]
    assert report.unexpected == ["some.other.weight"]
    assert report.new == sorted(f"blocks.{i}.extra_cross_attn.proj.{p}" for i in range(2) for p in ("bias", "weight"))
    assert "new (4)" in report.summary() and "missing (1)" in report.summary()
    assert torch.equal(model.blocks[1].extra_cross_attn.proj.bias, before)  # new modules keep their init
    with pytest.raises(CheckpointError, match="1 missing key"):
        load_wan_checkpoint(model, state, strict=True)


# ---------------------------------------------------------------------------------------------
# Causality and KV cache
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("chunk", [1, 2])
def test_block_causal_mask_blocks_the_future(chunk):
    model = tiny(chunk_frames=chunk)
    x, t, text = inputs()
    changed = x.clone()
    changed[:, :, 3] += 1.0  # perturb the last frame (chunk 3 or 1)
    a, b = model(x, t, text).video, model(changed, t, text).video
    first_affected = 3 - 3 % chunk
    assert torch.allclose(a[:, :, :first_affected], b[:, :, :first_affected], atol=1e-6)
    assert (a[:, :, first_affected:] - b[:, :, first_affected:]).abs().amax() > 1e-3
    bidirectional = tiny()
    diff = bidirectional(x, t, text).video[:, :, 0] - bidirectional(changed, t, text).video[:, :, 0]
    assert diff.abs().max() > 1e-3  # without chunk_frames the past sees the future


@pytest.mark.parametrize("chunk,frames", [(1, 5), (2, 6)])
@pytest.mark.parametrize("with_extra", [False, True])
def test_kv_cached_rollout_equals_uncached(chunk, frames, with_extra):
    model = tiny(chunk_frames=chunk)
    x, t, text = inputs(frames=frames)
    extra = state_tokens(model, frames) if with_extra else None
    with torch.no_grad():
        full = model(x, t, text, cond=DiTConditioning(extra=extra))
        cache = model.new_kv_cache()
        for c in range(frames // chunk):
            sl = slice(c * chunk, (c + 1) * chunk)
            chunk_extra = _slice_extra(extra, sl) if with_extra else None
            peek = model(x[:, :, sl], t[:, sl], text, cond=DiTConditioning(extra=chunk_extra), kv_cache=cache)  # read-only call
            out = model(x[:, :, sl], t[:, sl], text, cond=DiTConditioning(extra=chunk_extra), kv_cache=cache,
                        update_cache=True)
            assert torch.equal(peek.video, out.video)
            assert torch.allclose(out.video, full.video[:, :, sl], atol=1e-5)
            if with_extra:
                n = 2 * chunk
                assert torch.allclose(out.extra, full.extra[:, c * n:(c + 1) * n], atol=1e-5)
        assert cache.next_frame == frames
        assert cache.num_tokens == frames * (S + (2 if with_extra else 0))
        assert set(cache.tags.tolist()) == ({VIDEO_TAG, 0, 1} if with_extra else {VIDEO_TAG})


def test_prepared_text_gives_the_same_bits():
    """A TextContext (the prompt embedded and every block's text keys/values computed once, as a
    rollout's sampler does) gives exactly what the raw text gives, with a mask or without, in
    every pass that reuses it; the attention masks kept by identity change no value either."""
    model = tiny(chunk_frames=1)
    x, t, text = inputs(frames=2)
    mask = torch.ones(B, text.shape[1], dtype=torch.bool)
    mask[0, 3:] = False
    extra = state_tokens(model, 2)
    with torch.no_grad():
        for text_mask in (None, mask):
            prepared = model.prepare_text(text, text_mask)
            assert len(prepared.kv) == len(model.blocks)
            for _ in range(2):  # reused: the second pass reads the same tensors
                raw = model(x, t, text, text_mask, cond=DiTConditioning(extra=extra))
                out = model(x, t, prepared, cond=DiTConditioning(extra=extra))
                assert torch.equal(out.video, raw.video) and torch.equal(out.extra, raw.extra)
        with pytest.raises(ValueError, match="text_mask must be None"):
            model(x, t, prepared, mask)


@pytest.mark.parametrize("sink", [0, 1])
def test_sliding_window_cache_equals_windowed_mask(sink):
    window, frames = 2, 6
    model = tiny(chunk_frames=1)
    x, t, text = inputs(frames=frames)
    with torch.no_grad():
        f = video_token_frames(frames, S)
        full = model(x, t, text, cond=DiTConditioning(
            attn_mask=block_causal_mask(f, f, 1, window_frames=window, sink_frames=sink))).video
        cache = model.new_kv_cache(window_frames=window, sink_frames=sink)
        for c in range(frames):
            out = model(x[:, :, c:c + 1], t[:, c:c + 1], text, kv_cache=cache, update_cache=True).video
            assert torch.allclose(out, full[:, :, c:c + 1], atol=1e-5)
            kept = set(cache.frames.tolist())
            assert kept == set(range(max(0, c + 1 - window), c + 1)) | set(range(min(sink, c + 1)))
            assert cache.keys[0].shape[1] == cache.num_tokens
        unwindowed = model(x, t, text).video  # the window really changed something late in the rollout
        assert (unwindowed[:, :, -1] - full[:, :, -1]).abs().max() > 1e-4


# ---------------------------------------------------------------------------------------------
# Extension points: extra tokens, masks, extra cross-attention
# ---------------------------------------------------------------------------------------------


def test_extra_tokens_positions_mask_and_isolation():
    model = tiny(chunk_frames=1)
    x, t, text = inputs()
    extra = state_tokens(model, T)
    base = model(x, t, text, cond=DiTConditioning(extra=extra))
    moved = ExtraTokens(extra.tokens, extra.positions + torch.tensor([0.0, 0.5, -0.25]), extra.timesteps,
                        extra.frames, tags=extra.tags)
    assert (model(x, t, text, cond=DiTConditioning(extra=moved)).extra - base.extra).abs().max() > 1e-4  # rotary position matters
    # An arbitrary mask over [video; extra]: video tokens cannot see extra tokens -> video output
    # is exactly the one without extra tokens; extra tokens see only video and their own player.
    layout = model.token_layout((T, H, W), extra)
    is_extra_key = layout.k_tags != VIDEO_TAG
    video_q = (layout.q_tags == VIDEO_TAG)[:, None]
    same_player = layout.q_tags[:, None] == layout.k_tags[None, :]
    visible = torch.where(video_q, ~is_extra_key[None, :], ~is_extra_key[None, :] | same_player)
    mask = and_masks(model.default_attn_mask(layout), visible)
    isolated = model(x, t, text, cond=DiTConditioning(extra=extra, attn_mask=mask))
    assert torch.allclose(isolated.video, model(x, t, text).video, atol=1e-5)
    assert (isolated.extra - base.extra).abs().max() > 1e-4
    # own modulation input: changing one extra token's timestep changes that token's output
    t2 = extra.timesteps.clone()
    t2[:, 0] += 100
    other = model(x, t, text, cond=DiTConditioning(
        extra=ExtraTokens(extra.tokens, extra.positions, t2, extra.frames, tags=extra.tags)))
    assert (other.extra[:, 0] - base.extra[:, 0]).abs().max() > 1e-4


def test_extra_cross_attention_hook_is_called_in_every_block():
    model = tiny()
    x, t, text = inputs()
    plain = model(x, t, text).video
    model.install_extra_cross_attn(ZeroGatedCrossAttention)
    assert torch.allclose(model(x, t, text, cond=DiTConditioning(payload={"scale": 1.0})).video, plain, atol=1e-6)  # zero-init
    assert "blocks.1.extra_cross_attn.proj.weight" in model.state_dict()
    for b in model.blocks:
        nn.init.normal_(b.extra_cross_attn.proj.bias, std=0.1)  # (a constant would vanish in LayerNorm)
    hooked = model(x, t, text, cond=DiTConditioning(payload={"scale": 1.0})).video
    assert (hooked - plain).abs().max() > 1e-4
    for i, b in enumerate(model.blocks):
        ctx = b.extra_cross_attn.calls[-1]
        assert b.extra_cross_attn.index == i and ctx.payload == {"scale": 1.0}
        assert ctx.layout.grid == (T, H // 2, W // 2) and ctx.rope_cos.shape[-2] == T * S


def test_frame_cond_enters_modulation_per_frame():
    model = tiny(chunk_frames=1)
    x, t, text = inputs()
    cond = torch.zeros(B, T, model.config.dim)
    base = model(x, t, text, cond=DiTConditioning(frame_cond=cond)).video
    assert torch.allclose(base, model(x, t, text).video)
    cond[:, 2] = 1.0
    out = model(x, t, text, cond=DiTConditioning(frame_cond=cond)).video
    assert torch.allclose(out[:, :, :2], base[:, :, :2], atol=1e-6)  # causal: earlier frames unaffected
    assert (out[:, :, 2] - base[:, :, 2]).abs().max() > 1e-4
