"""What a conditioned call of the world model is given: :class:`SubjectInputs` and :class:`CallLayout`."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from actionparty.games.actions import CANONICAL_ACTIONS
from actionparty.model.dit import KVCache

NO_ACTION = len(CANONICAL_ACTIONS)  # the action of a context frame (nothing led into it)


@dataclass
class SubjectInputs:
    """Every player's conditioning for the T frames of a call (B clips, S player slots).

    actions:     (B, T, S) long, the action that leads *into* each frame (NO_ACTION for a context frame)
    present:     (B, S) bool, the slot holds a player
    prev_state:  (B, T, S, 6) the clean state each frame starts from (the last finished one before
                 its chunk): the reference position of spatial RoPE and the previous facing;
                 ground truth in training, the model's own in a rollout
    state:       (B, T, S, 6) the states being denoised, at noise ``state_sigma`` (state models)
    state_sigma: (B, T) their noise levels; none: the video's
    """

    actions: torch.Tensor
    present: torch.Tensor
    prev_state: torch.Tensor | None = None
    state: torch.Tensor | None = None
    state_sigma: torch.Tensor | None = None

    def frames(self, index: slice) -> "SubjectInputs":
        """The inputs of frames ``index`` of the call (along T)."""
        pick = lambda t: None if t is None else t[:, index]  # noqa: E731
        return replace(self, actions=self.actions[:, index], prev_state=pick(self.prev_state),
                       state=pick(self.state), state_sigma=pick(self.state_sigma))


@dataclass
class CallLayout:
    """Where a call sits, for the conditioning modules: its latent shape, first latent frame,
    the cache or window it attends through, and the latents its frames start from."""

    latent_shape: tuple[int, int, int]  # (T, h, w) of the call's latents
    frame_offset: int
    kv_cache: KVCache | None
    window_frames: int | None  # without a cache: earlier frames a frame may attend to
    video_anchor: torch.Tensor | None  # (B, C, T, h, w) the clean latent each frame starts from
    sigma: torch.Tensor  # (B, T) the video's noise levels

    @property
    def window(self) -> tuple[int | None, int]:
        """(window_frames, sink_frames) of the attention mask."""
        if self.kv_cache is not None:
            return self.kv_cache.window_frames, self.kv_cache.sink_frames
        return self.window_frames, 0

    def frames(self, device) -> torch.Tensor:
        """(T,) latent frame indices of the call."""
        return torch.arange(self.frame_offset, self.frame_offset + self.latent_shape[0], device=device)
