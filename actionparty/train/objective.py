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

from actionparty.model.conditioning import SubjectInputs
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


@dataclass
class ClipNoise:
    """Everything random about one batch's loss (drawn for the global batch, see train.trainer).

    sigma:         (B, K / chunk_frames) noise level of each chunk's video
    noise:         (B, C, K, h, w) standard normal noise of the video
    state_noise:   (B, K, S, 6) noise of the states (state models)
    state_sigma:   (B, K / chunk_frames) the states' own noise levels (state-first models, see
                   :func:`draw_state_sigmas`); none: the video's
    context_sigma, context_noise: (B,) and (B, C, 1, h, w): the context frame is noised at these
                   levels (as input and residual anchor; the targets stay clean); none: clean
    """

    sigma: torch.Tensor
    noise: torch.Tensor
    state_noise: torch.Tensor | None = None
    state_sigma: torch.Tensor | None = None
    context_sigma: torch.Tensor | None = None
    context_noise: torch.Tensor | None = None


def _noise_levels(noise: ClipNoise, chunk: int):
    """Per-frame levels (B, K) of the video and the states, and which frames' video is learnt.

    State-first: a frame whose state is noisy is a state-denoising example, as in the first
    sampling pass (video still pure noise, no video loss); one whose state is clean is a video
    example, as in the second (no state loss)."""
    sigma = noise.sigma.repeat_interleave(chunk, dim=1)
    if noise.state_sigma is None:
        return sigma, sigma, torch.ones_like(sigma)
    state_sigma = noise.state_sigma.repeat_interleave(chunk, dim=1)
    state_example = state_sigma > 0
    return torch.where(state_example, torch.ones_like(sigma), sigma), state_sigma, (~state_example).float()


def _noisy_clip(latents: torch.Tensor, noise: ClipNoise, sigma: torch.Tensor, chunk: int):
    """(x_in (B, C, 1+K, h, w), sigma_in (B, 1+K), anchor (B, C, 1+K, h, w)): the clean (or
    context-noised) context frame followed by the noisy frames, and each frame's residual anchor."""
    x_noisy = add_noise(latents[:, :, 1:], noise.noise, sigma[:, None, :, None, None])
    seen = latents  # the frames the model is given as context and anchors
    if noise.context_sigma is not None:
        context = add_noise(latents[:, :, :1], noise.context_noise, noise.context_sigma[:, None, None, None, None])
        seen = torch.cat([context, latents[:, :, 1:]], dim=2)
    x_in = torch.cat([seen[:, :, :1], x_noisy], dim=2)
    sigma_in = torch.cat([torch.zeros_like(sigma[:, :1]), sigma], dim=1)
    return x_in, sigma_in, torch.cat([seen[:, :, :1], chunk_anchors(seen, chunk)], dim=2)


def _noisy_subjects(clip: SubjectInputs, noise: ClipNoise, state_sigma: torch.Tensor, chunk: int,
                    has_state: bool) -> SubjectInputs:
    """The call's subject inputs: each frame's previous state from the clean ``clip.state``
    and, for state models, the states noised as a move from it (anchor + noised displacement:
    the flow runs in the residual space, starting from the anchor plus unit noise)."""
    states = clip.state
    prev_state = torch.cat([states[:, :1], chunk_anchors(states, chunk, dim=1)], dim=1)
    if not has_state:
        return SubjectInputs(clip.actions, clip.present, prev_state)
    prev = prev_state[:, 1:]
    noisy = prev + add_noise(states[:, 1:] - prev, noise.state_noise, state_sigma[:, :, None, None])
    return SubjectInputs(clip.actions, clip.present, prev_state, torch.cat([states[:, :1], noisy], dim=1),
                         torch.cat([torch.zeros_like(state_sigma[:, :1]), state_sigma], dim=1))


def _state_loss(pred, clip: SubjectInputs, call: SubjectInputs, noise: ClipNoise, state_sigma: torch.Tensor,
                cfg, prediction: str) -> torch.Tensor:
    """The state loss over present players of frames whose state is noisy (a state given clean
    has nothing to learn), in the same space as the video's."""
    target = clip.state[:, 1:]
    s = state_sigma[:, :, None, None]
    if prediction == "x0":
        err = (pred.state_x0[:, 1:] - target) / (1.0 if cfg.state_loss_space == "x0" else s.clamp_min(cfg.min_sigma))
    else:
        err = pred.state_velocity[:, 1:] - (noise.state_noise - (target - call.prev_state[:, 1:]))  # the move's flow
    keep = clip.present[:, None, :, None].float() * (s > 0).float()
    return (keep * err.pow(2)).sum() / (keep.sum() * err.shape[-1]).clamp_min(1.0)


