"""Evaluation parameters: the ``eval:`` section of a profile (params/<profile>.yaml).

It is the ``eval`` field of :class:`actionparty.config.Profile`: an unknown, missing or ill-typed
key is refused in one line naming the file and the dotted key. The horizons, test windows and
their seed are the rollout stage's (``profile.rollout``), so rollouts and the oracle see the
same windows by construction.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field


PositiveInt = Annotated[int, Field(ge=1)]
Probability = Annotated[float, Field(gt=0.0, lt=1.0)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TileClassifierConfig(_Strict):
    """Per-cell player detector (see actionparty.eval.detectors.TileClassifier)."""

    patch_width: PositiveInt  # channels of the 8x8 stride-8 convolution (one vector per cell)
    width: PositiveInt  # channels per cell after the per-cell layer; also the size of the FD features
    context_cells: Annotated[int, Field(ge=0, le=4)]  # margin of context: 3x3 cell convs, one cell each
    game_embedding: bool  # one shared model told the game (True) or a game-agnostic one
    occupied_weight: Annotated[float, Field(gt=0.0)]  # loss weight of occupied cells (background = 1)


class InverseDynamicsConfig(_Strict):
    """Crops around a player at t-1 and t -> canonical action (detectors.InverseDynamics)."""

    margin_cells: PositiveInt  # crop = (2m+1) x (2m+1) cells centred on the player's t-1 cell
    patch_width: PositiveInt  # channels of the 8x8 stride-8 convolution over both frames
    width: PositiveInt


class EvalConfig(BaseModel):
    """Everything the evaluation stages read: detector sizes and training, metric settings."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    seed: Annotated[int, Field(ge=0)]
    tile: TileClassifierConfig
    idm: InverseDynamicsConfig
    # Detector training (both models on the same batches of 1-step train clips).
    train_steps: PositiveInt
    batch_clips: PositiveInt  # clips (2 frames each) per step
    lr: Annotated[float, Field(gt=0.0)]
    checkpoint_every: PositiveInt  # steps between resumable training checkpoints
    val_clips_per_game: PositiveInt  # held-out (val split) transitions per game for the accuracy report
    num_workers: Annotated[int, Field(ge=0)]  # DataLoader workers while training
    # Metrics.
    tau: Probability  # a slot is detected in a cell when its probability there is >= tau
    eval_batch_frames: PositiveInt  # frames per detector forward pass at evaluation
    psnr_max_db: Annotated[float, Field(gt=0.0)]  # PSNR of identical frames (otherwise infinite)
    i3d_checkpoint: str | None  # TorchScript I3D feature extractor; None = no I3D-FVD
