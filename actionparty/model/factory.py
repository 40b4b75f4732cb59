"""Build the world model, its frame codec and text conditioning from a profile (and a variant).

``profile`` is a validated :class:`actionparty.config.Profile`; it is read here, never imported
(the parameters' module validates against the model's names, so it stands above the model)."""

from __future__ import annotations

from actionparty.model.conditioning import StateGrid, TextConditioner, build_conditioning
from actionparty.model.conditioning.text_action import PROMPT_VOCABULARY
from actionparty.model.text import TextEmbedder, encoder_name, make_text_embedder
from actionparty.model.world import FrameCodec, WorldModel, build_dit, build_frame_codec
from actionparty.variants import VariantConfig
from actionparty.weights import check_weight_paths


def game_descriptions(profile) -> dict[str, str]:
    """Every catalogue game's description (the tiny encoder's vocabulary covers all of them)."""
    from actionparty.games import game_descriptions as read_descriptions

    return read_descriptions(profile.catalogue)


def text_encoder_name(profile) -> str:
    """The profile's text encoder as a text embedding cache records it."""
    cfg = profile.model
    return encoder_name(cfg.text_encoder, cfg.text_len, cfg.text_path)


def build_text_embedder(profile, device="cpu", with_actions: bool = False, use_cache: bool = True) -> TextEmbedder:
    """The profile's text conditioning. With ``model.text_cache`` set (and ``use_cache``), the games'
    embeddings are read from that file and no encoder is built, except for a model whose prompts
    carry actions (``with_actions``: Text-Action), which encodes every step's prompt."""
    cfg = profile.model
    descriptions = game_descriptions(profile)
    if cfg.text_cache is not None and use_cache and not with_actions:
        from actionparty.games import resolve_games

        return TextEmbedder.from_cache(cfg.text_cache, descriptions, text_encoder_name(profile),
                                       [spec.name for spec in resolve_games(profile)])
    if cfg.text_encoder == "tiny":
        embedder = make_text_embedder("tiny", {**descriptions, "__prompt_vocabulary__": PROMPT_VOCABULARY},
                                      max_len=cfg.text_len)
        embedder.descriptions = descriptions
        return embedder
    return make_text_embedder("umt5", descriptions, path=cfg.text_path, device=device, max_len=cfg.text_len)


def embed_texts(profile, out, device="cpu") -> list[str]:
    """Encode the descriptions of the profile's games once with its text encoder and write them
    to ``out`` (the cache ``model.text_cache`` names); returns the games written."""
    from actionparty.games import resolve_games

    embedder = build_text_embedder(profile, device=device, use_cache=False)
    games = sorted(spec.name for spec in resolve_games(profile))
    embedder(games)  # one batch, sorted: what an embedder that starts empty computes for them all
    embedder.save_cache(out, text_encoder_name(profile))
    return games


def build_world_model(profile, device="cpu", variant: VariantConfig | None = None,
                      ) -> tuple[WorldModel, FrameCodec, TextConditioner]:
    """The profile's world model (weights freshly initialised): the video-only model of exp-138,
    or, with ``variant``, an action-conditioned one."""
    check_weight_paths(profile)
    codec = build_frame_codec(profile.model, device=device)
    with_actions = variant is not None and variant.conditioning.kind == "text"
    embedder = build_text_embedder(profile, device=device, with_actions=with_actions)
    dit = build_dit(profile.model, codec.latent_channels, embedder.dim, codec.codec.dit_patch_size)
    conditioning, grid = None, None
    if variant is not None:
        grid = StateGrid(profile.canvas_cells, dit.token_grid((1, *latent_side(profile, codec)))[1])
        conditioning = build_conditioning(variant.conditioning, dit, grid)
    model = WorldModel(dit, conditioning, grid, profile.model.prediction, profile.model.residual_prior)
    text = TextConditioner(embedder, with_actions=with_actions)
    return model.to(device), codec, text


def latent_side(profile, codec: FrameCodec) -> tuple[int, int]:
    """Latent (h, w) of a frame of the profile's canvas."""
    px = profile.model.resolution or profile.canvas_px
    side = px // codec.codec.spatial_factor
    return side, side
