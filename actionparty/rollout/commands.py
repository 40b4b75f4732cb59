"""CLI command of the rollout stage (registered by actionparty.cli through add_commands).

    actionparty rollout --profile P --model M [--checkpoint C] --lmdb test.lmdb --horizon H [--swap] --out O

An LMDB of an extra evaluation protocol (data/lmdb/test_<protocol>.lmdb: split test, field
'protocol') is rolled out the same way; the rollout's metadata then names the protocol.
"""

from __future__ import annotations

from pathlib import Path

from actionparty.errors import positive_int


def _cmd_rollout(args) -> None:
    """Roll a model out over the profile's test windows (and the swapped-actions binding test)."""
    import numpy as np

    from actionparty.config import load_profile
    from actionparty.variants import models_from, split_run
    from actionparty.data.lmdb_dataset import ClipDataset
    from actionparty.errors import UserError
    from actionparty.model.checkpoint import PRETRAIN_STAGE
    from actionparty.rollout.rollout_io import Rollout, binding_swaps, select_windows, write_rollout
    from actionparty.rollout.generate import load_for_rollout, rollout_device, rollout_windows

    profile = load_profile(args.profile)
    if args.horizon < 1:
        raise UserError(f"--horizon {args.horizon}: a rollout is at least 1 step")
    if args.out.is_dir():
        raise UserError(f"{args.out}: is a folder; --out names the rollout file (results/rollouts/<model>/h<H>.npz)")
    dataset = ClipDataset(args.lmdb, clip_steps=args.horizon, expect_canvas_px=profile.canvas_px)
    if dataset.meta.get("split") != "test":
        raise UserError(f"{args.lmdb}: an LMDB of split '{dataset.meta.get('split')}'; rollouts start from test windows")
    if args.model in models_from("copy"):
        loaded = None
    elif args.checkpoint is None:
        raise UserError(f"model '{args.model}' needs --checkpoint")
    else:
        # A pretrain-source model is the exp-138 checkpoint itself; a finetuned one its own run's.
        stage = PRETRAIN_STAGE if args.model in models_from("pretrain") else args.model
        loaded = load_for_rollout(profile, args.checkpoint, device=rollout_device(), stage=stage, games=dataset.games)
    windows = select_windows(dataset, profile.rollout.clips_per_game, profile.rollout.seed)
    actions = swap = None
    if args.swap:
        clips = [dataset.clip(int(e), int(s)) for e, s in zip(windows["episode"], windows["start"])]
        present = np.stack([c["present"].numpy() for c in clips])
        visible = np.stack([c["visible"][0].numpy() for c in clips])
        recorded = np.stack([c["actions"].numpy() for c in clips])
        swap, actions = binding_swaps(present, visible, recorded, profile.rollout.seed)
    # A seed run (<variant>-s<k>) samples with its own noise over the same windows.
    seed = profile.rollout.seed + split_run(args.model)[1]
    arrays = rollout_windows(loaded, dataset, windows, profile, actions=actions, seed=seed, progress=not args.quiet)
    if swap is not None:
        arrays["swap"] = swap
    meta = {"variant": args.model, "horizon": args.horizon, "split": "test",
            "sampling_steps": profile.rollout.sampling_steps, "seed": seed}
    if "protocol" in dataset.meta:  # an extra protocol's test episodes (the test split's own: no field)
        meta["protocol"] = dataset.meta["protocol"]
    write_rollout(args.out, Rollout(**arrays, meta=meta))
    print(f"{args.out}: {len(windows['episode'])} rollouts of {args.horizon} steps ({args.model}"
          f"{', swapped actions' if args.swap else ''}{', protocol ' + meta['protocol'] if 'protocol' in meta else ''})")


def add_commands(sub) -> None:
    p = sub.add_parser("rollout", help="roll a model out over the test windows (rollout format for evaluation)")
    p.set_defaults(func=_cmd_rollout)
    p.add_argument("--profile", required=True)
    p.add_argument("--model", required=True, help="a variant (or seed run <variant>-s<k>), pretrained_ar or static")
    p.add_argument("--checkpoint", type=Path, help="the model's checkpoint (none for static)")
    p.add_argument("--lmdb", required=True, type=Path,
                   help="test-split LMDB (data/lmdb/test.lmdb, or test_<protocol>.lmdb)")
    p.add_argument("--horizon", required=True, type=positive_int)
    p.add_argument("--swap", action="store_true", help="exchange two players' action sequences (binding test)")
    p.add_argument("--out", required=True, type=Path, help="results/rollouts/<model>/h<H>.npz")
    p.add_argument("--quiet", action="store_true")
