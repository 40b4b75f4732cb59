"""Both Wan2.1-T2V-1.3B weight layouts load: the official release folder (DiT safetensors + config,
Wan2.1_VAE.pth and the umT5 .pth in Wan's own key formats, tokenizer folder) and the diffusers
pipeline. Stand-in files have the real names, keys, dtypes and nesting at tiny sizes; every tensor
of a file is used, none is missing, and the converted models compute what the source would."""

from __future__ import annotations

import json

import pytest
import torch
from wan_standins import (
    WORDS,
    diffusers_vae_to_wan,
    tiny_dit,
    tiny_diffusers_vae,
    umt5_to_wan_t5,
    umt5_xxl_key_shapes,
    wan_t5_reference,
    wan_t5_state,
    write_diffusers_pipeline,
    write_wan_release,
)

from actionparty.errors import UserError
from actionparty.model.checkpoint_io import (
    CheckpointError,
    checkpoint_dit_config,
    detect_layout,
    load_wan_checkpoint,
    official_key_shapes,
    tensor_shapes,
)
from actionparty.model.codecs import WanVaeCodec, make_codec, wan_vae_config, wan_vae_to_diffusers
from actionparty.model.dit import WanDiT
from actionparty.model.text import find_umt5, load_wan_t5, make_text_embedder, wan_t5_to_umt5

DESCRIPTIONS = {"clean_up": "Clean the river, so that apples grow in the orchard.",
                "territory__rooms": "Claim rooms by painting walls."}


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    return write_wan_release(tmp_path_factory.mktemp("weights") / "Wan2.1-T2V-1.3B")


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    return write_diffusers_pipeline(tmp_path_factory.mktemp("weights") / "Wan2.1-T2V-1.3B-Diffusers")


# ---------------------------------------------------------------------------------------------- DiT


def test_release_folder_layout_and_dit(release):
    layout = detect_layout(release)
    assert layout.kind == "release" and [p.name for p in layout.dit] == ["diffusion_pytorch_model.safetensors"]
    assert layout.vae.name == "Wan2.1_VAE.pth" and layout.text_encoder.name == "models_t5_umt5-xxl-enc-bf16.pth"
    assert layout.tokenizer == release / "google" / "umt5-xxl"
    # the config.json of the release builds the model the file fits, and every tensor loads
    config = checkpoint_dit_config(release)
    model = WanDiT(config)
    report = load_wan_checkpoint(model, release, strict=True)
    source = tiny_dit()
    assert report.key_format == "official" and len(report.loaded) == len(source.state_dict())
    assert not report.new and not report.missing and not report.unexpected
    x, t, text = torch.randn(1, 4, 2, 4, 4), torch.tensor([500.0]), torch.randn(1, 5, 16)
    with torch.no_grad():
        assert torch.equal(model(x, t, text).video, source(x, t, text).video)


def test_sharded_release_dit_loads(tmp_path):
    """A release whose DiT is sharded (as the 14B model's): the index names the shards."""
    from safetensors.torch import save_file

    source = tiny_dit()
    state = {k: v.detach().contiguous() for k, v in source.state_dict().items()}
    keys = sorted(state)
    shards = {"diffusion_pytorch_model-00001-of-00002.safetensors": keys[: len(keys) // 2],
              "diffusion_pytorch_model-00002-of-00002.safetensors": keys[len(keys) // 2:]}
    for name, names in shards.items():
        save_file({k: state[k] for k in names}, str(tmp_path / name))
    (tmp_path / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {k: name for name, names in shards.items() for k in names}}))
    assert [p.name for p in detect_layout(tmp_path).dit] == sorted(shards)
    model = tiny_dit(seed=1)
    assert load_wan_checkpoint(model, tmp_path, strict=True).ok
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())


def test_diffusers_pipeline_layout_and_dit(pipeline, release):
    layout = detect_layout(pipeline)
    assert layout.kind == "diffusers" and layout.vae.name == "vae" and layout.text_encoder.name == "text_encoder"
    model = WanDiT(checkpoint_dit_config(pipeline, text_len=12))  # diffusers configs have no text_len
    assert model.config == checkpoint_dit_config(release)
    report = load_wan_checkpoint(model, pipeline, strict=True)
    assert report.key_format == "diffusers" and report.ok and not report.new
    for key, value in tiny_dit().state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key


def test_shapes_come_from_headers_without_loading(release):
    shapes = tensor_shapes(release / "diffusion_pytorch_model.safetensors")
    assert shapes == {k: (tuple(v.shape), "float32") for k, v in tiny_dit().state_dict().items()}
    t5 = tensor_shapes(release / "models_t5_umt5-xxl-enc-bf16.pth")
    assert t5 == {k: (tuple(v.shape), "bfloat16") for k, v in wan_t5_state().items()}
    vae = tensor_shapes(release / "Wan2.1_VAE.pth")
    assert len(vae) == len(tiny_diffusers_vae().state_dict()) and {d for _, d in vae.values()} == {"float32"}
    key_format, official = official_key_shapes(release)
    assert key_format == "official" and official == {k: s for k, (s, _) in shapes.items()}


