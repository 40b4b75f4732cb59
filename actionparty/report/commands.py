"""CLI command of the report stage (registered by actionparty.cli through add_commands).

    actionparty report --results results --out reports [--test-lmdb data/lmdb/test.lmdb] \
        [--rollout-models full global_action] [--windows 3] [--rollout-horizon 4]
    actionparty targets --results results [--strict]
"""

from __future__ import annotations

from pathlib import Path


def _cmd_report(args) -> None:
    import torch

    from actionparty.report.build import build_report

    torch.set_num_threads(args.threads)
    summary = build_report(args.results, args.out, args.test_lmdb, tuple(args.rollout_models), args.windows,
                           args.rollout_horizon, progress=not args.quiet)
    files = sum(len(p) for kind in (summary.tables, summary.figures, summary.gifs) for p in kind.values())
    print(f"{args.out}: {len(summary.tables)} tables, {len(summary.figures)} figures, "
          f"{sum(len(p) for p in summary.gifs.values())} GIFs ({files} files), index.md")
    for line in summary.missing:
        print(f"  missing: {line}")


def _cmd_targets(args) -> None:
    from actionparty.report.tables import load_metrics
    from actionparty.report.targets import check_targets, targets_markdown

    targets = check_targets(load_metrics(args.results / "metrics"))
    print(targets_markdown(targets), end="")
    if args.strict and not all(t.met for t in targets):
        raise SystemExit(1)


def add_commands(sub) -> None:
    """Register ``actionparty report`` on an argparse subparsers object."""
    help = "tables (md/csv/tex), figures (png/pdf), GIFs and index.md rebuilt from results/ alone"
    p = sub.add_parser("report", help=help, description=help)
    p.set_defaults(func=_cmd_report)
    p.add_argument("--results", type=Path, default=Path("results"), help="results folder (metrics/, rollouts/, ...)")
    p.add_argument("--out", type=Path, default=Path("reports"), help="report folder to write")
    p.add_argument("--test-lmdb", type=Path, help="test LMDB: adds the ground-truth rows to rollout figures/GIFs")
    p.add_argument("--rollout-models", nargs="+", default=["full", "global_action"],
                   help="models drawn in rollout figures and GIFs")
    p.add_argument("--windows", type=int, default=3, help="test windows per rollout figure")
    p.add_argument("--rollout-horizon", type=int, default=4, help="horizon of the rollout figures (steps = columns)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (detectors on the shown windows)")
    p.add_argument("--quiet", action="store_true")

    help = "ActionParty's numbers against its targets (MA per game, vs baselines and copy floor, SP, BA, long MA)"
    p = sub.add_parser("targets", help=help, description=help)
    p.set_defaults(func=_cmd_targets)
    p.add_argument("--results", type=Path, default=Path("results"), help="results folder (metrics/)")
    p.add_argument("--strict", action="store_true", help="exit 1 unless every target is met")
