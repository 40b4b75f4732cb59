"""The world model: frames <-> latents (codec), the Wan DiT, and the flow parameterisation.

:class:`WorldModel` wraps a :class:`~actionparty.model.dit.WanDiT` and turns its raw output into
both an x0 estimate and a velocity, whatever the network predicts:

* ``prediction="x0"``: the network predicts the clean latent; with ``residual_prior`` the
  prediction is *added to the previous clean frame's latent* at the same position, so an
  untrained (zero-output) model reproduces "nothing changes" exactly;
* ``prediction="velocity"``: the network predicts ``noise - x0`` (Wan's own target).

Frame numbering: the clean context frame sits at latent frame ``chunk_frames - 1`` (the last
frame of chunk 0), so that with block-causal chunks of ``chunk_frames`` frames it never shares a
chunk with a noisy frame; only position differences enter RoPE, so the shift changes nothing else.

Conditioning (actions, subject state tokens) is added by subclasses through
:meth:`WorldModel.condition`, which returns the DiT keyword arguments (extra tokens, masks,
frame conditioning) for a call.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from actionparty.model.codecs import frames_from_uint8, frames_to_uint8, make_codec
from actionparty.model.dit import DiTOutput, KVCache, WanDiT, make_dit
from actionparty.model.flow import TIMESTEP_SCALE


@dataclass
class Prediction:
    x0: torch.Tensor  # (B, C, T, h, w) clean-latent estimate
    velocity: torch.Tensor  # (B, C, T, h, w) velocity estimate (noise - x0)
    raw: DiTOutput  # the DiT's outputs (video, extra tokens)
    aux_x0: torch.Tensor | None = None  # (B, T, S, D) jointly denoised subject states, if any
    aux_velocity: torch.Tensor | None = None


def to_x0_and_velocity(out: torch.Tensor, x: torch.Tensor, sigma: torch.Tensor, anchor: torch.Tensor | None,
                       prediction: str, residual_prior: bool, min_sigma: float):
    """Network output -> (x0, velocity); ``sigma`` broadcasts against ``x``."""
    s = sigma.clamp_min(min_sigma)
    if prediction == "x0":
        x0 = out + anchor if residual_prior else out
        return x0, (x - x0) / s
    return x - sigma * out, out


class WorldModel(nn.Module):
    # Size of the per-player state denoised jointly with the video (0: none; see model.subjects).
    aux_dim = 0
    # The state has its own noise level and is finished before the video (model.subjects).
    state_first = False

    def __init__(self, dit: WanDiT, prediction: str = "x0", residual_prior: bool = True, min_sigma: float = 1e-3):
        super().__init__()
        if residual_prior and prediction != "x0":
            raise ValueError("residual_prior needs prediction='x0'")
        self.dit = dit
        self.prediction = prediction
        self.residual_prior = residual_prior
        self.min_sigma = min_sigma

    @property
    def chunk_frames(self) -> int:
        return self.dit.config.chunk_frames or 1

    @property
    def context_frame(self) -> int:
        """Latent frame index of the clean context frame."""
        return self.chunk_frames - 1

    def condition(self, inputs: dict[str, Any], frame_offset: int, num_frames: int, sigma: torch.Tensor,
                  kv_cache: KVCache | None, window_frames: int | None) -> dict[str, Any]:
        """Extra DiT keyword arguments for frames ``[frame_offset, frame_offset + num_frames)``;
        the plain video model has none but the windowed mask of an uncached call.
        ``inputs["latent_shape"]`` is the call's latent (T, h, w)."""
        if kv_cache is None and window_frames is not None:
            layout = self.dit.token_layout(inputs["latent_shape"], None, None, frame_offset)
            return {"attn_mask": self.dit.default_attn_mask(layout, window_frames)}
        return {}

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, anchor: torch.Tensor | None, text: torch.Tensor,
                text_mask: torch.Tensor | None, *, frame_offset: int, inputs: dict[str, Any] | None = None,
                kv_cache: KVCache | None = None, update_cache: bool = False,
                window_frames: int | None = None, aux: torch.Tensor | None = None,
                aux_anchor: torch.Tensor | None = None, aux_sigma: torch.Tensor | None = None) -> Prediction:
        """Denoise latents.

        Args:
            x: (B, C, T, h, w) latents at noise levels ``sigma`` (B, T) in [0, 1] (0 = clean).
            anchor: (B, C, T, h, w) clean latent each frame's residual prior starts from (the last
                clean frame before its chunk); ignored without ``residual_prior``.
            text, text_mask: (B, L, D) / (B, L) text embeddings of each clip's game.
            frame_offset: latent frame index of ``x``'s first frame (RoPE, masks, cache).
            inputs: conditioning inputs for :meth:`condition` (actions, states, ...).
            window_frames: without a cache, limit attention to this many earlier frames (the
                uncached equivalent of a sliding-window KV cache).
            aux, aux_anchor: (B, T, S, aux_dim) noisy subject states at the frames' noise levels
                and the clean states their residual prior starts from (models with aux_dim > 0).
            aux_sigma: (B, T) noise levels of ``aux`` when they differ from the video's (state-first
                models); default ``sigma``.
        """
        aux_sigma = sigma if aux_sigma is None else aux_sigma
        inputs = {**(inputs or {}), "latent_shape": tuple(x.shape[2:]), "aux": aux, "aux_anchor": aux_anchor,
                  "aux_sigma": aux_sigma, "video_anchor": anchor}
        extra_kwargs = self.condition(inputs, frame_offset, x.shape[2], sigma, kv_cache, window_frames)
        out = self.dit(x, sigma * TIMESTEP_SCALE, text, text_mask, kv_cache=kv_cache, update_cache=update_cache,
                       frame_offset=frame_offset, **extra_kwargs)
        x0, velocity = to_x0_and_velocity(out.video, x, sigma[:, None, :, None, None], anchor, self.prediction,
                                          self.residual_prior, self.min_sigma)
        prediction = Prediction(x0, velocity, out)
        if self.aux_dim:
            prediction.aux_x0, prediction.aux_velocity = self.predict_aux(out, inputs, aux_sigma)
        return prediction

    def predict_aux(self, out: DiTOutput, inputs: dict[str, Any], sigma: torch.Tensor):
        """(aux_x0, aux_velocity) from the DiT output; models with aux_dim > 0 implement it."""
        raise NotImplementedError


