"""CLI commands of play mode (registered by actionparty.cli through add_commands).

    actionparty play --profile P --model full=CKPT [--model global_action=CKPT] [--detectors D] [--port 8765]
    actionparty bench-play --profile P --model full=CKPT [--steps 200] [--sessions 4]
"""

from __future__ import annotations

from pathlib import Path


def _cmd_play(args) -> None:
    from actionparty.errors import UserError
    from actionparty.play.model import load_play
    from actionparty.play.server import LOOPBACK, PlayConfig, bind, create_app, serve

    for name in ("max_sessions", "workers"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1")
    if args.idle_timeout <= 0:
        raise UserError("--idle-timeout must be positive (seconds)")
    sock = bind(args.host, args.port)  # a taken port is refused before the models load
    try:
        profile, specs, bank, detectors = load_play(args)
    except BaseException:
        sock.close()
        raise
    app = create_app(bank, profile, specs, detectors,
                     PlayConfig(max_sessions=args.max_sessions, idle_timeout_s=args.idle_timeout, workers=args.workers))
    print(f"play: {profile.profile} profile, games {', '.join(specs)}; models {', '.join(bank.names())}"
          f"{'; detectors ' + str(args.detectors) if detectors else '; no detectors (MA_changing/SP unavailable)'}")
    if args.host not in LOOPBACK:
        print(f"play: warning: listening on {args.host}, not only this machine: anyone who reaches it can play")
    serve(app, sock)


def _cmd_bench_play(args) -> None:
    from actionparty.play.bench import bench_play

    bench_play(args)


def _common(p) -> None:
    p.add_argument("--profile", required=True)
    p.add_argument("--model", action="append", required=True, metavar="NAME=CHECKPOINT",
                   help="a model the page offers (repeat for more), e.g. full=results/finetune/full/checkpoint.pt")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1: one core per model step)")


def add_commands(sub) -> None:
    p = sub.add_parser("play", help="play a trained world model in the browser beside the real engine")
    p.set_defaults(func=_cmd_play)
    _common(p)
    p.add_argument("--detectors", type=Path, help="results/detectors/detectors.pt: live MA_changing and SP")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--max-sessions", type=int, default=4, help="tabs served at once")
    p.add_argument("--idle-timeout", type=float, default=600.0, help="seconds without a message before a session is freed")
    p.add_argument("--workers", type=int, default=2, help="threads stepping sessions")

    p = sub.add_parser("bench-play", help="play mode figures: model and engine steps/s, latency, concurrent sessions, memory")
    p.set_defaults(func=_cmd_bench_play)
    _common(p)
    p.add_argument("--game", help="default: the profile's first game")
    p.add_argument("--steps", type=int, default=200, help="steps of the one-session timing")
    p.add_argument("--sessions", type=int, default=4, help="concurrent sessions over loopback")
    p.add_argument("--session-steps", type=int, default=50, help="steps of each concurrent session")
    p.add_argument("--workers", type=int, default=2, help="server threads of the concurrent run (cores)")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds the concurrent run may take at most")
    p.add_argument("--out", type=Path, help="also write the figures as JSON")
