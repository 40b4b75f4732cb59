"""Evaluation detectors, trained on ground-truth episodes only (train split; accuracy on val).

TileClassifier    frame (B, 3, H, W) uint8 + game (B,) -> per cell (Hc = H / 8, Wc = W / 8):
                  slot logits (B, 1 + S, Hc, Wc) (class 0 = no player, 1 + p = slot p),
                  facing logits (B, 4, Hc, Wc), features (B, C, Hc, Wc) (FD pools them).
                  Fully convolutional: an 8x8 stride-8 convolution turns each cell's pixels into one
                  vector (then a per-cell 1x1 layer), then ``context_cells`` residual 3x3
                  convolutions over the cell grid, each widening the margin of context by one cell.
                  One pass over the frame labels every cell, far cheaper than a crop per cell.
InverseDynamics   crops of frames t-1 and t ((2m+1) x (2m+1) cells centred on the player's t-1 cell)
                  + game + slot -> logits over the 8 canonical actions (B, 8).

The inverse-dynamics target is the *effective* action (:func:`effective_actions`): a move that left
the player in place and an INTERACT without effect look exactly like NOOP, so they are labelled NOOP.
Then class INTERACT means "an interaction visibly happened", which is what EA asks.

Players drawn nowhere (visible = False) are labelled as absent. Which cells a player can stand on
(:func:`walkable_cells`, for BA's movement rules) is learnt from the same ground truth: every cell
some visible player occupied in the train split.

Both detectors train together on the same batches of 1-step train clips, with the shared loop
of ``actionparty.train.loop``; a resumable state is written every ``checkpoint_every`` steps and
the final bundle (both models, games, walkable maps, config) atomically.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from actionparty.atomic import atomic_path, write_json
from actionparty.data.lmdb_dataset import ClipDataset
from actionparty.errors import UserError
from actionparty.config import EvalConfig
from actionparty.eval.metrics import Detections, decode_detections
from actionparty.games.actions import CANONICAL_ACTIONS, CELL_PX, INTERACT, NOOP, STRAFE_RIGHT
from actionparty.games import PLAYER_SLOTS
from actionparty.train.loop import Schedule, fit

DETECTORS_SCHEMA = 1
IGNORE = -100  # cross-entropy ignore index


class DetectorError(UserError):
    """A detector checkpoint that is missing, corrupt or does not fit the data."""


# ---------------------------------------------------------------------------------------------
# Labels and crops
# ---------------------------------------------------------------------------------------------


def tile_targets(position: torch.Tensor, facing: torch.Tensor, visible: torch.Tensor, grid: tuple[int, int]
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """position (B, S, 2) (x, y), facing (B, S), visible (B, S) (False for empty slots) ->
    slot target (B, Hc, Wc) (0 none, 1 + p) and facing target (B, Hc, Wc) (IGNORE off players)."""
    b, s = facing.shape
    hc, wc = grid
    slot = torch.zeros(b, hc * wc, dtype=torch.long, device=position.device)
    face = torch.full((b, hc * wc), IGNORE, dtype=torch.long, device=position.device)
    x, y = position[..., 0], position[..., 1]
    ok = visible & (x >= 0) & (x < wc) & (y >= 0) & (y < hc)
    rows, slots = ok.nonzero(as_tuple=True)
    cells = y[rows, slots] * wc + x[rows, slots]
    slot[rows, cells] = slots + 1
    face[rows, cells] = facing[rows, slots]
    return slot.view(b, hc, wc), face.view(b, hc, wc)


def effective_actions(actions: torch.Tensor, moved: torch.Tensor, interact_effect: torch.Tensor) -> torch.Tensor:
    """The inverse-dynamics target: a move (FORWARD..STRAFE_RIGHT) whose player did not change
    cell, and an INTERACT without effect, become NOOP (they are invisible)."""
    is_move = (actions >= 1) & (actions <= STRAFE_RIGHT)
    silent = (is_move & ~moved) | ((actions == INTERACT) & ~interact_effect)
    return torch.where(silent, torch.full_like(actions, NOOP), actions)


def crop_cells(frames: torch.Tensor, centre: torch.Tensor, margin: int) -> torch.Tensor:
    """frames (B, C, H, W), centre (B, 2) (x, y) cells -> (B, C, D, D) crops, D = (2m+1)·8 px,
    centred on each cell; outside the canvas is zero."""
    b, c, h, w = frames.shape
    pad = margin * CELL_PX
    padded = F.pad(frames, (pad, pad, pad, pad))
    side = (2 * margin + 1) * CELL_PX
    offs = torch.arange(side, device=frames.device)
    ys = (centre[:, 1, None] * CELL_PX + offs).clamp(0, h + 2 * pad - 1)  # padded coordinates
    xs = (centre[:, 0, None] * CELL_PX + offs).clamp(0, w + 2 * pad - 1)
    batch = torch.arange(b, device=frames.device)[:, None, None]
    crops = padded.permute(0, 2, 3, 1)[batch, ys[:, :, None], xs[:, None, :]]  # (B, D, D, C)
    return crops.permute(0, 3, 1, 2)


# ---------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------


def _to_unit(frames: torch.Tensor) -> torch.Tensor:
    return frames.float() / 127.5 - 1.0


def _device(module: nn.Module) -> torch.device:
    return next(module.parameters()).device


class TileClassifier(nn.Module):
    """Which slot (or none) occupies each cell, and its facing; see the module docstring."""

    def __init__(self, num_games: int, patch_width: int, width: int, context_cells: int, game_embedding: bool):
        super().__init__()
        self.patch = nn.Conv2d(3, patch_width, CELL_PX, stride=CELL_PX)  # one vector per cell
        self.cell = nn.Conv2d(patch_width, width, 1)
        self.game = nn.Embedding(num_games, width) if game_embedding else None
        self.context = nn.ModuleList(nn.Conv2d(width, width, 3, padding=1) for _ in range(context_cells))
        self.slot_head = nn.Conv2d(width, 1 + PLAYER_SLOTS, 1)
        self.facing_head = nn.Conv2d(width, 4, 1)

    def forward(self, frames: torch.Tensor, game: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """frames (B, 3, H, W) uint8, game (B,) -> slot logits (B, 1+S, Hc, Wc),
        facing logits (B, 4, Hc, Wc), features (B, C, Hc, Wc)."""
        h = self.cell(F.gelu(self.patch(_to_unit(frames))))
        if self.game is not None:
            h = h + self.game(game)[:, :, None, None]
        h = F.gelu(h)
        for conv in self.context:
            h = h + F.gelu(conv(h))
        return self.slot_head(h), self.facing_head(h), h


class InverseDynamics(nn.Module):
    """Crops around a player at t-1 and t, the game and the slot -> effective action logits."""

    def __init__(self, num_games: int, margin_cells: int, patch_width: int, width: int):
        super().__init__()
        side = 2 * margin_cells + 1
        self.margin_cells = margin_cells
        self.patch = nn.Conv2d(9, patch_width, CELL_PX, stride=CELL_PX)  # both frames + change -> one vector
        self.cell = nn.Conv2d(patch_width, width, 1)
        self.game = nn.Embedding(num_games, width)
        self.slot = nn.Embedding(PLAYER_SLOTS, width)
        self.context = nn.Conv2d(width, width, 3, padding=1)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(width * side * side, width), nn.GELU(),
                                  nn.Linear(width, len(CANONICAL_ACTIONS)))

    def forward(self, before: torch.Tensor, after: torch.Tensor, game: torch.Tensor, slot: torch.Tensor
                ) -> torch.Tensor:
        """before, after (B, 3, D, D) uint8 crops, game (B,), slot (B,) -> (B, 8) logits."""
        before, after = _to_unit(before), _to_unit(after)
        x = torch.cat([before, after, after - before], dim=1)
        h = self.cell(F.gelu(self.patch(x))) + (self.game(game) + self.slot(slot))[:, :, None, None]
        h = F.gelu(h)
        h = h + F.gelu(self.context(h))
        return self.head(h)


@dataclass
class Detectors:
    """A trained bundle: both models, the games they know (by name), per game the walkable cells
    (Hc, Wc) bool, and the config they were trained with."""

    tile: TileClassifier
    idm: InverseDynamics
    games: list[str]
    walkable: dict[str, np.ndarray]
    canvas_px: int
    config: EvalConfig

    @property
    def device(self) -> torch.device:
        """Where the models' weights are (see :func:`load_detectors`)."""
        return _device(self.tile)

    def game_indices(self, names: list[str], source: str) -> list[int]:
        """Detector game index of each LMDB game name (DetectorError for an unknown game)."""
        unknown = [n for n in names if n not in self.games]
        if unknown:
            raise DetectorError(f"{source}: game '{unknown[0]}' was not in the detectors' training data "
                                f"({', '.join(self.games)}); retrain the detectors")
        return [self.games.index(n) for n in names]


