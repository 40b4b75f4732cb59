"""Build the world model, its frame codec and text conditioning from a profile (and a variant).

``profile`` is a validated :class:`actionparty.config.Profile`; it is read here, never imported
(the parameters' module validates against the model's names, so it stands above the model)."""

from __future__ import annotations

from actionparty.model.conditioning import StateGrid, TextConditioner, build_conditioning
from actionparty.model.conditioning.text_action import PROMPT_VOCABULARY
from actionparty.model.text import TextEmbedder, make_text_embedder
from actionparty.model.world import FrameCodec, WorldModel, build_dit, build_frame_codec
from actionparty.variants import VariantConfig


def game_descriptions(profile) -> dict[str, str]:
    """Every catalogue game's description (the tiny encoder's vocabulary covers all of them)."""
    from actionparty.games import game_descriptions as read_descriptions

    return read_descriptions(profile.catalogue)


def build_text_embedder(profile, device="cpu") -> TextEmbedder:
    cfg = profile.model
    descriptions = game_descriptions(profile)
    if cfg.text_encoder == "tiny":
        embedder = make_text_embedder("tiny", {**descriptions, "__prompt_vocabulary__": PROMPT_VOCABULARY},
                                      max_len=cfg.text_len)
        embedder.descriptions = descriptions
        return embedder
    return make_text_embedder("umt5", descriptions, path=cfg.text_path, device=device, max_len=cfg.text_len)


def check_weight_paths(profile) -> None:
    """Refuse, in one line naming the key, a profile whose local weight files are missing
    (nothing can be downloaded: see docs/TRAINING.md for what to put where)."""
    from pathlib import Path

    from actionparty.errors import UserError

    cfg = profile.model
    needed = [("model.init_checkpoint", cfg.init_checkpoint, False)]
    if cfg.codec == "wan-vae":
        needed.append(("model.vae_path", cfg.vae_path, True))
    if cfg.text_encoder == "umt5":
        needed.append(("model.text_path", cfg.text_path, True))
    for key, path, required in needed:
        if path is None and required:
            raise UserError(f"profile '{profile.profile}': {key} must be set for model.codec={cfg.codec}, "
                            f"model.text_encoder={cfg.text_encoder}")
        if path is not None and not Path(path).exists():
            raise UserError(f"profile '{profile.profile}': {key} = {path} not found "
                            "(weights cannot be downloaded here; see docs/TRAINING.md)")


def build_world_model(profile, device="cpu", variant: VariantConfig | None = None,
                      ) -> tuple[WorldModel, FrameCodec, TextConditioner]:
    """The profile's world model (weights freshly initialised): the video-only model of exp-138,
    or, with ``variant``, an action-conditioned one."""
    check_weight_paths(profile)
    codec = build_frame_codec(profile.model, device=device)
    embedder = build_text_embedder(profile, device=device)
    dit = build_dit(profile.model, codec.latent_channels, embedder.dim, codec.codec.dit_patch_size)
    conditioning, grid = None, None
    if variant is not None:
        grid = StateGrid(profile.canvas_cells, dit.token_grid((1, *latent_side(profile, codec)))[1])
        conditioning = build_conditioning(variant.conditioning, dit, grid)
    model = WorldModel(dit, conditioning, grid, profile.model.prediction, profile.model.residual_prior)
    text = TextConditioner(embedder, with_actions=variant is not None and variant.conditioning.kind == "text")
    return model.to(device), codec, text


def latent_side(profile, codec: FrameCodec) -> tuple[int, int]:
    """Latent (h, w) of a frame of the profile's canvas."""
    px = profile.model.resolution or profile.canvas_px
    side = px // codec.codec.spatial_factor
    return side, side
