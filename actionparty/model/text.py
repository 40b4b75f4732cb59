"""Text encoders for the games' descriptions, and a per-game embedding cache.

* ``tiny``: :class:`TinyTextEncoder`, a small transformer encoder over a word vocabulary built
  (sorted, deterministic) from the game descriptions. Seeded init; frozen by default (its random
  features are fixed, distinct per game; the DiT's ``text_embedding`` MLP learns to read them),
  or trained with the DiT (then nothing is cached).
* ``umt5``: :class:`UMT5TextEncoder`, transformers ``UMT5EncoderModel`` + tokenizer from a local
  path (Wan uses umt5-xxl: 4096 channels, 512 tokens): a diffusers pipeline (``text_encoder/`` +
  ``tokenizer/``), a transformers model folder, or the official Wan2.1 release
  (``models_t5_umt5-xxl-enc-bf16.pth`` in Wan's own T5 key format, converted key by key by
  :func:`wan_t5_to_umt5`, and the tokenizer folder ``google/umt5-xxl/``).

Every encoder maps a list of texts to ``(emb (B, L, D), mask (B, L) bool)`` with fixed L = its
``max_len``; ``mask`` is what the DiT's text cross-attention may attend to.
:class:`TextEmbedder` maps *game names* to those, computing each game once.

**umT5 as official Wan2.1** (``wan/modules/t5.py`` ``T5EncoderModel.__call__``, ``WanModel.forward``
in ``wan/modules/model.py``): the prompt is whitespace-cleaned, tokenized to ``text_len`` = 512
tokens with padding, encoded with the padding mask, cut to its real tokens (``u[:v]``), padded back
with zeros to ``text_len``, and the DiT attends to all 512 positions (``context_lens = None``): the
zero rows pass ``text_embedding`` and are keys like any other. So ``UMT5TextEncoder`` returns
embeddings that are zero at padding and an all-True mask (``mask_padding=False``, the default).
The ``tiny`` encoder of the small profiles returns the real-word mask, and its padding is masked.
"""

from __future__ import annotations

import functools
import hashlib
import html
import os
import re
from pathlib import Path
from typing import Mapping, Protocol, Sequence

import torch
from torch import nn

from ..errors import UserError

TEXT_ENCODER_NAMES = ("tiny", "umt5")


class TextEncoder(Protocol):
    dim: int
    max_len: int

    def encode(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]: ...


# =============================================================================================
# tiny: word vocabulary + small transformer
# =============================================================================================

_WORD = re.compile(r"[a-z0-9]+|[^\sa-z0-9]")


def split_words(text: str) -> list[str]:
    """Lower-cased words and single punctuation marks: ``"Eat apples!" -> ["eat", "apples", "!"]``."""
    return _WORD.findall(text.lower())


class WordVocab:
    """Word <-> id. Id 0 is padding, id 1 stands for words not in the vocabulary."""

    PAD, UNK = "<pad>", "<unk>"

    def __init__(self, words: Sequence[str]):
        self.words = [self.PAD, self.UNK, *[w for w in words if w not in (self.PAD, self.UNK)]]
        self.index = {w: i for i, w in enumerate(self.words)}

    @classmethod
    def build(cls, texts: Sequence[str]) -> "WordVocab":
        return cls(sorted({w for text in texts for w in split_words(text)}))

    def __len__(self) -> int:
        return len(self.words)

    def encode(self, text: str, max_len: int) -> list[int]:
        """Ids of the first ``max_len`` words (at least one id: an empty text gives ``[UNK]``)."""
        ids = [self.index.get(w, 1) for w in split_words(text)][:max_len]
        return ids or [1]


