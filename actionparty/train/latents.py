"""Which training clips the latent cache holds, and encoding them (``actionparty encode-latents``).

The clips are those the profile's training runs draw: pretraining and every finetune run
(``variants`` and ``seed_runs``). A run's draws are a function of its sampler's settings
(seed, steps, global batch, clip length; :class:`~actionparty.train.trainer.StepBatchSampler`),
so runs that share them share their clips: the finetunes of one seed draw what pretraining drew
in its first steps. Shard k of n holds the clips of the steps s with s mod n = k (a clip drawn
at steps of two residues is in two shards), so n jobs split the work without talking to each
other. docs/TRAINING.md (Latent cache) has the figures.
"""

from __future__ import annotations

from pathlib import Path

import torch

from actionparty.data.latent_cache import LATENT_CACHE_SCHEMA, clip_latents, codec_identity, dataset_identity, shard_name, write_shard
from actionparty.data.lmdb_dataset import ClipDataset


def training_runs(profile) -> list[tuple[str, object]]:
    """(name, train config) of every run the profile's DAG trains."""
    from actionparty.variants import finetune_run

    runs = [("pretrain", profile.pretrain)]
    for run in [*profile.variants, *profile.seed_runs]:
        runs.append((run, finetune_run(profile, run)[2]))
    return runs


def lead_of(cfg) -> int:
    """1 when the run's clips carry the frame before the context (self-generated contexts)."""
    return 1 if cfg.self_context > 0 else 0


class _Clips(dict):
    """clip steps -> the train LMDB's ClipDataset of clips that long (each index built once)."""

    def __init__(self, train_lmdb: str | Path, canvas_px: int):
        super().__init__()
        self.train_lmdb, self.canvas_px = train_lmdb, canvas_px

    def __missing__(self, clip_steps: int) -> ClipDataset:
        self[clip_steps] = ClipDataset(self.train_lmdb, clip_steps=clip_steps, expect_canvas_px=self.canvas_px)
        return self[clip_steps]


def shard_clips(profile, train_lmdb: str | Path, shard: int, shards: int,
                clips: _Clips | None = None) -> list[tuple[int, int, int]]:
    """Sorted (episode, first frame, frames) of the latents shard ``shard`` of ``shards`` holds."""
    from actionparty.train.trainer import StepBatchSampler

    clips = _Clips(train_lmdb, profile.canvas_px) if clips is None else clips
    keys: set[tuple[int, int, int]] = set()
    streams = set()
    for _, cfg in training_runs(profile):
        lead = lead_of(cfg)
        stream = (cfg.seed, cfg.batch_size, cfg.clip_steps, lead)
        dataset = clips[cfg.clip_steps + lead]
        sampler = StepBatchSampler(len(dataset), cfg.batch_size, cfg.seed, 0, cfg.steps, slice(None))
        for step in range(shard, cfg.steps, shards):
            if (stream, step) in streams:  # another run drew this step already
                continue
            streams.add((stream, step))
            for i in sampler.global_indices(step):
                episode, start = (int(v) for v in dataset.index[i])
                for first, frames in clip_latents(start, dataset.clip_steps, lead).values():
                    keys.add((episode, first, frames))
    return sorted(keys)


def encode_latents(profile, train_lmdb: str | Path, out_dir: str | Path, shard: int, shards: int,
                   device="cpu", batch_clips: int = 8, progress: bool = True) -> int:
    """Encode shard ``shard`` of ``shards`` into ``out_dir/shard-{k}-of-{n}.lmdb``; returns its clips."""
    from actionparty.errors import UserError
    from actionparty.model.world import build_frame_codec

    if not 0 <= shard < shards:
        raise UserError(f"--shard {shard} is not in 0..{shards - 1}")
    codec = build_frame_codec(profile.model, device=device)
    clips = _Clips(train_lmdb, profile.canvas_px)
    keys = shard_clips(profile, train_lmdb, shard, shards, clips)
    by_length: dict[int, list[tuple[int, int, int]]] = {}
    for key in keys:
        by_length.setdefault(key[2], []).append(key)
    first_clips = next(iter(clips.values()))
    probe = codec.encode(first_clips.clip(0, 0)["frames"][None, :1].to(device))  # the latent's shape
    meta = {"schema_version": LATENT_CACHE_SCHEMA, "codec": codec_identity(profile.model), "dataset": dataset_identity(train_lmdb),
            "shard": shard, "shards": shards, "latent": [probe.shape[1], *probe.shape[3:]],
            "frames": sorted(by_length)}

    def records():
        # Clips of one length at a time, in batches of batch_clips (as training encodes them: a batch).
        for frames, group in sorted(by_length.items()):
            dataset = clips[frames - 1]
            for i in range(0, len(group), batch_clips):
                part = group[i:i + batch_clips]
                video = torch.stack([dataset.clip(e, first)["frames"] for e, first, _ in part])
                latents = codec.encode(video.to(device))
                yield from zip(part, latents)

    out = Path(out_dir) / shard_name(shard, shards)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    write_shard(out, records(), meta, clips=len(keys), progress=progress)
    return len(keys)
