"""Chunk-by-chunk sampling of a :class:`~actionparty.model.world.WorldModel`.

For each chunk of ``chunk_frames`` latent frames: start from noise, take ``sampling_steps``
Euler steps of the flow ODE (sigma from 1 to 0 with Wan's shift), each a forward pass that
*reads* the KV cache of the clean earlier frames; once the chunk is finished, one more pass at
sigma = 0 over it *appends* its keys/values to the cache (as Self-Forcing does), just before the
next chunk is drawn (so the last chunk of a rollout, which nothing reads, is never appended).
That pass conditions the finished frames exactly as training conditions its clean context
frame: no action led into them (NO_ACTION), each is its own residual anchor and reference
state, and the prompt is that of the chunk about to be drawn (the text-action baseline's clip
prompt names the actions that follow its context).
The cache keeps at most ``window_frames`` earlier frames, so rollouts longer than the training
clips slide a window.

Models with subject states (``model.has_state``) denoise each player's state with the video;
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

:class:`Sampler` does it a chunk at a time (a person playing feeds each step's actions as they
come); :func:`rollout` feeds a whole action sequence through it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from actionparty.model.conditioning import NO_ACTION, SubjectInputs
from actionparty.model.flow import add_noise, euler_step, sampling_sigmas

TextFn = Callable[[int, int], tuple[torch.Tensor, torch.Tensor]]


@dataclass
class LatentRollout:
    """What :func:`run` returns (the rollout file, ``rollout_io.Rollout``, holds decoded frames)."""

    latents: torch.Tensor  # (B, C, 1 + steps, h, w), frame 0 = the context
    states: torch.Tensor | None  # (B, 1 + steps, S, 6) predicted subject states (state models), frame 0 = context


@dataclass
class _Chunk:
    """A chunk: the one being drawn, or a finished one as the next chunks read it (a context)."""

    latents: torch.Tensor  # (B, C, chunk, h, w); once finished, context-noised
    state: torch.Tensor | None  # (B, chunk, S, 6) its states (state models)
    actions: torch.Tensor | None  # (B, chunk, S) the actions that led into its frames
    subjects: SubjectInputs | None  # once finished: its inputs as a context (Sampler._context_subjects)
    anchor: torch.Tensor  # (B, C, chunk, h, w) residual anchor: the last finished frame; once finished, itself
    text: tuple  # the prompt it is drawn with: (TextContext, None) (Sampler._prepare)
    offset: int  # latent frame of its first frame


class Sampler:
    """Autoregressive sampling of one batch of rollouts, a chunk at a time.

    ``start(context, context_state)`` reads the clean context frame; each ``step(actions)``
    draws the next chunk and returns it as drawn with the players' finished states.

    Args:
        text, text_mask: (B, L, D) / (B, L) text of each rollout's game.
        text_fn: (first step, steps in chunk) -> (text, mask) for prompts that change per chunk
            (the text-action baseline); default: ``text``/``text_mask`` throughout.
        present: (B, S) bool occupied slots (models that take actions).
        state_sampling_steps: Euler steps of a state-first model's state pass (default
            ``sampling_steps``); one step takes the denoiser's estimate at noise 1, snapped.
        context_noise: noise level of each generated frame as the next chunk's context (drawn
            from ``generator``); 0 feeds the frames back as drawn.
    """

    def __init__(self, model, text: torch.Tensor | None, text_mask: torch.Tensor | None, *, sampling_steps: int,
                 shift: float, window_frames: int | None, generator: torch.Generator | None = None,
                 state_sampling_steps: int | None = None, context_noise: float = 0.0,
                 present: torch.Tensor | None = None, text_fn: TextFn | None = None, use_cache: bool = True):
        self.model, self.text, self.text_fn = model, (text, text_mask), text_fn
        self.present, self.window_frames, self.generator = present, window_frames, generator
        self.sampling_steps, self.context_noise, self.use_cache = sampling_steps, context_noise, use_cache
        self.sigmas = sampling_sigmas(sampling_steps, shift)
        self.state_sigmas = sampling_sigmas(state_sampling_steps or sampling_steps, shift)
        self.chunk = model.chunk_frames

    # ---------------------------------------------------------------------------------- public

    @torch.no_grad()
    def start(self, context: torch.Tensor, context_state: torch.Tensor | None = None) -> None:
        """Begin from ``context`` (B, C, 1, h, w), the clean latent of the context frame, and
        ``context_state`` (B, 1, S, 6), its players' clean states (models that take actions)."""
        self.device, self.latent_shape = context.device, context.shape
        # The prompt's embedding and every block's text keys/values, once for the whole rollout
        # (once per chunk for per-chunk prompts, see _text); each pass would compute the same.
        self._prompt = None if self.text_fn else self._prepare(self.text)
        self._chunk_prompt = None  # (first step, TextContext) of the last per-chunk prompt
        self.context_state = context_state
        self.has_state = self.model.has_state and context_state is not None
        self.takes_actions = self.model.takes_actions and context_state is not None
        self.cache = self.model.dit.new_kv_cache(window_frames=self.window_frames) if self.use_cache else None
        self.steps_done = 0
        self._no_action = None  # (B, 1, S) NO_ACTION: what led into a frame read as a context
        if self.takes_actions:
            self._no_action = torch.full((context.shape[0], 1, context_state.shape[2]), NO_ACTION, dtype=torch.long,
                                         device=self.device)
        context_chunk = _Chunk(context, context_state, self._no_action, self._context_subjects(context_state),
                               context, self._prompt or self.text, self.model.context_frame)
        self.history = [context_chunk]  # every chunk (uncached), or the last one (cached)
        self._pending = context_chunk if self.use_cache else None  # read by the next chunk: append to the cache

    @torch.no_grad()
    def step(self, actions: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Draw the next chunk: ``actions`` (B, chunk, S) of every player (models that take
        actions) -> (latents as drawn (B, C, chunk, h, w), finished states (B, chunk, S, 6) or None)."""
        self._commit_pending()
        b, c, _, h, w = self.latent_shape
        last = self.history[-1]
        offset = self.model.context_frame + 1 + self.steps_done
        anchor = last.latents.expand(-1, -1, self.chunk, -1, -1)
        # Reference state: the last finished one (the context's, for models that do not denoise states).
        ref = last.state if self.has_state else self.context_state
        prev_state = None if ref is None else ref.expand(-1, self.chunk, -1, -1)
        actions = actions if self.takes_actions else None
        text = self._text()
        x = torch.randn((b, c, self.chunk, h, w), generator=self.generator).to(self.device)
        # States start from the reference state plus unit noise (the flow of the state's move).
        state = None
        if self.has_state:
            state = prev_state + torch.randn((b, self.chunk, *ref.shape[2:]), generator=self.generator).to(self.device)
        current = _Chunk(x, state, actions, None, anchor, text, offset)
        if self.has_state and self.model.state_first:
            x, state = self._state_first(current, prev_state)
        else:
            x, state = self._joint(current, prev_state)
        drawn = x
        if self.context_noise > 0:
            noise = torch.randn(x.shape, generator=self.generator).to(self.device)
            x = add_noise(x, noise, torch.tensor(self.context_noise, device=self.device))
        # Read from now on as a context, like training's: its own anchor, no action, its own state.
        done = _Chunk(x, state, actions, self._context_subjects(state if self.has_state else prev_state), x, text,
                      offset)
        self.history = self.history + [done] if not self.use_cache else [done]
        self._pending = done if self.use_cache else None
        self.steps_done += self.chunk
        return drawn, state

    # ---------------------------------------------------------------------------------- chunks

    def _state_first(self, chunk: _Chunk, prev_state: torch.Tensor):
        """The states first, the video still pure noise; then the video, drawn from the finished states."""
        x, state, sig = chunk.latents, chunk.state, self.state_sigmas
        for i in range(len(sig) - 1):
            pred = self._denoise(chunk, x, self._sigma(1.0), prev_state, state, self._sigma(sig[i]))
            state = euler_step(state, pred.state_x0, sig[i], sig[i + 1])
        state = self.model.grid.snap(state)  # states are discrete: a whole cell and one facing
        for i in range(self.sampling_steps):
            pred = self._denoise(chunk, x, self._sigma(self.sigmas[i]), prev_state, state, self._sigma(0.0))
            x = euler_step(x, pred.x0, self.sigmas[i], self.sigmas[i + 1])
        return x, state

    def _joint(self, chunk: _Chunk, prev_state: torch.Tensor | None):
        """Video and states (if any) at one noise level."""
        x, state, sig = chunk.latents, chunk.state, self.sigmas
        for i in range(self.sampling_steps):
            level = self._sigma(sig[i])
            pred = self._denoise(chunk, x, level, prev_state, state, level)
            x = euler_step(x, pred.x0, sig[i], sig[i + 1])
            if state is not None:
                state = euler_step(state, pred.state_x0, sig[i], sig[i + 1])
        return x, state

    def _prepare(self, text: tuple[torch.Tensor, torch.Tensor | None]) -> tuple:
        """(text, mask) -> (TextContext, None): the arguments of every pass that reads this prompt."""
        return self.model.dit.prepare_text(*text), None

    def _text(self) -> tuple:
        """The prompt of the chunk drawn next (its first step ``steps_done``), prepared once: the
        cache pass before it and its own passes read the same one."""
        if not self.text_fn:
            return self._prompt
        if self._chunk_prompt is None or self._chunk_prompt[0] != self.steps_done:
            self._chunk_prompt = (self.steps_done, self._prepare(self.text_fn(self.steps_done, self.chunk)))
        return self._chunk_prompt[1]

    def _sigma(self, value) -> torch.Tensor:
        return torch.full((self.latent_shape[0], self.chunk), float(value), device=self.device)

    def _context_subjects(self, ref: torch.Tensor | None) -> SubjectInputs | None:
        """The inputs of finished frames read as a context, as training gives its context frame:
        no action led into them, ``ref`` (B, T, S, 6) is their reference state and, for state
        models, their own clean state (the context's, for models without states)."""
        if not self.takes_actions:
            return None
        return self._subjects(self._no_action.expand(-1, ref.shape[1], -1), ref, ref if self.has_state else None)

    def _subjects(self, actions, prev_state, state, state_sigma=None) -> SubjectInputs | None:
        if not self.takes_actions:
            return None
        return SubjectInputs(actions, self.present, prev_state, state, state_sigma)

    def _denoise(self, chunk: _Chunk, x, sigma, prev_state, state, state_sigma):
        """One denoising pass over the chunk being drawn."""
        subjects = self._subjects(chunk.actions, prev_state, state, state_sigma)
        if self.use_cache:
            return self.model(x, sigma, chunk.anchor, *chunk.text, frame_offset=chunk.offset, subjects=subjects,
                              kv_cache=self.cache)
        return self._uncached(chunk, x, sigma, subjects)

    def _commit_pending(self) -> None:
        """Append the last finished chunk's keys/values to the cache (it is about to be read)."""
        done, self._pending = self._pending, None
        if done is None:
            return
        text = self._text()  # the next chunk's prompt
        self.model(done.latents, torch.zeros(done.latents.shape[0], done.latents.shape[2], device=self.device),
                   done.anchor, *text, frame_offset=done.offset, subjects=done.subjects, kv_cache=self.cache,
                   update_cache=True)

    def _uncached(self, chunk: _Chunk, x, sigma, subjects: SubjectInputs | None):
        """One denoising pass without a cache: every clean frame so far + the noisy chunk."""
        clean = torch.cat([h.latents for h in self.history], dim=2)
        n_clean, n = clean.shape[2], x.shape[2]
        zeros = torch.zeros_like(sigma[:, :1]).expand(-1, n_clean)
        # Every clean frame is conditioned as a context (see the cache-update pass): its own anchor.
        anchors = torch.cat([clean, chunk.anchor], dim=2)
        seq_subjects = None
        if subjects is not None:
            done = [h.subjects for h in self.history]
            actions = torch.cat([*(d.actions for d in done), subjects.actions], dim=1)
            state = prev = None
            if self.has_state:
                states = torch.cat([h.state for h in self.history], dim=1)
                state = torch.cat([states, subjects.state], dim=1)
                prev = torch.cat([states, subjects.prev_state], dim=1)
            else:
                prev = self.context_state.expand(-1, n_clean + n, -1, -1)
            level = sigma if subjects.state_sigma is None else subjects.state_sigma
            seq_subjects = SubjectInputs(actions, self.present, prev, state, torch.cat([zeros, level], dim=1))
        pred = self.model(torch.cat([clean, x], dim=2), torch.cat([zeros, sigma], dim=1), anchors, *chunk.text,
                          frame_offset=chunk.offset - n_clean, subjects=seq_subjects, window_frames=self.window_frames)
        pred.x0, pred.velocity = pred.x0[:, :, -n:], pred.velocity[:, :, -n:]
        if pred.state_x0 is not None:
            pred.state_x0, pred.state_velocity = pred.state_x0[:, -n:], pred.state_velocity[:, -n:]
        return pred


@torch.no_grad()
def run(sampler: Sampler, context: torch.Tensor, steps: int, actions: torch.Tensor | None = None,
        context_state: torch.Tensor | None = None) -> LatentRollout:
    """Feed ``steps`` steps of ``actions`` (B, steps, S) through ``sampler`` from ``context``
    (B, C, 1, h, w) and ``context_state`` (B, 1, S, 6) (models that take actions)."""
    chunk = sampler.model.chunk_frames
    if steps % chunk:
        raise ValueError(f"{steps} steps is not a whole number of {chunk}-frame chunks")
    sampler.start(context, context_state)
    drawn, states = [context], [context_state]
    for s in range(0, steps, chunk):
        x, state = sampler.step(None if actions is None else actions[:, s : s + chunk])
        drawn.append(x)
        states.append(state)
    return LatentRollout(torch.cat(drawn, dim=2), torch.cat(states, dim=1) if sampler.has_state else None)


def rollout(model, context: torch.Tensor, steps: int, text: torch.Tensor, text_mask: torch.Tensor | None, *,
            actions: torch.Tensor | None = None, context_state: torch.Tensor | None = None,
            **sampler) -> LatentRollout:
    """Generate ``steps`` latent frames after ``context`` with a new :class:`Sampler` (its keyword
    arguments in ``sampler``); see :func:`run`."""
    return run(Sampler(model, text, text_mask, **sampler), context, steps, actions, context_state)
