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

Conditioning on the players' actions (subject state tokens, the global-action baseline) is a
module of :mod:`actionparty.model.conditioning`, which turns a call's :class:`SubjectInputs` into
the DiT's one extension point, a :class:`~actionparty.model.dit.DiTConditioning`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from actionparty.model.codecs import frames_from_uint8, frames_to_uint8, make_codec
from actionparty.model.conditioning.inputs import NO_ACTION, CallLayout, SubjectInputs
from actionparty.model.conditioning.state import StateGrid
from actionparty.model.dit import DiTConditioning, DiTOutput, KVCache, WanDiT, make_dit
from actionparty.model.flow import TIMESTEP_SCALE, x0_and_velocity


@dataclass
class Prediction:
    x0: torch.Tensor  # (B, C, T, h, w) clean-latent estimate
    velocity: torch.Tensor  # (B, C, T, h, w) velocity estimate (noise - x0)
    raw: DiTOutput  # the DiT's outputs (video, extra tokens)
    state_x0: torch.Tensor | None = None  # (B, T, S, 6) clean subject-state estimate (state models)
    state_velocity: torch.Tensor | None = None


class WorldModel(nn.Module):
    """A :class:`WanDiT`, optionally conditioned on the players' actions, and the flow
    parameterisation of its output.

    ``conditioning`` is the variant's module (:mod:`actionparty.model.conditioning`: subject
    state tokens or the global-action baseline), or None for the video model of exp-138 and
    the Text-Action baseline (whose actions reach the model through the prompt). ``grid``
    converts the players' cells to state vectors (action-conditioned models)."""

    def __init__(self, dit: WanDiT, conditioning: nn.Module | None = None, grid: StateGrid | None = None,
                 prediction: str = "x0", residual_prior: bool = True, min_sigma: float = 1e-3):
        super().__init__()
        if residual_prior and prediction != "x0":
            raise ValueError("residual_prior needs prediction='x0'")
        self.dit = dit
        self.conditioning = conditioning
        self.grid = grid
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

    @property
    def takes_actions(self) -> bool:
        """Calls carry :class:`SubjectInputs` (the players' actions, and states where it has them)."""
        return self.conditioning is not None

    @property
    def has_state(self) -> bool:
        """Denoises every player's state with the video (subject state tokens with ``state``)."""
        return self.conditioning is not None and self.conditioning.has_state

    @property
    def state_first(self) -> bool:
        """The state has its own noise level and is finished before the video."""
        return self.has_state and self.conditioning.state_first

    def clip_inputs(self, batch: dict[str, torch.Tensor], device) -> SubjectInputs | None:
        """A ClipDataset batch's conditioning: the actions leading into each of its 1+K frames
        (NO_ACTION for the context), the occupied slots and the clean states (B, 1+K, S, 6)."""
        if not self.takes_actions:
            return None
        actions = batch["actions"].to(device)
        context = torch.full_like(actions[:, :1], NO_ACTION)
        return SubjectInputs(actions=torch.cat([context, actions], dim=1), present=batch["present"].to(device),
                             state=self.grid.encode(batch["position"].to(device), batch["facing"].to(device)))

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, anchor: torch.Tensor | None, text: torch.Tensor,
                text_mask: torch.Tensor | None, *, frame_offset: int, subjects: SubjectInputs | None = None,
                kv_cache: KVCache | None = None, update_cache: bool = False,
                window_frames: int | None = None) -> Prediction:
        """Denoise latents.

        Args:
            x: (B, C, T, h, w) latents at noise levels ``sigma`` (B, T) in [0, 1] (0 = clean).
            anchor: (B, C, T, h, w) clean latent each frame's residual prior starts from (the last
                clean frame before its chunk); also what the glimpse and the render read.
            text, text_mask: (B, L, D) / (B, L) text embeddings of each clip's game.
            frame_offset: latent frame index of ``x``'s first frame (RoPE, masks, cache).
            subjects: the players' actions, presence and states for the T frames (models that
                take actions); ``subjects.state_sigma`` defaults to ``sigma``.
            window_frames: without a cache, limit attention to this many earlier frames (the
                uncached equivalent of a sliding-window KV cache).
        """
        call = CallLayout(tuple(x.shape[2:]), frame_offset, kv_cache, window_frames, anchor, sigma)
        cond = self.conditioning(self.dit, subjects, call) if self.conditioning is not None else DiTConditioning()
        if cond.attn_mask is None and kv_cache is None and window_frames is not None:
            layout = self.dit.token_layout(call.latent_shape, cond.extra, None, frame_offset)
            cond.attn_mask = self.dit.default_attn_mask(layout, window_frames)
        out = self.dit(x, sigma * TIMESTEP_SCALE, text, text_mask, cond=cond, kv_cache=kv_cache,
                       update_cache=update_cache, frame_offset=frame_offset)
        x0, velocity = x0_and_velocity(out.video, x, sigma[:, None, :, None, None], anchor, self.prediction,
                                       self.residual_prior, self.min_sigma)
        prediction = Prediction(x0, velocity, out)
        if self.has_state:
            state_sigma = sigma if subjects.state_sigma is None else subjects.state_sigma
            prediction.state_x0, prediction.state_velocity = x0_and_velocity(
                self.conditioning.state_output(out, subjects), subjects.state, state_sigma[:, :, None, None],
                subjects.prev_state, self.prediction, self.residual_prior, self.min_sigma)
        return prediction


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
