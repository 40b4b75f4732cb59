"""Evaluation metrics (SPEC §6), each a pure function of detections and ground-truth labels.

Shapes: N rollouts (test windows), H action steps, T = H + 1 frames (frame 0 = the context),
S = 8 player slots, (Hc, Wc) canvas cells. Cells are (x, y) = (column, row); facing 0..3 = N E S W.

Per (rollout, step, slot) *outcome* arrays are returned first, so that any breakdown (per game,
per player count, per action, per rollout step) is a mean over a mask: :func:`share`.

=========  ==========================================================================================
decode     :func:`decode_detections`: per frame and slot the most confident cell, its facing, its
           confidence and ``count`` = the number of cells where the slot's probability is >= tau
MA         :func:`motion_outcomes`: the detected change of (cell, facing) from generated frame t-1 to
           t equals the real change. A player not detected (count = 0) in either frame is wrong.
SP / DR    :func:`presence_outcomes`: detected exactly once (count == 1) / at least once, frames 1..H
EA         :func:`interact_outcomes`: INTERACT steps with a real effect that the inverse-dynamics
           classifier labels INTERACT on the generated frames (undetected player: not recognised)
BA         :func:`binding_outcomes`: on swapped rollouts, the detected move follows the player's own
           new action rather than the other swapped player's, as predicted by :func:`apply_moves`
ST         :func:`state_tracking_errors`: the model's predicted cells vs the real ones
PSNR/SSIM  :func:`psnr`, :func:`ssim` per frame (SSIM as torchmetrics: 11x11 Gaussian, sigma 1.5)
FD         :func:`frechet_distance` of the tile classifier's pooled features (not an FVD)
=========  ==========================================================================================
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from actionparty.games.actions import (
    BACKWARD,
    FACING_STEP,
    FORWARD,
    INTERACT,
    STRAFE_LEFT,
    STRAFE_RIGHT,
    TURN_LEFT,
    TURN_RIGHT,
)

# ---------------------------------------------------------------------------------------------
# Detections
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Detections:
    """Per frame and slot, what the tile classifier sees (leading dims ``...`` = e.g. (N, T)).

    cell (..., S, 2) int64 (x, y) of the most confident cell · facing (..., S) int64 there ·
    confidence (..., S) float its probability · count (..., S) int64 cells with probability >= tau
    """

    cell: np.ndarray
    facing: np.ndarray
    confidence: np.ndarray
    count: np.ndarray

    @property
    def found(self) -> np.ndarray:
        """(..., S) bool: detected at least once."""
        return self.count >= 1

    def __getitem__(self, index) -> "Detections":
        return Detections(self.cell[index], self.facing[index], self.confidence[index], self.count[index])


def decode_detections(slot_probs: torch.Tensor, facing_logits: torch.Tensor, tau: float) -> Detections:
    """slot_probs (B, S, Hc, Wc) = P(slot s in cell) (the tile classifier's softmax without the
    'none' class), facing_logits (B, 4, Hc, Wc) -> :class:`Detections` with leading dim B."""
    b, s, hc, wc = slot_probs.shape
    flat = slot_probs.reshape(b, s, hc * wc)
    confidence, index = flat.max(dim=-1)  # (B, S)
    count = (flat >= tau).sum(dim=-1)
    facing = facing_logits.reshape(b, 4, hc * wc).argmax(dim=1)  # (B, Hc*Wc)
    facing = torch.gather(facing, 1, index)  # (B, S): facing read at each slot's cell
    cell = torch.stack([index % wc, index // wc], dim=-1)
    return Detections(cell.cpu().numpy().astype(np.int64), facing.cpu().numpy().astype(np.int64),
                      confidence.float().cpu().numpy(), count.cpu().numpy().astype(np.int64))


# ---------------------------------------------------------------------------------------------
# Masks and shares
# ---------------------------------------------------------------------------------------------


def step_mask(present: np.ndarray, visible: np.ndarray) -> np.ndarray:
    """present (N, S), ground-truth visible (N, T, S) -> (N, T-1, S): the (player, step)s that
    count for MA and EA, i.e. the player exists and is drawn in the real frames t-1 and t."""
    return present[:, None, :] & visible[:, :-1] & visible[:, 1:]


def frame_mask(present: np.ndarray, visible: np.ndarray) -> np.ndarray:
    """(N, T-1, S): the (player, frame)s 1..H that count for SP, DR and ST (drawn in reality)."""
    return present[:, None, :] & visible[:, 1:]


def share(outcome: np.ndarray, mask: np.ndarray) -> float | None:
    """Mean of a boolean ``outcome`` over ``mask`` (None when the mask is empty)."""
    n = int(mask.sum())
    return float(outcome[mask].sum()) / n if n else None


# ---------------------------------------------------------------------------------------------
# MA, SP, DR, EA
# ---------------------------------------------------------------------------------------------


def motion_outcomes(det: Detections, gt_cell: np.ndarray, gt_facing: np.ndarray) -> np.ndarray:
    """MA per (rollout, step, slot): det (N, T, S) on the generated frames, gt_cell (N, T, S, 2),
    gt_facing (N, T, S) -> (N, T-1, S) bool. Correct iff the slot is detected in generated frames
    t-1 and t and its change of cell (dx, dy) and of facing (mod 4) equals the real change.
    Relative changes, so a player drawn one cell off but moving right is still credited."""
    found = det.found[:, :-1] & det.found[:, 1:]
    same_move = (np.diff(det.cell, axis=1) == np.diff(gt_cell, axis=1)).all(axis=-1)
    same_turn = np.diff(det.facing, axis=1) % 4 == np.diff(gt_facing, axis=1) % 4
    return found & same_move & same_turn


def real_change(gt_cell: np.ndarray, gt_facing: np.ndarray) -> np.ndarray:
    """(N, T-1, S) bool: the real cell or facing changed at that step (MA 'moving' vs 'static')."""
    return (np.diff(gt_cell, axis=1) != 0).any(axis=-1) | (np.diff(gt_facing, axis=1) != 0)


def presence_outcomes(det: Detections) -> tuple[np.ndarray, np.ndarray]:
    """det (N, T, S) -> (exactly_once, at_least_once), each (N, T-1, S) for frames 1..H.
    SP = share of exactly_once, DR = share of at_least_once (over :func:`frame_mask`)."""
    count = det.count[:, 1:]
    return count == 1, count >= 1


def interact_outcomes(idm_action: np.ndarray, actions: np.ndarray, interact_effect: np.ndarray
                      ) -> tuple[np.ndarray, np.ndarray]:
    """EA. idm_action (N, H, S): the inverse-dynamics classifier's action for the generated
    transition t-1 -> t (-1 where the player was not detected at t-1); actions, interact_effect
    (N, H, S) from the real game -> (counted, recognised): counted = INTERACT with a real effect."""
    counted = (actions == INTERACT) & interact_effect
    return counted, counted & (idm_action == INTERACT)


# ---------------------------------------------------------------------------------------------
# Movement rules and BA
# ---------------------------------------------------------------------------------------------

_STEP = np.array(FACING_STEP, dtype=np.int64)  # (4, 2) forward (dx, dy) per facing


def apply_moves(cell: np.ndarray, facing: np.ndarray, action: np.ndarray, walkable: np.ndarray,
                blockers: np.ndarray, blocker_found: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Melting Pot's movement rules, for one step of many players.

    cell (..., 2), facing (...), action (...) canonical; walkable (Hc, Wc) or broadcastable to
    (..., Hc, Wc) bool (cells a
    player may stand on, learnt from ground truth: see detectors.walkable_cells); blockers
    (..., S, 2) with blocker_found (..., S): other players' cells at t-1 (a player's own entry
    must be masked out by the caller). FORWARD/BACKWARD/STRAFE move one cell along / against /
    left of / right of the facing unless the target is off the map, not walkable or held by a
    player at t-1; turns rotate the facing; NOOP and INTERACT change nothing.
    Returns (cell (..., 2), facing (...)) after the step.
    """
    direction = np.select(
        [action == FORWARD, action == BACKWARD, action == STRAFE_LEFT, action == STRAFE_RIGHT],
        [facing, (facing + 2) % 4, (facing + 3) % 4, (facing + 1) % 4], default=-1)
    moves = direction >= 0
    target = cell + np.where(moves[..., None], _STEP[np.maximum(direction, 0)], 0)
    hc, wc = walkable.shape[-2:]
    inside = (target[..., 0] >= 0) & (target[..., 0] < wc) & (target[..., 1] >= 0) & (target[..., 1] < hc)
    flat_index = np.clip(target[..., 1], 0, hc - 1) * wc + np.clip(target[..., 0], 0, wc - 1)
    walk = np.broadcast_to(walkable, flat_index.shape + (hc, wc)).reshape(flat_index.shape + (hc * wc,))
    free = inside & np.take_along_axis(walk, flat_index[..., None], axis=-1)[..., 0]
    taken = ((blockers == target[..., None, :]).all(axis=-1) & blocker_found).any(axis=-1)
    new_cell = np.where((moves & free & ~taken)[..., None], target, cell)
    new_facing = np.select([action == TURN_LEFT, action == TURN_RIGHT], [(facing + 3) % 4, (facing + 1) % 4], facing)
    return new_cell, new_facing


