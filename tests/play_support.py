"""Shared by the play tests: the smoke profile and small random-weight checkpoints they write."""

from __future__ import annotations

import torch
import yaml

from actionparty.config import validate_profile
from actionparty.model.checkpoint import save_checkpoint
from actionparty.model.factory import build_world_model
from actionparty.variants import load_variant
from conftest import REPO


def play_profile(tmp_path, games=("coins",)):
    """The smoke profile on ``games``, as a file and validated."""
    data = yaml.safe_load((REPO / "params/smoke.yaml").read_text())
    data["catalogue"] = str(REPO / "params/games.yaml")
    data["games"] = list(games)
    path = tmp_path / "profile.yaml"
    path.write_text(yaml.safe_dump(data))
    return validate_profile(data, str(path)), path


def random_checkpoint(profile, variant_name: str, path, seed: int = 0, scale: float = 0.05):
    """A finetune checkpoint of ``variant_name`` whose weights are the fresh ones plus seeded noise
    (fresh output layers are zero: such a model only copies its context, and nothing would move)."""
    variant = load_variant(variant_name, REPO / "params/variants")
    torch.manual_seed(seed)
    model, _, _ = build_world_model(profile, variant=variant)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * scale)
    weights = model.state_dict()
    save_checkpoint(path, model=weights, ema={"shadow": weights}, step=0, profile=profile.model_dump(),
                    stage="finetune", train_clip_steps=1, variant=variant_name, variant_config=variant.model_dump())
    return path
