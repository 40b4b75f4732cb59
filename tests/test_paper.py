"""The paper profile: real wan-1.3b shapes on the meta device, tokens per clip, memory inputs,
and clear errors for the weights that must be provided locally."""

from __future__ import annotations

import pytest

from actionparty.config import load_profile
from actionparty.variants import load_variant
from actionparty.errors import UserError
from actionparty.model.factory import build_text_embedder, build_world_model, embed_texts
from actionparty.train.estimate import build_on_meta, estimate

WAN_13B_PARAMETERS = 1_418_996_800


@pytest.fixture(scope="module")
def paper():
    from conftest import REPO

    return load_profile(REPO / "params/paper.yaml")


def test_paper_pretraining_model_has_the_official_shapes(paper):
    model, side = build_on_meta(paper)
    cfg = model.dit.config
    assert (cfg.dim, cfg.num_layers, cfg.num_heads, cfg.ffn_dim, cfg.patch_size) == (1536, 30, 12, 8960, (1, 2, 2))
    assert (cfg.in_dim, cfg.text_dim, cfg.text_len) == (16, 4096, 512)
    assert sum(p.numel() for p in model.parameters()) == WAN_13B_PARAMETERS
    assert side == 64 and all(p.is_meta for p in model.parameters())


def test_paper_estimate_inputs(paper):
    e = estimate(paper)
    assert e.tokens_per_frame == 32 * 32  # 512 px -> 64 latent -> patch 2
    assert e.frames_per_clip == 5 and e.tokens_per_clip == 5 * 1024
    assert e.parameters == WAN_13B_PARAMETERS
    assert e.clips_per_gpu == 64 // 8
    assert e.weights_gb == pytest.approx(WAN_13B_PARAMETERS * 4 / 1e9)
    assert e.adam_gb == pytest.approx(2 * e.weights_gb)
    # checkpointed activations: 30 stored fp32 block inputs + one bf16 block peak, per clip
    stored = 30 * 5120 * 1536 * 4
    peak = 5120 * (5 * 1536 + 8960) * 2
    assert e.activations_gb_per_clip == pytest.approx((stored + peak) / 1e9)
    assert e.memory_gb_per_gpu < 80  # fits one H100 with DDP
    assert e.codec_gb == pytest.approx(126_892_531 * 4 / 1e9)  # the Wan VAE, fp32, on every rank
    # umT5 runs once into model.text_cache: no rank holds it, but Text-Action's (its prompts carry actions)
    assert e.text_encoder_gb == 0
    text_action = estimate(paper, load_variant("text_action"))
    assert text_action.text_encoder_gb == pytest.approx(5_680_910_336 * 4 / 1e9)
    uncached = paper.model_copy(update={"model": paper.model.model_copy(update={"text_cache": None})})
    assert estimate(uncached).memory_gb_per_gpu == pytest.approx(e.memory_gb_per_gpu + text_action.text_encoder_gb)


def test_paper_actionparty_adds_state_tokens_and_mca(paper):
    e = estimate(paper, load_variant("full"))
    assert e.tokens_per_clip == 5 * 1024 + 5 * 8
    assert e.parameters > WAN_13B_PARAMETERS
    base = estimate(paper, load_variant("global_action"))
    assert base.state_tokens_per_clip == 0


def test_missing_weights_are_named(paper):
    with pytest.raises(UserError, match=r"model.init_checkpoint = weights/Wan2.1-T2V-1.3B not found"):
        build_world_model(paper)
    no_vae = paper.model_copy(update={"model": paper.model.model_copy(update={"init_checkpoint": None,
                                                                              "vae_path": None})})
    with pytest.raises(UserError, match=r"model.vae_path must be set"):
        build_world_model(no_vae)


def test_paper_model_builds_from_the_official_release_layout(repo, tmp_path):
    """The paper profile's weight paths (weights/Wan2.1-T2V-1.3B, its Wan2.1_VAE.pth, its
    google/umt5-xxl) as stand-ins in the release layout: the world model, codec and umT5 text build
    through the factory, the DiT takes every tensor of diffusion_pytorch_model.safetensors, and one
    clip goes frames -> latents -> DiT with the official text treatment."""
    import torch
    from wan_standins import paper_profile, paper_shaped_standins, write_wan_release

    from actionparty.model.checkpoint_io import load_wan_checkpoint

    standins = paper_shaped_standins()
    weights = write_wan_release(tmp_path / "weights" / "Wan2.1-T2V-1.3B", **standins)
    profile = load_profile(paper_profile(repo, tmp_path, weights, resolution=32))  # not 512 px: CPU
    with pytest.raises(UserError, match="text_embeddings.safetensors: text embedding cache not found"):
        build_world_model(profile)
    assert embed_texts(profile, profile.model.text_cache) == ["clean_up", "coins"]  # umT5 runs here, once
    model, codec, text = build_world_model(profile)
    assert text.embedder.encoder is None  # the model holds no umT5
    report = load_wan_checkpoint(model.dit, profile.model.init_checkpoint, strict=True)
    assert report.ok and not report.new and len(report.loaded) == len(standins["dit"].state_dict())
    emb, mask = text(["coins", "clean_up"])
    assert emb.shape == (2, 512, 4096) and bool(mask.all())  # zero padding, every position attended
    encoded, encoded_mask = build_text_embedder(profile, use_cache=False)(["coins", "clean_up"])
    assert torch.equal(emb, encoded) and torch.equal(mask, encoded_mask)
    # Text-Action's prompts carry the actions: it builds umT5 even with the cache
    _, _, with_actions = build_world_model(profile, variant=load_variant("text_action"))
    assert with_actions.embedder.encoder is not None
    frames = torch.randint(0, 256, (2, 2, 3, 96, 96), dtype=torch.uint8)  # (B, S, 3, H, W) game frames
    latents = codec.encode(frames)
    assert latents.shape == (2, 16, 2, 4, 4)  # one latent frame per step
    with torch.no_grad():
        out = model.dit(latents, torch.tensor([0.0, 500.0]), emb, mask).video
    assert out.shape == (2, 16, 2, 4, 4) and torch.isfinite(out).all()
