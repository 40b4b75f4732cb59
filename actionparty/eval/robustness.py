"""How far the learned detectors credit players that are not there: rates on degraded real frames.

A rollout's frames degrade (noise, blur, players fading to blobs), and the metrics read them with
the tile classifier trained on real frames. This measures, on real frames of a held-out split
degraded at the levels rollouts reach, how often the classifier

* still finds a player where it is (``detected``, ``exact``: its cell and facing right), and
* reports a player that was erased from the frame (``false_positive``: found anywhere;
  ``false_positive_same_cell``: found at the cell it was erased from).

A player is erased by copying into its cell the same cell of the nearest frame of its episode
where no drawn player stands there: the map as the game drew it.
Degradations: Gaussian noise of standard deviation ``sigma`` (uint8 units) and a box blur of
radius ``blur`` cells' pixels, each alone and together. Read by ``actionparty
detector-robustness`` (docs/EVALUATION.md); it scores the instrument, never a model.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from actionparty.config import EvalConfig
from actionparty.data.lmdb_dataset import ClipDataset
from actionparty.eval.detectors import detect, load_detectors
from actionparty.games.actions import CELL_PX
from actionparty.rollout.rollout_io import select_windows

NOISE_LEVELS = (0.0, 16.0, 32.0, 64.0, 96.0)
BLUR_RADII = (0, 1, 2)


def erase_players(ds: ClipDataset, episode: int, t: int, frame: np.ndarray, position: np.ndarray,
                  shown: np.ndarray) -> np.ndarray:
    """``frame`` (H, W, 3), frame ``t`` of ``episode``, with the cell (x, y) of every player
    ``shown`` (S,) replaced by the same cell in the nearest frame of the episode where no drawn
    player stands on it (the map there, as the game drew it)."""
    labels = ds.labels(episode)
    pos, vis = labels["position"], labels["visible"]  # (T+1, P, 2), (T+1, P)
    out = frame.copy()
    order = np.argsort(np.abs(np.arange(len(pos)) - t), kind="stable")
    with ds._txn() as txn:  # noqa: SLF001 - the dataset's own frame reader
        for (x, y), on in zip(position, shown):
            if not on:
                continue
            free = ~((pos[:, :, 0] == x) & (pos[:, :, 1] == y) & vis).any(1)
            if not free.any():
                continue  # a cell some player never leaves: it stays (counted, so a bound from above)
            other = ds._frame(txn, episode, int(order[free[order]][0]))  # noqa: SLF001
            rows, cols = slice(y * CELL_PX, (y + 1) * CELL_PX), slice(x * CELL_PX, (x + 1) * CELL_PX)
            out[rows, cols] = other[rows, cols]
    return out


def degrade(frames: torch.Tensor, sigma: float, blur: int, generator: torch.Generator) -> torch.Tensor:
    """uint8 (B, 3, H, W) -> uint8, box-blurred (radius ``blur`` px) then noised (std ``sigma``)."""
    x = frames.float()
    if blur > 0:
        k = 2 * blur + 1
        x = F.avg_pool2d(F.pad(x, (blur,) * 4, mode="replicate"), k, stride=1)
    if sigma > 0:
        x = x + sigma * torch.randn(x.shape, generator=generator)
    return x.round().clamp(0, 255).to(torch.uint8)


def detector_robustness(lmdb: str | Path, detectors_path: str | Path, cfg: EvalConfig, frames_per_game: int = 64,
                        seed: int = 0, noise_levels=NOISE_LEVELS, blur_radii=BLUR_RADII,
                        progress: bool = True, device: str = "cpu") -> dict:
    """Detection and false-positive rates of the detectors (run on ``device``) at every (noise,
    blur) level on ``frames_per_game`` frames per game of ``lmdb`` (a split the detectors were not
    trained on)."""
    detectors = load_detectors(detectors_path, device)
    ds = ClipDataset(lmdb, clip_steps=1)
    windows = select_windows(ds, frames_per_game, seed)
    clips = [ds.clip(int(e), int(s)) for e, s in zip(windows["episode"], windows["start"])]
    real, erased = [], []
    for clip in clips:
        frame = clip["frames"][0].permute(1, 2, 0).numpy()
        shown = (clip["present"] & clip["visible"][0]).numpy()
        real.append(clip["frames"][0])
        erased.append(torch.from_numpy(erase_players(ds, int(clip["episode"]), int(clip["start"]), frame,
                                                     clip["position"][0].numpy(), shown)).permute(2, 0, 1))
    real, erased = torch.stack(real), torch.stack(erased)
    position = np.stack([c["position"][0].numpy() for c in clips])
    facing = np.stack([c["facing"][0].numpy() for c in clips])
    shown = np.stack([(c["present"] & c["visible"][0]).numpy() for c in clips])
    game = torch.as_tensor(np.asarray(detectors.game_indices(ds.games, str(ds.path)), np.int64)[windows["game"]])
    g = torch.Generator().manual_seed(seed)
    levels = [(s, b) for b in blur_radii for s in noise_levels]
    out = {"lmdb": str(lmdb), "detectors": str(detectors_path), "tau": cfg.tau, "frames": len(clips),
           "players": int(shown.sum()), "levels": []}
    n = max(int(shown.sum()), 1)
    for sigma, blur in tqdm(levels, desc="detector robustness", unit="level", disable=not progress):
        with torch.no_grad():
            kept, _ = detect(detectors.tile, degrade(real, sigma, blur, g), game, cfg.tau, cfg.eval_batch_frames)
            gone, _ = detect(detectors.tile, degrade(erased, sigma, blur, g), game, cfg.tau, cfg.eval_batch_frames)
        at_cell = (kept.cell == position).all(-1)
        gone_at_cell = (gone.cell == position).all(-1)
        out["levels"].append({
            "noise_sigma": sigma, "blur_radius": blur,
            "detected": float((kept.found & shown).sum() / n),
            "exact": float((kept.found & at_cell & (kept.facing == facing) & shown).sum() / n),
            "false_positive": float((gone.found & shown).sum() / n),
            "false_positive_same_cell": float((gone.found & gone_at_cell & shown).sum() / n),
        })
    return out


def robustness_markdown(result: dict) -> str:
    lines = [f"Detectors {result['detectors']} on {result['frames']} frames ({result['players']} players) of "
             f"{result['lmdb']}, tau {result['tau']}:", "",
             "| noise sigma | blur radius | detected | exact | false positive (erased) | at its cell |",
             "|---:|---:|---:|---:|---:|---:|"]
    for r in result["levels"]:
        lines.append(f"| {r['noise_sigma']:g} | {r['blur_radius']} | {r['detected']:.3f} | {r['exact']:.3f} | "
                     f"{r['false_positive']:.3f} | {r['false_positive_same_cell']:.3f} |")
    return "\n".join(lines) + "\n"