# What happened to a player at a real step, for MA per cause (how blocked moves fare).
CAUSES = ("moved", "turned", "blocked_wall", "blocked_player", "still")


def step_causes(gt_cell: np.ndarray, gt_facing: np.ndarray, actions: np.ndarray, walkable: np.ndarray) -> np.ndarray:
    """(N, T-1, S) index into :data:`CAUSES` of each real step: gt_cell (N, T, S, 2), gt_facing
    (N, T, S), actions (N, T-1, S), walkable (N, Hc, Wc). A move action whose target is off the
    map or not walkable is ``blocked_wall``; one whose target is walkable but whose player stayed
    is ``blocked_player`` (another player held or took the cell); NOOP/INTERACT steps and anything
    else without a change are ``still``."""
    prev_cell, prev_facing = gt_cell[:, :-1], gt_facing[:, :-1]
    no_blockers = np.zeros(prev_cell.shape[:-1] + (1, 2), np.int64), np.zeros(prev_cell.shape[:-1] + (1,), bool)
    target, _ = apply_moves(prev_cell, prev_facing, actions, walkable[:, None, None], *no_blockers)
    moved = (np.diff(gt_cell, axis=1) != 0).any(-1)
    turned = ~moved & (np.diff(gt_facing, axis=1) != 0)
    is_move = np.isin(actions, (FORWARD, BACKWARD, STRAFE_LEFT, STRAFE_RIGHT))
    wall = is_move & ~moved & (target == prev_cell).all(-1)
    player = is_move & ~moved & ~wall
    return np.select([moved, turned, wall, player], [0, 1, 2, 3], default=4)


