"""The report's figures, each saved as PNG and PDF: metric breakdowns, training curves, rollouts.

================  ===================================================================================
player_count      MA and SP against the number of players, one line per model (rows: horizons)
step_curves       MA (and SP, BA where measured) per rollout step at the longest horizon: drift
training_curves   loss per logged step: exp-138 pretraining, and each finetuned variant
learning_curves   MA / BA at finetuning checkpoints (only where ``curve.json`` exists)
rollout           a few test windows of one model: ground truth (if the test LMDB is given) and
                  generated frames, the model's predicted coordinates as circles in the player's
                  colour, and under each generated step one icon per player for the action it was fed,
                  framed green / red by whether the detectors saw it executed
================  ===================================================================================

Lines: one per model of the variant registry, in its order, in the variant's ``colour``; methods
bold, ablations dashed, the copy floor dotted, the oracle dash-dotted (:meth:`.Lineup.style`).

How an action is judged (:func:`judge_actions`, the metric code of ``eval.metrics``): with ground
truth, exactly MA's test (:func:`~actionparty.eval.metrics.motion_outcomes`: the detected change of
(cell, facing) from generated frame t-1 to t equals the real change; players not drawn in the real
frames are not scored). Without ground truth (a reviewer with results/ only), BA's movement rules
(:func:`~actionparty.eval.metrics.rule_agreement_outcomes`: the detected state at t equals the
rules applied to the detected state at t-1 and the fed action, on the walkable cells stored in the
detector bundle). Either way a player the detectors do not find in t-1 or t counts as not executed.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from actionparty.atomic import atomic_path
from actionparty.eval import metrics as M
from actionparty.rollout.rollout_io import Rollout, RolloutError
from actionparty.games.actions import CANONICAL_ACTIONS, CELL_PX
from actionparty.eval.metrics_file import MetricsError
from actionparty.report.lineup import Lineup
from actionparty.report.samples import side_by_side, write_gif
from actionparty.report.tables import MetricsSet

# Melting Pot's avatar colours of slots 0..7 (meltingpot.utils.substrates.colors.human_readable).
SLOT_COLOURS = np.array([(45, 110, 220), (125, 50, 200), (205, 5, 165), (245, 65, 65), (245, 130, 0),
                         (195, 180, 0), (125, 185, 65), (35, 185, 175)]) / 255.0
# One glyph per canonical action (ids 0..7); movements are relative to the player's facing.
ACTION_GLYPHS = ("∅", "↑", "↓", "←", "→", "↺", "↻", "✦")
ACTION_LEGEND = "  ".join(f"{g} {a.lower().replace('_', ' ')}" for g, a in zip(ACTION_GLYPHS, CANONICAL_ACTIONS))
VERDICT_COLOURS = {1: "#1a9850", 0: "#d73027", -1: "#9e9e9e"}  # executed, not executed, not scored


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, stem: str | Path) -> list[Path]:
    """``{stem}.png`` and ``{stem}.pdf``, each written atomically; closes the figure."""
    plt = _pyplot()
    stem = Path(stem)
    paths = []
    for ext in ("png", "pdf"):
        path = stem.parent / f"{stem.name}.{ext}"
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=ext, dpi=150, bbox_inches="tight")
        paths.append(path)
    plt.close(fig)
    return paths


def _numbers(values) -> np.ndarray:
    """A JSON list with nulls -> float array with NaN (matplotlib leaves gaps)."""
    return np.array([np.nan if v is None else float(v) for v in values], dtype=float)


# ---------------------------------------------------------------------------------------------
# Metric figures
# ---------------------------------------------------------------------------------------------


def player_count_figure(metrics: MetricsSet, lineup: Lineup, stem: str | Path) -> list[Path]:
    """:func:`player_count_plot`, saved with the legend of its first panel."""
    fig = player_count_plot(metrics, lineup)
    return _save_with_legend(fig, fig.axes[0], stem)


def player_count_plot(metrics: MetricsSet, lineup: Lineup):
    """MA and SP against the number of players, one line per model; one row per horizon."""
    plt = _pyplot()
    horizons = metrics.horizons()
    fig, axes = plt.subplots(len(horizons), 2, figsize=(10, 3.4 * len(horizons)), squeeze=False)
    for r, h in enumerate(horizons):
        counts = metrics.groups("per_player_count", h)
        x = np.array([int(c) for c in counts])
        for c, name in enumerate(("MA", "SP")):
            ax = axes[r, c]
            for model in lineup.names:
                if metrics.entry(model, h) is None:
                    continue
                y = _numbers([metrics.value(model, h, name, "per_player_count", k) for k in counts])
                ax.plot(x, y, marker="o", markersize=4, label=lineup.label(model), **lineup.style(model))
            ax.set_xticks(x)
            _share_axes(ax, "players in the scene", name, f"{name} per player count, horizon {h}")
    return fig


def _share_axes(ax, xlabel: str, ylabel: str, title: str) -> None:
    """Axes of a share-valued metric (0..1) in the metric figures."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)