def build_models(num_games: int, cfg: EvalConfig) -> tuple[TileClassifier, InverseDynamics]:
    t, i = cfg.tile, cfg.idm
    return (TileClassifier(num_games, t.patch_width, t.width, t.context_cells, t.game_embedding),
            InverseDynamics(num_games, i.margin_cells, i.patch_width, i.width))


# ---------------------------------------------------------------------------------------------
# Inference
# ---------------------------------------------------------------------------------------------


@torch.no_grad()
def detect(tile: TileClassifier, frames: torch.Tensor, game: torch.Tensor, tau: float, batch: int
           ) -> tuple[Detections, torch.Tensor]:
    """frames (B, 3, H, W) uint8, game (B,) -> (Detections with leading dim B, pooled features (B, C)),
    on the CPU; the batches run on the classifier's device."""
    tile.eval()
    device = _device(tile)
    parts, feats = [], []
    for i in range(0, frames.shape[0], batch):
        slot_logits, facing_logits, h = tile(frames[i : i + batch].to(device), game[i : i + batch].to(device))
        parts.append(decode_detections(slot_logits.softmax(1)[:, 1:], facing_logits, tau))
        feats.append(h.mean(dim=(2, 3)).cpu())
    keys = ("cell", "facing", "confidence", "count")
    det = Detections(*(np.concatenate([getattr(p, k) for p in parts]) for k in keys))
    return det, torch.cat(feats)


