"""A contact sheet of every catalogue game's first frame: the mini maps at a glance."""

from __future__ import annotations

import math
import multiprocessing as mp
from pathlib import Path

import numpy as np

from actionparty.atomic import atomic_path
from actionparty.games import GameEnv, GameSpec


def first_frame(spec: GameSpec, seed: int = 0) -> np.ndarray:
    """(H, W, 3) uint8 frame right after reset."""
    with GameEnv(spec, seed) as env:
        return env.reset().frame


def draw_contact_sheet(specs: list[GameSpec], out: str | Path, workers: int = 1, columns: int = 8) -> None:
    """Save a grid of first frames, each titled with the game, players and map size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if workers > 1:
        with mp.get_context("fork").Pool(workers) as pool:
            frames = pool.map(first_frame, specs)
    else:
        frames = [first_frame(s) for s in specs]
    columns = min(columns, len(specs))
    rows = math.ceil(len(specs) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(2.0 * columns, 2.25 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, spec, frame in zip(axes.flat, specs, frames):
        ax.imshow(frame, interpolation="nearest")
        ax.set_title(f"{spec.name}\n{spec.num_players}p, {spec.width_cells}x{spec.height_cells}", fontsize=7)
    fig.suptitle(f"{len(specs)} Melting Pot games on mini maps (first frame after reset)", fontsize=10)
    fig.tight_layout()
    out = Path(out)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=110, format=out.suffix.lstrip(".") or "png")
    plt.close(fig)