def flow_matching_loss(model, latents: torch.Tensor, text: torch.Tensor, text_mask: torch.Tensor | None,
                       cfg, noise: ClipNoise, clip: SubjectInputs | None = None) -> LossOutput:
    """Loss of one batch.

    Args:
        model: a :class:`~actionparty.model.world.WorldModel` (or its DDP wrapper).
        latents: (B, C, 1+K, h, w) clean latents, frame 0 is the context.
        cfg: the stage's TrainConfig (a FinetuneConfig for state models: ``state_loss_weight``,
            ``state_loss_space``).
        noise: the batch's noise levels and noise (:class:`ClipNoise`).
        clip: the clip's subject inputs (models that take actions): actions of its 1+K frames,
            occupied slots and the clean states (``WorldModel.clip_inputs``).
    """
    core = getattr(model, "module", model)  # unwrap DistributedDataParallel for attributes
    chunk = core.chunk_frames
    if (latents.shape[2] - 1) % chunk:
        raise ValueError(f"clip of {latents.shape[2] - 1} steps is not a whole number of {chunk}-frame chunks")
    x0_space = cfg.loss_space == "x0"
    if (x0_space or (core.has_state and cfg.state_loss_space == "x0")) and core.prediction != "x0":
        raise ValueError("an x0-space loss (loss_space, state_loss_space) needs prediction 'x0'")
    sigma, state_sigma, video_keep = _noise_levels(noise, chunk)
    x_in, sigma_in, anchor = _noisy_clip(latents, noise, sigma, chunk)
    call = None if clip is None else _noisy_subjects(clip, noise, state_sigma, chunk, core.has_state)
    pred = model(x_in, sigma_in, anchor, text, text_mask, frame_offset=core.context_frame, subjects=call)
    x0 = latents[:, :, 1:]
    weight = change_weights(latents, cfg.change_weight) * video_keep[:, None, :, None, None]
    if core.prediction == "x0":
        err = (pred.x0[:, :, 1:] - x0) / (1.0 if x0_space else sigma[:, None, :, None, None].clamp_min(cfg.min_sigma))
    else:
        err = pred.velocity[:, :, 1:] - (noise.noise - x0)
    video_loss = (weight * err.pow(2)).sum() / (weight.sum() * err.shape[1]).clamp_min(1e-12)
    loss, stats = video_loss, {}
    if core.has_state:
        state_loss = _state_loss(pred, clip, call, noise, state_sigma, cfg, core.prediction)
        loss = video_loss + cfg.state_loss_weight * state_loss
        stats["state_loss"] = float(state_loss.detach())
    with torch.no_grad():
        mse_x0 = (pred.x0[:, :, 1:] - x0).pow(2).mean()
    stats = {"loss": float(loss.detach()), "video_loss": float(video_loss.detach()), **stats, "mse_x0": float(mse_x0)}
    return LossOutput(loss, stats, pred)


@torch.no_grad()
def draw_own_frame(model, context: torch.Tensor, text: torch.Tensor, text_mask: torch.Tensor | None,
                   clip: SubjectInputs | None, noise: torch.Tensor, state_noise: torch.Tensor | None,
                   steps: int, shift: float) -> torch.Tensor:
    """The model's own drawing of the frame after the clean ``context`` (B, C, 1, h, w), as a
    rollout draws it: ``steps`` Euler steps from ``noise`` (B, C, 1, h, w). ``clip`` holds the
    subject inputs of the two-frame clips (context, drawn frame). A state-first model draws it
    from the true state of the drawn frame (given clean); a model that denoises its states with
    the video denoises them from ``state_noise`` (B, 1, S, 6) alongside. Returns (B, C, 1, h, w)."""
    core = getattr(model, "module", model)
    b = context.shape[0]
    anchor = context.expand(-1, -1, 2, -1, -1)  # the context is its own anchor, and frame 1's
    state = None
    if clip is not None and core.has_state:
        state = clip.state[:, 1:] if core.state_first else clip.state[:, :1] + state_noise
    sigmas = sampling_sigmas(steps, shift, device=context.device)
    zero = torch.zeros((b, 1), device=context.device)
    x = noise
    for i in range(steps):
        sigma = torch.cat([zero, torch.full_like(zero, float(sigmas[i]))], dim=1)
        call = None
        if clip is not None:
            call = SubjectInputs(clip.actions, clip.present, clip.state[:, :1].expand(-1, 2, -1, -1),
                                 None if state is None else torch.cat([clip.state[:, :1], state], dim=1),
                                 torch.zeros_like(sigma) if core.state_first else None)
        pred = core(torch.cat([context, x], dim=2), sigma, anchor, text, text_mask, frame_offset=core.context_frame,
                    subjects=call)
        x = euler_step(x, pred.x0[:, :, 1:], sigmas[i], sigmas[i + 1])
        if state is not None and not core.state_first:
            state = euler_step(state, pred.state_x0[:, 1:], sigmas[i], sigmas[i + 1])
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
               state_shape: tuple[int, ...] | None = None):
    """Global-batch noise levels (B, chunks), noise (B, C, K, h, w) and, with ``state_shape``
    (K, S, D), state noise (B, K, S, D), all from one generator."""
    sigma = sample_sigmas((batch, chunks), shift, generator)
    noise = torch.randn((batch, *latent_shape), generator=generator)
    state = torch.randn((batch, *state_shape), generator=generator) if state_shape else None
    return sigma, noise, state
