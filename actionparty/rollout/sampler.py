"""Chunk-by-chunk sampling of a :class:`~actionparty.model.world.WorldModel`.

For each chunk of ``chunk_frames`` latent frames: start from noise, take ``sampling_steps``
Euler steps of the flow ODE (sigma from 1 to 0 with Wan's shift), each a forward pass that
*reads* the KV cache of the clean earlier frames; then one more pass at sigma = 0 over the
finished chunk *appends* its keys/values to the cache (as Self-Forcing does). The cache keeps at
most ``window_frames`` earlier frames, so rollouts longer than the training clips slide a window.

Models with subject states (``model.aux_dim > 0``) denoise each player's state with the video;
the finished state of a chunk becomes the next chunk's reference (its players' rotary positions
and previous facing) — the model's own prediction, never ground truth. Jointly (one noise level
for both), or, for state-first models, in two passes: ``state_sampling_steps`` for the states
while the video is still pure noise (the finished states are snapped to whole cells and one
facing), then ``sampling_steps`` for the video, drawn from the finished states.

With ``context_noise`` > 0 each generated frame is noised at that level before it becomes the
next chunk's context (what the cache and the residual anchor hold); the frames returned stay as
drawn. A model trained on contexts noised up to some level (``finetune.context_noise``) then reads
its own frames, slightly off, the way it read its training contexts (docs/METHOD.md).

``use_cache=False`` computes the same thing without a cache, by re-running every clean frame so
far together with the noisy chunk under the windowed block-causal mask (the reference the tests
compare against).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from actionparty.model.subjects import NO_ACTION
from actionparty.model.flow import add_noise, euler_step, sampling_sigmas


@dataclass
class Rollout:
    latents: torch.Tensor  # (B, C, 1 + steps, h, w), frame 0 = the context
    states: torch.Tensor | None  # (B, 1 + steps, S, D) subject states (models with aux_dim), frame 0 = context


@torch.no_grad()
def rollout(model, context: torch.Tensor, steps: int, text: torch.Tensor, text_mask: torch.Tensor | None, *,
            sampling_steps: int, shift: float, window_frames: int | None, generator: torch.Generator | None = None,
            state_sampling_steps: int | None = None, context_noise: float = 0.0,
            actions: torch.Tensor | None = None, present: torch.Tensor | None = None,
            context_state: torch.Tensor | None = None,
            text_fn: Callable[[int, int], tuple[torch.Tensor, torch.Tensor]] | None = None,
            use_cache: bool = True) -> Rollout:
    """Generate ``steps`` latent frames after ``context``.

    Args:
        context: (B, C, 1, h, w) clean latent of the context frame.
        actions: (B, steps, S) long actions of every player slot (action-conditioned models).
        present: (B, S) bool occupied slots.
        context_state: (B, 1, S, D) clean subject states of the context frame.
        text_fn: (first step, steps in chunk) -> (text, mask) for prompts that change per chunk
            (the text-action baseline); default: ``text``/``text_mask`` throughout.
        state_sampling_steps: Euler steps of a state-first model's state pass (default
            ``sampling_steps``); one step takes the denoiser's estimate at noise 1, snapped.
        context_noise: noise level of each generated frame as the next chunk's context (drawn
            from ``generator``); 0 feeds the frames back as drawn.
    """
    chunk = model.chunk_frames
    if steps % chunk:
        raise ValueError(f"{steps} steps is not a whole number of {chunk}-frame chunks")
    b, device = context.shape[0], context.device
    sigmas = sampling_sigmas(sampling_steps, shift, device=device)
    state_sigmas = sampling_sigmas(state_sampling_steps or sampling_steps, shift, device=device)
    frame0 = model.context_frame
    frames, states, frame_actions = [context], [context_state], []  # the contexts the model reads
    drawn = [context]  # the frames returned
    has_aux = model.aux_dim > 0 and context_state is not None
    cache = model.dit.new_kv_cache(window_frames=window_frames) if use_cache else None

    def sigma_of(value: float, n: int) -> torch.Tensor:
        return torch.full((b, n), float(value), device=device)

    def chunk_inputs(step_actions: torch.Tensor | None) -> dict[str, Any]:
        return {} if step_actions is None else {"actions": step_actions, "present": present}

    context_actions = None if actions is None else torch.full_like(actions[:, :1], NO_ACTION)
    frame_actions.append(context_actions)
    if use_cache:
        txt = text_fn(-1, 1) if text_fn else (text, text_mask)
        model(context, sigma_of(0.0, 1), context, *txt, frame_offset=frame0, inputs=chunk_inputs(context_actions),
              kv_cache=cache, update_cache=True, aux=context_state if has_aux else None, aux_anchor=context_state)
    for s in range(0, steps, chunk):
        offset = frame0 + 1 + s
        anchor = frames[-1].expand(-1, -1, chunk, -1, -1)
        # Reference state: the last finished one (the context's, for models that do not denoise states).
        ref = states[-1] if has_aux else context_state
        aux_anchor = None if ref is None else ref.expand(-1, chunk, -1, -1)
        step_actions = None if actions is None else actions[:, s : s + chunk]
        txt = text_fn(s, chunk) if text_fn else (text, text_mask)
        noise = torch.randn((b, context.shape[1], chunk, *context.shape[3:]), generator=generator)
        x = noise.to(device)
        # States start from the reference state plus unit noise (the flow of the state's move).
        aux = (aux_anchor + torch.randn((b, chunk, *context_state.shape[2:]), generator=generator).to(device)
               if has_aux else None)

        def denoise(x, sig, aux, aux_sig):
            if use_cache:
                return model(x, sig, anchor, *txt, frame_offset=offset, inputs=chunk_inputs(step_actions),
                             kv_cache=cache, aux=aux, aux_anchor=aux_anchor, aux_sigma=aux_sig)
            return _uncached(model, x, sig, anchor, txt, offset, frames, states, frame_actions, step_actions,
                             present, aux, aux_anchor, has_aux, context_state, window_frames, aux_sig)

        if has_aux and model.state_first:
            # The states first, the video still pure noise; then the video, drawn from the finished states.
            for i in range(len(state_sigmas) - 1):
                pred = denoise(x, sigma_of(1.0, chunk), aux, sigma_of(state_sigmas[i], chunk))
                aux = euler_step(aux, pred.aux_x0, state_sigmas[i], state_sigmas[i + 1])
            aux = model.grid.snap(aux)  # states are discrete: a whole cell and one facing
            for i in range(sampling_steps):
                pred = denoise(x, sigma_of(sigmas[i], chunk), aux, sigma_of(0.0, chunk))
                x = euler_step(x, pred.x0, sigmas[i], sigmas[i + 1])
        else:
            for i in range(sampling_steps):
                sig = sigma_of(sigmas[i], chunk)
                pred = denoise(x, sig, aux, sig)
                x = euler_step(x, pred.x0, sigmas[i], sigmas[i + 1])
                if has_aux:
                    aux = euler_step(aux, pred.aux_x0, sigmas[i], sigmas[i + 1])
        drawn.append(x)
        if context_noise > 0:
            noise = torch.randn(x.shape, generator=generator).to(device)
            x = add_noise(x, noise, torch.tensor(context_noise, device=device))
        frames.append(x)
        states.append(aux)
        frame_actions.append(step_actions)
        if use_cache and s + chunk < steps:  # the last chunk is read by no later one
            model(x, sigma_of(0.0, chunk), anchor, *txt, frame_offset=offset, inputs=chunk_inputs(step_actions),
                  kv_cache=cache, update_cache=True, aux=aux, aux_anchor=aux_anchor)
    return Rollout(torch.cat(drawn, dim=2), torch.cat(states, dim=1) if has_aux else None)


def _uncached(model, x, sigma, anchor, txt, offset, frames, states, frame_actions, step_actions, present, aux,
              aux_anchor, has_aux, context_state, window_frames, aux_sigma):
    """One denoising pass without a cache: every clean frame so far + the noisy chunk."""
    clean = torch.cat(frames, dim=2)
    n_clean, n = clean.shape[2], x.shape[2]
    seq = torch.cat([clean, x], dim=2)
    sig = torch.cat([torch.zeros_like(sigma[:, :1]).expand(-1, n_clean), sigma], dim=1)
    # Each clean frame's anchor is the frame before it (the context is its own anchor).
    anchors = torch.cat([clean[:, :, :1], clean[:, :, :-1], anchor], dim=2)
    inputs, seq_aux, seq_aux_anchor = {}, None, None
    if step_actions is not None:
        inputs = {"actions": torch.cat([*frame_actions, step_actions], dim=1), "present": present}
    if context_state is not None:
        if has_aux:
            done = torch.cat(states, dim=1)
            seq_aux = torch.cat([done, aux], dim=1)
            seq_aux_anchor = torch.cat([done[:, :1], done[:, :-1], aux_anchor], dim=1)
        else:
            seq_aux_anchor = context_state.expand(-1, n_clean + n, -1, -1)
    aux_sig = torch.cat([torch.zeros_like(aux_sigma[:, :1]).expand(-1, n_clean), aux_sigma], dim=1)
    pred = model(seq, sig, anchors, *txt, frame_offset=offset - n_clean, inputs=inputs, window_frames=window_frames,
                 aux=seq_aux, aux_anchor=seq_aux_anchor, aux_sigma=aux_sig)
    pred.x0, pred.velocity = pred.x0[:, :, -n:], pred.velocity[:, :, -n:]
    if pred.aux_x0 is not None:
        pred.aux_x0, pred.aux_velocity = pred.aux_x0[:, -n:], pred.aux_velocity[:, -n:]
    return pred
