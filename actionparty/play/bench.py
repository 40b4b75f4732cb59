"""bench-play: what a person playing gets, measured (a benchmark command, not a timed test).

1. One session on one core (torch on one thread, the process pinned to one CPU where the OS
   allows): the model step (the Sampler's state pass + the profile's Euler steps + the cache
   pass, then decoding) with its p50/p95 latency, the engine step beside it, and the whole
   session step (both panes, PNG encoding, marks).
2. Memory per session: resident memory before and after opening ``--sessions`` sessions that
   have each stepped past the KV cache's window, divided by their number (and the cache alone).
3. ``--sessions`` concurrent sessions over loopback: the real server (``--workers`` threads,
   the process pinned to that many CPUs) and one websocket client per session stepping as fast
   as replies come; steps/s and p50/p95 round-trip latency per session. Bounded: each session
   takes ``--session-steps`` steps and the run stops after ``--timeout`` seconds.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import time

import numpy as np

from actionparty.atomic import write_json
from actionparty.errors import UserError


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _pin(cpus: int):
    """Pin the process to ``cpus`` of its allowed CPUs; returns the previous set (None if unsupported)."""
    if not hasattr(os, "sched_getaffinity"):
        return None
    allowed = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, allowed[:cpus])
    return set(allowed)


def _percentiles(ms: list[float]) -> dict:
    a = np.asarray(ms, dtype=np.float64)
    return {"mean_ms": round(float(a.mean()), 2), "p50_ms": round(float(np.percentile(a, 50)), 2),
            "p95_ms": round(float(np.percentile(a, 95)), 2), "steps_per_s": round(1000.0 / float(a.mean()), 1)}


def one_session(session, game: str, model: str, steps: int, warmup: int = 5) -> dict:
    """Time ``steps`` policy-driven steps of one session."""
    session.start(game, model, seed=0, human=[False] * session.specs[game].num_players)
    model_ms, engine_ms, total_ms = [], [], []
    for i in range(warmup + steps):
        if not session.engine.running:
            session.reset()
        t0 = time.perf_counter()
        msg = session.step({})
        total = (time.perf_counter() - t0) * 1e3
        if i >= warmup:
            model_ms.append(msg["timing"]["model_ms"])
            engine_ms.append(msg["timing"]["engine_ms"])
            total_ms.append(total)
    return {"model": _percentiles(model_ms), "engine": _percentiles(engine_ms), "session": _percentiles(total_ms)}


def memory_per_session(make_session, game: str, model: str, count: int, steps: int) -> dict:
    import gc

    gc.collect()
    before = _rss_bytes()
    sessions = [make_session() for _ in range(count)]
    for i, s in enumerate(sessions):
        s.start(game, model, seed=i)
        for _ in range(steps):
            s.step({})
    gc.collect()
    after = _rss_bytes()
    cache = [s.memory_bytes() for s in sessions]
    for s in sessions:
        s.close()
    return {"sessions": count, "rss_per_session_mib": round((after - before) / count / 2**20, 2),
            "kv_cache_per_session_kib": round(float(np.mean(cache)) / 1024, 1)}


async def _client(url: str, game: str, model: str, seed: int, steps: int) -> dict:
    from websockets.asyncio.client import connect

    latencies = []
    async with connect(url, max_size=2**24) as ws:
        hello = json.loads(await ws.recv())
        if hello.get("type") != "hello":
            raise RuntimeError(f"session {seed}: {hello.get('message', hello)}")
        await ws.send(json.dumps({"type": "start", "game": game, "model": model, "seed": seed}))
        reply = json.loads(await ws.recv())
        if reply.get("type") != "frame":
            raise RuntimeError(f"session {seed}: {reply.get('message', reply)}")
        t_start = time.perf_counter()
        for _ in range(steps):
            t0 = time.perf_counter()
            await ws.send(json.dumps({"type": "step", "actions": {}}))
            reply = json.loads(await ws.recv())
            if reply.get("type") != "frame":
                raise RuntimeError(f"session {seed}: {reply.get('message', reply)}")
            latencies.append((time.perf_counter() - t0) * 1e3)
        elapsed = time.perf_counter() - t_start
    return {"steps": steps, "steps_per_s": round(steps / elapsed, 2), **{k: v for k, v in _percentiles(latencies).items()
                                                                          if k != "steps_per_s"}}


def concurrent_sessions(app_factory, game: str, model: str, sessions: int, steps: int, timeout: float) -> dict:
    from actionparty.play.server import BackgroundServer

    server = BackgroundServer(app_factory())
    url = server.url.replace("http://", "ws://") + "ws"

    async def run():
        return await asyncio.wait_for(
            asyncio.gather(*(_client(url, game, model, seed, steps) for seed in range(sessions))), timeout)

    try:
        t0 = time.perf_counter()
        per = asyncio.run(run())
        wall = time.perf_counter() - t0
    except asyncio.TimeoutError:
        raise UserError(f"bench-play: {sessions} sessions did not finish {steps} steps in {timeout:.0f} s "
                        "(--timeout, --session-steps)") from None
    finally:
        server.stop()
    total = sum(p["steps"] for p in per)
    return {"sessions": per, "total_steps_per_s": round(total / wall, 2), "wall_s": round(wall, 2)}


def bench_play(args) -> None:
    import torch

    from actionparty.play.model import load_play
    from actionparty.play.server import PlayConfig, create_app
    from actionparty.play.session import PlaySession

    for name in ("steps", "sessions", "session_steps", "workers"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1")
    profile, specs, bank, detectors = load_play(args)
    game = args.game or next(iter(specs))
    if game not in specs:
        raise UserError(f"--game {game}: not one of the profile's games ({', '.join(specs)})")
    r = profile.rollout
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    result = {"profile": profile.profile, "game": game, "players": specs[game].num_players,
              "model_size": profile.model.size, "canvas_px": profile.canvas_px,
              "sampling_steps": r.sampling_steps, "state_sampling_steps": r.state_sampling_steps,
              "cpus_allowed": cpus, "machine": platform.processor() or platform.machine(),
              "torch_threads": torch.get_num_threads(), "load_average_1min": round(os.getloadavg()[0], 2),
              "models": {}}
    print(f"bench-play: profile {profile.profile} (model {profile.model.size}, canvas {profile.canvas_px} px), "
          f"game {game} ({specs[game].num_players} players), {r.sampling_steps} Euler steps"
          f" (+ {r.state_sampling_steps} state pass for state-first models), torch threads {torch.get_num_threads()}, "
          f"{cpus} CPUs allowed, load average {os.getloadavg()[0]:.1f} (other work on the machine slows every figure)")
    for name, play_model in bank.models.items():
        make = lambda: PlaySession(bank, profile, specs, detectors)  # noqa: E731
        previous = _pin(1)
        try:
            single = one_session(make(), game, name, args.steps)
        finally:
            if previous is not None:
                os.sched_setaffinity(0, previous)
        memory = memory_per_session(make, game, name, args.sessions, steps=max(4, play_model.window_frames + 2))
        previous = _pin(args.workers)
        try:
            conc = concurrent_sessions(
                lambda: create_app(bank, profile, specs, detectors,
                                   PlayConfig(max_sessions=args.sessions, workers=args.workers)),
                game, name, args.sessions, args.session_steps, args.timeout)
        finally:
            if previous is not None:
                os.sched_setaffinity(0, previous)
        result["models"][name] = {"checkpoint_step": play_model.describe()["step"], "one_core": single,
                                  "memory": memory, "concurrent": conc}
        m, e, s = single["model"], single["engine"], single["session"]
        print(f"\n{name} (checkpoint step {play_model.describe()['step']}), one session on one core, {args.steps} steps:")
        print(f"  model step   {m['steps_per_s']:7.1f} steps/s   p50 {m['p50_ms']:7.2f} ms   p95 {m['p95_ms']:7.2f} ms")
        print(f"  engine step  {e['steps_per_s']:7.1f} steps/s   p50 {e['p50_ms']:7.2f} ms   p95 {e['p95_ms']:7.2f} ms")
        print(f"  session step {s['steps_per_s']:7.1f} steps/s   p50 {s['p50_ms']:7.2f} ms   p95 {s['p95_ms']:7.2f} ms"
              "  (both panes, PNGs, marks)")
        print(f"  memory: {memory['rss_per_session_mib']:.2f} MiB resident per session "
              f"(KV cache {memory['kv_cache_per_session_kib']:.1f} KiB), {memory['sessions']} sessions")
        print(f"  {args.sessions} concurrent sessions over loopback on {min(args.workers, cpus)} cores, "
              f"{args.session_steps} steps each ({conc['wall_s']} s, {conc['total_steps_per_s']} steps/s in all):")
        for i, c in enumerate(conc["sessions"]):
            print(f"    session {i}: {c['steps_per_s']:6.2f} steps/s   p50 {c['p50_ms']:7.2f} ms   p95 {c['p95_ms']:7.2f} ms")
    if args.out is not None:
        write_json(args.out, result)
        print(f"\n{args.out}: written")
