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

The VAE loads from a diffusers folder (``vae/config.json`` + weights), from the official release's
``Wan2.1_VAE.pth`` (Wan's own key names, ``wan/modules/vae.py``: ``encoder.downsamples.N.residual.K``,
``encoder.middle.N``, ``decoder.upsamples.N``, ``conv1``/``conv2`` ...; converted key by key by
:func:`wan_vae_to_diffusers`, the architecture read from the tensors' shapes by
:func:`wan_vae_config`), or from the release folder holding that file.
"""

from __future__ import annotations

import functools
import os
import re
from pathlib import Path

import torch
from einops import rearrange

from ..errors import UserError

CODEC_NAMES = ("pixel", "wan-vae")
WAN_VAE_FILE = "Wan2.1_VAE.pth"  # name in the official release folder
# Wan2.1's latent statistics (wan/modules/vae.py WanVAE, diffusers' AutoencoderKLWan defaults).
WAN_LATENTS_MEAN = [-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
                    0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921]
WAN_LATENTS_STD = [2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
                   3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160]


# ---------------------------------------------------------------------------------------------
# Wan's own VAE keys -> diffusers AutoencoderKLWan keys
# ---------------------------------------------------------------------------------------------

# Inside a ResidualBlock: Wan's nn.Sequential(RMS_norm, SiLU, CausalConv3d, RMS_norm, SiLU, Dropout,
# CausalConv3d) and its 1x1x1 shortcut -> diffusers' named sub-modules.
_RESIDUAL = [(r"^residual\.0\.gamma$", "norm1.gamma"), (r"^residual\.2\.", "conv1."),
             (r"^residual\.3\.gamma$", "norm2.gamma"), (r"^residual\.6\.", "conv2."),
             (r"^shortcut\.", "conv_shortcut.")]
_RESAMPLE = [(r"^resample\.1\.", "resample.1."), (r"^time_conv\.", "time_conv.")]
_HEAD = [(r"^0\.gamma$", "norm_out.gamma"), (r"^2\.", "conv_out.")]  # RMS_norm, SiLU, CausalConv3d
_ATTENTION = [(r"^norm\.gamma$", "norm.gamma"), (r"^to_qkv\.", "to_qkv."), (r"^proj\.", "proj.")]


def _rename(rest: str, rules, key: str) -> str:
    for pattern, repl in rules:
        if re.match(pattern, rest):
            return re.sub(pattern, repl, rest)
    raise UserError(f"wan-vae: unknown key {key!r} in a Wan VAE state dict")


def wan_vae_config(state: dict[str, torch.Tensor]) -> dict:
    """``AutoencoderKLWan`` arguments of a Wan-format VAE state dict, read from the tensors' shapes.

    Wan2.1_VAE.pth gives base_dim 96, z_dim 16, dim_mult [1, 2, 4, 4], 2 residual blocks per level,
    temporal downsampling [False, True, True] and no attention outside the middle blocks
    (``_video_vae`` in wan/modules/vae.py).
    """
    try:
        base_dim = state["encoder.conv1.weight"].shape[0]
        z_dim = state["conv2.weight"].shape[0]
    except KeyError as err:
        raise UserError(f"wan-vae: not a Wan VAE state dict (no {err.args[0]!r})") from None
    entries: dict[int, set[str]] = {}
    for key in state:
        m = re.match(r"^encoder\.downsamples\.(\d+)\.(\w+)\.", key)
        if m:
            entries.setdefault(int(m.group(1)), set()).add(m.group(2))
    if any("to_qkv" in kinds or "norm" in kinds for kinds in entries.values()):
        raise UserError("wan-vae: attention blocks outside the middle (attn_scales) are not supported")
    levels, current, res_blocks, temporal = [], [], None, []
    for index in sorted(entries):
        if "residual" in entries[index]:
            current.append(state[f"encoder.downsamples.{index}.residual.6.weight"].shape[0])
        else:  # a Resample closes a level
            levels.append(current)
            temporal.append("time_conv" in entries[index])
            current = []
    levels.append(current)
    res_blocks = {len(level) for level in levels}
    if len(res_blocks) != 1 or any(len(set(level)) != 1 for level in levels):
        raise UserError("wan-vae: encoder levels of unequal depth or width; not a Wan2.1 VAE")
    return dict(base_dim=base_dim, z_dim=z_dim, dim_mult=[level[0] // base_dim for level in levels],
                num_res_blocks=res_blocks.pop(), attn_scales=[], temperal_downsample=temporal,
                latents_mean=WAN_LATENTS_MEAN if z_dim == 16 else [0.0] * z_dim,
                latents_std=WAN_LATENTS_STD if z_dim == 16 else [1.0] * z_dim)


def is_wan_vae_format(state) -> bool:
    return any(k.startswith("encoder.downsamples.") or k == "encoder.conv1.weight" for k in state)


def wan_vae_to_diffusers(state: dict[str, torch.Tensor], num_res_blocks: int) -> dict[str, torch.Tensor]:
    """Rename every key of a Wan-format VAE state dict to ``AutoencoderKLWan``'s (tensors unchanged).

    The encoder's flat ``downsamples`` keep their indices (diffusers' ``down_blocks`` is flat too);
    the decoder's flat ``upsamples`` (per level: ``num_res_blocks + 1`` residual blocks, then a
    Resample except after the last level) become ``up_blocks.L.resnets.R`` / ``.upsamplers.0``.
    A key matching no rule is an error (nothing is dropped silently).
    """
    per_level = num_res_blocks + 2
    out = {}
    for key, value in state.items():
        part, _, rest = key.partition(".")
        m = re.match(r"^(encoder|decoder)\.(conv1|head|middle|downsamples|upsamples)\.(.*)$", key)
        if key.startswith(("conv1.", "conv2.")):
            new = ("quant_conv." if part == "conv1" else "post_quant_conv.") + rest
        elif m is None:
            raise UserError(f"wan-vae: unknown key {key!r} in a Wan VAE state dict")
        else:
            side, module, rest = m.groups()
            if module == "conv1":
                new = f"{side}.conv_in.{rest}"
            elif module == "head":
                new = f"{side}.{_rename(rest, _HEAD, key)}"
            elif module == "middle":
                index, _, inner = rest.partition(".")
                if index == "1":
                    new = f"{side}.mid_block.attentions.0.{_rename(inner, _ATTENTION, key)}"
                elif index in ("0", "2"):
                    new = f"{side}.mid_block.resnets.{int(index) // 2}.{_rename(inner, _RESIDUAL, key)}"
                else:
                    raise UserError(f"wan-vae: unknown key {key!r} in a Wan VAE state dict")
            elif module == "downsamples":
                index, _, inner = rest.partition(".")
                new = f"{side}.down_blocks.{index}.{_rename(inner, _RESIDUAL + _RESAMPLE, key)}"
            else:
                index, _, inner = rest.partition(".")
                level, within = divmod(int(index), per_level)
                if within <= num_res_blocks:
                    new = f"{side}.up_blocks.{level}.resnets.{within}.{_rename(inner, _RESIDUAL, key)}"
                else:
                    new = f"{side}.up_blocks.{level}.upsamplers.0.{_rename(inner, _RESAMPLE, key)}"
        out[new] = value
    return out


def _load_vae_file(path: Path, config: str | os.PathLike | None, dtype):
    """An ``AutoencoderKLWan`` from one weight file: Wan's own keys (architecture from the shapes,
    or ``config``) or diffusers keys (``config``, else the default Wan2.1 config)."""
    from diffusers import AutoencoderKLWan

    from .checkpoint_io import read_torch_file

    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = read_torch_file(path)
    if config is not None:
        kwargs = dict(AutoencoderKLWan.load_config(str(config)))
    elif is_wan_vae_format(state):
        kwargs = wan_vae_config(state)
    else:
        kwargs = {}
    vae = AutoencoderKLWan.from_config(kwargs)
    if is_wan_vae_format(state):
        state = wan_vae_to_diffusers(state, vae.config.num_res_blocks)
    expected = vae.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        what = f"missing {missing[0]!r}" if missing else f"unexpected {unexpected[0]!r}"
        raise UserError(f"wan-vae: {path} does not fit the VAE config: {len(missing)} missing, "
                        f"{len(unexpected)} unexpected keys ({what})")
    for key, value in state.items():
        if tuple(value.shape) != tuple(expected[key].shape):
            raise UserError(f"wan-vae: {path} does not fit the VAE config: {key} has shape "
                            f"{tuple(value.shape)}, the model {tuple(expected[key].shape)}")
    vae.load_state_dict(state, strict=True)
    return vae if dtype == torch.float32 else vae.to(dtype)


@functools.lru_cache(maxsize=1)
def wan_vae_parameters() -> int:
    """Parameters of the Wan2.1 VAE (diffusers ``AutoencoderKLWan``'s default configuration, which
    is Wan2.1's), counted on the meta device."""
    from diffusers import AutoencoderKLWan

    with torch.device("meta"):
        vae = AutoencoderKLWan()
    return sum(p.numel() for p in vae.parameters())


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
        """Load from a diffusers folder (``config.json`` + weights, or a pipeline with ``vae/``), from
        a single weight file (the release's ``Wan2.1_VAE.pth`` with Wan's keys, or diffusers keys),
        or from the release folder holding ``Wan2.1_VAE.pth``. ``config``: a diffusers VAE
        ``config.json`` for a single file (default: read from a Wan file's shapes; Wan2.1's own
        config for diffusers keys)."""
        from diffusers import AutoencoderKLWan

        path = Path(path)
        if not path.exists():
            raise UserError(f"wan-vae: {path} not found")
        if path.is_dir() and (path / WAN_VAE_FILE).is_file():
            path = path / WAN_VAE_FILE  # the release folder (its config.json is the DiT's)
        elif path.is_dir() and not (path / "config.json").exists() and not (path / "vae" / "config.json").exists():
            raise UserError(f"wan-vae: {path} has no config.json (nor vae/config.json, nor {WAN_VAE_FILE})")
        if path.is_dir():
            subfolder = "vae" if (path / "vae" / "config.json").exists() else None
            vae = AutoencoderKLWan.from_pretrained(str(path), subfolder=subfolder, torch_dtype=dtype)
        else:
            vae = _load_vae_file(path, config, dtype)
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
