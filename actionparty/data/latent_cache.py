"""The latent cache: the frame codec's latents of the training clips, encoded once.

Training encodes every clip it draws with the frame codec; with the Wan VAE at 512 px that is
about 23 TFLOP a clip (`actionparty estimate`), and the finetunes draw the clips pretraining
drew. With ``model.latent_cache`` set, rule ``latents`` encodes the clips the profile's runs
draw (:mod:`actionparty.train.latents`) once, and training reads them instead of running the
codec.

A clip's latents are what the codec makes of exactly that clip: the Wan VAE is causal, so a
frame's latent depends on where the encoded video starts, and latents cut from a longer
encoding would not be what training computes. Records are therefore keyed by (episode, first
frame, frames), not by frame.

Layout: a folder of ``resources.latent_shards`` LMDBs ``shard-{k}-of-{n}.lmdb`` (one job each);
every value starts with the CRC32 of the rest, as in the dataset:

``__meta__``                          JSON: schema_version, codec, dataset, shard, shards,
                                      latent (C, h, w), clips
``c/{episode:06d}/{first:04d}/{n:02d}``  float32 latents (C, n, h, w) of frames first..first+n-1

``codec`` names the codec (:func:`codec_identity`), ``dataset`` is the sha256 of the train
LMDB's ``__meta__``: a cache of another codec or dataset is refused in one line.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Iterable

import lmdb
import numpy as np
import torch
from tqdm import tqdm

from actionparty.atomic import atomic_path
from actionparty.data.lmdb_dataset import (
    META_KEY,
    _read,
    _seal,
    check_replaceable,
    lmdb_errors,
    open_lmdb,
    read_meta,
)
from actionparty.errors import DatasetError

LATENT_CACHE_SCHEMA = 1
_RECORDS_PER_COMMIT = 256  # records per write transaction (each commit syncs)
_SHARD = re.compile(r"shard-(\d+)-of-(\d+)\.lmdb")


def clip_key(episode: int, first: int, frames: int) -> bytes:
    return f"c/{episode:06d}/{first:04d}/{frames:02d}".encode()


def shard_name(shard: int, shards: int) -> str:
    return f"shard-{shard}-of-{shards}.lmdb"


def codec_identity(model_cfg) -> str:
    """The codec as a cache records it: name, weights and the resolution frames are encoded at."""
    return f"{model_cfg.codec}:{model_cfg.vae_path}:{model_cfg.resolution}"


def dataset_identity(train_lmdb: str | Path) -> str:
    """sha256 of the LMDB's ``__meta__`` (its episodes, seeds, games, canvas)."""
    path = Path(train_lmdb)
    meta = read_meta(open_lmdb(path), path)
    return hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()


def write_shard(out: str | Path, records: Iterable[tuple[tuple[int, int, int], torch.Tensor]], meta: dict,
                clips: int, progress: bool = True) -> None:
    """Write one shard atomically: ``records`` yields ((episode, first, frames), latents (C, n, h, w))."""
    out = Path(out)
    check_replaceable(out)
    c, h, w = meta["latent"]
    frames_bound = max(meta["frames"])
    map_size = int(clips * (c * frames_bound * h * w * 4 + 4096) * 1.25) + (64 << 20)
    with atomic_path(out) as tmp, lmdb_errors(out):
        env = lmdb.open(str(tmp), map_size=map_size, subdir=True, meminit=True, map_async=False)
        try:
            bar = tqdm(total=clips, desc=f"latents {out.name}", unit="clip", disable=not progress)
            written = 0
            txn = env.begin(write=True)
            for (episode, first, frames), latents in records:
                array = np.ascontiguousarray(latents.detach().to("cpu", torch.float32).numpy())
                if array.shape != (c, frames, h, w):
                    raise DatasetError(f"{out}: latents of shape {array.shape}, expected {(c, frames, h, w)}")
                txn.put(clip_key(episode, first, frames), _seal(array.tobytes()))
                written += 1
                bar.update()
                if written % _RECORDS_PER_COMMIT == 0:
                    txn.commit()
                    txn = env.begin(write=True)
            bar.close()
            txn.put(META_KEY, _seal(json.dumps({**meta, "clips": written}).encode()))
            txn.commit()
            env.sync(True)
        finally:
            env.close()
        (tmp / "lock.mdb").unlink(missing_ok=True)


