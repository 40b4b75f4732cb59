"""CLI commands of the training and rollout stages (registered by actionparty.cli)."""

from __future__ import annotations

from pathlib import Path


def _cmd_pretrain(args) -> None:
    from actionparty.config import load_profile
    from actionparty.model.factory import build_world_model
    from actionparty.train.trainer import TrainJob, train

    profile = load_profile(args.profile)
    init = None
    job = TrainJob(profile, profile.pretrain, args.train_lmdb, args.out, "exp-138", build_world_model,
                   init_from=init, stop_after=args.stop_after, progress=not args.quiet)
    final = train(job)
    if final.is_file():
        print(f"{final}: pretraining finished ({profile.pretrain.steps} steps)")


def _cmd_sample(args) -> None:
    from actionparty.config import load_profile
    from actionparty.data.lmdb_dataset import ClipDataset
    from actionparty.model.factory import build_world_model
    from actionparty.report.samples import side_by_side, write_gif, write_strip
    from actionparty.rollout.generate import load_for_rollout, pick_windows, rollout_items

    profile = load_profile(args.profile)
    loaded = load_for_rollout(profile, args.checkpoint, build_world_model)
    dataset = ClipDataset(args.lmdb, clip_steps=args.steps, expect_canvas_px=profile.canvas_px)
    items = pick_windows(dataset, profile.rollout.sample_clips, profile.rollout.seed)
    train_steps = loaded.state["profile"]["pretrain"]["clip_steps"]
    result = rollout_items(loaded, dataset, items, profile, args.steps, train_steps, seed=profile.rollout.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for n, item in enumerate(items):
        gt = dataset[item]["frames"].permute(0, 2, 3, 1).numpy()
        game = dataset.games[int(result["game"][n])]
        name = f"{game}_{n:02d}"
        write_gif(out / f"{name}.gif", side_by_side(gt, result["frames"][n]))
        write_strip(out / f"{name}.png", [("ground truth", gt), ("generated", result["frames"][n])],
                    f"{game}: {loaded.state['stage']} rollout, {args.steps} steps (left/top: ground truth)")
    print(f"{out}: {len(items)} sample rollouts of {args.steps} steps")


def add_commands(sub) -> None:
    p = sub.add_parser("pretrain", help="video-only pretraining (exp-138) on an LMDB")
    p.set_defaults(func=_cmd_pretrain)
    p.add_argument("--profile", required=True)
    p.add_argument("--train-lmdb", required=True, type=Path)
    p.add_argument("--out", required=True, type=Path, help="run folder (checkpoint.pt, train_log.jsonl, work/)")
    p.add_argument("--stop-after", type=int, help="stop after this many steps of this invocation (resume later)")
    p.add_argument("--quiet", action="store_true")

    p = sub.add_parser("sample", help="roll a checkpoint out from test context frames; GIF + PNG per clip")
    p.set_defaults(func=_cmd_sample)
    p.add_argument("--profile", required=True)
    p.add_argument("--checkpoint", required=True, type=Path)
    p.add_argument("--lmdb", required=True, type=Path)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--out", required=True, type=Path)
