"""Roll models out from test-split context frames with the recorded action sequences.

Models: an action-conditioned variant (a finetune checkpoint), ``pretrained_ar`` (the exp-138
checkpoint, no actions) and ``static`` (repeats the context frame: the copy floor). Output is
the rollout format of :mod:`actionparty.rollout.rollout_io`.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from actionparty.config import Profile
from actionparty.data.lmdb_dataset import ClipDataset
from actionparty.device import default_device
from actionparty.model.checkpoint import check_compatible, load_checkpoint, load_model_weights
from actionparty.model.factory import build_world_model
from actionparty.rollout.sampler import Sampler, run
from actionparty.variants import VariantConfig, variant_profile

@dataclass
class LoadedModel:
    model: torch.nn.Module
    codec: object
    text: object
    state: dict

    @property
    def train_clip_steps(self) -> int:
        return int(self.state["train_clip_steps"])


def rollout_device() -> str:
    """Where rollouts run: the GPU when there is one."""
    return default_device()


def load_for_rollout(profile: Profile, checkpoint: str | Path, device="cpu", *, stage: str | None = None,
                     games: list[str] | None = None) -> LoadedModel:
    """Build the model a checkpoint was trained as (video-only or its variant, with the variant's
    recipe) with its EMA weights; ``stage`` and ``games``: refuse a checkpoint of another stage
    or other games."""
    state = load_checkpoint(checkpoint, stage=stage, games=games)
    variant = VariantConfig.model_validate(state["variant_config"]) if state.get("variant_config") else None
    profile = variant_profile(profile, variant)
    check_compatible(checkpoint, state, profile.model.model_dump())
    model, codec, text = build_world_model(profile, device, variant)
    load_model_weights(model, state, use_ema=True, strict=True)
    return LoadedModel(model.eval(), codec, text, state)


def window_frames(profile: Profile, loaded: LoadedModel) -> int:
    """Earlier frames a chunk may see: as many as the last chunk of a training clip saw."""
    if profile.rollout.window_frames is not None:
        return profile.rollout.window_frames
    return loaded.train_clip_steps + 1 - loaded.model.chunk_frames


@torch.no_grad()
def rollout_windows(loaded: LoadedModel | None, dataset: ClipDataset, windows: dict[str, np.ndarray],
                    profile: Profile, actions: np.ndarray | None = None, batch_size: int = 16, seed: int = 0,
                    use_cache: bool = True, progress: bool = True) -> dict[str, np.ndarray]:
    """Generate ``dataset.clip_steps`` frames after the context of each window.

    Args:
        loaded: the model, or None for ``static`` (every frame = the context frame).
        windows: {'episode', 'start', 'game'} (N,) arrays (see rollout.rollout_io.select_windows).
        actions: (N, H, S) actions to feed instead of the recorded ones (binding test swaps).

    Returns the rollout arrays: frames uint8 (N, H+1, Hpx, Wpx, 3), episode, start, game,
    actions, present, and for state-token models pred_position (N, H+1, S, 2) float32 cells and
    pred_facing (N, H+1, S).
    """
    horizon = dataset.clip_steps
    n = len(windows["episode"])
    out: dict[str, list] = {k: [] for k in ("frames", "actions", "present", "pred_position", "pred_facing")}
    g = torch.Generator().manual_seed(seed)
    bar = tqdm(total=n, desc=f"rollout h{horizon}", unit="clip", disable=not progress)
    for i in range(0, n, batch_size):
        rows = range(i, min(i + batch_size, n))
        batch = torch.utils.data.default_collate(
            [dataset.clip(int(windows["episode"][r]), int(windows["start"][r])) for r in rows])
        acts = batch["actions"] if actions is None else torch.as_tensor(actions[i : i + len(rows)])
        out["actions"].append(acts.numpy())
        out["present"].append(batch["present"].numpy())
        frames = batch["frames"]  # (B, 1+H, 3, Hpx, Wpx)
        if loaded is None:
            gen = frames[:, :1].expand(-1, horizon + 1, -1, -1, -1)
        else:
            gen, states = _generate(loaded, dataset, batch, acts, profile, horizon, g, use_cache)
            if states is not None:
                position, facing = loaded.model.grid.decode(states)
                out["pred_position"].append(position.float().numpy())
                out["pred_facing"].append(facing.numpy())
        gen = gen.clone()
        gen[:, 0] = frames[:, 0]  # the context frame is ground truth, exactly
        out["frames"].append(gen.permute(0, 1, 3, 4, 2).numpy())
        bar.update(len(rows))
    bar.close()
    result = {k: np.concatenate(v) for k, v in out.items() if v}
    result.update({k: np.asarray(windows[k], dtype=np.int64) for k in ("episode", "start", "game")})
    result["actions"] = result["actions"].astype(np.int64)
    return result


def make_sampler(loaded: LoadedModel, profile: Profile, games: list[str], present: torch.Tensor,
                 generator: torch.Generator, chunk_actions=None, use_cache: bool = True) -> Sampler:
    """The :class:`Sampler` every rollout of ``loaded`` uses (the metrics' and play's): the
    profile's Euler steps, state pass, shift, context noise and KV window, the games' text.
    ``present`` (B, S); ``chunk_actions(first step, steps)`` -> (B, steps, S): the actions a
    text-action prompt writes for the chunk being drawn."""
    model, text = loaded.model, loaded.text
    device = present.device
    emb, mask = text(games, device=device) if not text.with_actions else (None, None)
    text_fn = None
    if text.with_actions:
        text_fn = lambda s, n: text(games, actions=chunk_actions(s, n), present=present, device=device)  # noqa: E731
    r = profile.rollout
    return Sampler(model, emb, mask, sampling_steps=r.sampling_steps, state_sampling_steps=r.state_sampling_steps,
                   context_noise=r.context_noise, shift=r.timestep_shift,
                   window_frames=window_frames(profile, loaded), generator=generator,
                   present=present if model.takes_actions else None, text_fn=text_fn, use_cache=use_cache)


def context_states(loaded: LoadedModel, position: torch.Tensor, facing: torch.Tensor) -> torch.Tensor | None:
    """(B, 1, S, 6) clean states of the context frame from its cells (B, 1, S, 2) and facings
    (B, 1, S), for models that take actions; None for the others."""
    model = loaded.model
    return model.grid.encode(position, facing) if model.takes_actions else None


def _generate(loaded: LoadedModel, dataset, batch, actions, profile, horizon, generator, use_cache):
    model, codec = loaded.model, loaded.codec
    device = next(model.parameters()).device
    games = [dataset.games[int(k)] for k in batch["game"]]
    actions = actions.to(device)
    sampler = make_sampler(loaded, profile, games, batch["present"].to(device), generator,
                           lambda s, n: actions[:, max(s, 0) : max(s, 0) + n], use_cache)
    context_state = context_states(loaded, batch["position"][:, :1].to(device), batch["facing"][:, :1].to(device))
    # bf16 autocast where the profile trains in bf16 on a GPU (the residual stream stays fp32).
    bf16 = profile.model.precision == "bf16" and device.type == "cuda"
    with torch.autocast("cuda", dtype=torch.bfloat16) if bf16 else nullcontext():
        result = run(sampler, codec.encode(batch["frames"][:, :1].to(device)), horizon,
                     actions if model.takes_actions else None, context_state)
    frames = codec.decode(result.latents, profile.canvas_px).cpu()
    return frames, None if result.states is None else result.states.cpu()
