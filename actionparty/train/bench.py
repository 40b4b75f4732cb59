"""Model benchmark: training throughput and achieved FLOP/s against a plain matmul, and rollout
speed with and without the KV cache. Prints one table; synthetic data of the profile's shapes."""

from __future__ import annotations

import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from actionparty.config import Profile
from actionparty.model.factory import build_world_model
from actionparty.rollout.sampler import rollout
from actionparty.train.objective import draw_noise, flow_matching_loss


def _timed(fn, repeats: int) -> float:
    fn()  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def matmul_flops_per_s(m: int, k: int, n: int, repeats: int = 20) -> float:
    a, b = torch.randn(m, k), torch.randn(k, n)
    return 2 * m * k * n / _timed(lambda: a @ b, repeats)


def bench_model(profile: Profile, steps: int = 5, rollout_steps: int = 20, rollout_batch: int = 4,
                threads: int | None = None) -> dict:
    """The training step's tokens/s and FLOP/s against a plain matmul of the model's width, and a
    rollout with and without the KV cache. One measurement after another, read top to bottom
    (hence one function)."""
    torch.set_num_threads(threads or profile.resources.train_threads)
    torch.manual_seed(0)
    cfg = profile.pretrain
    model, codec, text = build_world_model(profile)
    with torch.no_grad():  # random weights everywhere so no branch is trivially zero
        for p in model.parameters():
            p.normal_(0, 0.02)
    games = ["coins"] * cfg.batch_size
    frames = torch.randint(0, 255, (cfg.batch_size, cfg.clip_steps + 1, 3, profile.canvas_px, profile.canvas_px),
                           dtype=torch.uint8)
    latents = codec.encode(frames)
    emb, mask = text(games)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    chunks = cfg.clip_steps // model.chunk_frames

    def train_step():
        g = torch.Generator().manual_seed(0)
        sigma, noise, _ = draw_noise(g, cfg.batch_size, chunks, (latents.shape[1], cfg.clip_steps, *latents.shape[3:]),
                                  cfg.timestep_shift)
        loss = flow_matching_loss(model, latents, emb, mask, cfg, sigma, noise).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    with FlopCounterMode(display=False) as counter:
        g = torch.Generator().manual_seed(0)
        sigma, noise, _ = draw_noise(g, cfg.batch_size, chunks, (latents.shape[1], cfg.clip_steps, *latents.shape[3:]),
                                  cfg.timestep_shift)
        flow_matching_loss(model, latents, emb, mask, cfg, sigma, noise).loss.backward()
    flops = counter.get_total_flops()
    step_s = _timed(train_step, steps)
    tokens = latents.shape[0] * latents[0, 0].numel()
    d = model.dit.config
    mm = matmul_flops_per_s(tokens, d.dim, d.ffn_dim)

    model.eval()
    ctx = latents[:rollout_batch, :, :1]
    e, m = emb[:rollout_batch], mask[:rollout_batch]
    kw = dict(sampling_steps=profile.rollout.sampling_steps, shift=profile.rollout.timestep_shift,
              window_frames=cfg.clip_steps + 1 - model.chunk_frames)
    cached_s = _timed(lambda: rollout(model, ctx, rollout_steps, e, m, **kw), 1)
    uncached_s = _timed(lambda: rollout(model, ctx, rollout_steps, e, m, use_cache=False, **kw), 1)
    return {
        "profile": profile.profile,
        "model_size": profile.model.size,
        "parameters": sum(p.numel() for p in model.parameters()),
        "threads": torch.get_num_threads(),
        "train_batch": cfg.batch_size,
        "train_tokens_per_step": tokens,
        "train_step_s": step_s,
        "train_tokens_per_s": tokens / step_s,
        "train_flops_per_step": flops,
        "train_flops_per_s": flops / step_s,
        "matmul_flops_per_s": mm,
        "train_vs_matmul": flops / step_s / mm,
        "rollout_steps": rollout_steps,
        "rollout_batch": rollout_batch,
        "rollout_steps_per_s_cached": rollout_steps / cached_s,
        "rollout_steps_per_s_uncached": rollout_steps / uncached_s,
        "kv_cache_speedup": uncached_s / cached_s,
    }


def print_model_bench(r: dict) -> None:
    print(f"model benchmark ({r['profile']} profile, size {r['model_size']}, {r['parameters'] / 1e6:.2f} M params, "
          f"{r['threads']} threads)")
    print(f"  training   : {r['train_tokens_per_s']:,.0f} tokens/s ({r['train_batch']} clips, "
          f"{r['train_tokens_per_step']} tokens/step, {r['train_step_s'] * 1e3:.0f} ms/step)")
    print(f"  FLOP/s     : {r['train_flops_per_s'] / 1e9:.2f} GFLOP/s achieved vs {r['matmul_flops_per_s'] / 1e9:.2f} "
          f"GFLOP/s plain matmul = {100 * r['train_vs_matmul']:.0f}% (goal >= 50%)")
    print(f"  rollout    : {r['rollout_steps']} steps x {r['rollout_batch']} clips: "
          f"{r['rollout_steps_per_s_cached']:.2f} steps/s with KV cache, "
          f"{r['rollout_steps_per_s_uncached']:.2f} without = {r['kv_cache_speedup']:.1f}x (goal >= 3x)")