def _save_with_legend(fig, legend_axes, stem: str | Path) -> list[Path]:
    handles, names = legend_axes.get_legend_handles_labels()
    fig.legend(handles, names, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8)
    fig.tight_layout()
    return save_figure(fig, stem)


def step_curves_figure(metrics: MetricsSet, lineup: Lineup, stem: str | Path, horizon: int) -> list[Path]:
    """:func:`step_curves_plot`, saved with the legend of its first panel."""
    fig = step_curves_plot(metrics, lineup, horizon)
    return _save_with_legend(fig, fig.axes[0], stem)


def step_curves_plot(metrics: MetricsSet, lineup: Lineup, horizon: int):
    """MA (``ma_curve``), SP (``sp_curve``) and, where measured, BA (``ba_curve``) per rollout step
    at ``horizon``: how following, keeping and binding players degrade as the rollout goes on."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    curves = [c for c in ("ma_curve", "sp_curve", "ba_curve")
              if any((metrics.entry(m, horizon) or {}).get(c) for m in metrics.models)]
    fig, axes = plt.subplots(1, max(len(curves), 1), figsize=(5.2 * max(len(curves), 1), 3.6), squeeze=False)
    for ax, curve in zip(axes[0], curves):
        for model in lineup.names:
            values = (metrics.entry(model, horizon) or {}).get(curve)
            if values:
                ax.plot(np.arange(1, len(values) + 1), _numbers(values), marker=".", label=lineup.label(model),
                        **lineup.style(model))
        name = curve.split("_")[0].upper()
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        _share_axes(ax, "rollout step" if curve != "sp_curve" else "generated frame", name,
                    f"{name} per step, horizon {horizon}")
    return fig


# ---------------------------------------------------------------------------------------------
# Training curves
# ---------------------------------------------------------------------------------------------


def read_train_log(path: str | Path) -> dict[str, np.ndarray]:
    """``train_log.jsonl`` (one JSON object per logged step, with ``step``) -> column -> (K,) float
    array, NaN where a record lacks the key. MetricsError names the file and line."""
    path = Path(path)
    records = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise MetricsError(f"{path}: line {number} is not valid JSON ({err.msg})") from None
        if not isinstance(record, dict) or not isinstance(record.get("step"), (int, float)):
            raise MetricsError(f"{path}: line {number} has no field 'step'")
        records.append(record)
    keys = sorted({k for r in records for k, v in r.items() if isinstance(v, (int, float)) or v is None})
    return {k: _numbers([r.get(k) for r in records]) for k in keys}


CURVE_METRICS = ("MA", "MA_changing", "BA", "SP")  # the learning-curve metrics drawn, where measured


def read_learning_curve(path: str | Path) -> dict[str, np.ndarray]:
    """``curve.json`` = {"steps": [...], "MA": [...], "BA": [...], "SP": [...], ...} (nulls allowed)
    -> arrays: ``steps`` and every metric of :data:`CURVE_METRICS` the file has."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise MetricsError(f"{path}: not valid JSON ({str(err).splitlines()[0]})") from None
    if not isinstance(data, dict) or not isinstance(data.get("steps"), list):
        raise MetricsError(f"{path}: field 'steps' is missing")
    out = {"steps": _numbers(data["steps"])}
    for key in CURVE_METRICS:
        values = data.get(key)
        if values is None:
            continue
        if not isinstance(values, list) or len(values) != len(data["steps"]):
            raise MetricsError(f"{path}: field '{key}' must be a list as long as 'steps'")
        if not all(v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)) for v in values):
            raise MetricsError(f"{path}: field '{key}' holds a value that is not a number or null")
        out[key] = _numbers(values)
    return out


def _log_axis(ax, values: list[np.ndarray]) -> None:
    finite = np.concatenate([v[np.isfinite(v)] for v in values]) if values else np.zeros(0)
    if finite.size and (finite > 0).all():
        ax.set_yscale("log")


