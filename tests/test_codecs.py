"""Latent codecs: exact pixel round trip; the Wan VAE codec's step layout and loading paths."""

from __future__ import annotations

import pytest
import torch

from actionparty.errors import UserError
from actionparty.model.codecs import (
    PixelCodec,
    WanVaeCodec,
    frames_from_uint8,
    frames_to_uint8,
    make_codec,
)


def test_pixel_codec_round_trips_exactly():
    g = torch.Generator().manual_seed(0)
    frames = torch.randint(0, 256, (2, 3, 24, 40, 3), dtype=torch.uint8, generator=g)  # (B, S, H, W, 3)
    codec = make_codec("pixel")
    latents = codec.encode(frames_from_uint8(frames))
    assert latents.shape == (2, 192, 3, 3, 5) and codec.latent_channels == 192 and codec.dit_patch_size == (1, 1, 1)
    assert torch.equal(frames_to_uint8(codec.decode(latents)), frames)
    # one latent position holds exactly the 8x8x3 pixels of its cell
    cell = frames_from_uint8(frames)[0, :, 1, 8:16, 16:24]  # (3, 8, 8) of cell (row 1, col 2)
    assert torch.equal(latents[0, :, 1, 1, 2], cell.reshape(-1))
    with pytest.raises(UserError, match="not a multiple"):
        PixelCodec().encode(torch.zeros(1, 3, 1, 20, 16))


def tiny_vae():
    from diffusers import AutoencoderKLWan

    torch.manual_seed(0)
    return AutoencoderKLWan(base_dim=8, z_dim=4, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                            temperal_downsample=[False, True, True],
                            latents_mean=[0.1, -0.2, 0.3, 0.0], latents_std=[1.0, 2.0, 0.5, 1.5])


def test_wan_vae_codec_round_trips_shapes(tmp_path):
    tiny_vae().save_pretrained(tmp_path / "vae")
    codec = make_codec("wan-vae", tmp_path / "vae")
    assert codec.latent_channels == 4 and codec.spatial_factor == 8
    frames = torch.rand(2, 3, 3, 32, 24) * 2 - 1  # 3 steps: context + 2
    video = codec.steps_to_video(frames)
    assert video.shape[2] == 1 + 4 * 2 and torch.equal(codec.video_to_steps(video), frames)
    latents = codec.encode(frames)
    assert latents.shape == (2, 4, 3, 4, 3)  # one latent frame per game step
    decoded = codec.decode(latents)
    assert decoded.shape == frames.shape and decoded.abs().max() <= 1
    # normalisation uses the config's latents_mean / latents_std
    raw = codec.vae.encode(video).latent_dist.mode()
    assert torch.allclose(latents[:, 2], (raw[:, 2] - 0.3) / 0.5, atol=1e-5)


def test_wan_vae_loads_from_pipeline_folder_and_single_file(tmp_path):
    vae = tiny_vae()
    vae.save_pretrained(tmp_path / "pipe" / "vae")  # diffusers pipeline layout
    frames = torch.rand(1, 3, 2, 16, 16) * 2 - 1
    reference = make_codec("wan-vae", tmp_path / "pipe").encode(frames)
    # A single weight file with a config json (diffusers key names; Wan's own key names, as in
    # the release's Wan2.1_VAE.pth, are tested in test_wan_weights.py).
    torch.save(vae.state_dict(), tmp_path / "vae.pth")
    single = WanVaeCodec.from_path(tmp_path / "vae.pth", config=tmp_path / "pipe" / "vae" / "config.json")
    assert torch.equal(single.encode(frames), reference)
    with pytest.raises(UserError, match="does not fit the VAE config"):
        WanVaeCodec.from_path(tmp_path / "vae.pth")  # default (full-size) config: wrong shapes


def test_codec_errors_are_one_line():
    with pytest.raises(UserError, match="unknown latent codec 'jpeg'"):
        make_codec("jpeg")
    with pytest.raises(UserError, match="needs a local path"):
        make_codec("wan-vae")
    with pytest.raises(UserError, match="not found"):
        make_codec("wan-vae", "/nonexistent/vae")
