"""CLI commands of the evaluation stage (registered by actionparty.cli through add_commands).

    actionparty train-detectors --profile P --train-lmdb data/lmdb/train.lmdb --val-lmdb data/lmdb/val.lmdb \
        --out results/detectors/detectors.pt --accuracy results/detectors/accuracy.json
    actionparty evaluate --profile P --variant full --test-lmdb data/lmdb/test.lmdb \
        --detectors results/detectors/detectors.pt --rollouts results/rollouts/full/h4.npz ... \
        [--swap-rollouts results/rollouts/full/h4_swap.npz ...] --out results/metrics/full.json
    actionparty evaluate --profile P --variant full --protocol uniform --test-lmdb data/lmdb/test_uniform.lmdb \
        --detectors results/detectors/detectors.pt --rollouts results/rollouts/uniform/full/h4.npz \
        --out results/metrics/uniform/full.json
    actionparty evaluate-oracle --profile P [--protocol uniform] --test-lmdb data/lmdb/test.lmdb \
        --detectors results/detectors/detectors.pt --out results/metrics/oracle.json
    actionparty curve --profile P --variant full --checkpoint results/finetune/full/checkpoint.pt \
        --val-lmdb data/lmdb/val.lmdb --detectors results/detectors/detectors.pt --out results/finetune/full/curve.json
    actionparty combine-metrics [--out-json results/metrics/combined.json --out-csv results/metrics/combined.csv] \
        [--out-summary results/metrics/summary.json] results/metrics/*.json
"""

from __future__ import annotations

from pathlib import Path

from actionparty.errors import positive_int


def _threads(args) -> None:
    import torch

    torch.set_num_threads(args.threads)


def _device(args) -> str:
    from actionparty.device import resolve_device

    return resolve_device(args.device)


def _cmd_train_detectors(args) -> None:
    from actionparty.config import load_profile
    from actionparty.eval.detectors import train_detectors

    device = _device(args)
    cfg = load_profile(args.profile).eval
    _threads(args)
    acc = train_detectors(args.train_lmdb, args.val_lmdb, cfg, args.out, args.accuracy, progress=not args.quiet,
                          stop_after=args.stop_after, device=device)
    if acc:
        o = acc["overall"]
        print(f"{args.out}: tile slot {o['slot_accuracy']}, facing {o['facing_accuracy']}, "
              f"background {o['background_accuracy']}; inverse dynamics {o['idm_accuracy']} (val)")


def _check_protocol(args) -> None:
    """``--protocol`` is the one the test LMDB (field 'protocol'; none: the test split's own) and
    every rollout file were made under."""
    from actionparty.config import DEFAULT_PROTOCOL
    from actionparty.data.lmdb_dataset import ClipDataset
    from actionparty.errors import UserError
    from actionparty.rollout.rollout_io import read_rollout_meta

    found = ClipDataset(args.test_lmdb, clip_steps=1).meta.get("protocol", DEFAULT_PROTOCOL)
    if found != args.protocol:
        raise UserError(f"{args.test_lmdb}: test episodes of protocol '{found}', not --protocol {args.protocol} "
                        f"(an extra protocol's are data/lmdb/test_<protocol>.lmdb)")
    for path in [*getattr(args, "rollouts", []), *(getattr(args, "swap_rollouts", None) or [])]:
        found = read_rollout_meta(path).get("protocol", DEFAULT_PROTOCOL)
        if found != args.protocol:
            raise UserError(f"{path}: a rollout of protocol '{found}', not --protocol {args.protocol}")


def _tag_protocol(result: dict, protocol: str) -> dict:
    """The metrics of an extra protocol name it (field 'protocol'); the test split's own do not."""
    from actionparty.config import DEFAULT_PROTOCOL

    return result if protocol == DEFAULT_PROTOCOL else {**result, "protocol": protocol}