def training_curves_figure(pretrain: dict[str, np.ndarray] | None, finetune: dict[str, dict[str, np.ndarray]],
                           lineup: Lineup, stem: str | Path) -> list[Path]:
    """Panels: exp-138's loss; every finetuned run's loss; their state loss (subject variants).
    A run the registry does not name (the pretraining) is drawn in black."""
    plt = _pyplot()
    panels = []
    if pretrain is not None:
        panels.append(("pretraining (exp-138)", {"pretraining (exp-138)": pretrain}, ("loss",)))
    if finetune:
        panels.append(("finetuning: total loss", finetune, ("loss",)))
        if any(np.isfinite(log.get("state_loss", np.zeros(0))).any() for log in finetune.values()):
            panels.append(("finetuning: state loss", finetune, ("state_loss",)))
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 3.6), squeeze=False)
    for ax, (title, runs, keys) in zip(axes[0], panels):
        shown = []
        for run, log in runs.items():
            for key in keys:
                if key in log and np.isfinite(log[key]).any():
                    style = lineup.style(run) if run in lineup else dict(color="black", linewidth=1.3)
                    ax.plot(log["step"], log[key], label=lineup.label(run), **style)
                    shown.append(log[key])
        _log_axis(ax, shown)
        ax.set_xlabel("step")
        ax.set_ylabel(keys[0].replace("_", " "))
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        if len(runs) > 1:
            ax.legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, stem)


def learning_curves_figure(curves: dict[str, dict[str, np.ndarray]], lineup: Lineup,
                           stem: str | Path) -> list[Path]:
    """MA, BA and SP (those measured) at finetuning checkpoints, one line per variant."""
    plt = _pyplot()
    keys = [k for k in CURVE_METRICS if any(k in c for c in curves.values())]
    fig, axes = plt.subplots(1, len(keys), figsize=(5.2 * len(keys), 3.6), squeeze=False)
    for ax, key in zip(axes[0], keys):
        for run, curve in curves.items():
            if key in curve:
                ax.plot(curve["steps"], curve[key], marker="o", markersize=3, label=lineup.label(run),
                        **lineup.style(run))
        ax.set_xlabel("finetuning step")
        ax.set_ylabel(key)
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(f"{key} during finetuning", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, stem)


# ---------------------------------------------------------------------------------------------
# Rollouts: which windows, detections, judging the actions
# ---------------------------------------------------------------------------------------------


def pick_windows(game: np.ndarray, count: int) -> list[int]:
    """``count`` window indices spread over the games: the first window of each game in turn, then
    the second, ... (rollout files list windows sorted by game, so every model gets the same)."""
    by_game = [np.flatnonzero(game == g).tolist() for g in np.unique(game)]
    chosen, depth = [], 0
    while len(chosen) < min(count, len(game)):
        for rows in by_game:
            if depth < len(rows) and len(chosen) < count:
                chosen.append(rows[depth])
        depth += 1
    return chosen


def detect_frames(detectors, frames: np.ndarray, det_game: np.ndarray) -> M.Detections:
    """frames (N, T, Hpx, Wpx, 3) uint8, det_game (N,) detector game indices -> Detections (N, T, S)."""
    import torch

    from actionparty.eval.detectors import detect

    n, t = frames.shape[:2]
    flat = torch.from_numpy(np.ascontiguousarray(frames.reshape(n * t, *frames.shape[2:]).transpose(0, 3, 1, 2)))
    det, _ = detect(detectors.tile, flat, torch.from_numpy(np.repeat(det_game, t)), detectors.config.tau,
                    detectors.config.eval_batch_frames)
    return M.Detections(*(a.reshape(n, t, *a.shape[1:]) for a in (det.cell, det.facing, det.confidence, det.count)))


def judge_actions(det: M.Detections, actions: np.ndarray, present: np.ndarray, walkable: np.ndarray | None = None,
                  truth: dict | None = None) -> np.ndarray:
    """Per (window, step, slot) whether the fed action was executed in the generated frames:
    1 yes, 0 no, -1 not scored (empty slot, or player not drawn in the real frames).

    det (N, T, S) on the generated frames, actions (N, H, S), present (N, S). With ``truth``
    (position (N, T, S, 2), facing (N, T, S), visible (N, T, S)): MA's test. Without it: the
    movement rules on ``walkable`` (N, Hc, Wc) (see the module docstring).
    """
    if truth is not None:
        executed = M.motion_outcomes(det, truth["position"], truth["facing"])
        scored = M.step_mask(present, truth["visible"])
    else:
        if walkable is None:
            raise ValueError("judging without ground truth needs the walkable cells")
        executed = M.rule_agreement_outcomes(det, actions, walkable)
        scored = np.broadcast_to(present[:, None, :], executed.shape)
    return np.where(scored, executed.astype(np.int8), np.int8(-1))


