"""Metrics of one model variant (its rollout files) or of the oracle (ground truth), as JSON.

Per horizon H, ``results/metrics/{variant}.json`` holds (see docs/EVALUATION.md)::

    {"schema_version": 1, "variant": ..., "kind": "model" | "oracle", "tau": ..., "detectors": ...,
     "horizons": {"h4": {"rollout": ..., "swap_rollout": ..., "meta": {...},
                         "overall": {metrics}, "per_game": {game: {metrics}},
                         "per_player_count": {"2": {metrics}}, "per_action": {"NOOP": {"MA", "player_steps"}},
                         "per_cause": {"moved" | "turned" | "blocked_wall" | "blocked_player" | "still":
                                       {"MA", "player_steps"}},
                         "ma_curve": [H values], "sp_curve": [...], "ba_curve": [...] | null}}}

{metrics} = MA, MA_changing, MA_static, SP, DR, duplicated, vanished, EA, BA, BA_other, ST_l1,
ST_exact, ST_facing, MA_given_ST, PSNR, SSIM, FD, FVD_I3D, rules_agreement; the 95% bootstrap
interval over windows of MA, MA_changing, SP and BA (``<metric>_ci_low``, ``<metric>_ci_high``);
and the counts behind them (windows, player_steps, changing_steps, player_frames, interact_steps,
binding_steps). A metric that does not apply
(no INTERACT steps, no swap rollout, no predicted state, no I3D checkpoint) is null.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from actionparty.atomic import write_json, write_text
from actionparty.data.lmdb_dataset import ClipDataset
from actionparty.eval import metrics as M
from actionparty.eval import metrics_file
from actionparty.errors import DatasetError
from actionparty.config import EvalConfig
from actionparty.eval.detectors import (
    DetectorError,
    Detectors,
    classify_transitions,
    detect,
    load_detectors,
)
from actionparty.rollout.rollout_io import (
    Rollout,
    RolloutError,
    read_rollout,
    read_rollout_meta,
    select_windows,
    swap_actions,
)
from actionparty.games.actions import CANONICAL_ACTIONS, INTERACT

METRIC_KEYS = ("MA", "MA_changing", "MA_static", "SP", "DR", "duplicated", "vanished", "EA", "BA", "BA_other",
               "ST_l1", "ST_exact", "ST_facing", "MA_given_ST", "PSNR", "SSIM", "FD", "FVD_I3D", "rules_agreement")
# Shares that get a 95% percentile-bootstrap interval over windows (``<metric>_ci_low``/``_ci_high``):
# the windows are the independent units (a window's player-steps are not), so they are resampled.
CI_METRICS = ("MA", "MA_changing", "SP", "BA")
BOOTSTRAP_SAMPLES = 2000
BOOTSTRAP_SEED = 0


# ---------------------------------------------------------------------------------------------
# Ground truth of the rolled-out windows
# ---------------------------------------------------------------------------------------------


def ground_truth(dataset: ClipDataset, episode: np.ndarray, start: np.ndarray, source: str) -> dict[str, np.ndarray]:
    """The test windows (episode, start) (N,) of ``dataset`` (clip_steps = H), stacked:
    frames (N, T, 3, H, W) uint8 and the labels of ClipDataset items, as numpy arrays."""
    try:
        items = [dataset.clip(e, s) for e, s in zip(episode.tolist(), start.tolist())]
    except DatasetError as err:
        raise RolloutError(f"{source}: a window is not in the test LMDB ({err})") from None
    return {k: torch.stack([it[k] for it in items]).numpy() for k in items[0]}


def _check_against_truth(rollout: Rollout, gt: dict, source: str) -> None:
    if not np.array_equal(rollout.game, gt["game"]):
        raise RolloutError(f"{source}: field 'game' differs from the test LMDB's games of those windows")
    if not np.array_equal(rollout.present, gt["present"]):
        raise RolloutError(f"{source}: field 'present' differs from the test LMDB's players of those windows")
    expected = swap_actions(gt["actions"], rollout.swap) if rollout.is_swap else gt["actions"]
    if not np.array_equal(rollout.actions, expected):
        what = "the swapped actions of" if rollout.is_swap else "the actions of"
        raise RolloutError(f"{source}: field 'actions' is not {what} the test windows")
    context = np.abs(rollout.frames[:, 0].astype(np.int16) - gt["frames"][:, 0].transpose(0, 2, 3, 1)).mean()
    if context > 2.0:  # lossy codecs may touch the context a little; another window differs a lot
        raise RolloutError(f"{source}: frame 0 is not the context frame of its test window "
                           f"(mean abs difference {context:.1f}); wrong test LMDB or windows")


# ---------------------------------------------------------------------------------------------
# Per-element outcomes of one rollout file
# ---------------------------------------------------------------------------------------------


@dataclass
class Outcomes:
    """Everything the summaries average, per rollout n, step/frame t (1..H) and slot s."""

    game: np.ndarray  # (N,) test LMDB game index
    players: np.ndarray  # (N,)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)  # (N, H, S) or (N, H) outcomes and masks
    features: dict[str, np.ndarray] = field(default_factory=dict)  # FD: (N, H, C); I3D: (N, D)


def _videos(frames_nthwc: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(frames_nthwc.transpose(0, 1, 4, 2, 3)))


def _detect_all(detectors: Detectors, frames: torch.Tensor, game: np.ndarray, cfg: EvalConfig):
    """frames (N, T, 3, H, W) -> (Detections (N, T, S), features (N, T, C))."""
    n, t = frames.shape[:2]
    det, feats = detect(detectors.tile, frames.flatten(0, 1), torch.from_numpy(np.repeat(game, t)), cfg.tau,
                        cfg.eval_batch_frames)
    det = M.Detections(*(getattr(det, k).reshape(n, t, *getattr(det, k).shape[1:])
                         for k in ("cell", "facing", "confidence", "count")))
    return det, feats.reshape(n, t, -1).numpy()


def _per_frame(fn, pred: torch.Tensor, real: torch.Tensor, cfg: EvalConfig, device: torch.device) -> np.ndarray:
    """fn over (B, 3, H, W) frame pairs in chunks of ``eval_batch_frames`` (SSIM's maps are large),
    on ``device``."""
    step = cfg.eval_batch_frames
    return torch.cat([fn(pred[i : i + step].to(device), real[i : i + step].to(device)).cpu()
                      for i in range(0, len(pred), step)]).numpy()


def rollout_outcomes(rollout: Rollout, gt: dict, detectors: Detectors, det_game: np.ndarray, walkable: np.ndarray,
                     cfg: EvalConfig, i3d: M.I3DFeatures | None) -> Outcomes:
    """All per-element outcomes of one (non-swapped) rollout against its ground truth."""
    gen = _videos(rollout.frames)
    det, feats = _detect_all(detectors, gen, det_game, cfg)
    _, gt_feats = _detect_all(detectors, torch.from_numpy(gt["frames"][:, 1:]), det_game, cfg)
    step_ok = M.step_mask(gt["present"], gt["visible"])
    frame_ok = M.frame_mask(gt["present"], gt["visible"])
    once, seen = M.presence_outcomes(det)
    a = {
        "step_valid": step_ok, "frame_valid": frame_ok, "action": gt["actions"],
        "motion": M.motion_outcomes(det, gt["position"], gt["facing"]),
        "moving": M.real_change(gt["position"], gt["facing"]),
        "once": once, "seen": seen, "duplicated": det.count[:, 1:] >= 2, "vanished": det.count[:, 1:] == 0,
        "rules": M.rule_agreement_outcomes(det, rollout.actions, walkable),
        "cause": M.step_causes(gt["position"], gt["facing"], gt["actions"], walkable),
    }
    # EA: the inverse-dynamics classifier on the generated transitions of real INTERACT-with-effect steps.
    idm_action = np.full(rollout.actions.shape, -1, np.int64)
    want = (gt["actions"] == INTERACT) & gt["interact_effect"] & step_ok & det.found[:, :-1]
    n, t, s = np.nonzero(want)
    if n.size:
        idm_action[n, t, s] = classify_transitions(
            detectors.idm, gen[n, t], gen[n, t + 1], torch.from_numpy(det.cell[n, t, s]),
            torch.from_numpy(det_game[n]), torch.from_numpy(s), cfg.eval_batch_frames)
    a["ea_counted"], a["ea_hit"] = M.interact_outcomes(idm_action, gt["actions"], gt["interact_effect"])
    a["ea_counted"] &= step_ok
    # Pixels: per generated frame 1..H.
    pred, real = gen[:, 1:].flatten(0, 1), torch.from_numpy(gt["frames"][:, 1:]).flatten(0, 1)
    shape = gen.shape[:1] + (gen.shape[1] - 1,)
    dev = detectors.device
    a["psnr"] = _per_frame(lambda p, r: M.psnr(p, r, max_db=cfg.psnr_max_db), pred, real, cfg, dev).reshape(shape)
    a["ssim"] = _per_frame(M.ssim, pred, real, cfg, dev).reshape(shape)
    # ST: the model's own predicted state (state-token variants only).
    if rollout.pred_position is not None:
        st = M.state_tracking_errors(rollout.pred_position[:, 1:].astype(np.float64), gt["position"][:, 1:],
                                     None if rollout.pred_facing is None else rollout.pred_facing[:, 1:],
                                     gt["facing"][:, 1:])
        a["st_l1"], a["st_exact"] = st["l1"], st["exact"]
        a["st_right"] = st["exact"]  # the whole state: cell, and facing where the model gives one
        if "facing" in st:
            a["st_facing"] = st["facing"]
            a["st_right"] = st["exact"] & st["facing"]
    out = Outcomes(gt["game"], gt["present"].sum(1), a, {"fd_gen": feats[:, 1:], "fd_real": gt_feats})
    if i3d is not None:
        out.features["i3d_gen"] = i3d(gen).numpy()
        out.features["i3d_real"] = i3d(torch.from_numpy(gt["frames"])).numpy()
    return out


def binding_rollout_outcomes(rollout: Rollout, gt: dict, detectors: Detectors, det_game: np.ndarray,
                             walkable: np.ndarray, cfg: EvalConfig) -> Outcomes:
    """BA outcomes of one swapped rollout (only the swapped players count)."""
    det, _ = _detect_all(detectors, _videos(rollout.frames), det_game, cfg)
    counted, own, other = M.binding_outcomes(det, rollout.actions, rollout.swap, walkable)
    return Outcomes(gt["game"], gt["present"].sum(1), {"ba_counted": counted, "ba_own": own, "ba_other": other})


# ---------------------------------------------------------------------------------------------
# Summaries
# ---------------------------------------------------------------------------------------------


def _r(x: float | None) -> float | None:
    return None if x is None else round(float(x), 5)


def _fd(a: np.ndarray, b: np.ndarray) -> float | None:
    a, b = a.reshape(-1, a.shape[-1]), b.reshape(-1, b.shape[-1])
    return M.frechet_distance(a, b) if min(len(a), len(b)) >= 2 else None


def bootstrap_share_ci(outcome: np.ndarray, mask: np.ndarray, samples: int = BOOTSTRAP_SAMPLES,
                       seed: int = BOOTSTRAP_SEED) -> tuple[float | None, float | None]:
    """95% percentile-bootstrap interval of ``share(outcome, mask)`` with windows (axis 0 of the
    (N, ...) arrays) resampled with replacement; (None, None) with fewer than 2 counted windows.
    Seeded: the same outcomes give the same interval."""
    hits = (outcome & mask).reshape(len(mask), -1).sum(1).astype(np.float64)
    counted = mask.reshape(len(mask), -1).sum(1).astype(np.float64)
    if int((counted > 0).sum()) < 2:
        return None, None
    pick = np.random.default_rng(seed).integers(0, len(counted), (samples, len(counted)))
    n = counted[pick].sum(1)
    shares = hits[pick].sum(1)[n > 0] / n[n > 0]
    low, high = np.percentile(shares, [2.5, 97.5])
    return float(low), float(high)


def _with_ci(out: dict, metric: str, outcome: np.ndarray, mask: np.ndarray) -> None:
    out[f"{metric}_ci_low"], out[f"{metric}_ci_high"] = bootstrap_share_ci(outcome, mask)


def summarise(main: Outcomes | None, binding: Outcomes | None, rows: np.ndarray | None,
              rows_binding: np.ndarray | None) -> dict:
    """The metrics dict of the windows ``rows`` (bool (N,)) of ``main`` and ``rows_binding`` of
    ``binding`` (either may be None), with 95% bootstrap intervals of :data:`CI_METRICS`."""
    out: dict = {k: None for k in METRIC_KEYS}
    out.update({f"{m}_ci_{end}": None for m in CI_METRICS for end in ("low", "high")})
    if main is not None:
        a = {k: v[rows] for k, v in main.arrays.items()}
        sv, fv = a["step_valid"], a["frame_valid"]
        out.update(
            MA=M.share(a["motion"], sv), MA_changing=M.share(a["motion"], sv & a["moving"]),
            MA_static=M.share(a["motion"], sv & ~a["moving"]), SP=M.share(a["once"], fv), DR=M.share(a["seen"], fv),
            duplicated=M.share(a["duplicated"], fv), vanished=M.share(a["vanished"], fv),
            EA=M.share(a["ea_hit"], a["ea_counted"]), rules_agreement=M.share(a["rules"], sv),
            PSNR=float(a["psnr"].mean()) if a["psnr"].size else None,
            SSIM=float(a["ssim"].mean()) if a["ssim"].size else None,
            FD=_fd(main.features["fd_gen"][rows], main.features["fd_real"][rows]),
        )
        if "st_l1" in a:
            out.update(ST_l1=float(a["st_l1"][fv].mean()) if fv.any() else None, ST_exact=M.share(a["st_exact"], fv))
        if "st_facing" in a:
            out["ST_facing"] = M.share(a["st_facing"], fv)
        if "st_right" in a:  # the video against the model's own state: MA where that state is right
            out["MA_given_ST"] = M.share(a["motion"], sv & a["st_right"])
        if "i3d_gen" in main.features:
            out["FVD_I3D"] = _fd(main.features["i3d_gen"][rows], main.features["i3d_real"][rows])
        _with_ci(out, "MA", a["motion"], sv)
        _with_ci(out, "MA_changing", a["motion"], sv & a["moving"])
        _with_ci(out, "SP", a["once"], fv)
        out.update(windows=int(rows.sum()), player_steps=int(sv.sum()), player_frames=int(fv.sum()),
                   changing_steps=int((sv & a["moving"]).sum()), interact_steps=int(a["ea_counted"].sum()))
    if binding is not None:
        b = {k: v[rows_binding] for k, v in binding.arrays.items()}
        out.update(BA=M.share(b["ba_own"], b["ba_counted"]), BA_other=M.share(b["ba_other"], b["ba_counted"]),
                   binding_steps=int(b["ba_counted"].sum()))
        _with_ci(out, "BA", b["ba_own"], b["ba_counted"])
    return {k: (_r(v) if isinstance(v, float) or v is None else v) for k, v in out.items()}


def _curve(outcome: np.ndarray, mask: np.ndarray) -> list[float | None]:
    return [_r(M.share(outcome[:, t], mask[:, t])) for t in range(outcome.shape[1])]


def horizon_report(main: Outcomes | None, binding: Outcomes | None, games: list[str]) -> dict:
    """overall / per_game / per_player_count / per_action / curves of one horizon."""
    ref = main if main is not None else binding
    every = np.ones(len(ref.game), bool)
    every_b = None if binding is None else np.ones(len(binding.game), bool)

    def rows(o, key, value):
        return None if o is None else getattr(o, key) == value

    report = {"overall": summarise(main, binding, every, every_b), "per_game": {}, "per_player_count": {}}
    for g in sorted({int(x) for o in (main, binding) if o is not None for x in o.game}):
        report["per_game"][games[g]] = summarise(main, binding, rows(main, "game", g), rows(binding, "game", g))
    for p in sorted({int(x) for o in (main, binding) if o is not None for x in o.players}):
        report["per_player_count"][str(p)] = summarise(main, binding, rows(main, "players", p),
                                                       rows(binding, "players", p))
    report["per_action"], report["per_cause"] = {}, {}
    if main is not None:
        a = main.arrays
        for i, name in enumerate(CANONICAL_ACTIONS):
            mask = a["step_valid"] & (a["action"] == i)
            report["per_action"][name] = {"MA": _r(M.share(a["motion"], mask)), "player_steps": int(mask.sum())}
        for i, name in enumerate(M.CAUSES):
            mask = a["step_valid"] & (a["cause"] == i)
            report["per_cause"][name] = {"MA": _r(M.share(a["motion"], mask)), "player_steps": int(mask.sum())}
        report["ma_curve"] = _curve(a["motion"], a["step_valid"])
        report["sp_curve"] = _curve(a["once"], a["frame_valid"])
    else:
        report["ma_curve"] = report["sp_curve"] = None
    report["ba_curve"] = None if binding is None else _curve(binding.arrays["ba_own"], binding.arrays["ba_counted"])
    return report


# ---------------------------------------------------------------------------------------------
# Entry points
# ---------------------------------------------------------------------------------------------


class EvalContext:
    """The LMDB scored (a ClipDataset per horizon), the detectors and their game mapping. The
    metrics read the test split; learning curves the val split (``split``). The detectors and
    the I3D extractor run on ``device``."""

    def __init__(self, test_lmdb: str | Path, detectors_path: str | Path, cfg: EvalConfig,
                 windows: tuple[int, int] | None = None, split: str = "test", device: str = "cpu"):
        self.test_lmdb, self.cfg, self.split = Path(test_lmdb), cfg, split
        self.windows = windows  # (windows per game, seed): rollouts must cover exactly those
        self.detectors_path = str(detectors_path)
        self.detectors = load_detectors(detectors_path, device)
        self.i3d = M.I3DFeatures(cfg.i3d_checkpoint, device, cfg.eval_batch_frames) if cfg.i3d_checkpoint else None
        self._datasets: dict[int, ClipDataset] = {}

    def dataset(self, horizon: int) -> ClipDataset:
        if horizon not in self._datasets:
            ds = ClipDataset(self.test_lmdb, clip_steps=horizon)
            if ds.meta.get("split") != self.split:
                what = "metrics read" if self.split == "test" else "learning curves read"
                raise DetectorError(f"{self.test_lmdb}: an LMDB of split '{ds.meta.get('split')}'; {what} "
                                    f"the {self.split} split only")
            if ds.canvas_px != self.detectors.canvas_px:
                raise DetectorError(f"{self.test_lmdb}: frames are {ds.canvas_px} px, the detectors were trained "
                                    f"on {self.detectors.canvas_px} px")
            self._datasets[horizon] = ds
        return self._datasets[horizon]

    def mapping(self, ds: ClipDataset, game: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(detector game index (N,), walkable (N, Hc, Wc)) of test-LMDB game indices."""
        index = np.asarray(self.detectors.game_indices(ds.games, str(ds.path)), np.int64)
        walk = np.stack([self.detectors.walkable[g] for g in ds.games])
        return index[game], walk[game]

    def header(self, variant: str, kind: str) -> dict:
        return {"schema_version": metrics_file.METRICS_SCHEMA, "variant": variant, "kind": kind,
                "tau": self.cfg.tau, "detectors": self.detectors_path, "test_lmdb": str(self.test_lmdb),
                "horizons": {}}


def _load_checked(ctx: EvalContext, path: str | Path, variant: str, swap: bool) -> tuple[Rollout, dict, ClipDataset]:
    rollout = read_rollout(path)
    if rollout.meta.get("variant") != variant:
        raise RolloutError(f"{path}: rollout of variant '{rollout.meta.get('variant')}', not '{variant}'")
    if rollout.is_swap != swap:
        raise RolloutError(f"{path}: {'no' if swap else 'a'} field 'swap' in a {'BA' if swap else 'plain'} rollout")
    ds = ctx.dataset(rollout.horizon)
    if rollout.frames.shape[2] != ds.canvas_px:
        raise RolloutError(f"{path}: frames are {rollout.frames.shape[2]} px, the test LMDB's {ds.canvas_px} px")
    if ctx.windows is not None:
        expected = select_windows(ds, *ctx.windows)
        if not (np.array_equal(rollout.episode, expected["episode"]) and np.array_equal(rollout.start, expected["start"])):
            raise RolloutError(f"{path}: fields 'episode'/'start' are not the profile's {ctx.windows[0]} test windows "
                               "per game (a subset, duplicates or other windows)")
    gt = ground_truth(ds, rollout.episode, rollout.start, str(path))
    _check_against_truth(rollout, gt, str(path))
    return rollout, gt, ds


def evaluate_variant(variant: str, rollouts: list[str | Path], swap_rollouts: list[str | Path],
                     test_lmdb: str | Path, detectors_path: str | Path, cfg: EvalConfig, progress: bool = True,
                     windows: tuple[int, int] | None = None, device: str = "cpu") -> dict:
    """Metrics of a model variant from its rollout files (one per horizon) and optional swapped
    (BA) rollout files, the networks on ``device``; returns the JSON dict (see the module docstring)."""
    ctx = EvalContext(test_lmdb, detectors_path, cfg, windows, device=device)
    files = [(read_rollout_meta(p)["horizon"], is_swap, p)
             for is_swap, paths in ((False, rollouts), (True, swap_rollouts)) for p in paths]
    result = ctx.header(variant, "model")
    bar = tqdm(total=len(files), desc=f"evaluate {variant}", unit="file", disable=not progress)
    for h in sorted({f[0] for f in files}):
        found: dict[bool, tuple] = {}
        for _, is_swap, path in (f for f in files if f[0] == h):
            if is_swap in found:
                raise RolloutError(f"{path}: a second {'BA ' if is_swap else ''}rollout of horizon {h}")
            rollout, gt, ds = _load_checked(ctx, path, variant, is_swap)
            det_game, walk = ctx.mapping(ds, rollout.game)
            if is_swap:
                outcomes = binding_rollout_outcomes(rollout, gt, ctx.detectors, det_game, walk, cfg)
            else:
                outcomes = rollout_outcomes(rollout, gt, ctx.detectors, det_game, walk, cfg, ctx.i3d)
            found[is_swap] = (path, rollout.meta, outcomes)
            bar.update()
        main, bind = found.get(False), found.get(True)
        entry = {"rollout": None if main is None else str(main[0]),
                 "swap_rollout": None if bind is None else str(bind[0]), "meta": (main or bind)[1]}
        entry.update(horizon_report(None if main is None else main[2], None if bind is None else bind[2],
                                    ctx.dataset(h).games))
        result["horizons"][f"h{h}"] = entry
    bar.close()
    return result


def oracle_rollout(dataset: ClipDataset, windows_per_game: int, seed: int) -> tuple[Rollout, dict[str, np.ndarray]]:
    """The evaluation windows' ground-truth frames in the rollout format, and the ground truth
    (:func:`ground_truth`) itself; windows as the rollout stage picks them (profile.rollout)."""
    windows = select_windows(dataset, windows_per_game, seed)
    gt = ground_truth(dataset, windows["episode"], windows["start"], str(dataset.path))
    meta = {"variant": "oracle", "horizon": dataset.clip_steps, "split": dataset.meta.get("split", "test"),
            "sampling_steps": 0, "seed": seed}
    rollout = Rollout(frames=np.ascontiguousarray(gt["frames"].transpose(0, 1, 3, 4, 2)), episode=windows["episode"],
                      start=windows["start"], game=gt["game"], actions=gt["actions"], present=gt["present"], meta=meta)
    return rollout, gt


def evaluate_oracle(test_lmdb: str | Path, detectors_path: str | Path, cfg: EvalConfig, horizons, windows_per_game: int,
                    window_seed: int, progress: bool = True, device: str = "cpu") -> dict:
    """The oracle row: ground-truth frames through the same code, for every configured horizon,
    the networks on ``device``. MA, SP, DR, EA there measure the detectors (any gap bounds every
    model's number); rules_agreement measures BA's movement rules."""
    ctx = EvalContext(test_lmdb, detectors_path, cfg, device=device)
    result = ctx.header("oracle", "oracle")
    for h in tqdm(horizons, desc="evaluate oracle", unit="horizon", disable=not progress):
        ds = ctx.dataset(h)
        rollout, gt = oracle_rollout(ds, windows_per_game, window_seed)
        det_game, walk = ctx.mapping(ds, rollout.game)
        outcomes = rollout_outcomes(rollout, gt, ctx.detectors, det_game, walk, cfg, ctx.i3d)
        entry = {"rollout": None, "swap_rollout": None, "meta": rollout.meta}
        entry.update(horizon_report(outcomes, None, ds.games))
        result["horizons"][f"h{h}"] = entry
    return result


# ---------------------------------------------------------------------------------------------
# Combined table
# ---------------------------------------------------------------------------------------------

TABLE_COLUMNS = ("variant", "kind", "horizon", "game", "MA", "MA_changing", "MA_static", "SP", "DR", "EA", "BA",
                 "ST_l1", "ST_exact", "PSNR", "SSIM", "FD", "FVD_I3D", "rules_agreement", "windows", "player_steps")


def combine_metrics(paths: list[str | Path]) -> list[dict]:
    """One row per (metrics file, horizon, game) with game = 'all' for the overall row
    (files read by :func:`actionparty.eval.metrics_file.read`)."""
    rows = []
    for path in paths:
        data = metrics_file.read(path)
        for key, entry in sorted(data["horizons"].items(), key=lambda kv: metrics_file.horizon_steps(kv[0])):
            groups = [("all", entry["overall"]), *sorted(entry.get("per_game", {}).items())]
            for game, values in groups:
                row = {"variant": data["variant"], "kind": data["kind"],
                       "horizon": metrics_file.horizon_steps(key), "game": game}
                row.update({c: values.get(c) for c in TABLE_COLUMNS[4:]})
                rows.append(row)
    return rows


def write_table(rows: list[dict], json_out: str | Path, csv_out: str | Path) -> None:
    write_json(json_out, {"columns": list(TABLE_COLUMNS), "rows": rows})
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=TABLE_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row[k] is None else row[k] for k in TABLE_COLUMNS})
    write_text(csv_out, buf.getvalue())


