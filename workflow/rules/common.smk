# Shared helpers: the validated profile, the selected games and per-game parameters.
import os
import yaml

from actionparty.config import SPLITS, validate_profile
from actionparty.variants import models_from, split_run, untrained_models
from actionparty.games import resolve_games

PROFILE = validate_profile(config, source="snakemake config")
PROFILE_FILE = f"params/{PROFILE.profile}.yaml"
# Commands read PROFILE_FILE; refuse a config that differs from it (e.g. --config overrides),
# so that the file stays the one source of truth.
with open(PROFILE_FILE) as _f:
    if validate_profile(yaml.safe_load(_f), PROFILE_FILE) != PROFILE:
        raise ValueError(f"the Snakemake config differs from {PROFILE_FILE}: edit the file instead of overriding")

GAMES = [spec.name for spec in resolve_games(PROFILE)]
with open(PROFILE.catalogue) as _f:
    _CATALOGUE_ENTRIES = yaml.safe_load(_f)["games"]


def game_entry(wildcards):
    """The game's catalogue entry: a params value, so editing one game reruns only its jobs."""
    return _CATALOGUE_ENTRIES[wildcards.game]


wildcard_constraints:
    split="|".join(SPLITS),
    game="|".join(GAMES),