class LatentCache:
    """Read side: every shard of the folder, checked against the codec and dataset expected."""

    def __init__(self, folder: str | Path, codec: str, dataset: str):
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise DatasetError(f"{self.folder}: no latent cache here (rule latents writes it: "
                               "actionparty encode-latents)")
        found = sorted((int(m[1]), int(m[2]), p) for p in self.folder.iterdir() if (m := _SHARD.fullmatch(p.name)))
        if not found:
            raise DatasetError(f"{self.folder}: holds no shard-K-of-N.lmdb (an empty or foreign folder)")
        shards = {n for _, n, _ in found}
        if len(shards) != 1 or sorted(k for k, _, _ in found) != list(range(found[0][1])):
            raise DatasetError(f"{self.folder}: shards {', '.join(p.name for *_, p in found)} are not one "
                               "complete set (rerun the latents rule)")
        self.shards = [p for *_, p in found]
        for k, path in enumerate(self.shards):
            meta = self._meta(path)
            expected = {"schema_version": LATENT_CACHE_SCHEMA, "codec": codec, "dataset": dataset,
                        "shard": k, "shards": len(self.shards)}
            for field, value in expected.items():
                if meta.get(field) != value:
                    raise DatasetError(f"{path}: __meta__ field '{field}' is {meta.get(field)!r}, expected "
                                       f"{value!r} (a cache of another codec or dataset: rerun the latents rule)")
            self.latent = tuple(meta["latent"])

    @staticmethod
    def _meta(path: Path) -> dict:
        env = open_lmdb(path)
        with lmdb_errors(path), env.begin(buffers=True) as txn:
            raw = bytes(_read(path, env, txn, META_KEY))
        try:
            meta = json.loads(raw)
        except ValueError:
            raise DatasetError(f"{path}: __meta__ is not JSON (corrupt cache; rerun the latents rule)") from None
        if not isinstance(meta, dict) or not isinstance(meta.get("latent"), list):
            raise DatasetError(f"{path}: __meta__ has no 'latent' shape (corrupt cache; rerun the latents rule)")
        return meta

    def get(self, episode: int, first: int, frames: int) -> torch.Tensor:
        """Latents (C, frames, h, w) of frames first..first+frames-1 of ``episode``."""
        key = clip_key(episode, first, frames)
        c, h, w = self.latent
        for path in self.shards:
            env = open_lmdb(path)  # this process's handle (never one inherited through a fork)
            with lmdb_errors(path), env.begin(buffers=True) as txn:
                if txn.get(key) is None:
                    continue
                raw = _read(path, env, txn, key)
                if len(raw) != c * frames * h * w * 4:
                    raise DatasetError(f"{path}: record {key.decode()} has {len(raw)} bytes, "
                                       f"expected {c * frames * h * w * 4}")
                return torch.from_numpy(np.frombuffer(raw, np.float32).copy()).view(c, frames, h, w)
        raise DatasetError(f"{self.folder}: no latents of episode {episode}, frames {first}..{first + frames - 1} "
                           "(written for other training runs: rerun the latents rule)")


class CachedLatentClips(torch.utils.data.Dataset):
    """A :class:`~actionparty.data.lmdb_dataset.ClipDataset` whose items also carry their clip's
    cached latents: ``latents`` (C, K+1, h, w) of the frames after the ``lead`` (the clip
    training encodes) and, with a lead, ``lead_latents`` (C, 1, h, w) of the frame before."""

    def __init__(self, clips, cache: LatentCache, lead: int):
        self.clips, self.cache, self.lead = clips, cache, lead
        self.games = clips.games

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        item = self.clips[i]
        episode, start = (int(v) for v in self.clips.index[i])
        for name, (first, frames) in clip_latents(start, self.clips.clip_steps, self.lead).items():
            item[name] = self.cache.get(episode, first, frames)
        return item


def clip_latents(start: int, clip_steps: int, lead: int) -> dict[str, tuple[int, int]]:
    """(first frame, frames) of what training encodes of the clip of ``clip_steps`` steps
    (lead included) from ``start``: the clip after the lead, and the frame before it."""
    out = {"latents": (start + lead, clip_steps - lead + 1)}
    if lead:
        out["lead_latents"] = (start, 1)
    return out
