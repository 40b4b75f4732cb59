"""Latent codecs: game frames <-> the latents the DiT denoises, one latent frame per game step.

Frames are float (B, 3, S, H, W) in [-1, 1], S game steps (step 0 = the context frame); latents
are (B, C, S, H/8, W/8). Use :func:`frames_from_uint8` / :func:`frames_to_uint8` for the
dataset's uint8 (B, S, H, W, 3) frames.

* ``pixel``: no VAE. One 8x8 game cell is one latent position with 8*8*3 = 192 channels
  (channel order ``(c, dy, dx)``); the DiT uses patch (1, 1, 1). Exact round trip.
* ``wan-vae``: diffusers ``AutoencoderKLWan`` from a local path (the Wan2.1 VAE, 16 channels,
  8x spatial, 4x temporal, causal in time: 1 + 4k pixel frames -> 1 + k latent frames). To get one
  latent frame per game step, step 0 is given as one pixel frame and every later step's frame is
  repeated ``frames_per_step`` = 4 times; decoding averages each group of 4 decoded frames.
  Latents are normalised with the VAE's ``latents_mean``/``latents_std`` (as Wan's pipelines do).
  Decode whole sequences: the causal decoder's output for a frame depends on earlier frames.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from einops import rearrange

from ..errors import UserError

CODEC_NAMES = ("pixel", "wan-vae")


def frames_from_uint8(frames: torch.Tensor) -> torch.Tensor:
    """uint8 (B, S, H, W, 3) -> float (B, 3, S, H, W) in [-1, 1]."""
    return rearrange(frames, "b s h w c -> b c s h w").float().div(127.5).sub(1.0)


def frames_to_uint8(frames: torch.Tensor) -> torch.Tensor:
    """float (B, 3, S, H, W) in [-1, 1] -> uint8 (B, S, H, W, 3) (rounded, clamped)."""
    pixels = frames.float().add(1.0).mul(127.5).round().clamp(0, 255).to(torch.uint8)
    return rearrange(pixels, "b c s h w -> b s h w c")


class PixelCodec:
    """One latent position per ``cell`` x ``cell`` pixel block: 3 * cell**2 channels, exact."""

    name = "pixel"
    dit_patch_size = (1, 1, 1)

    def __init__(self, cell: int = 8):
        self.cell = cell
        self.latent_channels = 3 * cell * cell
        self.spatial_factor = cell

    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, H, W) -> (B, 3*cell*cell, S, H/cell, W/cell)."""
        h, w = frames.shape[-2:]
        if h % self.cell or w % self.cell:
            raise UserError(f"pixel codec: frame size {h}x{w} is not a multiple of the {self.cell}-pixel cell")
        return rearrange(frames, "b c s (h p) (w q) -> b (c p q) s h w", p=self.cell, q=self.cell)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, 3*cell*cell, S, h, w) -> (B, 3, S, h*cell, w*cell)."""
        return rearrange(latents, "b (c p q) s h w -> b c s (h p) (w q)", p=self.cell, q=self.cell)


class WanVaeCodec:
    """The Wan2.1 causal video VAE (diffusers ``AutoencoderKLWan``), one latent frame per game step."""

    name = "wan-vae"
    dit_patch_size = (1, 2, 2)

    def __init__(self, vae, frames_per_step: int = 4):
        temporal = 2 ** sum(bool(d) for d in vae.config.temperal_downsample)
        if frames_per_step != temporal:
            raise UserError(f"wan-vae: frames_per_step {frames_per_step} must equal the VAE's temporal "
                            f"compression {temporal} for one latent frame per step")
        self.vae = vae.eval().requires_grad_(False)
        self.frames_per_step = frames_per_step
        self.latent_channels = vae.config.z_dim
        self.spatial_factor = 2 ** (len(vae.config.dim_mult) - 1)
        self._mean = torch.tensor(vae.config.latents_mean, dtype=torch.float32).view(1, -1, 1, 1, 1)
        self._std = torch.tensor(vae.config.latents_std, dtype=torch.float32).view(1, -1, 1, 1, 1)

    @classmethod
    def from_path(cls, path: str | os.PathLike, device="cpu", dtype=torch.float32, frames_per_step: int = 4,
                  config: str | os.PathLike | None = None) -> "WanVaeCodec":
        """Load from a diffusers folder (``config.json`` + weights, or a pipeline with ``vae/``), or
        from a single weight file (``Wan2.1_VAE.pth``, official or diffusers keys) with the default
        Wan2.1 VAE config or the ``config`` json given."""
        from diffusers import AutoencoderKLWan

        path = Path(path)
        if not path.exists():
            raise UserError(f"wan-vae: {path} not found")
        if path.is_dir():
            subfolder = "vae" if (path / "vae" / "config.json").exists() else None
            if subfolder is None and not (path / "config.json").exists():
                raise UserError(f"wan-vae: {path} has no config.json (nor vae/config.json)")
            vae = AutoencoderKLWan.from_pretrained(str(path), subfolder=subfolder, torch_dtype=dtype)
        else:
            from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers

            if path.suffix == ".safetensors":
                from safetensors.torch import load_file

                state = load_file(str(path))
            else:
                state = torch.load(str(path), map_location="cpu", weights_only=True)
            if not any(k.startswith("encoder.conv_in.") for k in state):  # official key names
                state = convert_wan_vae_to_diffusers(state)
            vae = AutoencoderKLWan.from_config(AutoencoderKLWan.load_config(str(config))) if config \
                else AutoencoderKLWan()
            try:
                vae.load_state_dict(state, strict=True)
            except RuntimeError as err:
                raise UserError(f"wan-vae: {path} does not fit the VAE config: {str(err).splitlines()[0]}") from None
            vae = vae.to(dtype)
        return cls(vae.to(device), frames_per_step)

    # ------------------------------------------------------------------ step <-> pixel-frame layout

    def steps_to_video(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, H, W) steps -> (B, 3, 1 + k*(S-1), H, W) frames: step 0 once, later steps k times."""
        return torch.cat([frames[:, :, :1], frames[:, :, 1:].repeat_interleave(self.frames_per_step, dim=2)], dim=2)

    def video_to_steps(self, video: torch.Tensor) -> torch.Tensor:
        """(B, 3, 1 + k*(S-1), H, W) -> (B, 3, S, H, W): frame 0, then the mean of each group of k."""
        rest = video[:, :, 1:].unflatten(2, (-1, self.frames_per_step)).mean(dim=3)
        return torch.cat([video[:, :, :1], rest], dim=2)

    # ------------------------------------------------------------------ codec

    @torch.no_grad()
    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, H, W) in [-1, 1] -> normalised latents (B, z_dim, S, H/8, W/8) (posterior mode)."""
        h, w = frames.shape[-2:]
        if h % self.spatial_factor or w % self.spatial_factor:
            raise UserError(f"wan-vae: frame size {h}x{w} is not a multiple of {self.spatial_factor}")
        param = next(self.vae.parameters())
        video = self.steps_to_video(frames).to(param.device, param.dtype)
        z = self.vae.encode(video).latent_dist.mode().float()
        return (z - self._mean.to(z.device)) / self._std.to(z.device)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents (B, z_dim, S, h, w) -> frames (B, 3, S, 8h, 8w) in [-1, 1]."""
        param = next(self.vae.parameters())
        z = latents.float() * self._std.to(latents.device) + self._mean.to(latents.device)
        video = self.vae.decode(z.to(param.device, param.dtype)).sample.float()
        return self.video_to_steps(video).clamp(-1.0, 1.0)


def make_codec(name: str, path: str | os.PathLike | None = None, device="cpu", dtype=torch.float32, **kwargs):
    """``pixel`` (kwargs: cell) or ``wan-vae`` (path required; kwargs: frames_per_step, config)."""
    if name == "pixel":
        return PixelCodec(**kwargs)
    if name == "wan-vae":
        if path is None:
            raise UserError("wan-vae codec needs a local path to the Wan2.1 VAE (weights cannot be downloaded here)")
        return WanVaeCodec.from_path(path, device=device, dtype=dtype, **kwargs)
    raise UserError(f"unknown latent codec {name!r}; known: {', '.join(CODEC_NAMES)}")
