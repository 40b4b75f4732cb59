"""Text encoders for the games' descriptions, and a per-game embedding cache.

* ``tiny``: :class:`TinyTextEncoder`, a small transformer encoder over a word vocabulary built
  (sorted, deterministic) from the game descriptions. Seeded init; frozen by default (its random
  features are fixed, distinct per game; the DiT's ``text_embedding`` MLP learns to read them),
  or trained with the DiT (then nothing is cached).
* ``umt5``: :class:`UMT5TextEncoder`, transformers ``UMT5EncoderModel`` + tokenizer from a local
  path (Wan uses umt5-xxl: 4096 channels, 512 tokens). As in Wan, the embeddings of padding
  positions are zero.

Every encoder maps a list of texts to ``(emb (B, L, D), mask (B, L) bool)`` with fixed L = its
``max_len``. :class:`TextEmbedder` maps *game names* to those, computing each game once.
"""

from __future__ import annotations

import hashlib
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


class UMT5TextEncoder(nn.Module):
    """``UMT5EncoderModel`` + tokenizer; padded to ``max_len`` tokens, padding embeddings zeroed."""

    def __init__(self, model, tokenizer, max_len: int = 512):
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.max_len = max_len
        self.dim = model.config.d_model

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, device="cpu", dtype=torch.float32,
                        max_len: int = 512) -> "UMT5TextEncoder":
        """``path``: a folder with the model (config.json + weights) and its tokenizer, or a diffusers
        pipeline folder with ``text_encoder/`` and ``tokenizer/``."""
        from transformers import AutoTokenizer, UMT5EncoderModel

        path = Path(path)
        if not path.is_dir():
            raise UserError(f"umt5: {path} is not a folder with a local UMT5 model")
        model_dir = path / "text_encoder" if (path / "text_encoder" / "config.json").exists() else path
        tokenizer_dir = path / "tokenizer" if (path / "tokenizer").is_dir() else path
        if not (model_dir / "config.json").exists():
            raise UserError(f"umt5: {model_dir} has no config.json")
        tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
        model = UMT5EncoderModel.from_pretrained(str(model_dir), dtype=dtype).to(device)
        return cls(model, tokenizer, max_len)

    @torch.no_grad()
    def encode(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        batch = self.tokenizer(list(texts), padding="max_length", max_length=self.max_len, truncation=True,
                               add_special_tokens=True, return_attention_mask=True, return_tensors="pt")
        device = next(self.model.parameters()).device
        ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device).bool()
        emb = self.model(input_ids=ids, attention_mask=mask.long()).last_hidden_state
        return emb * mask[..., None].to(emb.dtype), mask


# =============================================================================================
# Game name -> embedding, cached
# =============================================================================================


def _digest(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:16]


class TextEmbedder:
    """Text conditioning of games: ``embedder(["clean_up", ...]) -> (emb (B, L, D), mask (B, L))``.

    Each game's description is encoded once and cached (in memory; :meth:`save_cache` /
    :meth:`load_cache` for a file) unless ``trainable`` (then the encoder runs every call, with
    gradients). The cache is valid for one encoder: a saved cache records each description's hash
    and entries whose description changed are recomputed.
    """

    def __init__(self, encoder: TextEncoder, descriptions: Mapping[str, str], trainable: bool = False):
        self.encoder = encoder
        self.descriptions = dict(descriptions)
        self.trainable = trainable
        self._cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        if isinstance(encoder, nn.Module) and not trainable:
            encoder.eval().requires_grad_(False)

    @property
    def dim(self) -> int:
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

    def save_cache(self, path: str | os.PathLike) -> None:
        """Write the cached embeddings (safetensors, atomically) for every game computed so far."""
        from safetensors.torch import save_file

        from ..atomic import atomic_path

        tensors, meta = {}, {}
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