@torch.no_grad()
def classify_transitions(idm: InverseDynamics, before: torch.Tensor, after: torch.Tensor, centre: torch.Tensor,
                         game: torch.Tensor, slot: torch.Tensor, batch: int) -> np.ndarray:
    """Frames t-1 and t (B, 3, H, W) uint8, the player's t-1 cell (B, 2), game (B,), slot (B,)
    -> (B,) int64 predicted effective action; the batches run on the classifier's device."""
    idm.eval()
    device = _device(idm)
    out = []
    for i in range(0, before.shape[0], batch):
        s = slice(i, i + batch)
        m, c = idm.margin_cells, centre[s].to(device)
        logits = idm(crop_cells(before[s].to(device), c, m), crop_cells(after[s].to(device), c, m),
                     game[s].to(device), slot[s].to(device))
        out.append(logits.argmax(1).cpu())
    return torch.cat(out).numpy().astype(np.int64) if out else np.zeros(0, np.int64)


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------


def walkable_cells(dataset: ClipDataset) -> dict[str, np.ndarray]:
    """Per game the (Hc, Wc) bool map of cells that some visible player occupied in the dataset's
    episodes: the movement rules treat every other cell as a wall."""
    cells = dataset.canvas_px // CELL_PX
    walk = {g: np.zeros((cells, cells), bool) for g in dataset.games}
    for e, ep in enumerate(dataset.meta["episodes"]):
        labels = dataset.labels(e)
        pos = labels["position"].astype(np.int64)[labels["visible"]]
        pos = pos[(pos >= 0).all(1) & (pos < cells).all(1)]
        walk[dataset.games[ep["game"]]][pos[:, 1], pos[:, 0]] = True
    return walk


def _transitions(batch: dict) -> dict[str, torch.Tensor]:
    """Flatten a batch of 1-step clips into the inverse-dynamics samples: every player visible at
    t-1 and t. Returns before/after frame index, centre cell, game, slot, target."""
    vis = batch["visible"][:, 0] & batch["visible"][:, 1] & batch["present"]
    rows, slots = vis.nonzero(as_tuple=True)
    pos = batch["position"]
    moved = (pos[rows, 1, slots] != pos[rows, 0, slots]).any(-1)
    target = effective_actions(batch["actions"][rows, 0, slots], moved, batch["interact_effect"][rows, 0, slots])
    return {"row": rows, "slot": slots, "centre": pos[rows, 0, slots], "game": batch["game"][rows], "target": target}