def _others(det: Detections) -> tuple[np.ndarray, np.ndarray]:
    """det (..., S) -> blockers (..., S, S, 2), found (..., S, S): for each slot, every other slot."""
    s = det.cell.shape[-2]
    blockers = np.broadcast_to(det.cell[..., None, :, :], det.cell.shape[:-2] + (s, s, 2))
    found = det.found[..., None, :] & ~np.eye(s, dtype=bool)
    return blockers, found


def predicted_moves(det: Detections, actions: np.ndarray, walkable: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Where the movement rules send each detected player: det (N, T, S) with actions (N, T-1, S)
    and walkable (N, Hc, Wc) -> (cell (N, T-1, S, 2), facing (N, T-1, S)) predicted for frames
    1..T-1 from the detected state of the previous frame."""
    prev = det[:, :-1]
    blockers, found = _others(prev)
    return apply_moves(prev.cell, prev.facing, actions, walkable[:, None, None], blockers, found)


def rule_agreement_outcomes(det: Detections, actions: np.ndarray, walkable: np.ndarray) -> np.ndarray:
    """(N, T-1, S) bool: the detected state at t equals the movement rules applied to the
    detected state at t-1 (both frames detected). On ground truth this bounds how far BA's
    expected moves can be trusted (reported in the oracle row)."""
    cell, facing = predicted_moves(det, actions, walkable)
    nxt = det[:, 1:]
    return det.found[:, :-1] & nxt.found & (nxt.cell == cell).all(-1) & (nxt.facing == facing)


def binding_outcomes(det: Detections, actions: np.ndarray, swap: np.ndarray, walkable: np.ndarray
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """BA on swapped rollouts.

    det (N, T, S) on the generated frames, actions (N, T-1, S) = the actions the model was fed
    (slots swap[:, 0] and swap[:, 1] exchanged their sequences; -1 = no swap), walkable (N, Hc, Wc).
    For each swapped player p with partner q and step t: 'own' = the rules applied to p's detected
    state at t-1 with p's fed action, 'other' = the same with q's fed action (what p would do if the
    model bound q's actions to it). Returns (counted, follows_own, follows_other), each (N, T-1, S):
    counted where the two predictions differ; follows_* where p's detected state at t equals that
    prediction. A player undetected at t-1 or t is counted, as a failure, whenever the two actions
    differ (its expected moves cannot be computed, and losing the player is not binding).
    """
    n, h, s = actions.shape
    counted = np.zeros((n, h, s), bool)
    follows_own = np.zeros((n, h, s), bool)
    follows_other = np.zeros((n, h, s), bool)
    rows = np.flatnonzero((swap >= 0).all(axis=1) & (swap[:, 0] != swap[:, 1]))
    if rows.size == 0:
        return counted, follows_own, follows_other
    own_cell, own_facing = predicted_moves(det[rows], actions[rows], walkable[rows])
    partner_actions = actions[rows].copy()  # each swapped slot fed its partner's action
    a, b = swap[rows, 0], swap[rows, 1]
    r = np.arange(rows.size)
    partner_actions[r, :, a], partner_actions[r, :, b] = actions[rows][r, :, b], actions[rows][r, :, a]
    other_cell, other_facing = predicted_moves(det[rows], partner_actions, walkable[rows])
    nxt, prev = det[rows][:, 1:], det[rows][:, :-1]
    seen = prev.found & nxt.found
    differ = (own_cell != other_cell).any(-1) | (own_facing != other_facing)
    own = seen & (nxt.cell == own_cell).all(-1) & (nxt.facing == own_facing)
    other = seen & (nxt.cell == other_cell).all(-1) & (nxt.facing == other_facing)
    swapped = np.zeros((rows.size, s), bool)
    swapped[r, a] = swapped[r, b] = True
    counted_rows = swapped[:, None, :] & np.where(seen, differ, actions[rows] != partner_actions)
    counted[rows] = counted_rows
    follows_own[rows] = counted_rows & own
    follows_other[rows] = counted_rows & other
    return counted, follows_own, follows_other


# ---------------------------------------------------------------------------------------------
# ST
# ---------------------------------------------------------------------------------------------


def state_tracking_errors(pred_cell: np.ndarray, gt_cell: np.ndarray, pred_facing: np.ndarray | None = None,
                          gt_facing: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """ST: the model's own predicted state vs the real one. pred_cell (..., 2) float canvas cells,
    gt_cell (..., 2) -> {'l1': (...) |dx| + |dy| in cells, 'exact': (...) rounded cell is right,
    'facing': (...) facing is right (only if both facings are given)}."""
    out = {"l1": np.abs(pred_cell - gt_cell).sum(-1), "exact": (np.rint(pred_cell) == gt_cell).all(-1)}
    if pred_facing is not None and gt_facing is not None:
        out["facing"] = pred_facing == gt_facing
    return out


# ---------------------------------------------------------------------------------------------
# PSNR, SSIM
# ---------------------------------------------------------------------------------------------


def psnr(pred: torch.Tensor, target: torch.Tensor, data_range: float = 255.0, max_db: float = 100.0) -> torch.Tensor:
    """Per-image PSNR in dB: pred, target (B, C, H, W) -> (B,). Identical images give ``max_db``."""
    mse = (pred.double() - target.double()).pow(2).flatten(1).mean(1)
    db = 10 * torch.log10(data_range**2 / mse)
    return db.clamp(max=max_db).float()


def _gaussian_1d(sigma: float) -> torch.Tensor:
    size = int(3.5 * sigma + 0.5) * 2 + 1  # 11 for sigma 1.5, as torchmetrics
    x = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    g = torch.exp(-(x / sigma) ** 2 / 2)
    return g / g.sum()


def ssim(pred: torch.Tensor, target: torch.Tensor, data_range: float = 255.0, sigma: float = 1.5,
         k1: float = 0.01, k2: float = 0.03) -> torch.Tensor:
    """Per-image SSIM: pred, target (B, C, H, W) -> (B,). Gaussian window, reflect padding and a
    mean over the whole map, matching torchmetrics' default ``structural_similarity_index_measure``.
    The 2-D Gaussian is applied as two 1-D passes (same result, a fraction of the memory)."""
    pred, target = pred.float() / data_range, target.float() / data_range
    channels = pred.shape[1]
    g = _gaussian_1d(sigma).to(pred.device)
    pad = g.numel() // 2
    stack = torch.cat([pred, target, pred * pred, target * target, pred * target])
    stack = F.pad(stack, (pad, pad, pad, pad), mode="reflect")
    stack = F.conv2d(stack, g.view(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)
    stack = F.conv2d(stack, g.view(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels)
    mu_p, mu_t, e_pp, e_tt, e_pt = stack.split(pred.shape[0])
    var_p = (e_pp - mu_p**2).clamp(min=0)
    var_t = (e_tt - mu_t**2).clamp(min=0)
    cov = e_pt - mu_p * mu_t
    c1, c2 = k1**2, k2**2
    ssim_map = ((2 * mu_p * mu_t + c1) * (2 * cov + c2)) / ((mu_p**2 + mu_t**2 + c1) * (var_p + var_t + c2))
    return ssim_map.flatten(1).mean(1)


# ---------------------------------------------------------------------------------------------
# FD and I3D-FVD
# ---------------------------------------------------------------------------------------------


def _sqrtm_psd(matrix: torch.Tensor) -> torch.Tensor:
    values, vectors = torch.linalg.eigh(matrix)
    return (vectors * values.clamp(min=0).sqrt()) @ vectors.T


def frechet_distance(features_a: torch.Tensor | np.ndarray, features_b: torch.Tensor | np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (A, D) and (B, D):
    |mu_a - mu_b|^2 + tr(Ca + Cb - 2 (Ca^1/2 Cb Ca^1/2)^1/2). Symmetric PSD square roots by
    eigendecomposition in float64, so a set against itself gives 0 up to rounding."""
    a = torch.as_tensor(features_a, dtype=torch.float64)
    b = torch.as_tensor(features_b, dtype=torch.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"feature sets must be (N, D) with equal D, got {tuple(a.shape)} and {tuple(b.shape)}")
    if a.shape[0] < 2 or b.shape[0] < 2:
        raise ValueError("Fréchet distance needs at least 2 samples per set")
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = torch.cov(a.T).reshape(a.shape[1], -1), torch.cov(b.T).reshape(b.shape[1], -1)
    root_a = _sqrtm_psd(cov_a)
    cross = _sqrtm_psd(root_a @ cov_b @ root_a)
    value = (mu_a - mu_b).pow(2).sum() + torch.trace(cov_a) + torch.trace(cov_b) - 2 * torch.trace(cross)
    return max(float(value), 0.0)


class I3DFeatures:
    """A local TorchScript I3D feature extractor for true FVD (only when ``eval.i3d_checkpoint``
    is set; nothing is downloaded). Called on videos (B, 3, T, 224, 224) float in [-1, 1]; a module
    whose forward has ``return_features`` (e.g. the StyleGAN-V ``i3d_torchscript.pt``) is asked for
    features with ``rescale=False, resize=False``; any other must return (B, D) features. It runs
    on ``device``, on at most ``batch_frames`` frames (whole videos, at least one) at a time: a
    paper rollout is 2,944 videos, ~150 GB as 224 x 224 floats."""

    size = 224

    def __init__(self, path: str, device: str = "cpu", batch_frames: int = 512):
        from pathlib import Path

        from actionparty.errors import UserError

        if not Path(path).is_file():
            raise UserError(f"{path}: I3D checkpoint not found (eval.i3d_checkpoint)")
        # Only a TorchScript archive (code + constants, read by TorchScript's own loader, which
        # builds no Python objects): never a plain pickle, whose loading could run any code.
        import zipfile

        names = zipfile.ZipFile(path).namelist() if zipfile.is_zipfile(path) else []
        if not any(n.endswith("/constants.pkl") for n in names) or not any("/code/" in n for n in names):
            raise UserError(f"{path}: not a TorchScript archive (eval.i3d_checkpoint); plain pickles are refused")
        try:
            self.module = torch.jit.load(path, map_location=device).eval()
        except Exception as err:  # torch raises assorted errors for non-TorchScript files
            raise UserError(f"{path}: not a TorchScript I3D module ({str(err).splitlines()[0]})") from None
        names = {arg.name for arg in self.module.forward.schema.arguments}
        wanted = {"rescale": False, "resize": False, "return_features": True}
        self.kwargs = {k: v for k, v in wanted.items() if k in names}
        self.device = device
        self.batch_frames = batch_frames

    @torch.no_grad()
    def __call__(self, videos: torch.Tensor) -> torch.Tensor:
        """videos (B, T, 3, H, W) uint8 -> (B, D) float64 features, on the CPU."""
        per_call = max(1, self.batch_frames // videos.shape[1])
        return torch.cat([self._features(videos[i:i + per_call]) for i in range(0, len(videos), per_call)])

    def _features(self, videos: torch.Tensor) -> torch.Tensor:
        b, t = videos.shape[:2]
        x = videos.flatten(0, 1).to(self.device).float() / 127.5 - 1
        x = F.interpolate(x, size=(self.size, self.size), mode="nearest")
        x = x.reshape(b, t, 3, self.size, self.size).transpose(1, 2)
        out = self.module(x, **self.kwargs)
        return out.reshape(b, -1).double().cpu()
