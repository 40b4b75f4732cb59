"""Roll a trained checkpoint out from test-split context frames."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from actionparty.config import Profile
from actionparty.data.lmdb_dataset import ClipDataset
from actionparty.rollout.sampler import rollout
from actionparty.train.checkpoint import check_compatible, load_checkpoint
from actionparty.train.trainer import load_model_weights


@dataclass
class LoadedModel:
    model: torch.nn.Module
    codec: object
    text: object
    state: dict


def load_for_rollout(profile: Profile, checkpoint: str | Path, build, device="cpu") -> LoadedModel:
    """Build the profile's model and load a checkpoint's EMA weights into it."""
    state = load_checkpoint(checkpoint)
    check_compatible(checkpoint, state, profile.model.model_dump())
    model, codec, text = build(profile, device)
    load_model_weights(model, state, use_ema=True, strict=True)
    return LoadedModel(model.eval(), codec, text, state)


def window_frames(profile: Profile, train_clip_steps: int) -> int:
    """Earlier frames a chunk may see: as many as the last chunk of a training clip saw."""
    if profile.rollout.window_frames is not None:
        return profile.rollout.window_frames
    return train_clip_steps + 1 - profile.model.chunk_frames


def pick_windows(dataset: ClipDataset, per_game: int, seed: int) -> list[int]:
    """``per_game`` dataset items per game, spread over episodes, deterministic."""
    rng = np.random.default_rng(seed)
    games = dataset.index_games()
    picked = []
    for g in range(len(dataset.games)):
        items = np.flatnonzero(games == g)
        if len(items):
            picked += sorted(rng.choice(items, size=min(per_game, len(items)), replace=False).tolist())
    return picked


@torch.no_grad()
def rollout_items(loaded: LoadedModel, dataset: ClipDataset, items: list[int], profile: Profile, horizon: int,
                  train_clip_steps: int, inputs_for=None, batch_size: int = 16, seed: int = 0,
                  use_cache: bool = True) -> dict[str, np.ndarray]:
    """Generate ``horizon`` frames after the context of each item; returns arrays in the
    rollout format (frames uint8 (N, H+1, Hpx, Wpx, 3), episode, start, game, actions, present)."""
    model, codec, text = loaded.model, loaded.codec, loaded.text
    device = next(model.parameters()).device
    out = {k: [] for k in ("frames", "episode", "start", "game", "actions", "present")}
    g = torch.Generator().manual_seed(seed)
    for i in range(0, len(items), batch_size):
        batch = torch.utils.data.default_collate([dataset[j] for j in items[i : i + batch_size]])
        context = codec.encode(batch["frames"][:, :1].to(device))
        emb, mask = text([dataset.games[int(k)] for k in batch["game"]], device=device)
        inputs_fn = inputs_for(batch, device) if inputs_for else None
        latents = rollout(model, context, horizon, emb, mask, sampling_steps=profile.rollout.sampling_steps,
                          shift=profile.rollout.timestep_shift, window_frames=window_frames(profile, train_clip_steps),
                          generator=g, inputs_fn=inputs_fn, use_cache=use_cache)
        frames = codec.decode(latents, profile.canvas_px)  # (B, 1+H, 3, H, W)
        frames[:, 0] = batch["frames"][:, 0]  # the context frame is ground truth, exactly
        out["frames"].append(frames.permute(0, 1, 3, 4, 2).cpu().numpy())
        for k in ("episode", "start", "game", "actions", "present"):
            out[k].append(batch[k].numpy())
    return {k: np.concatenate(v) for k, v in out.items()}
