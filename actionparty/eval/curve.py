"""Learning curves: MA_changing, BA, MA and SP of a finetuning run at its snapshots, on val windows.

A finetune of a variant in ``finetune.curve_variants`` (with ``curve_every > 0``) leaves EMA
snapshots ``snapshots/step_NNNNNN.pt`` next to its checkpoint. :func:`learning_curve` rolls every
snapshot and the final checkpoint out over ``curve_windows_per_game`` windows per game of the
**val** split at the binding-test horizon, once with the recorded actions and once with two
players' actions swapped, and scores them with the evaluation detectors exactly as
:mod:`actionparty.eval.evaluate` does. Curves are what recipes and budgets are chosen on, so
they never read the test split. The result (``results/finetune/{variant}/curve.json``)::

    {"variant": ..., "split": "val", "horizon": 4, "windows": 12, "steps": [...],
     "MA_changing": [...], "BA": [...], "MA": [...], "SP": [...]}
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tqdm import tqdm

from actionparty.config import Profile
from actionparty.errors import UserError
from actionparty.eval.evaluate import (
    EvalContext,
    binding_rollout_outcomes,
    ground_truth,
    rollout_outcomes,
    summarise,
)
from actionparty.rollout.rollout_io import Rollout, binding_swaps, select_windows

CURVE_KEYS = ("MA_changing", "BA", "MA", "SP")

def learning_curve(profile: Profile, variant: str, checkpoint: str | Path, val_lmdb: str | Path,
                   detectors: str | Path, progress: bool = True) -> dict:
    from actionparty.rollout.generate import load_for_rollout, rollout_device, rollout_windows
    from actionparty.model.checkpoint import list_snapshots

    checkpoint = Path(checkpoint)
    final_step = profile.finetune.steps  # a finished finetune's last step (checked when it is loaded)
    points = [(s, p) for s, p in list_snapshots(checkpoint.parent) if s < final_step] + [(final_step, checkpoint)]
    ctx = EvalContext(val_lmdb, detectors, profile.eval, split="val", device=rollout_device())
    horizon = min(profile.rollout.horizons)  # the binding test's horizon (workflow: SWAP_HORIZON)
    ds = ctx.dataset(horizon)
    windows = select_windows(ds, profile.rollout.curve_windows_per_game, profile.rollout.seed)
    gt = ground_truth(ds, windows["episode"], windows["start"], str(val_lmdb))
    swap, swapped = binding_swaps(gt["present"], gt["visible"][:, 0], gt["actions"], profile.rollout.seed)
    det_game, walk = ctx.mapping(ds, windows["game"])
    every = np.ones(len(windows["game"]), bool)
    curve: dict = {"variant": variant, "split": "val", "horizon": horizon, "windows": int(every.sum()),
                   "steps": [], **{key: [] for key in CURVE_KEYS}}
    for step, path in tqdm(points, desc=f"curve {variant}", unit="checkpoint", disable=not progress):
        loaded = load_for_rollout(profile, path, rollout_device(), stage=variant, games=ds.games)
        if int(loaded.state["step"]) != step:
            raise UserError(f"{path}: a checkpoint of step {loaded.state['step']}, expected {step} "
                            "(finetune.steps, or the snapshot's name)")
        plain = rollout_windows(loaded, ds, windows, profile, seed=profile.rollout.seed, progress=False)
        bound = rollout_windows(loaded, ds, windows, profile, actions=swapped, seed=profile.rollout.seed,
                                progress=False)
        main = rollout_outcomes(Rollout(**plain, meta={}), gt, ctx.detectors, det_game, walk, profile.eval, None)
        binding = binding_rollout_outcomes(Rollout(**bound, swap=swap, meta={}), gt, ctx.detectors, det_game, walk,
                                           profile.eval)
        summary = summarise(main, binding, every, every)
        curve["steps"].append(step)
        for key in CURVE_KEYS:
            curve[key].append(summary[key])
    return curve
