"""CLI commands of the training and rollout stages (registered by actionparty.cli)."""

from __future__ import annotations

from pathlib import Path


def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _cmd_pretrain(args) -> None:
    from actionparty.config import load_profile
    from actionparty.model.factory import build_world_model
    from actionparty.train.trainer import TrainJob, train

    profile = load_profile(args.profile)
    job = TrainJob(profile, profile.pretrain, args.train_lmdb, args.out, "exp-138", build_world_model,
                   stop_after=args.stop_after, progress=not args.quiet)
    final = train(job)
    if final.is_file():
        print(f"{final}: pretraining finished ({profile.pretrain.steps} steps)")


def _cmd_finetune(args) -> None:
    from actionparty.config import load_profile, load_variant, split_run
    from actionparty.model.factory import build_world_model
    from actionparty.train.trainer import TrainJob, train

    profile = load_profile(args.profile)
    name, offset = split_run(args.variant)  # 'full-s1': variant `full`, training seed finetune.seed + 1
    variant = load_variant(name)
    cfg = profile.finetune.model_copy(update={"seed": profile.finetune.seed + offset})
    job = TrainJob(profile, cfg, args.train_lmdb, args.out, args.variant,
                   lambda p, device: build_world_model(p, device, variant), init_from=args.init,
                   stop_after=args.stop_after, progress=not args.quiet,
                   extra_meta={"variant": args.variant, "variant_config": variant.model_dump()})
    final = train(job)
    if final.is_file():
        print(f"{final}: {args.variant} ({variant.experiment}, seed {cfg.seed}) finished ({cfg.steps} steps)")


def _cmd_rollout(args) -> None:
    """Roll a model out over the profile's test windows (and the swapped-actions binding test)."""
    import numpy as np

    from actionparty.config import UNTRAINED_MODELS, load_profile, split_run
    from actionparty.data.lmdb_dataset import ClipDataset
    from actionparty.errors import UserError
    from actionparty.eval.rollout_io import Rollout, binding_swaps, select_windows, write_rollout
    from actionparty.rollout.generate import load_for_rollout, rollout_windows

    profile = load_profile(args.profile)
    if args.model == "static":
        loaded = None
    elif args.checkpoint is None:
        raise UserError(f"model '{args.model}' needs --checkpoint")
    else:
        loaded = load_for_rollout(profile, args.checkpoint, device=_device())
        if args.model not in UNTRAINED_MODELS and loaded.state.get("variant") != args.model:
            raise UserError(f"{args.checkpoint}: checkpoint of '{loaded.state.get('variant') or loaded.state['stage']}', "
                            f"not of model '{args.model}'")
    dataset = ClipDataset(args.lmdb, clip_steps=args.horizon, expect_canvas_px=profile.canvas_px)
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
    write_rollout(args.out, Rollout(**arrays, meta=meta))
    print(f"{args.out}: {len(windows['episode'])} rollouts of {args.horizon} steps ({args.model}"
          f"{', swapped actions' if args.swap else ''})")


def _cmd_sample(args) -> None:
    from actionparty.config import load_profile
    from actionparty.data.lmdb_dataset import ClipDataset
    from actionparty.eval.rollout_io import select_windows
    from actionparty.report.samples import side_by_side, write_gif, write_strip
    from actionparty.rollout.generate import load_for_rollout, rollout_windows

    profile = load_profile(args.profile)
    loaded = load_for_rollout(profile, args.checkpoint, device=_device())
    dataset = ClipDataset(args.lmdb, clip_steps=args.steps, expect_canvas_px=profile.canvas_px)
    windows = select_windows(dataset, profile.rollout.sample_clips, profile.rollout.seed)
    result = rollout_windows(loaded, dataset, windows, profile, seed=profile.rollout.seed, progress=False)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for n in range(len(windows["episode"])):
        gt = dataset.clip(int(windows["episode"][n]), int(windows["start"][n]))["frames"].permute(0, 2, 3, 1).numpy()
        game = dataset.games[int(windows["game"][n])]
        name = f"{game}_{n:02d}"
        write_gif(out / f"{name}.gif", side_by_side(gt, result["frames"][n]))
        write_strip(out / f"{name}.png", [("ground truth", gt), ("generated", result["frames"][n])],
                    f"{game}: {loaded.state['stage']} rollout, {args.steps} steps (top: ground truth)")
    print(f"{out}: {len(windows['episode'])} sample rollouts of {args.steps} steps")


