"""Chunk-by-chunk sampling of a :class:`~actionparty.model.world.WorldModel`.

For each chunk of ``chunk_frames`` latent frames: start from noise, take ``sampling_steps``
Euler steps of the flow ODE (sigma from 1 to 0 with Wan's shift), each a forward pass that
*reads* the KV cache of the clean earlier frames; then one more pass at sigma = 0 over the
finished chunk *appends* its keys/values to the cache (as Self-Forcing does). The cache keeps at
most ``window_frames`` earlier frames, so rollouts longer than the training clips slide a window.

``use_cache=False`` computes the same thing without a cache, by re-running the window of clean
frames together with the noisy chunk at every Euler step (the reference the tests compare to).
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from actionparty.train.flow import euler_step, sampling_sigmas

# (step_index, chunk_frames) -> conditioning inputs for the model (actions, states, ...)
InputsFn = Callable[[int, int], dict[str, Any]]


@torch.no_grad()
def rollout(model, context: torch.Tensor, steps: int, text: torch.Tensor, text_mask: torch.Tensor | None, *,
            sampling_steps: int, shift: float, window_frames: int | None, generator: torch.Generator | None = None,
            inputs_fn: InputsFn | None = None, use_cache: bool = True,
            on_chunk: Callable[[int, Any], None] | None = None) -> torch.Tensor:
    """Generate ``steps`` latent frames after ``context``.

    Args:
        context: (B, C, 1, h, w) clean latent of the context frame.
        inputs_fn: conditioning inputs for the chunk starting at action step ``s`` (0-based)
            with ``n`` frames; called for the denoising passes and the cache pass alike.
        on_chunk: called with (first step index, final Prediction) after each chunk (e.g. to
            read the model's predicted states).

    Returns:
        (B, C, 1 + steps, h, w) latents, frame 0 = the context.
    """
    chunk = model.chunk_frames
    if steps % chunk:
        raise ValueError(f"{steps} steps is not a whole number of {chunk}-frame chunks")
    b = context.shape[0]
    sigmas = sampling_sigmas(sampling_steps, shift, device=context.device)
    inputs_fn = inputs_fn or (lambda s, n: {})
    frame0 = model.context_frame
    frames = [context]
    cache = model.dit.new_kv_cache(window_frames=window_frames) if use_cache else None

    def sigma_of(value: float, n: int) -> torch.Tensor:
        return torch.full((b, n), float(value), device=context.device)

    if use_cache:
        model(context, sigma_of(0.0, 1), context, text, text_mask, frame_offset=frame0, inputs=inputs_fn(-1, 1),
              kv_cache=cache, update_cache=True)
    for s in range(0, steps, chunk):
        offset = frame0 + 1 + s
        anchor = frames[-1].expand(-1, -1, chunk, -1, -1)
        inputs = inputs_fn(s, chunk)
        x = torch.randn((b, context.shape[1], chunk, *context.shape[3:]), generator=generator,
                        device="cpu").to(context.device)
        for i in range(sampling_steps):
            pred = _denoise(model, x, sigma_of(sigmas[i], chunk), anchor, text, text_mask, offset, inputs,
                            cache, frames, window_frames)
            x = euler_step(x, pred.x0, sigmas[i], sigmas[i + 1])
        if on_chunk is not None:
            on_chunk(s, pred)
        frames.append(x)
        if use_cache:
            model(x, sigma_of(0.0, chunk), anchor, text, text_mask, frame_offset=offset, inputs=inputs,
                  kv_cache=cache, update_cache=True)
    return torch.cat(frames, dim=2)


def _denoise(model, x, sigma, anchor, text, text_mask, offset, inputs, cache, frames, window_frames):
    if cache is not None:
        return model(x, sigma, anchor, text, text_mask, frame_offset=offset, inputs=inputs, kv_cache=cache)
    # Uncached reference: every clean frame so far + the noisy chunk in one pass, under the
    # windowed block-causal mask (each clean frame sees the window it saw when generated).
    clean = torch.cat(frames, dim=2)
    n_clean = clean.shape[2]
    seq = torch.cat([clean, x], dim=2)
    sig = torch.cat([torch.zeros_like(sigma[:, :1]).expand(-1, n_clean), sigma], dim=1)
    anc = torch.cat([clean, anchor], dim=2)
    pred = model(seq, sig, anc, text, text_mask, frame_offset=offset - n_clean, inputs={**inputs, "history": n_clean},
                 window_frames=window_frames)
    n = x.shape[2]
    return type(pred)(pred.x0[:, :, -n:], pred.velocity[:, :, -n:], pred.raw)