@dataclass
class RolloutView:
    """The windows of one rollout file that a figure shows (n windows, T = H + 1 frames)."""

    model: str
    horizon: int
    frames: np.ndarray  # (n, T, Hpx, Wpx, 3) generated (frame 0 = the real context)
    truth_frames: np.ndarray | None  # (n, T, Hpx, Wpx, 3) ground truth, if the test LMDB was given
    actions: np.ndarray  # (n, H, S) fed actions
    present: np.ndarray  # (n, S)
    pred_position: np.ndarray | None  # (n, T, S, 2) the model's own (x, y) cells
    verdict: np.ndarray | None  # (n, H, S) from judge_actions, None without detectors
    titles: list[str]  # per window: game, episode, start
    criterion: str  # how the actions were judged, for the caption


def _subset(rollout: Rollout, rows: list[int]) -> Rollout:
    pick = lambda a: None if a is None else a[rows]  # noqa: E731
    return Rollout(rollout.frames[rows], rollout.episode[rows], rollout.start[rows], rollout.game[rows],
                   rollout.actions[rows], rollout.present[rows], pick(rollout.pred_position),
                   pick(rollout.pred_facing), pick(rollout.swap), dict(rollout.meta))


def rollout_view(path: str | Path, model: str, windows: int, detectors=None, test_lmdb: str | Path | None = None
                 ) -> RolloutView:
    """Read ``windows`` windows of a rollout file, their ground truth from ``test_lmdb`` (optional)
    and the detectors' judgement of every fed action (optional: ``detectors`` None = no frames)."""
    from actionparty.rollout.rollout_io import read_rollout

    full = read_rollout(path)
    rollout = _subset(full, pick_windows(full.game, windows))
    truth, names = None, None
    if test_lmdb is not None:
        from actionparty.data.lmdb_dataset import ClipDataset
        from actionparty.eval.evaluate import _check_against_truth, ground_truth

        dataset = ClipDataset(test_lmdb, clip_steps=rollout.horizon)
        if rollout.frames.shape[2] != dataset.canvas_px:
            raise RolloutError(f"{path}: frames are {rollout.frames.shape[2]} px, {test_lmdb}'s {dataset.canvas_px} px")
        truth = ground_truth(dataset, rollout.episode, rollout.start, str(path))
        _check_against_truth(rollout, truth, str(path))  # the same windows, actions and context frame
        names = [dataset.games[g] for g in rollout.game]
    elif detectors is not None and rollout.game.max() < len(detectors.games):
        names = [detectors.games[g] for g in rollout.game]  # splits list the profile's games in one order
    verdict, criterion = None, "no detector bundle: icon frames are grey (not judged)"
    if detectors is not None and names is None:
        criterion = "the rollout's games are not among the detectors' (give --test-lmdb): icon frames are grey"
    if detectors is not None and names is not None:
        det_game = np.asarray(detectors.game_indices(names, str(path)), np.int64)
        det = detect_frames(detectors, rollout.frames, det_game)
        if truth is not None:
            verdict = judge_actions(det, rollout.actions, rollout.present, truth=truth)
            criterion = ("green: the detected change of (cell, facing) equals the real one (MA's test); "
                         "red: it does not or the player was not detected; grey: player not drawn in the real frames")
        else:
            walkable = np.stack([detectors.walkable[n] for n in names])
            verdict = judge_actions(det, rollout.actions, rollout.present, walkable)
            criterion = ("no ground truth given: green = the detected state follows the movement rules for the "
                         "fed action (BA's rules), red = it does not or the player was not detected")
    titles = [f"{names[i] if names else f'game {int(rollout.game[i])}'}\nep {int(rollout.episode[i])}, "
              f"step {int(rollout.start[i])}" for i in range(rollout.num)]
    truth_frames = None if truth is None else truth["frames"].transpose(0, 1, 3, 4, 2)
    return RolloutView(model, rollout.horizon, rollout.frames, truth_frames, rollout.actions, rollout.present,
                       rollout.pred_position, verdict, titles, criterion)


# ---------------------------------------------------------------------------------------------
# Rollouts: drawing
# ---------------------------------------------------------------------------------------------

_ICONS_PER_LINE = 4


