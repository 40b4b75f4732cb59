"""The model: Wan2.1 DiT (block-causal, KV cache, extension points), 3-D RoPE, attention masks,
checkpoint loading, latent codecs and text encoders. One concept per module:

- ``dit``: config and named sizes, embedders, block, head, :class:`WanDiT`, :class:`KVCache`
- ``rope``: 3-D rotary positions over (t, y, x), arbitrary per-token positions
- ``attention``: the one ``attention()`` function and the mask builders
- ``checkpoint_io``: official / diffusers Wan2.1 weights -> :class:`WanDiT`, with a load report
- ``codecs``: ``pixel`` and ``wan-vae`` latent codecs (one latent frame per game step)
- ``text``: ``tiny`` and ``umt5`` text encoders, per-game embedding cache
"""

from .attention import and_masks, attention, block_causal_mask, key_padding_mask, video_token_frames
from .checkpoint_io import CheckpointError, LoadReport, load_wan_checkpoint, save_wan_checkpoint
from .codecs import PixelCodec, WanVaeCodec, make_codec
from .dit import (
    DIT_SIZES,
    VIDEO_TAG,
    BlockContext,
    DiTConfig,
    DiTOutput,
    ExtraTokens,
    KVCache,
    TokenLayout,
    WanDiT,
    dit_config,
    make_dit,
)
from .rope import Rope3D, apply_rope
from .text import TextEmbedder, TinyTextEncoder, UMT5TextEncoder, make_text_embedder

__all__ = [
    "DIT_SIZES", "VIDEO_TAG", "BlockContext", "CheckpointError", "DiTConfig", "DiTOutput", "ExtraTokens",
    "KVCache", "LoadReport", "PixelCodec", "Rope3D", "TextEmbedder", "TinyTextEncoder", "TokenLayout",
    "UMT5TextEncoder", "WanDiT", "WanVaeCodec", "and_masks", "apply_rope", "attention", "block_causal_mask",
    "dit_config", "key_padding_mask", "load_wan_checkpoint", "make_codec", "make_dit", "make_text_embedder",
    "save_wan_checkpoint", "video_token_frames",
]
