"""The model: Wan2.1 DiT (block-causal, KV cache, extension points), 3-D RoPE, attention masks,
checkpoint loading, latent codecs and text encoders. One concept per module:

- ``dit``: config and named sizes, embedders, block, head, :class:`WanDiT`, :class:`KVCache`
- ``rope``: 3-D rotary positions over (t, y, x), arbitrary per-token positions
- ``attention``: the one ``attention()`` function and the mask builders
- ``checkpoint_io``: official / diffusers Wan2.1 weights -> :class:`WanDiT`, with a load report
- ``codecs``: ``pixel`` and ``wan-vae`` latent codecs (one latent frame per game step)
- ``text``: ``tiny`` and ``umt5`` text encoders, per-game embedding cache

The names are imported from their modules on first use (PEP 562), so that importing a light
submodule such as ``sizes`` (profile validation, hence every Snakemake start) does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_MODULES = {
    "attention": ["and_masks", "attention", "block_causal_mask", "key_padding_mask", "video_token_frames"],
    "checkpoint_io": ["CheckpointError", "LoadReport", "load_wan_checkpoint", "save_wan_checkpoint"],
    "codecs": ["PixelCodec", "WanVaeCodec", "make_codec"],
    "dit": ["DIT_SIZES", "VIDEO_TAG", "BlockContext", "DiTConfig", "DiTOutput", "ExtraTokens", "KVCache",
            "TokenLayout", "WanDiT", "dit_config", "make_dit"],
    "rope": ["Rope3D", "apply_rope"],
    "text": ["TextEmbedder", "TinyTextEncoder", "UMT5TextEncoder", "make_text_embedder"],
}
_WHERE = {name: module for module, names in _MODULES.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