def _detector_losses(tile: TileClassifier, idm: InverseDynamics, batch: dict, cfg: EvalConfig
                     ) -> tuple[torch.Tensor, dict[str, float]]:
    """Both detectors' losses on a batch of 1-step clips (frames (B, 2, 3, H, W)), on the models' device."""
    device = _device(tile)
    batch = {k: v.to(device) for k, v in batch.items()}
    frames, game = batch["frames"], batch["game"]
    hc = frames.shape[-2] // CELL_PX
    flat = frames.flatten(0, 1)
    visible = batch["visible"] & batch["present"][:, None]
    slot_t, face_t = tile_targets(batch["position"].flatten(0, 1), batch["facing"].flatten(0, 1),
                                  visible.flatten(0, 1), (hc, hc))
    slot_logits, facing_logits, _ = tile(flat, game.repeat_interleave(2))
    weight = torch.where(slot_t > 0, cfg.tile.occupied_weight, 1.0)
    slot_loss = (F.cross_entropy(slot_logits, slot_t, reduction="none") * weight).sum() / weight.sum()
    facing_loss = (F.cross_entropy(facing_logits, face_t, ignore_index=IGNORE) if (face_t != IGNORE).any()
                   else slot_loss * 0)
    tr = _transitions(batch)
    if len(tr["row"]):
        m = idm.margin_cells
        before = crop_cells(frames[tr["row"], 0], tr["centre"], m)
        after = crop_cells(frames[tr["row"], 1], tr["centre"], m)
        idm_loss = F.cross_entropy(idm(before, after, tr["game"], tr["slot"]), tr["target"])
    else:
        idm_loss = slot_loss * 0
    loss = slot_loss + facing_loss + idm_loss
    return loss, {"slot": slot_loss.item(), "facing": facing_loss.item(), "idm": idm_loss.item()}


# Detector training's learning rate: linear warm-up over this many steps, then cosine to 0.
WARMUP_STEPS = 50


def train_detectors(train_lmdb: str | Path, val_lmdb: str | Path, cfg: EvalConfig, out: str | Path,
                    accuracy_out: str | Path | None = None, progress: bool = True,
                    stop_after: int | None = None, device: str = "cpu") -> dict:
    """Train both detectors on ``train_lmdb``, measure them on ``val_lmdb``, write the bundle to
    ``out`` (and the held-out accuracy JSON to ``accuracy_out``); return the accuracy dict.
    Training and the accuracy run on ``device``; the bundle holds CPU tensors.

    The loop is the shared :func:`actionparty.train.loop.fit` (AdamW, warm-up then cosine). A
    resumable state is kept beside ``out`` (``<out>.resume``) every ``checkpoint_every`` steps;
    a rerun continues from it. ``stop_after`` ends this invocation early (for tests of resuming)
    and returns {}.
    """
    out = Path(out)
    torch.manual_seed(cfg.seed)
    train = ClipDataset(train_lmdb, clip_steps=1)
    val = ClipDataset(val_lmdb, clip_steps=1)
    if val.canvas_px != train.canvas_px:
        raise DetectorError(f"{val_lmdb}: frames are {val.canvas_px} px, the train split's {train.canvas_px} px")
    games = list(train.games)
    tile, idm = (model.to(device) for model in build_models(len(games), cfg))
    # The whole sample order is fixed up front by the seed, so a resumed run sees the same batches.
    order = torch.randint(len(train), (cfg.train_steps * cfg.batch_clips,),
                          generator=torch.Generator().manual_seed(cfg.seed))

    def batches(start: int):
        return torch.utils.data.DataLoader(train, batch_size=cfg.batch_clips, num_workers=cfg.num_workers,
                                           sampler=order[start * cfg.batch_clips :].tolist())

    resume = out.with_name(out.name + ".resume")
    started = time.perf_counter()
    result = fit({"tile": tile, "idm": idm}, lambda batch: _detector_losses(tile, idm, batch, cfg), batches,
                 Schedule(cfg.lr, cfg.train_steps, WARMUP_STEPS), resume,
                 {"config": cfg.model_dump(mode="json"), "games": games, "train": str(train_lmdb)},
                 cfg.checkpoint_every, stop_after=stop_after, progress=progress, desc="detectors")
    if not result.finished:
        return {}
    detectors = Detectors(tile.eval(), idm.eval(), games, walkable_cells(train), train.canvas_px, cfg)
    accuracy = detector_accuracy(detectors, val, cfg, progress=progress)
    accuracy["training"] = {"steps": cfg.train_steps, "seconds": round(time.perf_counter() - started, 1),
                            "final_losses": result.logs, "train_lmdb": str(train_lmdb), "val_lmdb": str(val_lmdb)}
    save_detectors(out, detectors, accuracy)
    if accuracy_out is not None:
        write_json(accuracy_out, accuracy)
    resume.unlink(missing_ok=True)
    return accuracy