def _draw_icons(ax, actions: np.ndarray, present: np.ndarray, verdict: np.ndarray | None) -> None:
    """One glyph per present player (in its slot colour), framed by the verdict colour.
    actions, present, verdict: (S,)."""
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.axis("off")
    slots = np.flatnonzero(present)
    per_line = min(len(slots), _ICONS_PER_LINE) or 1
    lines = math.ceil(len(slots) / per_line) if len(slots) else 1
    for k, s in enumerate(slots):
        x = (k % per_line + 0.5) / per_line
        y = 1 - (k // per_line + 0.5) / lines
        code = -1 if verdict is None else int(verdict[s])
        ax.text(x, y, ACTION_GLYPHS[int(actions[s])], ha="center", va="center", fontsize=8, fontweight="bold",
                color=SLOT_COLOURS[s], bbox=dict(boxstyle="square,pad=0.2", facecolor="white",
                                                  edgecolor=VERDICT_COLOURS[code], linewidth=1.6))


def _show(ax, frame: np.ndarray) -> None:
    ax.imshow(frame, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def rollout_figure(view: RolloutView, title: str, stem: str | Path) -> list[Path]:
    """Per window: a ground-truth row (if any), the generated row with the predicted coordinates,
    and a row of action icons under each generated step."""
    plt = _pyplot()
    n, t = view.frames.shape[:2]
    notes = [title, ACTION_LEGEND, view.criterion]
    if view.pred_position is not None:
        notes.append("circles: the model's own predicted coordinates of each player, in its colour")
    if view.truth_frames is None:
        notes.append("no ground-truth row: rebuild with --test-lmdb to add it")
    icon_lines = math.ceil(max(int(view.present.sum(1).max()), 1) / _ICONS_PER_LINE)
    block = (["truth"] if view.truth_frames is not None else []) + ["generated", "icons", "gap"]
    heights = {"header": 0.16 * len(notes), "truth": 1.0, "generated": 1.0, "icons": 0.2 * icon_lines + 0.05,
               "gap": 0.2}
    kinds = ["header", "gap"] + [k for _ in range(n) for k in block][:-1]
    fig = plt.figure(figsize=(1.25 * t + 0.9, 1.25 * sum(heights[k] for k in kinds) + 0.3))
    grid = fig.add_gridspec(len(kinds), t, height_ratios=[heights[k] for k in kinds], hspace=0.08, wspace=0.05)
    header = fig.add_subplot(grid[0, :])
    header.axis("off")
    header.text(0.5, 0.5, "\n".join(notes), ha="center", va="center", fontsize=7, transform=header.transAxes)
    row = 2
    for w in range(n):
        first = True
        for kind in block:
            if kind == "gap":
                row += 1
                continue
            for step in range(t):
                ax = fig.add_subplot(grid[row, step])
                if kind == "icons":
                    if step == 0:
                        ax.axis("off")
                        ax.text(0.5, 0.5, "fed action", ha="center", va="center", fontsize=7, color="0.3")
                    else:
                        _draw_icons(ax, view.actions[w, step - 1], view.present[w],
                                    None if view.verdict is None else view.verdict[w, step - 1])
                    continue
                frame = view.truth_frames[w, step] if kind == "truth" else view.frames[w, step]
                _show(ax, frame)
                if kind == "generated" and view.pred_position is not None:
                    slots = np.flatnonzero(view.present[w])
                    xy = view.pred_position[w, step, slots]
                    ok = np.isfinite(xy).all(1)
                    # cell (x, y) spans pixels [8x, 8x + 8): its centre in imshow coordinates
                    px, py = (xy[ok, 0] + 0.5) * CELL_PX - 0.5, (xy[ok, 1] + 0.5) * CELL_PX - 0.5
                    ax.scatter(px, py, s=40, facecolors="none", edgecolors="white", linewidths=3.0)  # halo
                    ax.scatter(px, py, s=40, facecolors="none", edgecolors=SLOT_COLOURS[slots[ok]], linewidths=1.5)
                if first:
                    ax.set_title("context" if step == 0 else f"t={step}", fontsize=7)
                if step == 0:
                    name = "ground truth" if kind == "truth" else "generated"
                    ax.set_ylabel(f"{view.titles[w]}\n{name}" if first else name, fontsize=6)
            first = False
            row += 1
    return save_figure(fig, stem)


def rollout_gifs(view: RolloutView, folder: str | Path, fps: float = 3.0) -> list[Path]:
    """``{folder}/{model}_{n}.gif`` per window: ground truth (left) beside generated (right) when
    the ground truth is known, the generated frames alone otherwise."""
    folder = Path(folder)
    scale = max(1, round(192 / view.frames.shape[3]))
    paths = []
    for w in range(view.frames.shape[0]):
        frames = view.frames[w]
        if view.truth_frames is not None:
            frames = side_by_side(view.truth_frames[w], frames)
        path = folder / f"{view.model}_{w}.gif"
        write_gif(path, frames, fps=fps, scale=scale)
        paths.append(path)
    return paths