def _cmd_bench_model(args) -> None:
    from actionparty.config import load_profile
    from actionparty.train.bench import bench_model, print_model_bench

    result = bench_model(load_profile(args.profile), steps=args.steps, threads=args.threads)
    print_model_bench(result)
    if args.json:
        from actionparty.atomic import write_json

        write_json(args.json, result)


def _cmd_estimate(args) -> None:
    from actionparty.config import load_profile, load_variant
    from actionparty.train.estimate import estimate, print_estimate

    profile = load_profile(args.profile)
    print_estimate(estimate(profile))
    for name in args.variants or profile.variants[:1]:
        print_estimate(estimate(profile, load_variant(name)))


def add_commands(sub) -> None:
    p = sub.add_parser("pretrain", help="video-only pretraining (exp-138) on an LMDB")
    p.set_defaults(func=_cmd_pretrain)
    p.add_argument("--profile", required=True)
    p.add_argument("--train-lmdb", required=True, type=Path)
    p.add_argument("--out", required=True, type=Path, help="run folder (checkpoint.pt, train_log.jsonl, work/)")
    p.add_argument("--stop-after", type=int, help="stop after this many steps of this invocation (resume later)")
    p.add_argument("--quiet", action="store_true")

    p = sub.add_parser("finetune", help="action finetuning of one variant from the exp-138 checkpoint")
    p.set_defaults(func=_cmd_finetune)
    p.add_argument("--profile", required=True)
    p.add_argument("--variant", required=True,
                   help="a name in params/variants/, or <name>-s<k> for a repeat with seed finetune.seed + k")
    p.add_argument("--init", required=True, type=Path, help="exp-138 checkpoint")
    p.add_argument("--train-lmdb", required=True, type=Path)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--stop-after", type=int)
    p.add_argument("--quiet", action="store_true")

    p = sub.add_parser("rollout", help="roll a model out over the test windows (rollout format for evaluation)")
    p.set_defaults(func=_cmd_rollout)
    p.add_argument("--profile", required=True)
    p.add_argument("--model", required=True, help="a variant (or seed run <variant>-s<k>), pretrained_ar or static")
    p.add_argument("--checkpoint", type=Path, help="the model's checkpoint (none for static)")
    p.add_argument("--lmdb", required=True, type=Path, help="test-split LMDB")
    p.add_argument("--horizon", required=True, type=int)
    p.add_argument("--swap", action="store_true", help="exchange two players' action sequences (binding test)")
    p.add_argument("--out", required=True, type=Path, help="results/rollouts/<model>/h<H>.npz")
    p.add_argument("--quiet", action="store_true")

    p = sub.add_parser("sample", help="roll a checkpoint out from test context frames; GIF + PNG per clip")
    p.set_defaults(func=_cmd_sample)
    p.add_argument("--profile", required=True)
    p.add_argument("--checkpoint", required=True, type=Path)
    p.add_argument("--lmdb", required=True, type=Path)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--out", required=True, type=Path)

    p = sub.add_parser("bench-model", help="training tokens/s and FLOP/s vs matmul; rollout with/without KV cache")
    p.set_defaults(func=_cmd_bench_model)
    p.add_argument("--profile", required=True)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--threads", type=int)
    p.add_argument("--json", type=Path, help="also write the figures as JSON")

    p = sub.add_parser("estimate", help="GPU memory and time estimates of the training stages (meta device)")
    p.set_defaults(func=_cmd_estimate)
    p.add_argument("--profile", required=True)
    p.add_argument("--variants", nargs="*", help="finetune variants to estimate (default: the first)")
