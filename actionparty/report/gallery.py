"""The side-by-side GIF gallery: per game and horizon, the real game beside each model's rollout
of the same test window, with the model's predicted coordinates drawn as rings.

    results/rollouts/{model}/h{H}.npz (+ the test LMDB for the real column)
        -> gifs/gallery/h{H}/{game}_{real|model}.gif

Columns: ``real`` (the test LMDB's frames of the window; absent without ``--test-lmdb``), then
the gallery models (default ``full``, ``paper``, ``global_action``, ``text_action``; those the
variant registry does not hold are left out, named in the notes). Rows: one test window per game
(the first window of each game in the rollout files, which list the same windows for every
model: :func:`actionparty.rollout.rollout_io.select_windows`), up to ``max_games`` games. Every
GIF of a row is the same window (episode, start), checked against each model's file; a model
without a rollout at that horizon, or without that window, has an empty cell saying so.

Rings: the model's own predicted cell of each present player (``pred_position``), in the
player's Melting Pot slot colour with a white halo, on the frames upscaled to about 192 px.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from actionparty.games.actions import CELL_PX
from actionparty.report.figures import SLOT_COLOURS
from actionparty.report.lineup import Lineup
from actionparty.report.samples import write_gif
from actionparty.rollout.rollout_io import Rollout, RolloutError, read_rollout

GALLERY_MODELS = ("full", "paper", "global_action", "text_action")
REAL = "real"
GIF_PX = 192  # about this wide on screen, whatever the canvas


@dataclass
class Gallery:
    """What the gallery shows: per horizon, per game row, per column a GIF path or None."""

    columns: list[tuple[str, str]] = field(default_factory=list)  # (name, header): 'real' first, then models
    horizons: list[int] = field(default_factory=list)
    rows: dict[int, list[dict]] = field(default_factory=dict)  # horizon -> [{game, window, cells: {col: Path|None}}]
    notes: list[str] = field(default_factory=list)

    @property
    def paths(self) -> list[Path]:
        return [p for rows in self.rows.values() for row in rows for p in row["cells"].values() if p is not None]


def _rollouts(results: Path, model: str) -> dict[int, Path]:
    out = {}
    for path in (results / "rollouts" / model).glob("h*.npz"):
        m = re.fullmatch(r"h(\d+)\.npz", path.name)
        if m:
            out[int(m.group(1))] = path
    return out


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", name)


def draw_rings(frames: np.ndarray, positions: np.ndarray | None, present: np.ndarray, scale: int) -> np.ndarray:
    """(T, H, W, 3) uint8 frames upscaled by ``scale``, with a ring per present player at its
    predicted cell (positions (T, S, 2) as (x, y) cells; NaN = no prediction)."""
    big = frames.repeat(scale, axis=1).repeat(scale, axis=2).copy()
    if positions is None:
        return big
    h, w = big.shape[1:3]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32) + 0.5
    radius, width = 0.42 * CELL_PX * scale, max(1.0, 0.6 * scale)
    for t in range(big.shape[0]):
        for s in np.flatnonzero(present):
            x, y = positions[t, s]
            if not (np.isfinite(x) and np.isfinite(y)):
                continue
            d = np.abs(np.hypot(xx - (x + 0.5) * CELL_PX * scale, yy - (y + 0.5) * CELL_PX * scale) - radius)
            big[t][d <= width + max(1.0, 0.5 * scale)] = 255  # halo
            big[t][d <= width] = (SLOT_COLOURS[s % len(SLOT_COLOURS)] * 255).astype(np.uint8)
    return big


def _windows(rollout: Rollout, max_games: int) -> list[int]:
    """The first window of each game (in the file's order), up to ``max_games`` games."""
    rows, seen = [], set()
    for i, g in enumerate(rollout.game.tolist()):
        if g not in seen and len(rows) < max_games:
            seen.add(g)
            rows.append(i)
    return rows


def build_gallery(results: str | Path, out: str | Path, lineup: Lineup, test_lmdb: str | Path | None = None,
                  models: tuple[str, ...] = GALLERY_MODELS, max_games: int = 8, game_names: list[str] | None = None,
                  fps: float = 3.0) -> Gallery:
    """Write the gallery's GIFs under ``{out}/gifs/gallery`` and return what it shows.
    ``game_names``: the rollout files' game indices -> names when there is no test LMDB
    (the detector bundle's games); else 'game <k>'."""
    results, out = Path(results), Path(out)
    gallery = Gallery()
    absent = [m for m in models if m not in lineup]
    if absent:
        gallery.notes.append(f"Not in the variant registry, so no column: {', '.join(absent)}.")
    shown = [m for m in models if m in lineup]
    files = {m: _rollouts(results, m) for m in shown}
    gallery.horizons = sorted({h for f in files.values() for h in f})
    if not gallery.horizons:
        gallery.notes.append(f"No rollout files under {results}/rollouts for {', '.join(shown)} "
                             "(rollouts/<model>/h<H>.npz): no gallery.")
        return gallery
    without = [m for m in shown if not files[m]]
    if without:
        gallery.notes.append("No rollouts (" + ", ".join(f"{results}/rollouts/{m}/h<H>.npz" for m in without)
                             + "): their cells are empty.")
    if test_lmdb is None:
        gallery.notes.append("No test LMDB given (--test-lmdb): the real game's column is left out.")
    gallery.columns = ([(REAL, "real game")] if test_lmdb is not None else []) + [(m, lineup.label(m)) for m in shown]
    for h in gallery.horizons:
        loaded = {m: read_rollout(files[m][h]) for m in shown if h in files[m]}
        reference = next(iter(loaded.values()))
        picks = _windows(reference, max_games)
        names, truth = _truth(test_lmdb, reference, picks, h, files[next(iter(loaded))][h])
        if names is None:
            names = [game_names[g] if game_names and g < len(game_names) else f"game {g}"
                     for g in reference.game[picks].tolist()]
        scale = max(1, round(GIF_PX / reference.frames.shape[3]))
        rows = []
        for k, i in enumerate(picks):
            game, episode, start = names[k], int(reference.episode[i]), int(reference.start[i])
            cells: dict[str, Path | None] = {}
            folder = out / "gifs" / "gallery" / f"h{h}"
            if truth is not None:
                cells[REAL] = folder / f"{_safe(game)}_{REAL}.gif"
                write_gif(cells[REAL], draw_rings(truth[k], None, reference.present[i], scale), fps=fps, scale=1)
            for m in shown:
                rollout = loaded.get(m)
                match = None if rollout is None else np.flatnonzero((rollout.episode == episode)
                                                                    & (rollout.start == start))
                if match is None or not match.size:
                    cells[m] = None
                    continue
                j = int(match[0])
                if rollout.frames.shape[2:] != reference.frames.shape[2:]:
                    raise RolloutError(f"{files[m][h]}: frames are {rollout.frames.shape[2]} px, "
                                       f"{files[next(iter(loaded))][h]}'s {reference.frames.shape[2]} px")
                pos = None if rollout.pred_position is None else rollout.pred_position[j]
                cells[m] = folder / f"{_safe(game)}_{m}.gif"
                write_gif(cells[m], draw_rings(rollout.frames[j], pos, rollout.present[j], scale), fps=fps, scale=1)
            rows.append({"game": game, "window": f"episode {episode}, step {start}", "cells": cells})
        gallery.rows[h] = rows
    for stale in set((out / "gifs" / "gallery").glob("h*/*.gif")) - set(gallery.paths):
        stale.unlink()  # a window, model or horizon that is gone from results/
    return gallery


def _truth(test_lmdb, reference: Rollout, picks: list[int], horizon: int, source: Path):
    """(game names of the picked windows, their real frames (n, T, H, W, 3)) from the test LMDB,
    checked to be the rollout's windows; (None, None) without one."""
    if test_lmdb is None:
        return None, None
    from actionparty.data.lmdb_dataset import ClipDataset
    from actionparty.eval.evaluate import _check_against_truth, ground_truth
    from actionparty.report.figures import _subset

    dataset = ClipDataset(test_lmdb, clip_steps=horizon)
    sub = _subset(reference, picks)
    truth = ground_truth(dataset, sub.episode, sub.start, str(source))
    _check_against_truth(sub, truth, str(source))
    return [dataset.games[g] for g in sub.game.tolist()], truth["frames"].transpose(0, 1, 3, 4, 2)
