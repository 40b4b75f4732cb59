"""Command line: every pipeline stage is a subcommand with explicit inputs and outputs.

    actionparty episodes --profile params/tiny.yaml --game coins --split train --out data/episodes/train/coins
    actionparty episodes --profile params/tiny.yaml --game coins --split test --protocol uniform \
        --out data/episodes/test_uniform/coins
    actionparty lmdb --profile params/tiny.yaml --split train --out data/lmdb/train.lmdb data/episodes/train/*
    actionparty verify-lmdb data/lmdb/train.lmdb
    actionparty contact-sheet --catalogue params/games.yaml --out reports/figures/games.png
    actionparty bench-episodes --profile params/tiny.yaml
    actionparty validate --profile params/tiny.yaml
    actionparty preflight --profile params/paper.yaml
    actionparty schema --out workflow/schemas/config.schema.json

A user error (bad profile, unknown game, corrupt data) prints one line and exits 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from actionparty.errors import UserError, positive_int


def _cmd_episodes(args) -> None:
    from actionparty.config import load_profile
    from actionparty.data.episodes import generate_episodes
    from actionparty.games import resolve_games

    profile = load_profile(args.profile)
    (spec,) = resolve_games(profile, [args.game])
    generate_episodes(spec, args.split, profile, args.out, workers=args.workers, progress=not args.quiet,
                      protocol=args.protocol)


def _cmd_lmdb(args) -> None:
    from actionparty.config import load_profile
    from actionparty.data.lmdb_dataset import build_lmdb

    profile = load_profile(args.profile)
    meta = build_lmdb(args.episodes, args.out, args.split, profile.lmdb.map_size_mb, profile.lmdb.zlib_level,
                      progress=not args.quiet)
    print(f"{args.out}: {len(meta['episodes'])} episodes of {len(meta['games'])} games")


def _cmd_verify_lmdb(args) -> None:
    from actionparty.data.lmdb_dataset import verify_lmdb

    for path in args.paths:
        meta = verify_lmdb(path, progress=not args.quiet)
        print(f"{path}: ok ({len(meta['episodes'])} episodes, games: {', '.join(meta['games'])})")


def _cmd_contact_sheet(args) -> None:
    from actionparty.games import load_catalogue
    from actionparty.report.contact_sheet import draw_contact_sheet

    specs = list(load_catalogue(args.catalogue).values())
    draw_contact_sheet(specs, args.out, workers=args.workers)
    print(f"{args.out}: {len(specs)} games")


def _cmd_bench_episodes(args) -> None:
    from actionparty.config import load_profile
    from actionparty.data.bench import bench_episodes
    from actionparty.games import resolve_games

    profile = load_profile(args.profile)
    specs = resolve_games(profile, args.games or None)
    bench_episodes(specs, profile, episodes=args.episodes, workers=args.workers)


def _cmd_validate(args) -> None:
    from actionparty.config import load_profile
    from actionparty.games import resolve_games
    from actionparty.weights import check_weight_paths

    profile = load_profile(args.profile)
    specs = resolve_games(profile)
    check_weight_paths(profile)
    print(f"{args.profile}: ok ({len(specs)} games: {', '.join(s.name for s in specs)})")


def _cmd_preflight(args) -> None:
    from actionparty.preflight import run

    if run(args.profile, args.data, args.require_gpus):
        raise SystemExit(1)


def _cmd_mask_figure(args) -> None:
    from actionparty.report.mask_figure import draw_attention_masks

    draw_attention_masks(args.out)
    print(f"{args.out}: attention masks")


def _cmd_schema(args) -> None:
    from actionparty.atomic import write_text
    from actionparty.config import dump_json_schema

    if args.out:
        write_text(args.out, dump_json_schema())
    else:
        sys.stdout.write(dump_json_schema())


class _Parser(argparse.ArgumentParser):
    """Usage errors in one line (``--help`` still shows the usage)."""

    def error(self, message: str):
        self.exit(2, f"error: {self.prog}: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="actionparty", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name, func, help):
        p = sub.add_parser(name, help=help, description=help)
        p.set_defaults(func=func)
        return p

    p = add("episodes", _cmd_episodes, "generate one game's episodes of one split")
    p.add_argument("--profile", required=True)
    p.add_argument("--game", required=True)
    p.add_argument("--split", required=True, choices=["train", "val", "test"])
    p.add_argument("--protocol", default="episodes", choices=["episodes", "one_mover", "uniform"],
                   help="the policy (docs/EVALUATION.md, Protocols); another than episodes replays the test seeds")
    p.add_argument("--out", required=True, type=Path, help="episode folder to create")
    p.add_argument("--workers", type=positive_int, default=1)
    p.add_argument("--quiet", action="store_true")

    p = add("lmdb", _cmd_lmdb, "pack one split's episode folders into an LMDB")
    p.add_argument("--profile", required=True)
    p.add_argument("--split", required=True, choices=["train", "val", "test"])
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("episodes", nargs="+", type=Path, help="episode folders (one per game)")
    p.add_argument("--quiet", action="store_true")

    p = add("verify-lmdb", _cmd_verify_lmdb, "check every record of LMDB datasets")
    p.add_argument("paths", nargs="+", type=Path)
    p.add_argument("--quiet", action="store_true")

    p = add("contact-sheet", _cmd_contact_sheet, "draw every catalogue game's first frame in one figure")
    p.add_argument("--catalogue", required=True, type=Path)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--workers", type=positive_int, default=1)

    p = add("bench-episodes", _cmd_bench_episodes, "episode generation frames/s next to the raw env.step rate")
    p.add_argument("--profile", required=True)
    p.add_argument("--games", nargs="*", help="default: the profile's games")
    p.add_argument("--episodes", type=positive_int, default=8, help="episodes per game for the generation timing")
    p.add_argument("--workers", type=positive_int, default=2)

    p = add("validate", _cmd_validate, "validate a profile and its games")
    p.add_argument("--profile", required=True)

    p = add("preflight", _cmd_preflight, "what a run of the profile needs (weights, GPUs, disk, SLURM) and "
            "whether it is here; exit 1 with one line per problem")
    p.add_argument("--profile", required=True)
    p.add_argument("--data", default="data", help="where the dataset will be written (disk check)")
    p.add_argument("--require-gpus", action="store_true", help="no visible GPU is a problem (run inside a GPU job)")

    p = add("mask-figure", _cmd_mask_figure, "draw who attends to whom (MSA, no MSA, frame-wise MCA)")
    p.add_argument("--out", required=True, type=Path)

    p = add("schema", _cmd_schema, "print the profile's JSON schema (for Snakemake)")
    p.add_argument("--out", type=Path)

    from actionparty.eval.commands import add_commands as add_eval_commands
    from actionparty.play.commands import add_commands as add_play_commands
    from actionparty.report.commands import add_commands as add_report_commands
    from actionparty.rollout.commands import add_commands as add_rollout_commands
    from actionparty.train.commands import add_commands as add_train_commands

    add_train_commands(sub)
    add_rollout_commands(sub)
    add_eval_commands(sub)
    add_report_commands(sub)
    add_play_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