# ------------------------------------------------------------------------------------ frames


class FrameCodec:
    """uint8 game frames <-> latents, with the profile's optional nearest upscaling."""

    def __init__(self, codec, resolution: int | None = None):
        self.codec = codec
        self.resolution = resolution

    @property
    def latent_channels(self) -> int:
        return self.codec.latent_channels

    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 (B, S, 3, H, W) -> latents (B, C, S, h, w)."""
        x = frames_from_uint8(frames.permute(0, 1, 3, 4, 2))
        if self.resolution is not None and self.resolution != x.shape[-1]:
            b, c, s = x.shape[:3]
            x = F.interpolate(x.flatten(1, 2), size=(self.resolution, self.resolution), mode="nearest")
            x = x.view(b, c, s, self.resolution, self.resolution)
        return self.codec.encode(x)

    def decode(self, latents: torch.Tensor, canvas_px: int) -> torch.Tensor:
        """latents (B, C, S, h, w) -> uint8 (B, S, 3, canvas_px, canvas_px)."""
        x = self.codec.decode(latents).clamp(-1, 1)
        if x.shape[-1] != canvas_px:
            b, c, s = x.shape[:3]
            x = F.interpolate(x.flatten(1, 2), size=(canvas_px, canvas_px), mode="area").view(b, c, s, canvas_px, canvas_px)
        return frames_to_uint8(x).permute(0, 1, 4, 2, 3)


def build_frame_codec(model_cfg, device="cpu") -> FrameCodec:
    codec = make_codec(model_cfg.codec, path=model_cfg.vae_path, device=device)
    return FrameCodec(codec, model_cfg.resolution)


def build_dit(model_cfg, latent_channels: int, text_dim: int, patch_size) -> WanDiT:
    dit = make_dit(model_cfg.size, in_dim=latent_channels, out_dim=latent_channels, text_dim=text_dim,
                   text_len=model_cfg.text_len, patch_size=tuple(patch_size), chunk_frames=model_cfg.chunk_frames)
    dit.gradient_checkpointing = model_cfg.gradient_checkpointing
    return dit
