"""Text encoders (tiny, umt5 from a local folder) and the per-game embedding cache."""

from __future__ import annotations

import pytest
import torch

from actionparty.errors import UserError
from actionparty.model.text import (
    TextEmbedder,
    TinyTextEncoder,
    WordVocab,
    make_text_embedder,
    split_words,
)

DESCRIPTIONS = {
    "clean_up": "Clean the river, so that apples grow in the orchard.",
    "commons_harvest__open": "Harvest apples; apples regrow only near other apples!",
    "territory__rooms": "Claim rooms by painting walls.",
}


class CountingEncoder:
    """Wraps an encoder and counts how many texts it encoded."""

    def __init__(self, inner):
        self.inner, self.dim, self.max_len, self.texts = inner, inner.dim, inner.max_len, []

    def encode(self, texts):
        self.texts.extend(texts)
        return self.inner.encode(texts)


def test_words_and_vocabulary():
    assert split_words("Eat apples, NOW!") == ["eat", "apples", ",", "now", "!"]
    vocab = WordVocab.build(DESCRIPTIONS.values())
    assert vocab.words[:2] == ["<pad>", "<unk>"] and vocab.words[2:] == sorted(vocab.words[2:])
    assert WordVocab.build(reversed(list(DESCRIPTIONS.values()))).words == vocab.words  # order-free
    ids = vocab.encode("apples and bananas", max_len=8)
    assert ids[0] == vocab.index["apples"] and ids[2] == 1  # unknown word -> <unk>
    assert vocab.encode("", 8) == [1]


def test_tiny_encoder_embeds_and_is_seeded():
    enc = TinyTextEncoder.from_descriptions(list(DESCRIPTIONS.values()), dim=32, max_len=16).eval()
    emb, mask = enc.encode(list(DESCRIPTIONS.values()))
    assert emb.shape == (3, 16, 32) and mask.dtype == torch.bool
    assert mask[2].sum() == len(split_words(DESCRIPTIONS["territory__rooms"]))
    assert emb[2, ~mask[2]].abs().max() == 0  # padding is zero
    assert (emb[0] - emb[1]).abs().max() > 1e-3
    again = TinyTextEncoder.from_descriptions(list(DESCRIPTIONS.values()), dim=32, max_len=16).eval()
    assert torch.equal(again.encode(["clean the river"])[0], enc.encode(["clean the river"])[0])


def test_embedder_caches_per_game_and_saves(tmp_path):
    tiny = make_text_embedder("tiny", DESCRIPTIONS, dim=32, max_len=16)
    counting = CountingEncoder(tiny.encoder)
    embedder = TextEmbedder(counting, DESCRIPTIONS)
    emb, mask = embedder(["clean_up", "territory__rooms", "clean_up"])
    embedder(["clean_up"])
    assert emb.shape == (3, 16, 32) and torch.equal(emb[0], emb[2])
    assert sorted(counting.texts) == sorted([DESCRIPTIONS["clean_up"], DESCRIPTIONS["territory__rooms"]])
    with pytest.raises(UserError, match="unknown game 'pong'"):
        embedder(["pong"])

    embedder.save_cache(tmp_path / "text.safetensors")
    changed = {**DESCRIPTIONS, "clean_up": "Something else entirely."}
    fresh = TextEmbedder(CountingEncoder(tiny.encoder), changed)
    assert fresh.load_cache(tmp_path / "text.safetensors") == ["territory__rooms"]  # clean_up changed
    assert torch.equal(fresh(["territory__rooms"])[0][0], emb[1]) and fresh.encoder.texts == []


def test_an_encoderless_embedder_serves_a_cache_and_refuses_everything_else(tmp_path):
    tiny = make_text_embedder("tiny", DESCRIPTIONS, dim=32, max_len=16)
    emb, mask = tiny(["clean_up", "territory__rooms"])
    path = tmp_path / "text.safetensors"
    tiny.save_cache(path, encoder="tiny:16:")
    cached = TextEmbedder.from_cache(path, DESCRIPTIONS, "tiny:16:", ["territory__rooms", "clean_up"])
    assert cached.encoder is None and cached.dim == 32
    got, got_mask = cached(["clean_up", "territory__rooms"])
    assert torch.equal(got, emb) and torch.equal(got_mask, mask)
    with pytest.raises(UserError, match=r"text.safetensors: no embedding of game 'commons_harvest__open'"):
        cached(["commons_harvest__open"])
    with pytest.raises(UserError, match=r"nowhere.safetensors: text embedding cache not found"):
        TextEmbedder.from_cache(tmp_path / "nowhere.safetensors", DESCRIPTIONS, "tiny:16:", ["clean_up"])
    with pytest.raises(UserError, match=r"written for text encoder 'tiny:16:', the profile uses 'umt5:512:w'"):
        TextEmbedder.from_cache(path, DESCRIPTIONS, "umt5:512:w", ["clean_up"])
    with pytest.raises(UserError, match=r"no embedding of 'commons_harvest__open' .*\(1 of 2 games\)"):
        TextEmbedder.from_cache(path, DESCRIPTIONS, "tiny:16:", ["clean_up", "commons_harvest__open"])
    changed = {**DESCRIPTIONS, "clean_up": "Something else entirely."}
    with pytest.raises(UserError, match=r"no embedding of 'clean_up' for its current description"):
        TextEmbedder.from_cache(path, changed, "tiny:16:", ["clean_up"])
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(UserError, match=r"bad.safetensors: not a text embedding cache"):
        TextEmbedder.from_cache(tmp_path / "bad.safetensors", DESCRIPTIONS, "tiny:16:", ["clean_up"])