# ---------------------------------------------------------------------------------------------
# Held-out accuracy
# ---------------------------------------------------------------------------------------------


def _val_items(dataset: ClipDataset, per_game: int) -> list[int]:
    """Up to ``per_game`` items per game, evenly spaced over the dataset (deterministic)."""
    games = np.asarray([dataset.meta["episodes"][e]["game"] for e in dataset.index[:, 0]])
    items = []
    for g in range(len(dataset.games)):
        idx = np.flatnonzero(games == g)
        if len(idx):
            items += idx[np.unique(np.linspace(0, len(idx) - 1, min(per_game, len(idx))).round().astype(int))].tolist()
    return items


def _accuracy_samples(detectors: Detectors, batch: dict, game_map: torch.Tensor, tau: float, batch_frames: int
                      ) -> tuple[dict, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """The scored samples of a batch of 1-step clips: key -> (game of each sample, hit, counted)
    for the keys of :func:`detector_accuracy`, and the inverse dynamics' (game, target,
    prediction) per transition."""
    frames = batch["frames"].flatten(0, 1)  # frames t-1 and t of every clip
    hc = frames.shape[-2] // CELL_PX
    visible = (batch["visible"] & batch["present"][:, None]).flatten(0, 1).numpy()
    position, facing = batch["position"].flatten(0, 1), batch["facing"].flatten(0, 1)
    slot_t, face_t = tile_targets(position, facing, torch.from_numpy(visible), (hc, hc))
    slot_t, face_t = slot_t.numpy(), face_t.numpy()
    device = detectors.device
    slot_logits, facing_logits, _ = detectors.tile(frames.to(device),
                                                   game_map[batch["game"]].repeat_interleave(2).to(device))
    slot_p, face_p = slot_logits.argmax(1).cpu().numpy(), facing_logits.argmax(1).cpu().numpy()
    det = decode_detections(slot_logits.softmax(1)[:, 1:], facing_logits, tau)
    once = (det.count == 1) & (det.cell == position.numpy()).all(-1)
    tr = _transitions(dict(batch, game=game_map[batch["game"]]))
    pred = classify_transitions(detectors.idm, batch["frames"][tr["row"], 0], batch["frames"][tr["row"], 1],
                                tr["centre"], tr["game"], tr["slot"], batch_frames)
    target = tr["target"].numpy()
    frame_game = batch["game"].repeat_interleave(2).numpy()
    cell_game = np.broadcast_to(frame_game[:, None, None], slot_t.shape)
    row_game = batch["game"][tr["row"]].numpy()
    samples = {
        "slot": (cell_game, slot_p == slot_t, slot_t > 0),
        "facing": (cell_game, face_p == face_t, slot_t > 0),
        "background": (cell_game, slot_p == 0, slot_t == 0),
        "once": (np.broadcast_to(frame_game[:, None], visible.shape), once, visible),
        "idm": (row_game, pred == target, np.ones_like(target, bool)),
        "interact": (row_game, pred == INTERACT, target == INTERACT),
    }
    return samples, (row_game, target, pred)


@torch.no_grad()
def detector_accuracy(detectors: Detectors, dataset: ClipDataset, cfg: EvalConfig, progress: bool = False) -> dict:
    """Held-out accuracy per game on 1-step clips of ``dataset`` (the val split):

    slot_accuracy: occupied cells (player visible) whose argmax class is the right slot ·
    facing_accuracy: occupied cells whose argmax facing is right · background_accuracy: empty cells
    classed as none · detected_exactly_once: visible players with exactly one cell >= tau at the
    right place (SP on ground truth) · idm_accuracy: effective action right, all visible players ·
    idm_interact_recall: INTERACT-with-effect recognised (EA on ground truth) · idm_per_action.
    """
    indices = detectors.game_indices(dataset.games, str(dataset.path))
    items = _val_items(dataset, cfg.val_clips_per_game)
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(dataset, items), batch_size=cfg.batch_clips)
    names = {"slot": "slot_accuracy", "facing": "facing_accuracy", "background": "background_accuracy",
             "once": "detected_exactly_once", "idm": "idm_accuracy", "interact": "idm_interact_recall"}
    # per game and key: [hits, counted]; per game and effective action: [hits, counted]
    tally = {g: {k: np.zeros(2, np.int64) for k in names} for g in dataset.games}
    per_action = {g: np.zeros((len(CANONICAL_ACTIONS), 2), np.int64) for g in dataset.games}
    game_map = torch.as_tensor(indices)
    for batch in tqdm(loader, desc="detector accuracy", unit="batch", disable=not progress):
        samples, (row_game, target, pred) = _accuracy_samples(detectors, batch, game_map, cfg.tau,
                                                              cfg.eval_batch_frames)
        for g, name in enumerate(dataset.games):
            for key, (where, hit, counted) in samples.items():
                m = counted & (where == g)
                tally[name][key] += [int(hit[m].sum()), int(m.sum())]
            m = row_game == g
            np.add.at(per_action[name], (target[m], 0), (pred == target)[m])
            np.add.at(per_action[name], (target[m], 1), 1)

    def ratio(pair) -> float | None:
        return round(float(pair[0]) / float(pair[1]), 4) if pair[1] else None

    result = {"games": {}, "overall": {}, "tau": cfg.tau}
    for name, t in tally.items():
        row = {names[k]: ratio(t[k]) for k in names}
        row["counts"] = {names[k]: int(t[k][1]) for k in names}
        row["idm_per_action"] = {a: ratio(per_action[name][i]) for i, a in enumerate(CANONICAL_ACTIONS)}
        result["games"][name] = row
    for k in names:
        result["overall"][names[k]] = ratio(sum(t[k] for t in tally.values()))
    return result


