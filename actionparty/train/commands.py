"""CLI commands of the training stages (registered by actionparty.cli)."""

from __future__ import annotations

from pathlib import Path

from actionparty.errors import positive_int


def _cmd_pretrain(args) -> None:
    from actionparty.config import load_profile
    from actionparty.model.checkpoint import PRETRAIN_STAGE
    from actionparty.model.factory import build_world_model
    from actionparty.train.trainer import TrainJob, train

    profile = load_profile(args.profile)
    job = TrainJob(profile, profile.pretrain, args.train_lmdb, args.out, PRETRAIN_STAGE, build_world_model,
                   stop_after=args.stop_after, progress=not args.quiet)
    final = train(job)
    if final.is_file():
        print(f"{final}: pretraining finished ({profile.pretrain.steps} steps)")


def _cmd_finetune(args) -> None:
    from actionparty.config import load_profile
    from actionparty.variants import finetune_run
    from actionparty.model.factory import build_world_model
    from actionparty.train.trainer import TrainJob, train

    variant, profile, cfg = finetune_run(load_profile(args.profile), args.variant)
    job = TrainJob(profile, cfg, args.train_lmdb, args.out, args.variant,
                   lambda p, device: build_world_model(p, device, variant), init_from=args.init,
                   stop_after=args.stop_after, progress=not args.quiet,
                   extra_meta={"variant": args.variant, "variant_config": variant.model_dump()})
    final = train(job)
    if final.is_file():
        print(f"{final}: {args.variant} ({variant.experiment}, seed {cfg.seed}) finished ({cfg.steps} steps)")


def _cmd_embed_text(args) -> None:
    from actionparty.config import load_profile
    from actionparty.device import default_device
    from actionparty.model.factory import embed_texts

    profile = load_profile(args.profile)
    device = args.device or default_device()
    games = embed_texts(profile, args.out, device=device)
    print(f"{args.out}: {profile.model.text_encoder} embeddings of {len(games)} games "
          f"({profile.model.text_len} tokens each), on {device}")


def _cmd_encode_latents(args) -> None:
    from actionparty.config import load_profile
    from actionparty.device import resolve_device
    from actionparty.errors import UserError
    from actionparty.train.latents import encode_latents

    profile = load_profile(args.profile)
    if profile.model.latent_cache is None:
        raise UserError(f"{args.profile}: model.latent_cache is null (the profile's training encodes its clips)")
    shards = profile.resources.latent_shards
    device = resolve_device(args.device)
    clips = encode_latents(profile, args.train_lmdb, args.out, args.shard, shards, device=device,
                           batch_clips=args.batch_clips, progress=not args.quiet)
    print(f"{args.out}: shard {args.shard} of {shards}, {clips} clips encoded with {profile.model.codec} on {device}")


def _cmd_bench_model(args) -> None:
    from actionparty.config import load_profile
    from actionparty.train.bench import bench_model, print_model_bench

    result = bench_model(load_profile(args.profile), steps=args.steps, threads=args.threads)
    print_model_bench(result)
    if args.json:
        from actionparty.atomic import write_json

        write_json(args.json, result)


def _cmd_estimate(args) -> None:
    from actionparty.config import load_profile
    from actionparty.variants import load_variant
    from actionparty.train.estimate import (
        estimate,
        latent_cache_estimate,
        print_estimate,
        print_latent_cache_estimate,
        print_rollout_estimate,
        rollout_estimate,
    )

    profile = load_profile(args.profile)
    if profile.model.latent_cache is not None:
        print_latent_cache_estimate(latent_cache_estimate(profile))
    print_estimate(estimate(profile))
    for name in args.variants or profile.variants[:1]:
        variant = load_variant(name)
        print_estimate(estimate(profile, variant))
        print_rollout_estimate(rollout_estimate(profile, variant, name))


def add_commands(sub) -> None:
    p = sub.add_parser("pretrain", help="video-only pretraining (exp-138) on an LMDB")
    p.set_defaults(func=_cmd_pretrain)
    p.add_argument("--profile", required=True)
    p.add_argument("--train-lmdb", required=True, type=Path)
    p.add_argument("--out", required=True, type=Path, help="run folder (checkpoint.pt, train_log.jsonl, work/)")
    p.add_argument("--stop-after", type=positive_int, help="stop after this many steps of this invocation (resume later)")
    p.add_argument("--quiet", action="store_true")

    p = sub.add_parser("finetune", help="action finetuning of one variant from the exp-138 checkpoint")
    p.set_defaults(func=_cmd_finetune)
    p.add_argument("--profile", required=True)
    p.add_argument("--variant", required=True,
                   help="a name in params/variants/, or <name>-s<k> for a repeat with seed finetune.seed + k")
    p.add_argument("--init", required=True, type=Path, help="exp-138 checkpoint")
    p.add_argument("--train-lmdb", required=True, type=Path)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--stop-after", type=positive_int)
    p.add_argument("--quiet", action="store_true")

    help = ("encode the profile's game descriptions once with its text encoder (umT5 on a GPU at paper scale) "
            "into the cache model.text_cache names; training and rollouts then never load the encoder")
    p = sub.add_parser("embed-text", help=help, description=help)
    p.set_defaults(func=_cmd_embed_text)
    p.add_argument("--profile", required=True)
    p.add_argument("--out", required=True, type=Path, help="the cache file (safetensors), e.g. results/text/embeddings.safetensors")
    p.add_argument("--device", help="default: cuda when available, else cpu")

    help = ("encode the training clips the profile's runs draw once with its frame codec (the Wan VAE on a GPU "
            "at paper scale) into the latent cache model.latent_cache names; training then reads them")
    p = sub.add_parser("encode-latents", help=help, description=help)
    p.set_defaults(func=_cmd_encode_latents)
    p.add_argument("--profile", required=True)
    p.add_argument("--train-lmdb", required=True, type=Path)
    p.add_argument("--out", required=True, type=Path, help="the cache folder (model.latent_cache), e.g. results/latents")
    p.add_argument("--shard", type=int, default=0, help="which of resources.latent_shards shards to write")
    p.add_argument("--batch-clips", type=positive_int, default=8, help="clips per encoder call")
    p.add_argument("--device", help="default: cuda when available, else cpu")
    p.add_argument("--quiet", action="store_true")

    p = sub.add_parser("bench-model", help="training tokens/s and FLOP/s vs matmul; rollout with/without KV cache")
    p.set_defaults(func=_cmd_bench_model)
    p.add_argument("--profile", required=True)
    p.add_argument("--steps", type=positive_int, default=5)
    p.add_argument("--threads", type=positive_int)
    p.add_argument("--json", type=Path, help="also write the figures as JSON")

    p = sub.add_parser("estimate", help="GPU memory and time estimates of the training stages (meta device)")
    p.set_defaults(func=_cmd_estimate)
    p.add_argument("--profile", required=True)
    p.add_argument("--variants", nargs="*", help="finetune variants to estimate (default: the first)")