def test_dit_errors_name_the_file(tmp_path, release):
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        detect_layout(tmp_path / "nope")
    (tmp_path / "bad.safetensors").write_bytes(b"\x05\x00")
    with pytest.raises(CheckpointError, match="bad.safetensors: not a safetensors file"):
        tensor_shapes(tmp_path / "bad.safetensors")
    (tmp_path / "two").mkdir()
    for name in ("a.pth", "b.pth"):
        torch.save({"w": torch.zeros(1)}, tmp_path / "two" / name)
    with pytest.raises(CheckpointError, match="several weight files and no index"):
        load_wan_checkpoint(tiny_dit(), tmp_path / "two")


# ----------------------------------------------------------------------------------------------- T5


def test_wan_t5_file_converts_key_by_key_and_computes_as_wan(release):
    state = wan_t5_state()
    converted = wan_t5_to_umt5(state)
    model = load_wan_t5(release / "models_t5_umt5-xxl-enc-bf16.pth")  # bf16 file -> fp32 encoder
    assert set(model.state_dict()) == set(converted)  # every model tensor filled
    assert len(converted) == len(state) + 1  # every file tensor used (the embedding twice: tied)
    for key, value in converted.items():
        assert model.state_dict()[key].shape == value.shape and torch.equal(model.state_dict()[key], value.float())
    assert model.encoder.embed_tokens.weight.data_ptr() == model.shared.weight.data_ptr()
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, len(WORDS), (2, 40), generator=g)  # 40 tokens: the log-distance buckets too
    mask = torch.ones(2, 40, dtype=torch.long)
    mask[1, 13:] = 0
    with torch.no_grad():
        ours = model(input_ids=ids, attention_mask=mask).last_hidden_state
    reference = wan_t5_reference(state, ids, mask)
    real = mask.bool()
    assert torch.allclose(ours[real], reference[real], atol=1e-5, rtol=1e-5)


def test_transformers_umt5_round_trips_through_the_wan_format(tmp_path):
    """A transformers UMT5 encoder, written in Wan's T5 format and loaded back: identical outputs."""
    from transformers import UMT5Config, UMT5EncoderModel

    torch.manual_seed(0)
    source = UMT5EncoderModel(UMT5Config(vocab_size=len(WORDS), d_model=16, d_kv=4, d_ff=24, num_layers=2,
                                         num_heads=4, relative_attention_num_buckets=8)).eval()
    torch.save(umt5_to_wan_t5(source.state_dict()), tmp_path / "models_t5_umt5-xxl-enc-bf16.pth")
    loaded = load_wan_t5(tmp_path / "models_t5_umt5-xxl-enc-bf16.pth")
    ids = torch.randint(3, len(WORDS), (2, 40), generator=torch.Generator().manual_seed(2))
    mask = torch.ones(2, 40, dtype=torch.long)
    mask[0, 25:] = 0
    with torch.no_grad():
        a = source(input_ids=ids, attention_mask=mask).last_hidden_state
        b = loaded(input_ids=ids, attention_mask=mask).last_hidden_state
    assert torch.equal(a, b)


def test_wan_t5_file_errors_name_the_key(tmp_path):
    state = wan_t5_state()
    torch.save({**state, "blocks.0.attn.extra.weight": torch.zeros(1)}, tmp_path / "extra.pth")
    with pytest.raises(UserError, match="unknown key 'blocks.0.attn.extra.weight'"):
        load_wan_t5(tmp_path / "extra.pth")
    torch.save({k: v for k, v in state.items() if k != "blocks.1.ffn.fc2.weight"}, tmp_path / "missing.pth")
    with pytest.raises(UserError, match="1 encoder weights missing, first 'encoder.block.1.layer.1.DenseReluDense.wo"):
        load_wan_t5(tmp_path / "missing.pth")


def test_umt5_xxl_file_keys_fill_the_transformers_encoder():
    """The real file's 242 tensors map one to one onto UMT5EncoderModel(umt5-xxl), shapes equal
    (all on the meta device: no memory)."""
    from transformers import UMT5Config, UMT5EncoderModel

    from actionparty.model.text import wan_t5_config

    with torch.device("meta"):
        state = {k: torch.empty(s) for k, s in umt5_xxl_key_shapes().items()}
        config = wan_t5_config(state)
        model = UMT5EncoderModel(UMT5Config(**config))
    assert (config["d_model"], config["num_heads"], config["d_kv"], config["d_ff"], config["num_layers"],
            config["relative_attention_num_buckets"], config["vocab_size"]) == (4096, 64, 64, 10240, 24, 32, 256384)
    converted = wan_t5_to_umt5(state)
    expected = model.state_dict()
    assert len(state) == 242 and set(converted) == set(expected)
    assert all(tuple(converted[k].shape) == tuple(v.shape) for k, v in expected.items())


