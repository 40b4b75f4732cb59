"""Sample figures of rollouts: ground truth beside generated, as a GIF and a PNG strip."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from actionparty.atomic import atomic_path


def _upscale(frames: np.ndarray, factor: int) -> np.ndarray:
    return frames.repeat(factor, axis=-3).repeat(factor, axis=-2)


def side_by_side(gt: np.ndarray, gen: np.ndarray, gap: int = 4) -> np.ndarray:
    """(S, H, W, 3) + (S, H, W, 3) -> (S, H, 2W + gap, 3) with a white gap."""
    spacer = np.full(gt.shape[:2] + (gap, 3), 255, np.uint8)
    return np.concatenate([gt, spacer, gen], axis=2)


def write_gif(path: str | Path, frames: np.ndarray, fps: float = 3.0, scale: int = 3) -> None:
    """(S, H, W, 3) uint8 -> looping GIF, written atomically."""
    import imageio.v2 as imageio

    with atomic_path(path, suffix=".gif") as tmp:
        imageio.mimsave(tmp, list(_upscale(frames, scale)), duration=1.0 / fps, loop=0)


def write_strip(path: str | Path, rows: list[tuple[str, np.ndarray]], title: str, scale: int = 2) -> None:
    """One row of frames per (label, (S, H, W, 3)) — e.g. ground truth and generated."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = rows[0][1].shape[0]
    fig, axes = plt.subplots(len(rows), steps, figsize=(1.3 * steps, 1.45 * len(rows)), squeeze=False)
    for r, (label, frames) in enumerate(rows):
        for s in range(steps):
            ax = axes[r, s]
            ax.imshow(frames[s], interpolation="nearest")
            ax.set_xticks([]), ax.set_yticks([])
            if r == 0:
                ax.set_title("context" if s == 0 else f"t={s}", fontsize=7)
            if s == 0:
                ax.set_ylabel(label, fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format=path.suffix.lstrip("."))
    plt.close(fig)
