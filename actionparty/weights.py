"""The local weight files a profile's model reads, and the check that they are there.

Nothing can be downloaded on the machines this pipeline runs on, so a missing file is refused up
front, in one line naming the profile key and the path (docs/TRAINING.md says what goes where).
Imports no torch: ``actionparty validate`` calls it, and so do the model factory and preflight.
"""

from __future__ import annotations

from pathlib import Path

from actionparty.errors import ProfileError


def weight_paths(profile) -> list[tuple[str, str | None, bool]]:
    """(profile key, path, required) of every local weight path the profile's model reads."""
    cfg = profile.model
    out = [("model.init_checkpoint", cfg.init_checkpoint, False)]
    if cfg.codec == "wan-vae":
        out.append(("model.vae_path", cfg.vae_path, True))
    if cfg.text_encoder == "umt5":
        out.append(("model.text_path", cfg.text_path, True))
    return out


def check_weight_paths(profile) -> None:
    """Raise :class:`ProfileError` naming the key and the path of the first missing weight path."""
    for key, path, required in weight_paths(profile):
        if path is None and required:
            raise ProfileError(f"profile '{profile.profile}': {key} must be set for model.codec="
                               f"{profile.model.codec}, model.text_encoder={profile.model.text_encoder}")
        if path is not None and not Path(path).exists():
            raise ProfileError(f"profile '{profile.profile}': {key} = {path} not found "
                               "(weights cannot be downloaded; see docs/TRAINING.md)")
