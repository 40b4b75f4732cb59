"""Small stand-in files in exactly the formats of the two Wan2.1-T2V-1.3B weight layouts.

* :func:`write_wan_release`: the official release folder — ``diffusion_pytorch_model.safetensors``
  (official DiT keys, fp32) + ``config.json`` (``WanModel`` arguments), ``Wan2.1_VAE.pth`` (Wan's
  own VAE keys, fp32), ``models_t5_umt5-xxl-enc-bf16.pth`` (Wan's own T5 keys, bf16) and
  ``google/umt5-xxl/`` (tokenizer files only) — with tiny dimensions.
* :func:`write_diffusers_pipeline`: ``transformer/``, ``vae/``, ``text_encoder/``, ``tokenizer/``.

Also a plain re-implementation of Wan's T5 encoder forward (``wan/modules/t5.py`` T5Encoder with
``shared_pos=False``) on a Wan-format state dict, the reference the converted encoder must match,
and the Wan-format key names of a diffusers VAE (the inverse of the loader's conversion, written
from Wan's module structure: flat ``downsamples``/``upsamples``, ``middle.{0,1,2}``, ``head.{0,2}``).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import torch
import torch.nn.functional as F

# A text encoder / tokenizer vocabulary of whole words (offline, deterministic).
WORDS = ["<pad>", "</s>", "<unk>", "apples", "clean", "claim", "grow", "harvest", "in", "orchard", "painting",
         "river", "rooms", "the", "walls", "by", "so", "that", ",", ".", "!", ";", "near", "only", "other", "regrow"]
T5_SIZE = dict(vocab=len(WORDS), dim=16, heads=4, head_dim=4, ffn=24, layers=2, buckets=8)
DIT_SIZE = dict(dim=32, ffn_dim=64, num_heads=2, num_layers=2, in_dim=4, out_dim=4, text_dim=16, text_len=12,
                freq_dim=32, patch_size=(1, 2, 2))


def save_tokenizer(folder: Path) -> None:
    """Word-level tokenizer files (tokenizer.json, tokenizer_config.json, special_tokens_map.json)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>") \
        .save_pretrained(folder)


# ---------------------------------------------------------------------------------------------- T5


def wan_t5_state(seed: int = 0, dtype=torch.bfloat16, **size) -> dict[str, torch.Tensor]:
    """Random weights with the names, nesting and dtype of models_t5_umt5-xxl-enc-bf16.pth."""
    s = {**T5_SIZE, **size}
    g = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=0.3):
        return (torch.randn(*shape, generator=g) * scale).to(dtype)

    attn = s["heads"] * s["head_dim"]
    state = {"token_embedding.weight": rand(s["vocab"], s["dim"], scale=1.0)}
    for i in range(s["layers"]):
        p = f"blocks.{i}."
        state[p + "norm1.weight"] = 1 + rand(s["dim"], scale=0.1)
        for name in "qkv":
            state[p + f"attn.{name}.weight"] = rand(attn, s["dim"])
        state[p + "attn.o.weight"] = rand(s["dim"], attn)
        state[p + "norm2.weight"] = 1 + rand(s["dim"], scale=0.1)
        state[p + "ffn.gate.0.weight"] = rand(s["ffn"], s["dim"])
        state[p + "ffn.fc1.weight"] = rand(s["ffn"], s["dim"])
        state[p + "ffn.fc2.weight"] = rand(s["dim"], s["ffn"])
        state[p + "pos_embedding.embedding.weight"] = rand(s["buckets"], s["heads"], scale=1.0)
    state["norm.weight"] = 1 + rand(s["dim"], scale=0.1)
    return state