class TinyTextEncoder(nn.Module):
    """Token + position embeddings, a pre-norm transformer encoder, a final LayerNorm."""

    def __init__(self, vocab: WordVocab, dim: int = 64, num_layers: int = 2, num_heads: int = 2,
                 max_len: int = 64, seed: int = 0):
        super().__init__()
        self.vocab, self.dim, self.max_len = vocab, dim, max_len
        with torch.random.fork_rng(devices=[]):  # same weights for the same vocabulary and seed
            torch.manual_seed(seed)
            self.token_embedding = nn.Embedding(len(vocab), dim, padding_idx=0)
            self.position_embedding = nn.Parameter(torch.randn(max_len, dim) * 0.02)
            layer = nn.TransformerEncoderLayer(dim, num_heads, 4 * dim, dropout=0.0, activation="gelu",
                                               batch_first=True, norm_first=True)
            self.encoder = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
            self.norm = nn.LayerNorm(dim)

    @classmethod
    def from_descriptions(cls, descriptions: Sequence[str], **kwargs) -> "TinyTextEncoder":
        return cls(WordVocab.build(descriptions), **kwargs)

    def tokenize(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """-> ids (B, max_len) long, mask (B, max_len) bool (True = word)."""
        device = self.position_embedding.device
        ids = torch.zeros(len(texts), self.max_len, dtype=torch.long, device=device)
        for i, text in enumerate(texts):
            row = self.vocab.encode(text, self.max_len)
            ids[i, : len(row)] = torch.tensor(row, device=device)
        return ids, ids != 0

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """ids, mask (B, L) -> (B, L, dim), zero at padding."""
        h = self.token_embedding(ids) + self.position_embedding[: ids.shape[1]]
        h = self.norm(self.encoder(h, src_key_padding_mask=~mask))
        return h * mask[..., None]

    def encode(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        ids, mask = self.tokenize(texts)
        return self(ids, mask), mask


# =============================================================================================
# umt5: transformers encoder from a local path
# =============================================================================================


WAN_T5_FILE = "models_t5_umt5-xxl-enc-bf16.pth"  # names in the official Wan2.1 release folder
WAN_TOKENIZER_DIR = "google/umt5-xxl"

# Wan's T5 encoder (wan/modules/t5.py T5Encoder with shared_pos=False, as umt5_xxl builds it) ->
# transformers UMT5EncoderModel. Per block: T5SelfAttention(norm1, attn.{q,k,v,o}, norm2,
# ffn.{gate.0, fc1, fc2}, pos_embedding.embedding); Wan's gated FFN is fc2(fc1(x) * gelu(gate(x))),
# transformers' is wo(wi_1(x) * gelu(wi_0(x))).
_WAN_T5_BLOCK = {
    "norm1.weight": "layer.0.layer_norm.weight",
    "attn.q.weight": "layer.0.SelfAttention.q.weight",
    "attn.k.weight": "layer.0.SelfAttention.k.weight",
    "attn.v.weight": "layer.0.SelfAttention.v.weight",
    "attn.o.weight": "layer.0.SelfAttention.o.weight",
    "pos_embedding.embedding.weight": "layer.0.SelfAttention.relative_attention_bias.weight",
    "norm2.weight": "layer.1.layer_norm.weight",
    "ffn.gate.0.weight": "layer.1.DenseReluDense.wi_0.weight",
    "ffn.fc1.weight": "layer.1.DenseReluDense.wi_1.weight",
    "ffn.fc2.weight": "layer.1.DenseReluDense.wo.weight",
}


# umt5-xxl's encoder as Wan2.1 ships it (models_t5_umt5-xxl-enc-bf16.pth): the shapes the estimate
# counts on the meta device; loading reads them from the file itself (wan_t5_config).
UMT5_XXL = dict(vocab_size=256384, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
                relative_attention_num_buckets=32)


@functools.lru_cache(maxsize=4)
def _umt5_parameters(items: tuple) -> int:
    from transformers import UMT5Config, UMT5EncoderModel

    with torch.device("meta"):
        model = UMT5EncoderModel(UMT5Config(**dict(items), feed_forward_proj="gated-gelu"))
    return sum(p.numel() for p in model.parameters())


def umt5_parameters(config: Mapping | None = None) -> int:
    """Parameters of a ``UMT5EncoderModel`` (default: umt5-xxl's), counted on the meta device."""
    return _umt5_parameters(tuple(sorted((config or UMT5_XXL).items())))


def wan_t5_config(state: Mapping[str, torch.Tensor]) -> dict:
    """``UMT5Config`` arguments of a Wan-format T5 encoder state dict, read from the tensors' shapes
    (umt5-xxl: vocab 256,384, d_model 4096, 64 heads of 64, d_ff 10,240, 24 layers, 32 buckets).
    Fixed by Wan's code: bidirectional buckets up to distance 128, tanh-GELU gated FFN, eps 1e-6."""
    if "token_embedding.weight" not in state or "norm.weight" not in state:
        raise UserError("umt5: not a Wan T5 encoder state dict (no token_embedding.weight / norm.weight)")
    if "pos_embedding.embedding.weight" in state:
        raise UserError("umt5: a T5 encoder with one shared position embedding (shared_pos=True) is not umT5")
    layers = {int(m.group(1)) for k in state if (m := re.match(r"^blocks\.(\d+)\.", k))}
    if not layers or layers != set(range(len(layers))):
        raise UserError("umt5: Wan T5 state dict without blocks 0..N-1")
    vocab, d_model = state["token_embedding.weight"].shape
    buckets, heads = state["blocks.0.pos_embedding.embedding.weight"].shape
    return dict(vocab_size=vocab, d_model=d_model, d_kv=state["blocks.0.attn.q.weight"].shape[0] // heads,
                d_ff=state["blocks.0.ffn.fc1.weight"].shape[0], num_layers=len(layers), num_heads=heads,
                relative_attention_num_buckets=buckets, relative_attention_max_distance=128,
                feed_forward_proj="gated-gelu", layer_norm_epsilon=1e-6, dropout_rate=0.0,
                pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)


def wan_t5_to_umt5(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename every key of a Wan-format T5 encoder state dict to ``UMT5EncoderModel``'s.

    ``token_embedding`` fills both ``shared`` and ``encoder.embed_tokens`` (tied in transformers).
    A key matching no rule is an error (nothing is dropped silently).
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key == "token_embedding.weight":
            out["shared.weight"] = out["encoder.embed_tokens.weight"] = value
        elif key == "norm.weight":
            out["encoder.final_layer_norm.weight"] = value
        elif (m := re.match(r"^blocks\.(\d+)\.(.+)$", key)) and m.group(2) in _WAN_T5_BLOCK:
            out[f"encoder.block.{m.group(1)}.{_WAN_T5_BLOCK[m.group(2)]}"] = value
        else:
            raise UserError(f"umt5: unknown key {key!r} in a Wan T5 encoder state dict")
    return out


def load_wan_t5(path: str | os.PathLike, dtype=torch.float32):
    """A ``UMT5EncoderModel`` from Wan's T5 encoder file (``models_t5_umt5-xxl-enc-bf16.pth``).

    Built on the meta device and filled by assignment, so the 5.7 B-parameter encoder is held once
    (the file is memory-mapped; bf16 tensors are copied only if ``dtype`` differs).
    """
    from transformers import UMT5Config, UMT5EncoderModel

    from .checkpoint_io import read_torch_file

    path = Path(path)
    state = read_torch_file(path)
    config = UMT5Config(**wan_t5_config(state))
    converted = {k: v.to(dtype) for k, v in wan_t5_to_umt5(state).items()}
    with torch.device("meta"):
        model = UMT5EncoderModel(config)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(converted))
    if missing:
        raise UserError(f"umt5: {path}: {len(missing)} encoder weights missing, first {missing[0]!r}")
    for key, value in converted.items():
        if key not in expected:
            raise UserError(f"umt5: {path}: {key} has no place in UMT5EncoderModel")
        if tuple(value.shape) != tuple(expected[key].shape):
            raise UserError(f"umt5: {path}: {key} has shape {tuple(value.shape)}, the model "
                            f"{tuple(expected[key].shape)}")
    model.load_state_dict(converted, strict=True, assign=True)
    model.tie_weights()  # shared and embed_tokens: one tensor
    return model


def find_umt5(path: str | os.PathLike) -> tuple[str, Path, Path]:
    """(layout, encoder location, tokenizer folder) of a local umT5: ``"diffusers"`` (a pipeline with
    ``text_encoder/`` + ``tokenizer/``), ``"transformers"`` (one folder with config.json and
    tokenizer), or ``"release"`` (Wan's T5 .pth; ``path`` may be the release folder, the .pth, or
    its ``google/umt5-xxl`` tokenizer folder, two levels below the .pth)."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"umt5: {path} not found")
    if path.is_file():
        tokenizer = path.parent / WAN_TOKENIZER_DIR
        if not tokenizer.is_dir():
            raise UserError(f"umt5: {path}: no tokenizer folder {tokenizer}")
        return "release", path, tokenizer
    if (path / WAN_T5_FILE).is_file():  # the release folder (its config.json is the DiT's)
        if not (path / WAN_TOKENIZER_DIR).is_dir():
            raise UserError(f"umt5: {path}: no tokenizer folder {path / WAN_TOKENIZER_DIR}")
        return "release", path / WAN_T5_FILE, path / WAN_TOKENIZER_DIR
    if (path / "text_encoder" / "config.json").exists():
        return "diffusers", path / "text_encoder", path / "tokenizer" if (path / "tokenizer").is_dir() else path
    if (path / "config.json").exists():
        return "transformers", path, path
    release = path.parent.parent / WAN_T5_FILE
    if release.is_file():
        return "release", release, path
    raise UserError(f"umt5: {path} has no config.json, no text_encoder/ and no {WAN_T5_FILE} "
                    f"(here or at {release})")


def clean_prompt(text: str) -> str:
    """Wan's ``clean='whitespace'``: fix text (ftfy, when installed), unescape HTML twice, collapse
    whitespace, strip."""
    try:
        import ftfy

        text = ftfy.fix_text(text)
    except ImportError:  # only mojibake repair is lost; plain text is unchanged by fix_text
        pass
    return re.sub(r"\s+", " ", html.unescape(html.unescape(text)).strip()).strip()


class UMT5TextEncoder(nn.Module):
    """``UMT5EncoderModel`` + tokenizer; ``max_len`` tokens, embeddings of padding zeroed.

    ``mask_padding=False`` (default, official Wan2.1): the returned mask is all True, so the DiT
    attends to the zero padding rows as Wan does; ``True``: the mask is the real tokens'.
    """

    def __init__(self, model, tokenizer, max_len: int = 512, mask_padding: bool = False):
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.max_len = max_len
        self.mask_padding = mask_padding
        self.dim = model.config.d_model

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, device="cpu", dtype=torch.float32,
                        max_len: int = 512, mask_padding: bool = False) -> "UMT5TextEncoder":
        """``path``: see :func:`find_umt5` (diffusers pipeline, transformers folder, Wan release)."""
        from transformers import AutoTokenizer, UMT5EncoderModel

        layout, model_path, tokenizer_dir = find_umt5(path)
        tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
        if layout == "release":
            model = load_wan_t5(model_path, dtype=dtype)
        else:
            model = UMT5EncoderModel.from_pretrained(str(model_path), dtype=dtype)
        return cls(model.to(device), tokenizer, max_len, mask_padding)

    @torch.no_grad()
    def encode(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """texts -> emb (B, max_len, d_model), zero beyond each text's tokens; mask (B, max_len) bool."""
        batch = self.tokenizer([clean_prompt(t) for t in texts], padding="max_length", max_length=self.max_len,
                               truncation=True, add_special_tokens=True, return_attention_mask=True,
                               return_tensors="pt")
        device = next(self.model.parameters()).device
        ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device).bool()
        emb = self.model(input_ids=ids, attention_mask=mask.long()).last_hidden_state
        emb = emb * mask[..., None].to(emb.dtype)  # Wan: u[:v], then zeros up to text_len
        return emb, mask if self.mask_padding else torch.ones_like(mask)


# =============================================================================================
# Game name -> embedding, cached
# =============================================================================================


def _digest(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:16]


ENCODER_KEY = "__encoder__"  # a cache's metadata entry naming the encoder that wrote it


def encoder_name(kind: str, text_len: int, path: str | None = None) -> str:
    """What a text embedding depends on besides the description: 'umt5:512:weights/...'."""
    return f"{kind}:{text_len}:{path or ''}"


class TextEmbedder:
    """Text conditioning of games: ``embedder(["clean_up", ...]) -> (emb (B, L, D), mask (B, L))``.

    Each game's description is encoded once and cached (in memory; :meth:`save_cache` /
    :meth:`load_cache` for a file) unless ``trainable`` (then the encoder runs every call, with
    gradients). The cache is valid for one encoder: a saved cache records each description's hash
    and entries whose description changed are recomputed.
    """

    def __init__(self, encoder: TextEncoder | None, descriptions: Mapping[str, str], trainable: bool = False):
        self.encoder = encoder  # None: only the games of a loaded cache (from_cache)
        self.descriptions = dict(descriptions)
        self.trainable = trainable
        self._cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._source: str | None = None  # the cache file an encoder-less embedder reads
        if isinstance(encoder, nn.Module) and not trainable:
            encoder.eval().requires_grad_(False)

    @classmethod
    def from_cache(cls, path: str | os.PathLike, descriptions: Mapping[str, str], encoder: str,
                   games: Sequence[str]) -> "TextEmbedder":
        """An embedder without its encoder: the embeddings of ``games`` read from a cache that
        :meth:`save_cache` wrote for the encoder named ``encoder`` (:func:`encoder_name`). A
        missing file, another encoder's cache or a game missing or described differently is a
        one-line UserError naming the file."""
        from safetensors import SafetensorError, safe_open

        path = Path(path)
        if not path.is_file():
            raise UserError(f"{path}: text embedding cache not found (written by `actionparty embed-text`)")
        try:
            with safe_open(str(path), framework="pt") as f:
                written_by = (f.metadata() or {}).get(ENCODER_KEY)
        except (SafetensorError, OSError) as err:
            raise UserError(f"{path}: not a text embedding cache ({err})") from err
        if written_by != encoder:
            raise UserError(f"{path}: written for text encoder {written_by!r}, the profile uses {encoder!r}; "
                            "rerun `actionparty embed-text`")
        embedder = cls(None, descriptions)
        embedder._source = str(path)
        taken = set(embedder.load_cache(path))
        missing = [g for g in games if g not in taken]
        if missing:
            raise UserError(f"{path}: no embedding of {missing[0]!r} for its current description "
                            f"({len(missing)} of {len(games)} games); rerun `actionparty embed-text`")
        return embedder

    @property
    def dim(self) -> int:
        if self.encoder is None:
            if not self._cache:
                raise UserError(f"{self._source}: the text embedding cache holds no games")
            return int(next(iter(self._cache.values()))[0].shape[-1])
        return self.encoder.dim

    def _description(self, game: str) -> str:
        if game not in self.descriptions:
            raise UserError(f"unknown game {game!r}: no description for text conditioning")
        return self.descriptions[game]

    def __call__(self, games: Sequence[str], device=None) -> tuple[torch.Tensor, torch.Tensor]:
        if self.trainable:
            emb, mask = self.encoder.encode([self._description(g) for g in games])
            return emb.to(device) if device else emb, mask.to(device) if device else mask
        todo = sorted({g for g in games if g not in self._cache})
        if todo and self.encoder is None:
            raise UserError(f"{self._source}: no embedding of game {todo[0]!r} (the cache holds "
                            f"{', '.join(self.cached_games())}); rerun `actionparty embed-text`")
        if todo:
            with torch.no_grad():
                emb, mask = self.encoder.encode([self._description(g) for g in todo])
            for i, game in enumerate(todo):
                self._cache[game] = (emb[i].detach().cpu(), mask[i].cpu())
        emb = torch.stack([self._cache[g][0] for g in games])
        mask = torch.stack([self._cache[g][1] for g in games])
        return emb.to(device) if device else emb, mask.to(device) if device else mask

    def cached_games(self) -> list[str]:
        return sorted(self._cache)

    def save_cache(self, path: str | os.PathLike, encoder: str = "") -> None:
        """Write the cached embeddings (safetensors, atomically) for every game computed so far;
        ``encoder`` (:func:`encoder_name`) is recorded for :meth:`from_cache` to check."""
        from safetensors.torch import save_file

        from ..atomic import atomic_path

        tensors, meta = {}, {ENCODER_KEY: encoder}
        for game, (emb, mask) in self._cache.items():
            tensors[f"{game}/emb"], tensors[f"{game}/mask"] = emb.contiguous(), mask.contiguous()
            meta[game] = _digest(self.descriptions[game])
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata=meta)

    def load_cache(self, path: str | os.PathLike) -> list[str]:
        """Read a cache written by :meth:`save_cache`; returns the games taken from it."""
        from safetensors import safe_open

        taken = []
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            for game, digest in meta.items():
                if game in self.descriptions and digest == _digest(self.descriptions[game]):
                    self._cache[game] = (f.get_tensor(f"{game}/emb"), f.get_tensor(f"{game}/mask"))
                    taken.append(game)
        return sorted(taken)


def make_text_embedder(
    kind: str,
    descriptions: Mapping[str, str],
    path: str | os.PathLike | None = None,
    device="cpu",
    dtype=torch.float32,
    trainable: bool = False,
    **kwargs,
) -> TextEmbedder:
    """``tiny`` (kwargs: dim, num_layers, num_heads, max_len, seed) or ``umt5`` (path; kwargs: max_len)."""
    if kind == "tiny":
        encoder = TinyTextEncoder.from_descriptions(list(descriptions.values()), **kwargs).to(device)
    elif kind == "umt5":
        if path is None:
            raise UserError("umt5 text encoder needs a local path (weights cannot be downloaded here)")
        encoder = UMT5TextEncoder.from_pretrained(path, device=device, dtype=dtype, **kwargs)
    else:
        raise UserError(f"unknown text encoder {kind!r}; known: {', '.join(TEXT_ENCODER_NAMES)}")
    return TextEmbedder(encoder, descriptions, trainable=trainable)
