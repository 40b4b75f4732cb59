"""Named DiT sizes (DiT-style factory table). Kept free of torch so that validating a profile
(``model.size``) does not import it."""

from typing import Any

# Model sizes, DiT-style. In/out/text widths follow the codec and text encoder of the profile
# that uses each size and can be overridden: make_dit("small", in_dim=16, patch_size=(1, 2, 2)).
DIT_SIZES: dict[str, dict[str, Any]] = {
    # CPU unit tests: milliseconds per forward.
    "tiny": dict(dim=64, ffn_dim=128, num_heads=2, num_layers=2, in_dim=4, out_dim=4, patch_size=(1, 2, 2),
                 text_dim=32, text_len=8, freq_dim=32),
    # CPU profiles with the `pixel` codec (192 values per 8x8 cell) and the `tiny` text encoder.
    "small": dict(dim=128, ffn_dim=512, num_heads=4, num_layers=4, in_dim=192, out_dim=192, patch_size=(1, 1, 1),
                  text_dim=64, text_len=64, freq_dim=128),
    "base": dict(dim=384, ffn_dim=1536, num_heads=6, num_layers=12, in_dim=192, out_dim=192, patch_size=(1, 1, 1),
                 text_dim=64, text_len=64, freq_dim=256),
    # Wan2.1-T2V-1.3B (wan-vae latents, umt5-xxl text).
    "wan-1.3b": dict(dim=1536, ffn_dim=8960, num_heads=12, num_layers=30, in_dim=16, out_dim=16, patch_size=(1, 2, 2),
                     text_dim=4096, text_len=512, freq_dim=256),
    # Wan2.1-T2V-14B, for completeness of the key/shape tables.
    "wan-14b": dict(dim=5120, ffn_dim=13824, num_heads=40, num_layers=40, in_dim=16, out_dim=16,
                    patch_size=(1, 2, 2), text_dim=4096, text_len=512, freq_dim=256),
}