def _relative_bucket(rel: torch.Tensor, num_buckets: int, max_dist: int = 128) -> torch.Tensor:
    """Bidirectional T5 bucket of key - query distances (half the buckets per direction, exact
    below a quarter of them, logarithmic up to ``max_dist``)."""
    half = num_buckets // 2
    out = (rel > 0).long() * half
    rel = rel.abs()
    exact = half // 2
    large = exact + (torch.log(rel.float().clamp_min(1) / exact) / math.log(max_dist / exact)
                     * (half - exact)).long()
    return out + torch.where(rel < exact, rel, large.clamp(max=half - 1))


def wan_t5_reference(state: dict[str, torch.Tensor], ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Wan's T5 encoder on a Wan-format state dict, fp32: ids, mask (B, L) -> (B, L, dim)."""
    sd = {k: v.float() for k, v in state.items()}
    layers = len({k.split(".")[1] for k in sd if k.startswith("blocks.")})
    buckets, heads = sd["blocks.0.pos_embedding.embedding.weight"].shape
    b, n = ids.shape

    def rms(x, w):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * w

    x = sd["token_embedding.weight"][ids]
    rel = torch.arange(n)[None, :] - torch.arange(n)[:, None]  # key position - query position
    bucket = _relative_bucket(rel, buckets)
    key_mask = mask.bool()[:, None, None, :]
    for i in range(layers):
        p = f"blocks.{i}."
        h = rms(x, sd[p + "norm1.weight"])
        q, k, v = (F.linear(h, sd[p + f"attn.{c}.weight"]).view(b, n, heads, -1) for c in "qkv")
        bias = sd[p + "pos_embedding.embedding.weight"][bucket].permute(2, 0, 1)[None]  # (1, H, L, L)
        scores = torch.einsum("binc,bjnc->bnij", q, k) + bias  # T5: no 1/sqrt(d) scaling
        scores = scores.masked_fill(~key_mask, torch.finfo(scores.dtype).min)
        out = torch.einsum("bnij,bjnc->binc", scores.softmax(-1), v).reshape(b, n, -1)
        x = x + F.linear(out, sd[p + "attn.o.weight"])
        h = rms(x, sd[p + "norm2.weight"])
        gated = F.gelu(F.linear(h, sd[p + "ffn.gate.0.weight"]), approximate="tanh") * F.linear(h, sd[p + "ffn.fc1.weight"])
        x = x + F.linear(gated, sd[p + "ffn.fc2.weight"])
    return rms(x, sd["norm.weight"])


def umt5_to_wan_t5(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers UMT5EncoderModel keys -> Wan's T5 keys (as models_t5_umt5-xxl-enc-bf16.pth)."""
    parts = {"layer.0.layer_norm.weight": "norm1.weight", "layer.1.layer_norm.weight": "norm2.weight",
             "layer.0.SelfAttention.relative_attention_bias.weight": "pos_embedding.embedding.weight",
             "layer.1.DenseReluDense.wi_0.weight": "ffn.gate.0.weight",
             "layer.1.DenseReluDense.wi_1.weight": "ffn.fc1.weight", "layer.1.DenseReluDense.wo.weight": "ffn.fc2.weight"}
    parts.update({f"layer.0.SelfAttention.{c}.weight": f"attn.{c}.weight" for c in "qkvo"})
    out = {}
    for key, value in state.items():
        if key == "shared.weight":
            out["token_embedding.weight"] = value
        elif key == "encoder.final_layer_norm.weight":
            out["norm.weight"] = value
        elif m := re.match(r"^encoder\.block\.(\d+)\.(.+)$", key):
            out[f"blocks.{m[1]}.{parts[m[2]]}"] = value
        elif key != "encoder.embed_tokens.weight":  # tied to shared
            raise KeyError(key)
    return {k: v.detach().clone() for k, v in out.items()}


def umt5_xxl_key_shapes() -> dict[str, tuple[int, ...]]:
    """Names and shapes of the real models_t5_umt5-xxl-enc-bf16.pth (umt5_xxl(encoder_only=True):
    vocab 256,384, dim 4096, 64 heads, ffn 10,240, 24 blocks, 32 buckets)."""
    vocab, dim, ffn, heads, buckets = 256384, 4096, 10240, 64, 32
    shapes = {"token_embedding.weight": (vocab, dim), "norm.weight": (dim,)}
    for i in range(24):
        p = f"blocks.{i}."
        shapes.update({p + "norm1.weight": (dim,), p + "norm2.weight": (dim,),
                       p + "attn.q.weight": (dim, dim), p + "attn.k.weight": (dim, dim),
                       p + "attn.v.weight": (dim, dim), p + "attn.o.weight": (dim, dim),
                       p + "ffn.gate.0.weight": (ffn, dim), p + "ffn.fc1.weight": (ffn, dim),
                       p + "ffn.fc2.weight": (dim, ffn), p + "pos_embedding.embedding.weight": (buckets, heads)})
    return shapes


# --------------------------------------------------------------------------------------------- VAE


def tiny_diffusers_vae(seed: int = 0, z_dim: int = 4):
    from diffusers import AutoencoderKLWan

    from actionparty.model.codecs import WAN_LATENTS_MEAN, WAN_LATENTS_STD

    torch.manual_seed(seed)
    stats = dict(latents_mean=WAN_LATENTS_MEAN, latents_std=WAN_LATENTS_STD) if z_dim == 16 else \
        dict(latents_mean=[0.0] * z_dim, latents_std=[1.0] * z_dim)
    vae = AutoencoderKLWan(base_dim=8, z_dim=z_dim, dim_mult=[1, 2, 2, 2], num_res_blocks=1,
                           temperal_downsample=[False, True, True], **stats)
    with torch.no_grad():  # non-trivial norms and output layers (some are zero-initialised)
        for p in vae.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return vae.eval()


_RESNET = {"norm1.gamma": "residual.0.gamma", "conv1": "residual.2", "norm2.gamma": "residual.3.gamma",
           "conv2": "residual.6", "conv_shortcut": "shortcut"}


def _resnet_part(rest: str) -> str:
    for ours, wan in _RESNET.items():
        if rest == ours or rest.startswith(ours + "."):
            return wan + rest[len(ours):]
    return rest  # resample.1.*, time_conv.*


def diffusers_vae_to_wan(state: dict[str, torch.Tensor], num_res_blocks: int) -> dict[str, torch.Tensor]:
    """diffusers AutoencoderKLWan keys -> Wan2.1_VAE.pth keys (fp32, as the release)."""
    out = {}
    for key, value in state.items():
        if key.startswith("quant_conv."):
            new = "conv1." + key.split(".", 1)[1]
        elif key.startswith("post_quant_conv."):
            new = "conv2." + key.split(".", 1)[1]
        elif m := re.match(r"^(encoder|decoder)\.conv_in\.(.*)$", key):
            new = f"{m[1]}.conv1.{m[2]}"
        elif m := re.match(r"^(encoder|decoder)\.norm_out\.gamma$", key):
            new = f"{m[1]}.head.0.gamma"
        elif m := re.match(r"^(encoder|decoder)\.conv_out\.(.*)$", key):
            new = f"{m[1]}.head.2.{m[2]}"
        elif m := re.match(r"^(encoder|decoder)\.mid_block\.attentions\.0\.(.*)$", key):
            new = f"{m[1]}.middle.1.{m[2]}"
        elif m := re.match(r"^(encoder|decoder)\.mid_block\.resnets\.(\d)\.(.*)$", key):
            new = f"{m[1]}.middle.{2 * int(m[2])}.{_resnet_part(m[3])}"
        elif m := re.match(r"^encoder\.down_blocks\.(\d+)\.(.*)$", key):
            new = f"encoder.downsamples.{m[1]}.{_resnet_part(m[2])}"
        elif m := re.match(r"^decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.*)$", key):
            new = f"decoder.upsamples.{int(m[1]) * (num_res_blocks + 2) + int(m[2])}.{_resnet_part(m[3])}"
        elif m := re.match(r"^decoder\.up_blocks\.(\d+)\.upsamplers\.0\.(.*)$", key):
            new = f"decoder.upsamples.{int(m[1]) * (num_res_blocks + 2) + num_res_blocks + 1}.{m[2]}"
        else:
            raise KeyError(key)
        out[new] = value.detach().clone().float()
    return out


# ------------------------------------------------------------------------------------------ layouts


def tiny_dit(seed: int = 0, **overrides):
    from actionparty.model.dit import DiTConfig, WanDiT

    torch.manual_seed(seed)
    model = WanDiT(DiTConfig(**{**DIT_SIZE, "zero_init": False, **overrides}))
    with torch.no_grad():  # the head starts at zero; give every output a say
        model.head.head.weight.normal_(std=0.1)
    return model


def write_wan_release(root: Path, *, dit=None, vae=None, t5_state=None, skip: tuple[str, ...] = ()) -> Path:
    """The official release folder with tiny stand-ins; ``skip`` leaves out files by name."""
    from safetensors.torch import save_file

    root.mkdir(parents=True, exist_ok=True)
    dit = dit or tiny_dit()
    vae = vae or tiny_diffusers_vae()
    t5_state = t5_state or wan_t5_state()
    cfg = dit.config
    files = {
        "diffusion_pytorch_model.safetensors": lambda p: save_file(
            {k: v.detach().contiguous() for k, v in dit.state_dict().items()}, str(p)),
        # WanModel's ConfigMixin config, as in the release (text_dim/patch_size only where not Wan's).
        "config.json": lambda p: p.write_text(json.dumps({
            "_class_name": "WanModel", "_diffusers_version": "0.30.0", "dim": cfg.dim, "eps": cfg.eps,
            "ffn_dim": cfg.ffn_dim, "freq_dim": cfg.freq_dim, "in_dim": cfg.in_dim, "model_type": "t2v",
            "num_heads": cfg.num_heads, "num_layers": cfg.num_layers, "out_dim": cfg.out_dim,
            "text_len": cfg.text_len, "text_dim": cfg.text_dim, "patch_size": list(cfg.patch_size)}, indent=2)),
        "Wan2.1_VAE.pth": lambda p: torch.save(diffusers_vae_to_wan(vae.state_dict(), vae.config.num_res_blocks), p),
        "models_t5_umt5-xxl-enc-bf16.pth": lambda p: torch.save(t5_state, p),
        "google/umt5-xxl": save_tokenizer,
    }
    for name, write in files.items():
        if name not in skip:
            path = root / name
            path.parent.mkdir(parents=True, exist_ok=True)
            write(path)
    return root


def write_diffusers_pipeline(root: Path, *, dit=None, vae=None, t5_state=None) -> Path:
    """A diffusers pipeline folder with tiny stand-ins (the same weights as write_wan_release)."""
    from safetensors.torch import save_file
    from transformers import UMT5Config, UMT5EncoderModel

    from actionparty.model.text import wan_t5_config, wan_t5_to_umt5

    dit = dit or tiny_dit()
    vae = vae or tiny_diffusers_vae()
    t5_state = t5_state or wan_t5_state()
    cfg = dit.config
    (root / "transformer").mkdir(parents=True, exist_ok=True)
    save_file(_official_to_diffusers_dit(dit.state_dict()), str(root / "transformer" / "diffusion_pytorch_model.safetensors"))
    (root / "transformer" / "config.json").write_text(json.dumps({
        "_class_name": "WanTransformer3DModel", "num_attention_heads": cfg.num_heads,
        "attention_head_dim": cfg.head_dim, "in_channels": cfg.in_dim, "out_channels": cfg.out_dim,
        "text_dim": cfg.text_dim, "freq_dim": cfg.freq_dim, "ffn_dim": cfg.ffn_dim, "num_layers": cfg.num_layers,
        "patch_size": list(cfg.patch_size), "cross_attn_norm": True, "qk_norm": "rms_norm_across_heads",
        "eps": cfg.eps, "rope_max_seq_len": 1024}))
    vae.save_pretrained(root / "vae")
    encoder = UMT5EncoderModel(UMT5Config(**wan_t5_config(t5_state)))
    encoder.load_state_dict({k: v.float() for k, v in wan_t5_to_umt5(t5_state).items()})
    encoder.save_pretrained(root / "text_encoder")
    save_tokenizer(root / "tokenizer")
    return root


def _official_to_diffusers_dit(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official DiT keys -> WanTransformer3DModel keys (the inverse of checkpoint_io's renames)."""
    renames = [
        (r"^time_embedding\.0\.", "condition_embedder.time_embedder.linear_1."),
        (r"^time_embedding\.2\.", "condition_embedder.time_embedder.linear_2."),
        (r"^text_embedding\.0\.", "condition_embedder.text_embedder.linear_1."),
        (r"^text_embedding\.2\.", "condition_embedder.text_embedder.linear_2."),
        (r"^time_projection\.1\.", "condition_embedder.time_proj."),
        (r"^head\.modulation$", "scale_shift_table"), (r"^head\.head\.", "proj_out."),
        (r"^(blocks\.\d+)\.modulation$", r"\1.scale_shift_table"),
        (r"^(blocks\.\d+)\.self_attn\.", r"\1.attn1."), (r"^(blocks\.\d+)\.cross_attn\.", r"\1.attn2."),
        (r"\.q\.", ".to_q."), (r"\.k\.", ".to_k."), (r"\.v\.", ".to_v."), (r"\.o\.", ".to_out.0."),
        (r"^(blocks\.\d+)\.ffn\.0\.", r"\1.ffn.net.0.proj."), (r"^(blocks\.\d+)\.ffn\.2\.", r"\1.ffn.net.2."),
        (r"^(blocks\.\d+)\.norm3\.", r"\1.norm2."),
    ]
    out = {}
    for key, value in state.items():
        for pattern, repl in renames:
            key = re.sub(pattern, repl, key)
        out[key] = value.detach().contiguous()
    return out


# The paper profile's DiT inputs (16 VAE channels, 4096-wide umT5 text of 512 tokens) on the tiny DiT.
PAPER_SHAPED = dict(dim=64, ffn_dim=128, num_heads=2, num_layers=2, freq_dim=32, in_dim=16, out_dim=16,
                    text_dim=4096, text_len=512)


def paper_shaped_standins() -> dict:
    """DiT, VAE and T5 stand-ins that fit a paper profile whose model.size is ``tiny``."""
    return dict(dit=tiny_dit(**PAPER_SHAPED), vae=tiny_diffusers_vae(z_dim=16),
                t5_state=wan_t5_state(dim=4096, heads=2, head_dim=4, ffn=8, layers=1))


def paper_profile(repo: Path, tmp_path: Path, weights: Path, release: bool = True, **model) -> Path:
    """params/paper.yaml with 2 games, the tiny DiT and weight paths under ``weights`` (the
    release's paths, as params/paper.yaml names them, or one diffusers pipeline folder); its
    text embedding cache in ``tmp_path`` (absent until ``embed_texts`` writes it)."""
    import yaml

    data = yaml.safe_load((repo / "params/paper.yaml").read_text())
    data["catalogue"] = str(repo / "params/games.yaml")
    data["games"] = ["coins", "clean_up"]
    paths = dict(init_checkpoint=str(weights), vae_path=str(weights / "Wan2.1_VAE.pth"),
                 text_path=str(weights / "google/umt5-xxl")) if release else \
        dict(init_checkpoint=str(weights), vae_path=str(weights), text_path=str(weights))
    paths["text_cache"] = str(tmp_path / "text_embeddings.safetensors")  # written by embed_texts
    data["model"].update(size="tiny", **paths, **model)
    path = tmp_path / "paper_standin.yaml"
    path.write_text(yaml.safe_dump(data))
    return path
