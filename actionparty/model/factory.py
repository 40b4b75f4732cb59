"""Build the world model, its frame codec and text embedder from a profile."""

from __future__ import annotations

from actionparty.config import Profile
from actionparty.model.text import TextEmbedder, make_text_embedder
from actionparty.model.world import FrameCodec, WorldModel, build_dit, build_frame_codec


def game_descriptions(profile: Profile) -> dict[str, str]:
    """Every catalogue game's description (the tiny encoder's vocabulary covers all of them)."""
    from actionparty.games import load_catalogue

    return {name: spec.description for name, spec in load_catalogue(profile.catalogue).items()}


def build_text_embedder(profile: Profile, device="cpu") -> TextEmbedder:
    cfg = profile.model
    if cfg.text_encoder == "tiny":
        return make_text_embedder("tiny", game_descriptions(profile), max_len=cfg.text_len)
    return make_text_embedder("umt5", game_descriptions(profile), path=cfg.text_path, device=device,
                              max_len=cfg.text_len)


def build_world_model(profile: Profile, device="cpu") -> tuple[WorldModel, FrameCodec, TextEmbedder]:
    """The video world model of ``profile`` (weights freshly initialised)."""
    codec = build_frame_codec(profile.model, device=device)
    text = build_text_embedder(profile, device=device)
    dit = build_dit(profile.model, codec.latent_channels, text.dim, codec.codec.dit_patch_size)
    model = WorldModel(dit, profile.model.prediction, profile.model.residual_prior)
    return model.to(device), codec, text
