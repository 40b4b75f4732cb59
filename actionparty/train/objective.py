"""The training objective on a clip: clean context frame + K noisy frames, rectified flow.

Frames 1..K of a clip are grouped into chunks of ``chunk_frames``; every chunk gets its own
noise level (diffusion-forcing style, Self-Forcing's causal pretraining) and attends to the
clean context frame and earlier chunks only (block-causal). With ``clip_steps = 1`` this is
plain transition training: context frame t-1 clean -> frame t.

The loss is in velocity space. For an x0 prediction it equals ``|x0_hat - x0|^2 / sigma^2``
with sigma floored at ``min_sigma``; each latent position is weighted ``1 + change_weight`` where
its content differs from the previous frame (players cover a few % of the map; without the
weight "nothing moves" is a cheap optimum).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from actionparty.model.flow import add_noise, euler_step, sample_sigmas, sampling_sigmas


@dataclass
class LossOutput:
    loss: torch.Tensor
    stats: dict[str, float]
    extra: Any = None


def chunk_anchors(x: torch.Tensor, chunk: int, dim: int = 2) -> torch.Tensor:
    """Residual-prior anchors for frames 1..K of ``x`` (frames along ``dim``, 1+K of them):
    every frame of a chunk starts from the last clean frame before that chunk (ground truth in
    training, the model's own output in rollout). Returns x with K frames along ``dim``."""
    k = x.shape[dim] - 1
    index = torch.arange(k, device=x.device) // chunk * chunk  # last frame before the chunk
    return x.index_select(dim, index)


def change_weights(latents: torch.Tensor, change_weight: float) -> torch.Tensor:
    """(B, 1, K, h, w): 1 + change_weight where frame t differs from frame t-1."""
    changed = (latents[:, :, 1:] - latents[:, :, :-1]).abs().amax(dim=1, keepdim=True) > 1e-3
    return 1.0 + change_weight * changed.float()


def flow_matching_loss(model, latents: torch.Tensor, text: torch.Tensor, text_mask: torch.Tensor | None,
                       cfg, sigma_chunks: torch.Tensor, noise: torch.Tensor,
                       inputs: dict[str, Any] | None = None, aux_noise: torch.Tensor | None = None,
                       state_loss_weight: float = 1.0, aux_sigma_chunks: torch.Tensor | None = None,
                       context_sigma: torch.Tensor | None = None, context_noise: torch.Tensor | None = None,
                       ) -> LossOutput:
    """Loss of one batch.

    Args:
        model: a :class:`~actionparty.model.world.WorldModel`.
        latents: (B, C, 1+K, h, w) clean latents, frame 0 is the context.
        sigma_chunks: (B, K / chunk_frames) noise level of each chunk.
        noise: (B, C, K, h, w) standard normal noise.
        inputs: conditioning inputs passed to the model; ``inputs["state"]`` (B, 1+K, S, D) are
            the clean subject states (denoised jointly when the model has ``aux_dim``; otherwise
            only the previous states are used, as reference positions) and ``inputs["present"]``
            (B, S) the occupied slots.
        aux_noise: (B, K, S, D) noise of the states.
        aux_sigma_chunks: (B, K / chunk_frames) the states' own noise levels (state-first models,
            see :func:`draw_state_sigmas`); default: the video's.
        context_sigma, context_noise: (B,) and (B, C, 1, h, w): the context frame is noised at
            these levels (input and residual anchor; the targets stay clean); default: clean.
    """
    core = getattr(model, "module", model)  # unwrap DistributedDataParallel for attributes
    chunk = core.chunk_frames
    k = latents.shape[2] - 1
    if k % chunk:
        raise ValueError(f"clip of {k} steps is not a whole number of {chunk}-frame chunks")
    sigma = sigma_chunks.repeat_interleave(chunk, dim=1)  # (B, K)
    video_keep = torch.ones_like(sigma)
    if aux_sigma_chunks is None:
        aux_sigma = sigma
    else:
        # State-first: a frame whose state is noisy is a state-denoising example, as in the first
        # sampling pass (video still pure noise, no video loss); one whose state is clean is a
        # video example, as in the second (no state loss).
        aux_sigma = aux_sigma_chunks.repeat_interleave(chunk, dim=1)
        state_example = aux_sigma > 0
        sigma = torch.where(state_example, torch.ones_like(sigma), sigma)
        video_keep = (~state_example).float()
    x0 = latents[:, :, 1:]
    x_noisy = add_noise(x0, noise, sigma[:, None, :, None, None])
    seen = latents  # the frames the model is given as context and anchors
    if context_sigma is not None:
        context = add_noise(latents[:, :, :1], context_noise, context_sigma[:, None, None, None, None])
        seen = torch.cat([context, latents[:, :, 1:]], dim=2)
    x_in = torch.cat([seen[:, :, :1], x_noisy], dim=2)
    sigma_in = torch.cat([torch.zeros_like(sigma[:, :1]), sigma], dim=1)
    anchor = torch.cat([seen[:, :, :1], chunk_anchors(seen, chunk)], dim=2)
    inputs = dict(inputs or {})
    aux_in = aux_anchor = aux_sigma_in = None
    states = inputs.pop("state", None)
    if states is not None:
        aux_anchor = torch.cat([states[:, :1], chunk_anchors(states, chunk, dim=1)], dim=1)
        if core.aux_dim:
            # States are noised as a move from the previous state (anchor + noised displacement):
            # the flow runs in the residual space, starting from the anchor plus unit noise.
            prev = aux_anchor[:, 1:]
            aux_noisy = prev + add_noise(states[:, 1:] - prev, aux_noise, aux_sigma[:, :, None, None])
            aux_in = torch.cat([states[:, :1], aux_noisy], dim=1)
            aux_sigma_in = torch.cat([torch.zeros_like(aux_sigma[:, :1]), aux_sigma], dim=1)
    pred = model(x_in, sigma_in, anchor, text, text_mask, frame_offset=core.context_frame, inputs=inputs,
                 aux=aux_in, aux_anchor=aux_anchor, aux_sigma=aux_sigma_in)
    weight = change_weights(latents, cfg.change_weight) * video_keep[:, None, :, None, None]
    s = sigma[:, None, :, None, None]
    x0_space = cfg.loss_space == "x0"
    state_x0_space = getattr(cfg, "state_loss_space", cfg.loss_space) == "x0"
    if (x0_space or (core.aux_dim and state_x0_space)) and core.prediction != "x0":
        raise ValueError("an x0-space loss (loss_space, state_loss_space) needs prediction 'x0'")
    if core.prediction == "x0":
        err = (pred.x0[:, :, 1:] - x0) / (1.0 if x0_space else s.clamp_min(cfg.min_sigma))
    else:
        err = pred.velocity[:, :, 1:] - (noise - x0)
    video_loss = (weight * err.pow(2)).sum() / (weight.sum() * err.shape[1]).clamp_min(1e-12)
    loss, stats = video_loss, {}
    if core.aux_dim:
        # State loss over present players only, in the same velocity space as the video.
        target = states[:, 1:]
        s_aux = aux_sigma[:, :, None, None]
        if core.prediction == "x0":
            aux_err = (pred.aux_x0[:, 1:] - target) / (1.0 if state_x0_space else s_aux.clamp_min(cfg.min_sigma))
        else:
            aux_err = pred.aux_velocity[:, 1:] - (aux_noise - (target - aux_anchor[:, 1:]))  # the move's flow
        # Over present players of frames whose state is noisy (a state given clean has nothing to learn).
        keep = inputs["present"][:, None, :, None].float() * (s_aux > 0).float()
        state_loss = (keep * aux_err.pow(2)).sum() / (keep.sum() * aux_err.shape[-1]).clamp_min(1.0)
        loss = video_loss + state_loss_weight * state_loss
        stats["state_loss"] = float(state_loss.detach())
    with torch.no_grad():
        mse_x0 = (pred.x0[:, :, 1:] - x0).pow(2).mean()
    stats = {"loss": float(loss.detach()), "video_loss": float(video_loss.detach()), **stats, "mse_x0": float(mse_x0)}
    return LossOutput(loss, stats, pred)


@torch.no_grad()
def draw_own_frame(model, context: torch.Tensor, text: torch.Tensor, text_mask: torch.Tensor | None,
                   inputs: dict[str, Any] | None, noise: torch.Tensor, aux_noise: torch.Tensor | None,
                   steps: int, shift: float) -> torch.Tensor:
    """The model's own drawing of the frame after the clean ``context`` (B, C, 1, h, w), as a
    rollout draws it: ``steps`` Euler steps from ``noise`` (B, C, 1, h, w). ``inputs`` are those
    of the two-frame clips (context, drawn frame). A state-first model draws it from the true
    state of the drawn frame (given clean); a model that denoises its states with the video
    denoises them from ``aux_noise`` (B, 1, S, D) alongside. Returns (B, C, 1, h, w)."""
    core = getattr(model, "module", model)
    b = context.shape[0]
    anchor = context.expand(-1, -1, 2, -1, -1)  # the context is its own anchor, and frame 1's
    inputs = dict(inputs or {})
    states = inputs.pop("state", None)
    aux = aux_anchor = None
    if states is not None:
        aux_anchor = states[:, :1].expand(-1, 2, -1, -1)
        if core.aux_dim:
            aux = states[:, 1:] if core.state_first else states[:, :1] + aux_noise
    sigmas = sampling_sigmas(steps, shift, device=context.device)
    zero = torch.zeros((b, 1), device=context.device)
    x = noise
    for i in range(steps):
        sigma = torch.cat([zero, torch.full_like(zero, float(sigmas[i]))], dim=1)
        aux_sigma = torch.zeros_like(sigma) if core.state_first else sigma
        pred = core(torch.cat([context, x], dim=2), sigma, anchor, text, text_mask, frame_offset=core.context_frame,
                    inputs=inputs, aux=None if aux is None else torch.cat([states[:, :1], aux], dim=1),
                    aux_anchor=aux_anchor, aux_sigma=aux_sigma)
        x = euler_step(x, pred.x0[:, :, 1:], sigmas[i], sigmas[i + 1])
        if aux is not None and not core.state_first:
            aux = euler_step(aux, pred.aux_x0[:, 1:], sigmas[i], sigmas[i + 1])
    return x


def draw_context_noise(generator: torch.Generator, batch: int, context_shape, level: float):
    """Context noise levels (B,) uniform in [0, level] and the noise (B, *context_shape)."""
    sigma = torch.rand((batch,), generator=generator) * level
    return sigma, torch.randn((batch, *context_shape), generator=generator)


def draw_state_sigmas(generator: torch.Generator, batch: int, chunks: int, shift: float,
                      clean_fraction: float) -> torch.Tensor:
    """State-first models: the states' noise levels (B, chunks): zero (clean: the clip is a
    video example) for a ``clean_fraction`` of the clips, else drawn like the video's (a state
    example, see :func:`flow_matching_loss`)."""
    sigma = sample_sigmas((batch, chunks), shift, generator)
    clean = torch.rand((batch, 1), generator=generator) < clean_fraction
    return torch.where(clean, torch.zeros_like(sigma), sigma)


def draw_noise(generator: torch.Generator, batch: int, chunks: int, latent_shape, shift: float,
               aux_shape: tuple[int, ...] | None = None):
    """Global-batch noise levels (B, chunks), noise (B, C, K, h, w) and, with ``aux_shape``
    (K, S, D), state noise (B, K, S, D), all from one generator."""
    sigma = sample_sigmas((batch, chunks), shift, generator)
    noise = torch.randn((batch, *latent_shape), generator=generator)
    aux = torch.randn((batch, *aux_shape), generator=generator) if aux_shape else None
    return sigma, noise, aux