def test_embed_text_writes_the_cache_a_profile_then_reads(tmp_path, repo):
    """actionparty embed-text on the smoke profile: every model but Text-Action then builds no
    encoder, and its embeddings are the encoder's to the bit."""
    import subprocess
    import sys

    import yaml

    from actionparty.config import load_profile
    from actionparty.model.factory import build_text_embedder, build_world_model
    from actionparty.variants import load_variant
    from conftest import subprocess_env

    cache = tmp_path / "text" / "embeddings.safetensors"
    path = tmp_path / "smoke_cache.yaml"
    path.write_text(yaml.safe_dump({"defaults": str(repo / "params/smoke.yaml"), "model": {"text_cache": str(cache)}}))
    proc = subprocess.run([sys.executable, "-m", "actionparty", "embed-text", "--profile", str(path), "--out", str(cache)],
                          capture_output=True, text=True, cwd=repo, env=subprocess_env())
    assert proc.returncode == 0, proc.stderr
    assert "tiny embeddings of 2 games" in proc.stdout and cache.is_file()
    profile = load_profile(path)
    games = ["coins", "clean_up"]
    _, _, text = build_world_model(profile, variant=load_variant("full"))
    assert text.embedder.encoder is None
    emb, mask = text(games)
    want, want_mask = build_text_embedder(profile, use_cache=False)(games)
    assert torch.equal(emb, want) and torch.equal(mask, want_mask)
    _, _, with_actions = build_world_model(profile, variant=load_variant("text_action"))
    assert with_actions.embedder.encoder is not None


def test_trainable_tiny_encoder_gets_gradients_and_is_not_cached():
    embedder = make_text_embedder("tiny", DESCRIPTIONS, dim=16, max_len=8, trainable=True)
    emb, _ = embedder(["clean_up"])
    emb.sum().backward()
    assert embedder.encoder.token_embedding.weight.grad is not None and embedder.cached_games() == []


def save_tiny_umt5(folder):
    """A random tiny UMT5 encoder and a word-level tokenizer, built offline (no download)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast, UMT5Config, UMT5EncoderModel

    words = ["<pad>", "</s>", "<unk>", *sorted({w for d in DESCRIPTIONS.values() for w in split_words(d)})]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>") \
        .save_pretrained(folder / "tokenizer")
    torch.manual_seed(0)
    config = UMT5Config(vocab_size=len(words), d_model=16, d_kv=4, d_ff=32, num_layers=2, num_heads=4,
                        relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    UMT5EncoderModel(config).save_pretrained(folder / "text_encoder")


def test_umt5_loads_from_local_folder(tmp_path):
    save_tiny_umt5(tmp_path)  # diffusers pipeline layout: text_encoder/ + tokenizer/
    embedder = make_text_embedder("umt5", DESCRIPTIONS, path=tmp_path, max_len=24)
    emb, mask = embedder(["clean_up", "territory__rooms"])
    assert emb.shape == (2, 24, 16) and embedder.dim == 16
    n_tokens = len(split_words(DESCRIPTIONS["territory__rooms"])) + 1  # words + </s>
    # Official Wan2.1: real tokens, then zeros up to text_len, every position attended.
    assert emb[1, n_tokens:].abs().max() == 0 and emb[1, :n_tokens].abs().min() > 0
    assert bool(mask.all())
    assert embedder.cached_games() == ["clean_up", "territory__rooms"]
    masked = make_text_embedder("umt5", DESCRIPTIONS, path=tmp_path, max_len=24, mask_padding=True)
    emb_masked, real = masked(["clean_up", "territory__rooms"])
    assert torch.equal(emb_masked, emb) and int(real[1].sum()) == n_tokens
    with pytest.raises(UserError, match="needs a local path"):
        make_text_embedder("umt5", DESCRIPTIONS)
    with pytest.raises(UserError, match="unknown text encoder 'bert'"):
        make_text_embedder("bert", DESCRIPTIONS)


def test_umt5_text_reaches_the_dit_as_in_official_wan(tmp_path):
    """Wan2.1 (WanModel.forward): each prompt's real-token embeddings, zero-padded to text_len,
    through text_embedding, attended to at all text_len positions (context_lens=None)."""
    from actionparty.model.dit import make_dit

    save_tiny_umt5(tmp_path)
    embedder = make_text_embedder("umt5", DESCRIPTIONS, path=tmp_path, max_len=24)
    emb, mask = embedder(["clean_up", "territory__rooms"])
    torch.manual_seed(0)
    dit = make_dit("tiny", text_dim=16, text_len=24, zero_init=False).eval()
    torch.nn.init.normal_(dit.head.head.weight, std=0.1)
    x, t = torch.randn(2, 4, 2, 4, 4), torch.tensor([300.0, 700.0])
    with torch.no_grad():
        ours = dit(x, t, emb, mask).video
        # Wan's own way: cut each prompt to its real tokens, pad with zeros, no mask at all.
        lengths = [len(split_words(DESCRIPTIONS[g])) + 1 for g in ("clean_up", "territory__rooms")]
        wan_context = torch.stack([torch.cat([e[:n], e.new_zeros(24 - n, 16)]) for e, n in zip(emb, lengths)])
        wan = dit(x, t, wan_context, None).video
        masked = dit(x, t, emb, torch.arange(24)[None] < torch.tensor(lengths)[:, None]).video
    assert torch.allclose(ours, wan, atol=1e-6)
    assert (ours - masked).abs().max() > 1e-3  # the padding positions are attended, not masked


def test_tiny_encoder_keeps_masking_padding():
    """The small profiles' tiny encoder returns its real words as the mask: outputs unchanged."""
    embedder = make_text_embedder("tiny", DESCRIPTIONS, dim=32, max_len=16)
    emb, mask = embedder(["territory__rooms"])
    assert int(mask.sum()) == len(split_words(DESCRIPTIONS["territory__rooms"])) and not bool(mask.all())
