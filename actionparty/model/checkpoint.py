"""Training checkpoints: weights, EMA, optimizer, step and config in one file, written atomically.

A checkpoint is enough to resume exactly (batches and noise are functions of (seed, step), see
train.distributed) and to rebuild the model for rollout. It says what it is (``stage``: exp-138
or the variant it finetunes, ``games``, the profile it was trained with) and carries a sha256
``digest`` of everything in it; :func:`load_checkpoint` reads it weights-only (no pickled code
runs), checks the digest and, where the caller says what it expects, the stage and the games.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from actionparty.atomic import atomic_path
from actionparty.errors import UserError

# 2: the conditioning modules' parameters are under ``conditioning.`` (model.conditioning); a digest.
FORMAT = "actionparty-checkpoint-2"
PRETRAIN_STAGE = "exp-138"  # the stage of a video-only pretraining checkpoint


def _digest(value, h=None) -> str:
    """sha256 of a checkpoint's content: every tensor's dtype, shape and bytes and every other
    value, with dict keys in sorted order."""
    h = h or hashlib.sha256()
    if torch.is_tensor(value):
        t = value.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())  # the buffer itself: no copy of the weights
    elif isinstance(value, dict):
        h.update(b"{")
        for key in sorted(value, key=str):
            h.update(repr(key).encode())
            _digest(value[key], h)
        h.update(b"}")
    elif isinstance(value, (list, tuple)):
        h.update(b"[")
        for item in value:
            _digest(item, h)
        h.update(b"]")
    else:
        h.update(repr(value).encode())
    return h.hexdigest()


def save_checkpoint(path: str | Path, **state) -> None:
    state = {"format": FORMAT, **state}
    state["digest"] = _digest(state)
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


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


def load_checkpoint(path: str | Path, map_location="cpu", *, stage: str | None = None,
                    games: list[str] | None = None) -> dict:
    """A checkpoint, read weights-only and checked whole (format, digest); with ``stage`` (e.g.
    :data:`PRETRAIN_STAGE`, or a variant name) and ``games``, refused unless it is of that
    stage and was trained on those games. One-line UserError naming the file otherwise."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means a bad (or unsafe) file
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise UserError(f"{path}: not a readable checkpoint ({type(err).__name__}: {first[:200]})") from None
    if not isinstance(state, dict) or not str(state.get("format", "")).startswith("actionparty-checkpoint-"):
        raise UserError(f"{path}: not an ActionParty checkpoint (expected format {FORMAT})")
    if state["format"] != FORMAT:
        raise UserError(f"{path}: checkpoint format {state['format']}, this version reads {FORMAT} (retrain it)")
    digest = state.pop("digest", None)
    if digest != _digest(state):
        raise UserError(f"{path}: checksum mismatch (the file is damaged or was edited)")
    if stage is not None and state.get("stage") != stage:
        raise UserError(f"{path}: a checkpoint of stage '{state.get('stage')}', expected '{stage}'")
    if games is not None and list(state.get("games", [])) != list(games):
        raise UserError(f"{path}: trained on games {state.get('games')}, expected {list(games)}")
    return state


# Model keys that say where a value is read from, not what the model is: never compared.
SOURCE_KEYS = ("text_cache", "latent_cache")


def check_compatible(path: str | Path, state: dict, profile_model: dict, ignore: tuple[str, ...] = ()) -> None:
    """Refuse a checkpoint whose model section differs from the profile's (one line), but for
    the keys ``ignore`` and :data:`SOURCE_KEYS`."""
    saved = state.get("profile", {}).get("model", {})
    for key in sorted((set(saved) | set(profile_model)) - set(ignore) - set(SOURCE_KEYS)):
        if saved.get(key) != profile_model.get(key):
            raise UserError(f"{path}: checkpoint was trained with model.{key}={saved.get(key)!r}, "
                            f"the profile has {profile_model.get(key)!r}")


def load_model_weights(model: torch.nn.Module, state: dict, use_ema: bool = True, strict: bool = True):
    """Load a checkpoint's EMA (or raw) weights; returns torch's missing/unexpected key report."""
    weights = state["ema"]["shadow"] if use_ema and state.get("ema") else state["model"]
    target = model.state_dict()
    weights = {k: v.to(target[k].dtype) if k in target else v for k, v in weights.items()}
    return model.load_state_dict(weights, strict=strict)
