"""CLI command of the report stage (registered by actionparty.cli through add_commands).

    actionparty report --results results --out reports [--test-lmdb data/lmdb/test.lmdb] \
        [--rollout-models full global_action] [--windows 3] [--rollout-horizon 4] [--variants params/variants] \
        [--gallery-models full paper global_action text_action] [--gallery-games 8]
    actionparty targets --results results [--strict] [--variants params/variants]
    actionparty sample --profile P --checkpoint C --lmdb test.lmdb [--steps 20] --out DIR
"""

from __future__ import annotations

from pathlib import Path

from actionparty.errors import positive_int


def _cmd_report(args) -> None:
    import torch

    from actionparty.report.build import build_report

    torch.set_num_threads(args.threads)
    profile = None
    if args.profile is not None:
        from actionparty.config import load_profile

        profile = load_profile(args.profile)
    summary = build_report(args.results, args.out, args.test_lmdb, tuple(args.rollout_models), args.windows,
                           args.rollout_horizon, progress=not args.quiet, variant_dir=args.variants,
                           gallery_models=tuple(args.gallery_models), gallery_games=args.gallery_games,
                           profile=profile)
    files = sum(len(p) for kind in (summary.tables, summary.figures, summary.gifs) for p in kind.values())
    print(f"{args.out}: {len(summary.tables)} tables, {len(summary.figures)} figures, "
          f"{sum(len(p) for p in summary.gifs.values())} GIFs ({files} files), "
          f"{len(summary.gallery.paths) if summary.gallery else 0} gallery GIFs, {len(summary.plots)} plot files, "
          f"{', '.join(summary.pages)}")
    for line in summary.missing:
        print(f"  missing: {line}")


def _cmd_sample(args) -> None:
    from actionparty.config import load_profile
    from actionparty.data.lmdb_dataset import ClipDataset
    from actionparty.rollout.rollout_io import select_windows
    from actionparty.report.samples import side_by_side, write_gif, write_strip
    from actionparty.rollout.generate import load_for_rollout, rollout_device, rollout_windows

    profile = load_profile(args.profile)
    loaded = load_for_rollout(profile, args.checkpoint, device=rollout_device())
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


def _cmd_targets(args) -> None:
    from actionparty.report.lineup import Lineup
    from actionparty.report.tables import load_metrics
    from actionparty.report.targets import check_targets, load_protocols, targets_markdown

    lineup = Lineup.from_registry(args.variants)
    targets = check_targets(load_metrics(args.results / "metrics", lineup.names), lineup,
                            load_protocols(args.results / "metrics", lineup.names))
    print(targets_markdown(targets), end="")
    if args.strict and not all(t.met for t in targets):
        raise SystemExit(1)


def _cmd_quote(args) -> None:
    from actionparty.report.quoted import Results, quote_file

    results = Results.load(args.results, args.variants)
    stale = {str(path): quote_file(path, results, check=args.check) for path in args.files}
    for path, names in stale.items():
        for name in names:
            print(f"{path}: quoted block '{name}' {'differs from' if args.check else 'rewritten from'} {args.results}")
    if args.check and any(stale.values()):
        raise SystemExit(f"actionparty quote: stale quoted blocks; run `actionparty quote {' '.join(stale)}`")
    if not any(stale.values()):
        print(f"{', '.join(stale)}: every quoted block matches {args.results}")


def add_commands(sub) -> None:
    """Register ``actionparty report``, ``targets``, ``quote`` and ``sample`` on an argparse subparsers object."""
    p = sub.add_parser("sample", help="roll a checkpoint out from test context frames; GIF + PNG per clip")
    p.set_defaults(func=_cmd_sample)
    p.add_argument("--profile", required=True)
    p.add_argument("--checkpoint", required=True, type=Path)
    p.add_argument("--lmdb", required=True, type=Path)
    p.add_argument("--steps", type=positive_int, default=20)
    p.add_argument("--out", required=True, type=Path)

    help = "tables (md/csv/tex/html), figures (png/pdf), GIFs, plot data, index.md and index.html from results/ alone"
    p = sub.add_parser("report", help=help, description=help)
    p.set_defaults(func=_cmd_report)
    p.add_argument("--results", type=Path, default=Path("results"), help="results folder (metrics/, rollouts/, ...)")
    p.add_argument("--out", type=Path, default=Path("reports"), help="report folder to write")
    p.add_argument("--test-lmdb", type=Path, help="test LMDB: adds the ground-truth rows to rollout figures/GIFs")
    p.add_argument("--profile", type=Path,
                   help="the profile the results were made with: each model's parameter count in the main table")
    p.add_argument("--rollout-models", nargs="+", default=["full", "global_action"],
                   help="models drawn in rollout figures and GIFs")
    p.add_argument("--windows", type=positive_int, default=3, help="test windows per rollout figure")
    p.add_argument("--rollout-horizon", type=positive_int, default=4, help="horizon of the rollout figures (steps = columns)")
    p.add_argument("--threads", type=positive_int, default=1, help="torch CPU threads (detectors on the shown windows)")
    p.add_argument("--gallery-models", nargs="+", default=["full", "paper", "global_action", "text_action"],
                   help="the gallery's columns after the real game (those not in the registry are left out)")
    p.add_argument("--gallery-games", type=positive_int, default=8, help="games (rows) of the gallery, at most")
    p.add_argument("--quiet", action="store_true")
    _variants_option(p)

    help = ("ours (full) against the targets: MA_changing and BA per game (episodes, uniform), SP, long MA_changing, "
            "EA, SSIM, CI widths, and the paper's one_mover -> uniform claim")
    p = sub.add_parser("targets", help=help, description=help)
    p.set_defaults(func=_cmd_targets)
    p.add_argument("--results", type=Path, default=Path("results"), help="results folder (metrics/)")
    p.add_argument("--strict", action="store_true", help="exit 1 unless every target is met")
    _variants_option(p)

    help = ("rewrite the quoted blocks (<!-- quoted:NAME --> ... <!-- /quoted -->) of Markdown files from the "
            "results: the numbers the README and docs/TRAINING.md quote")
    p = sub.add_parser("quote", help=help, description=help)
    p.set_defaults(func=_cmd_quote)
    p.add_argument("files", nargs="+", type=Path, help="Markdown files, e.g. README.md docs/TRAINING.md")
    p.add_argument("--results", type=Path, default=Path("results"), help="results folder (metrics/, finetune/)")
    p.add_argument("--check", action="store_true", help="write nothing; exit 1 naming each block that differs")
    _variants_option(p)


def _variants_option(p) -> None:
    from actionparty.variants import VARIANT_DIR

    p.add_argument("--variants", type=Path, default=Path(VARIANT_DIR),
                   help="the variant registry: one <name>.yaml per table row (name, experiment, colour)")