# ---------------------------------------------------------------------------------------------
# Checkpoint
# ---------------------------------------------------------------------------------------------


def save_detectors(path: str | Path, detectors: Detectors, accuracy: dict | None = None) -> None:
    """Write the bundle atomically (a plain dict of CPU tensors and JSON strings: weights_only-safe)."""

    def weights(module: nn.Module) -> dict[str, torch.Tensor]:
        return {k: v.cpu() for k, v in module.state_dict().items()}

    state = {
        "schema": DETECTORS_SCHEMA,
        "games": list(detectors.games),
        "canvas_px": detectors.canvas_px,
        "config": detectors.config.model_dump_json(),
        "tile": weights(detectors.tile),
        "idm": weights(detectors.idm),
        "walkable": {g: torch.from_numpy(w) for g, w in detectors.walkable.items()},
        "accuracy": json.dumps(accuracy or {}),
    }
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_detectors(path: str | Path, device: str = "cpu") -> Detectors:
    """Read a bundle written by :func:`save_detectors` onto ``device`` (DetectorError on a missing
    or bad file)."""
    path = Path(path)
    if not path.is_file():
        raise DetectorError(f"{path}: detector checkpoint not found (run train-detectors)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle/zip errors of a truncated or foreign file
        raise DetectorError(f"{path}: not a detector checkpoint ({str(err).splitlines()[0]})") from None
    if not isinstance(state, dict) or state.get("schema") != DETECTORS_SCHEMA:
        raise DetectorError(f"{path}: not a detector checkpoint of schema {DETECTORS_SCHEMA}")
    cfg = EvalConfig.model_validate_json(state["config"])
    tile, idm = build_models(len(state["games"]), cfg)
    try:
        tile.load_state_dict(state["tile"])
        idm.load_state_dict(state["idm"])
    except RuntimeError as err:
        raise DetectorError(f"{path}: weights do not fit the stored config ({str(err).splitlines()[0]})") from None
    walkable = {g: w.numpy().astype(bool) for g, w in state["walkable"].items()}
    return Detectors(tile.to(device).eval(), idm.to(device).eval(), list(state["games"]), walkable,
                     int(state["canvas_px"]), cfg)