def test_umt5_loads_from_release_and_pipeline_alike(release, pipeline):
    tokenizer_dir = release / "google" / "umt5-xxl"
    assert find_umt5(tokenizer_dir)[:2] == ("release", release / "models_t5_umt5-xxl-enc-bf16.pth")
    assert find_umt5(release)[0] == "release" and find_umt5(pipeline)[0] == "diffusers"
    outs = []
    for path in (tokenizer_dir, release, release / "models_t5_umt5-xxl-enc-bf16.pth", pipeline):
        embedder = make_text_embedder("umt5", DESCRIPTIONS, path=path, max_len=16)
        outs.append(embedder(["clean_up", "territory__rooms"]))
    for emb, mask in outs[1:]:
        assert torch.equal(emb, outs[0][0]) and torch.equal(mask, outs[0][1])
    with pytest.raises(UserError, match="has no config.json, no text_encoder/ and no models_t5_umt5-xxl-enc-bf16.pth"):
        find_umt5(release / "google")


# ---------------------------------------------------------------------------------------------- VAE


def test_wan_vae_file_converts_key_by_key_and_computes_as_the_source(release, one_thread):
    source = tiny_diffusers_vae()
    state = torch.load(release / "Wan2.1_VAE.pth", weights_only=True)
    assert state.keys() == diffusers_vae_to_wan(source.state_dict(), 1).keys()
    config = wan_vae_config(state)
    assert (config["base_dim"], config["z_dim"], config["dim_mult"], config["num_res_blocks"],
            config["temperal_downsample"]) == (8, 4, [1, 2, 2, 2], 1, [False, True, True])
    converted = wan_vae_to_diffusers(state, config["num_res_blocks"])
    assert len(converted) == len(state) and set(converted) == set(source.state_dict())
    for path in (release, release / "Wan2.1_VAE.pth"):  # the release folder, or the file itself
        codec = make_codec("wan-vae", path)
        for key, value in codec.vae.state_dict().items():
            assert torch.equal(value, source.state_dict()[key]), key
    video = codec.steps_to_video(torch.rand(1, 3, 2, 16, 16) * 2 - 1)  # 2 steps: 1 + 4 frames
    with torch.no_grad():
        assert torch.equal(codec.vae.encode(video).latent_dist.mode(), source.encode(video).latent_dist.mode())
        z = torch.randn(1, 4, 2, 2, 2)
        assert torch.equal(codec.vae.decode(z).sample, source.decode(z).sample)


def test_wan_vae_release_keys_fill_the_diffusers_vae(repo):
    """The real Wan2.1_VAE.pth's 194 names and shapes (wan/modules/vae.py, ``_video_vae(z_dim=16)``)
    map one to one onto the default AutoencoderKLWan, and its architecture is read back from them."""
    from diffusers import AutoencoderKLWan

    shapes = json.loads((repo / "tests/data/wan2.1_vae_keys.json").read_text())
    with torch.device("meta"):
        state = {k: torch.empty(s) for k, s in shapes.items()}
        model = AutoencoderKLWan()
    config = wan_vae_config(state)
    assert {k: config[k] for k in ("base_dim", "z_dim", "dim_mult", "num_res_blocks", "temperal_downsample")} == \
        {k: model.config[k] for k in ("base_dim", "z_dim", "dim_mult", "num_res_blocks", "temperal_downsample")}
    assert config["latents_mean"] == list(model.config.latents_mean)
    converted = wan_vae_to_diffusers(state, 2)
    expected = model.state_dict()
    assert len(state) == 194 and set(converted) == set(expected)
    assert all(tuple(converted[k].shape) == tuple(v.shape) for k, v in expected.items())


def test_wan_vae_file_errors_name_the_key(tmp_path, release):
    state = torch.load(release / "Wan2.1_VAE.pth", weights_only=True)
    torch.save({**state, "decoder.middle.3.residual.0.gamma": torch.ones(8, 1, 1, 1)}, tmp_path / "Wan2.1_VAE.pth")
    with pytest.raises(UserError, match="unknown key 'decoder.middle.3.residual.0.gamma'"):
        WanVaeCodec.from_path(tmp_path / "Wan2.1_VAE.pth")
    del state["decoder.head.2.bias"]
    torch.save(state, tmp_path / "Wan2.1_VAE.pth")
    with pytest.raises(UserError, match="1 missing, 0 unexpected keys \\(missing 'decoder.conv_out.bias'\\)"):
        WanVaeCodec.from_path(tmp_path / "Wan2.1_VAE.pth")
    with pytest.raises(UserError, match="has no config.json \\(nor vae/config.json, nor Wan2.1_VAE.pth\\)"):
        WanVaeCodec.from_path(release / "google")