# ---------------------------------------------------------------------------------------------
# Flat summary (the DVC metric)
# ---------------------------------------------------------------------------------------------

# The headline numbers, and PSNR: a continuous one, so that a changed model shows in `dvc metrics diff`
# even where a small run leaves its counts (MA, SP, BA) as they were.
SUMMARY_METRICS = ("MA", "MA_changing", "SP", "BA", "PSNR")
DEFAULT_PROTOCOL = "episodes"  # the test episodes' own policy; a metrics file may name another in 'protocol'


def summary_metrics(paths: list[str | Path], metrics: tuple[str, ...] = SUMMARY_METRICS) -> dict:
    """The headline numbers of every metrics file, flat enough for ``dvc metrics show/diff``:
    {model: {"h<H>": {metric: number | null}}}, models in the order given, horizons ascending;
    with a level {model: {protocol: {"h<H>": ...}}} once the files name more than one protocol
    (field ``protocol``; absent = ``episodes``). Values are copied as the files hold them."""
    read = [metrics_file.read(path) for path in paths]
    protocols = {data.get("protocol", DEFAULT_PROTOCOL) for data in read}
    out: dict = {}
    for path, data in zip(paths, read):
        entry = {key: {m: entry["overall"].get(m) for m in metrics}
                 for key, entry in sorted(data["horizons"].items(), key=lambda kv: metrics_file.horizon_steps(kv[0]))}
        model = data["variant"]
        if len(protocols) > 1:
            protocol = data.get("protocol", DEFAULT_PROTOCOL)
            if protocol in out.get(model, {}):
                raise metrics_file.MetricsError(f"{path}: a second metrics file of '{model}', protocol '{protocol}'")
            out.setdefault(model, {})[protocol] = entry
        else:
            if model in out:
                raise metrics_file.MetricsError(f"{path}: a second metrics file of '{model}' (field 'variant')")
            out[model] = entry
    return out


def write_summary(summary: dict, out: str | Path) -> None:
    write_json(out, summary)
