"""Training checkpoints: weights, EMA, optimizer, step and config in one file, written atomically.

A checkpoint is enough to resume exactly (batches and noise are functions of (seed, step), see
train.distributed) and to rebuild the model for rollout.
"""

from __future__ import annotations

from pathlib import Path

import torch

from actionparty.atomic import atomic_path
from actionparty.errors import UserError

# 2: the conditioning modules' parameters are under ``conditioning.`` (model.conditioning).
FORMAT = "actionparty-checkpoint-2"


def save_checkpoint(path: str | Path, **state) -> None:
    with atomic_path(path) as tmp:
        torch.save({"format": FORMAT, **state}, tmp)


def snapshot_path(run: str | Path, step: int) -> Path:
    """A run's EMA snapshot at ``step`` (learning-curve points)."""
    return Path(run) / "snapshots" / f"step_{step:06d}.pt"


def list_snapshots(run: str | Path) -> list[tuple[int, Path]]:
    """(step, path) of a run's snapshots, by step."""
    found = []
    for p in (Path(run) / "snapshots").glob("step_*.pt"):
        if p.stem.startswith("step_") and p.stem[5:].isdigit():
            found.append((int(p.stem[5:]), p))
    return sorted(found)


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means a bad file
        raise UserError(f"{path}: not a readable checkpoint ({type(err).__name__}: {err})") from None
    if not isinstance(state, dict) or not str(state.get("format", "")).startswith("actionparty-checkpoint-"):
        raise UserError(f"{path}: not an ActionParty checkpoint (expected format {FORMAT})")
    if state["format"] != FORMAT:
        raise UserError(f"{path}: checkpoint format {state['format']}, this version reads {FORMAT} (retrain it)")
    return state


def check_compatible(path: str | Path, state: dict, profile_model: dict) -> None:
    """Refuse a checkpoint whose model section differs from the profile's (one line)."""
    saved = state.get("profile", {}).get("model", {})
    for key in sorted(set(saved) | set(profile_model)):
        if saved.get(key) != profile_model.get(key):
            raise UserError(f"{path}: checkpoint was trained with model.{key}={saved.get(key)!r}, "
                            f"the profile has {profile_model.get(key)!r}")


def load_model_weights(model: torch.nn.Module, state: dict, use_ema: bool = True, strict: bool = True):
    """Load a checkpoint's EMA (or raw) weights; returns torch's missing/unexpected key report."""
    weights = state["ema"]["shadow"] if use_ema and state.get("ema") else state["model"]
    target = model.state_dict()
    weights = {k: v.to(target[k].dtype) if k in target else v for k, v in weights.items()}
    return model.load_state_dict(weights, strict=strict)