def _cmd_evaluate(args) -> None:
    from actionparty.config import load_profile
    from actionparty.eval import metrics_file
    from actionparty.eval.evaluate import evaluate_variant

    device = _device(args)
    profile = load_profile(args.profile)
    _check_protocol(args)
    _threads(args)
    result = evaluate_variant(args.variant, args.rollouts, args.swap_rollouts or [], args.test_lmdb, args.detectors,
                              profile.eval, progress=not args.quiet,
                              windows=(profile.rollout.clips_per_game, profile.rollout.seed), device=device)
    result = _tag_protocol(result, args.protocol)
    metrics_file.write(args.out, result)
    summary = ", ".join(f"{h}: MA {e['overall']['MA']} SP {e['overall']['SP']} BA {e['overall']['BA']}"
                        for h, e in result["horizons"].items())
    print(f"{args.out}: {summary}")


def _cmd_evaluate_oracle(args) -> None:
    from actionparty.config import DEFAULT_PROTOCOL, load_profile
    from actionparty.eval import metrics_file
    from actionparty.eval.evaluate import evaluate_oracle

    device = _device(args)
    profile = load_profile(args.profile)
    _check_protocol(args)
    _threads(args)
    r = profile.rollout
    # Under an extra protocol the models are rolled out at the shortest horizon only; so is its oracle.
    horizons = r.horizons if args.protocol == DEFAULT_PROTOCOL else [min(r.horizons)]
    result = evaluate_oracle(args.test_lmdb, args.detectors, profile.eval, horizons, r.clips_per_game, r.seed,
                             progress=not args.quiet, device=device)
    result = _tag_protocol(result, args.protocol)
    metrics_file.write(args.out, result)
    summary = ", ".join(f"{h}: MA {e['overall']['MA']} SP {e['overall']['SP']}" for h, e in result["horizons"].items())
    print(f"{args.out}: oracle {summary}")


def _cmd_curve(args) -> None:
    from actionparty.atomic import write_json
    from actionparty.config import load_profile
    from actionparty.eval.curve import learning_curve

    _threads(args)
    curve = learning_curve(load_profile(args.profile), args.variant, args.checkpoint, args.val_lmdb, args.detectors,
                           progress=not args.quiet)
    write_json(args.out, curve)
    points = ", ".join(f"{s}: MA_changing {m} BA {b}"
                       for s, m, b in zip(curve["steps"], curve["MA_changing"], curve["BA"]))
    print(f"{args.out}: {points}")


def _cmd_combine_metrics(args) -> None:
    from actionparty.errors import UserError
    from actionparty.eval.evaluate import SUMMARY_METRICS, combine_metrics, summary_metrics, write_summary, write_table

    if (args.out_json is None) != (args.out_csv is None):
        raise UserError("combine-metrics: --out-json and --out-csv go together (the combined table as JSON and CSV)")
    if args.out_json is None and args.out_summary is None:
        raise UserError("combine-metrics: nothing to write; give --out-json and --out-csv, or --out-summary")
    if args.out_json is not None:
        rows = combine_metrics(args.metrics)
        write_table(rows, args.out_json, args.out_csv)
        print(f"{args.out_csv}: {len(rows)} rows from {len(args.metrics)} metrics files")
    if args.out_summary is not None:
        summary = summary_metrics(args.metrics)
        write_summary(summary, args.out_summary)
        print(f"{args.out_summary}: {len(summary)} models x horizons x {', '.join(SUMMARY_METRICS)}")


def _cmd_detector_robustness(args) -> None:
    from actionparty.atomic import write_json
    from actionparty.config import load_profile
    from actionparty.eval.robustness import detector_robustness, robustness_markdown

    device = _device(args)
    _threads(args)
    result = detector_robustness(args.lmdb, args.detectors, load_profile(args.profile).eval, args.frames_per_game,
                                 progress=not args.quiet, device=device)
    if args.out is not None:
        write_json(args.out, result)
    print(robustness_markdown(result), end="")


