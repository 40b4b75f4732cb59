"""Rollout files: what a model's rollout stage writes and the evaluation reads.

One file per (model variant, horizon H), ``results/rollouts/{variant}/h{H}.npz`` (numpy, no
pickle), and a sibling ``h{H}.json`` with {variant, horizon, split, sampling_steps, seed}.
BA rollouts (two players' action sequences exchanged) are separate files with a ``swap`` array,
by convention ``h{H}_swap.npz``. For N test windows and S = 8 slots:

===============  ============================  ================================================
name             dtype, shape                  meaning
===============  ============================  ================================================
frames           uint8 (N, H+1, Hpx, Wpx, 3)   frame 0 = the real context frame, 1..H generated
episode, start   int64 (N,)                    the test window: ``ClipDataset(test, clip_steps=H)``
game             int64 (N,)                    game index of the test LMDB
actions          int64 (N, H, S)               actions fed to the model (swapped in BA rollouts)
present          bool (N, S)                   slot holds a player
pred_position    float32 (N, H+1, S, 2)        optional: the model's own (x, y) canvas cells
pred_facing      int64 (N, H+1, S)             optional: the model's own facing 0..3
swap             int64 (N, 2)                  optional: the two exchanged slots (-1 = none)
===============  ============================  ================================================

Which windows: :func:`select_windows`, shared by the rollout stage, the learning curves and the
oracle so all see the same windows. Which swaps: :func:`choose_swaps` (:func:`binding_swaps` also
exchanges the actions), shared by the rollout stage and the learning curves.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np

from actionparty.atomic import write_json
from actionparty.data.npz import save_npz
from actionparty.errors import UserError
from actionparty.games import PLAYER_SLOTS

META_KEYS = ("variant", "horizon", "split", "sampling_steps", "seed")


class RolloutError(UserError):
    """A rollout file that is missing or does not follow the format."""


@dataclass
class Rollout:
    """Arrays of one rollout file (see the module docstring for shapes)."""

    frames: np.ndarray
    episode: np.ndarray
    start: np.ndarray
    game: np.ndarray
    actions: np.ndarray
    present: np.ndarray
    pred_position: np.ndarray | None = None
    pred_facing: np.ndarray | None = None
    swap: np.ndarray | None = None
    meta: dict = field(default_factory=dict)

    @property
    def num(self) -> int:
        return int(self.frames.shape[0])

    @property
    def horizon(self) -> int:
        return int(self.frames.shape[1]) - 1

    @property
    def is_swap(self) -> bool:
        return self.swap is not None


# name -> (dtype, shape with symbols N, T (= H+1), H, P (pixels), S, or ints), required
_FIELDS = {
    "frames": (np.uint8, ("N", "T", "P", "P", 3), True),
    "episode": (np.int64, ("N",), True),
    "start": (np.int64, ("N",), True),
    "game": (np.int64, ("N",), True),
    "actions": (np.int64, ("N", "H", "S"), True),
    "present": (np.bool_, ("N", "S"), True),
    "pred_position": (np.float32, ("N", "T", "S", 2), False),
    "pred_facing": (np.int64, ("N", "T", "S"), False),
    "swap": (np.int64, ("N", 2), False),
}


def _check_arrays(arrays: dict, source: str) -> None:
    unknown = sorted(set(arrays) - set(_FIELDS))
    if unknown:
        raise RolloutError(f"{source}: unknown field '{unknown[0]}'")
    frames = arrays.get("frames")
    if frames is None:
        raise RolloutError(f"{source}: field 'frames' is missing")
    if frames.ndim != 5 or frames.shape[1] < 2:
        raise RolloutError(f"{source}: field 'frames' must be (N, H+1, Hpx, Wpx, 3) with H >= 1, got {frames.shape}")
    sizes = {"N": frames.shape[0], "T": frames.shape[1], "H": frames.shape[1] - 1, "P": frames.shape[2],
             "S": PLAYER_SLOTS}
    for name, (dtype, shape, required) in _FIELDS.items():
        value = arrays.get(name)
        if value is None:
            if required:
                raise RolloutError(f"{source}: field '{name}' is missing")
            continue
        expected = tuple(sizes[d] if isinstance(d, str) else d for d in shape)
        if value.dtype != dtype:
            raise RolloutError(f"{source}: field '{name}' has dtype {value.dtype}, expected {np.dtype(dtype)}")
        if value.shape != expected:
            raise RolloutError(f"{source}: field '{name}' has shape {value.shape}, expected {expected}")
    actions = arrays["actions"]
    if actions.size and (actions.min() < 0 or actions.max() > 7):
        raise RolloutError(f"{source}: field 'actions' holds values outside the canonical ids 0..7")
    facing = arrays.get("pred_facing")
    if facing is not None and facing.size and (facing.min() < 0 or facing.max() > 3):
        raise RolloutError(f"{source}: field 'pred_facing' holds values outside 0..3")
    swap = arrays.get("swap")
    if swap is not None and swap.size and (swap.min() < -1 or swap.max() >= PLAYER_SLOTS):
        raise RolloutError(f"{source}: field 'swap' holds slots outside -1..{PLAYER_SLOTS - 1}")


def _check_meta(meta, horizon: int | None, source: str) -> None:
    if not isinstance(meta, dict):
        raise RolloutError(f"{source}: must hold a JSON object")
    missing = [k for k in META_KEYS if k not in meta]
    if missing:
        raise RolloutError(f"{source}: field '{missing[0]}' is missing")
    if not isinstance(meta["horizon"], int) or meta["horizon"] < 1:
        raise RolloutError(f"{source}: field 'horizon' must be a positive integer")
    if horizon is not None and meta["horizon"] != horizon:
        raise RolloutError(f"{source}: field 'horizon' is {meta['horizon']} but the frames hold {horizon} steps")


def meta_path(path: str | Path) -> Path:
    """The sidecar JSON of a rollout file: ``h4.npz`` -> ``h4.json``."""
    return Path(path).with_suffix(".json")


def write_rollout(path: str | Path, rollout: Rollout) -> None:
    """Validate and write ``rollout`` (npz + sidecar JSON from ``rollout.meta``), each atomically."""
    path = Path(path)
    arrays = {f.name: getattr(rollout, f.name) for f in fields(rollout) if f.name != "meta"}
    arrays = {k: v for k, v in arrays.items() if v is not None}
    _check_arrays(arrays, str(path))
    _check_meta(rollout.meta, rollout.horizon, str(meta_path(path)))
    save_npz(path, arrays)
    write_json(meta_path(path), rollout.meta)


def read_rollout_meta(path: str | Path) -> dict:
    """The sidecar JSON of a rollout file (its keys checked; the horizon is checked against the
    frames by :func:`read_rollout`)."""
    side = meta_path(path)
    if not side.is_file():
        raise RolloutError(f"{side}: rollout metadata not found")
    try:
        meta = json.loads(side.read_text())
    except json.JSONDecodeError as err:
        raise RolloutError(f"{side}: not valid JSON ({err})") from None
    _check_meta(meta, None, str(side))
    return meta


def read_rollout(path: str | Path) -> Rollout:
    """Read and validate a rollout file and its sidecar; RolloutError names the file and field."""
    path = Path(path)
    if not path.is_file():
        raise RolloutError(f"{path}: rollout file not found")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (ValueError, OSError, zipfile.BadZipFile) as err:
        raise RolloutError(f"{path}: not a readable .npz ({str(err).splitlines()[0]})") from None
    _check_arrays(arrays, str(path))
    meta = read_rollout_meta(path)
    _check_meta(meta, int(arrays["frames"].shape[1]) - 1, str(meta_path(path)))
    return Rollout(**arrays, meta=meta)


# ---------------------------------------------------------------------------------------------
# Which windows are rolled out, and which players are swapped
# ---------------------------------------------------------------------------------------------


def select_windows(dataset, per_game: int, seed: int) -> dict[str, np.ndarray]:
    """Test windows to roll out: per game, up to ``per_game`` non-overlapping windows (stride =
    ``dataset.clip_steps``), drawn without replacement with a seeded generator.

    dataset: a ``ClipDataset(test_lmdb, clip_steps=H)``. Returns {'episode', 'start', 'game'}
    int64 (N,), sorted by (game, episode, start).
    """
    k = dataset.clip_steps
    rng = np.random.default_rng([seed, k])
    chosen = []
    for g in range(len(dataset.games)):
        windows = [(e, s, g) for e, ep in enumerate(dataset.meta["episodes"]) if ep["game"] == g
                   for s in range(0, ep["steps"] - k + 1, k)]
        if len(windows) > per_game:
            keep = np.sort(rng.choice(len(windows), size=per_game, replace=False))
            windows = [windows[i] for i in keep]
        chosen += windows
    if not chosen:
        raise RolloutError(f"{dataset.path}: no test windows of {k} steps")
    arr = np.asarray(chosen, dtype=np.int64)
    return {"episode": arr[:, 0], "start": arr[:, 1], "game": arr[:, 2]}


def choose_swaps(present: np.ndarray, visible: np.ndarray, seed: int) -> np.ndarray:
    """For BA rollouts: per window two distinct slots, present and visible in the context frame,
    drawn with a seeded generator. present, visible (N, S) bool -> (N, 2) int64 (-1 if < 2)."""
    rng = np.random.default_rng(seed)
    swap = np.full((present.shape[0], 2), -1, np.int64)
    for i, ok in enumerate(present & visible):
        slots = np.flatnonzero(ok)
        if slots.size >= 2:
            swap[i] = np.sort(rng.choice(slots, size=2, replace=False))
    return swap


def binding_swaps(present: np.ndarray, visible: np.ndarray, actions: np.ndarray,
                  seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The binding test's inputs, one rule for the rollout command and the learning curves: the
    swapped slots (:func:`choose_swaps`) and the actions (N, H, S) with them exchanged."""
    swap = choose_swaps(present, visible, seed)
    return swap, swap_actions(actions, swap)


def swap_actions(actions: np.ndarray, swap: np.ndarray) -> np.ndarray:
    """actions (N, H, S) with slots swap[i, 0] and swap[i, 1] exchanging their whole sequences."""
    out = actions.copy()
    rows = np.flatnonzero((swap >= 0).all(axis=1))
    a, b = swap[rows, 0], swap[rows, 1]
    out[rows, :, a], out[rows, :, b] = actions[rows, :, b], actions[rows, :, a]
    return out
