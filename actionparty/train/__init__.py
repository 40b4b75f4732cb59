"""Training: rectified-flow objective, checkpoints with exact resume, EMA, DDP through torchrun."""