def add_commands(sub) -> None:
    """Register the evaluation subcommands on an argparse subparsers object."""
    from actionparty.config import DEFAULT_PROTOCOL, PROTOCOLS

    def add(name, func, help):
        p = sub.add_parser(name, help=help, description=help)
        p.set_defaults(func=func)
        return p

    def common(p, threads=True):
        p.add_argument("--profile", required=True, help="params/<profile>.yaml (its eval: section)")
        if threads:
            p.add_argument("--threads", type=positive_int, default=1, help="torch CPU threads")
        p.add_argument("--quiet", action="store_true")

    def device(p):
        p.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available, else cpu)")

    def protocol(p):
        p.add_argument("--protocol", default=DEFAULT_PROTOCOL, choices=PROTOCOLS,
                       help="the test episodes' protocol (docs/EVALUATION.md, Protocols); the test LMDB's and "
                            "the rollouts' must be it; another than episodes is named in the metrics file")

    p = add("train-detectors", _cmd_train_detectors,
            "train the tile and inverse-dynamics classifiers on ground truth; held-out accuracy on val")
    common(p)
    device(p)
    p.add_argument("--train-lmdb", required=True, type=Path)
    p.add_argument("--val-lmdb", required=True, type=Path)
    p.add_argument("--out", required=True, type=Path, help="detector bundle (.pt)")
    p.add_argument("--accuracy", required=True, type=Path, help="held-out accuracy per game (.json)")
    p.add_argument("--stop-after", type=positive_int, help="stop after this many steps (resume by rerunning)")

    p = add("evaluate", _cmd_evaluate, "metrics of one model variant from its rollout files")
    common(p)
    device(p)
    protocol(p)
    p.add_argument("--variant", required=True)
    p.add_argument("--test-lmdb", required=True, type=Path)
    p.add_argument("--detectors", required=True, type=Path)
    p.add_argument("--rollouts", nargs="+", required=True, type=Path, help="h{H}.npz files, one per horizon")
    p.add_argument("--swap-rollouts", nargs="*", type=Path, help="h{H}_swap.npz files (BA), one per horizon")
    p.add_argument("--out", required=True, type=Path,
                   help="results/metrics/{variant}.json (an extra protocol's: results/metrics/{protocol}/{variant}.json)")

    p = add("evaluate-oracle", _cmd_evaluate_oracle, "the oracle row: ground-truth frames through the same metrics")
    common(p)
    device(p)
    protocol(p)
    p.add_argument("--test-lmdb", required=True, type=Path)
    p.add_argument("--detectors", required=True, type=Path)
    p.add_argument("--out", required=True, type=Path, help="results/metrics/oracle.json")

    p = add("curve", _cmd_curve, "learning curve of a finetune: MA_changing, BA, MA, SP of its snapshots on val windows")
    common(p)
    p.add_argument("--variant", required=True)
    p.add_argument("--checkpoint", required=True, type=Path, help="the final checkpoint; its snapshots/ are read too")
    p.add_argument("--val-lmdb", required=True, type=Path,
                   help="data/lmdb/val.lmdb: curves tune recipes and budgets, so they never read the test split")
    p.add_argument("--detectors", required=True, type=Path)
    p.add_argument("--out", required=True, type=Path, help="results/finetune/{variant}/curve.json")

    p = add("detector-robustness", _cmd_detector_robustness,
            "detection and false-positive rates of the detectors on degraded real frames (noise, blur, players erased)")
    common(p)
    device(p)
    p.add_argument("--lmdb", required=True, type=Path, help="a split the detectors were not trained on (val)")
    p.add_argument("--detectors", required=True, type=Path)
    p.add_argument("--frames-per-game", type=positive_int, default=64)
    p.add_argument("--out", type=Path, help="also write the rates as JSON")

    p = add("combine-metrics", _cmd_combine_metrics,
            "one table (JSON + CSV) of every variant's metrics, and/or the flat summary (the DVC metric)")
    p.add_argument("--out-json", type=Path, help="combined table, JSON (with --out-csv)")
    p.add_argument("--out-csv", type=Path, help="combined table, CSV (with --out-json)")
    p.add_argument("--out-summary", type=Path,
                   help="results/metrics/summary.json: model x horizon x MA, MA_changing, SP, BA, PSNR")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("metrics", nargs="+", type=Path, help="results/metrics/*.json")
