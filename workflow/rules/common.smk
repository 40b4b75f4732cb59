# Shared helpers: the validated profile, the selected games and per-game parameters.
import os
import yaml

from actionparty.config import EXTRA_PROTOCOLS, SPLITS, validate_profile
from actionparty.data.latent_cache import shard_name
from actionparty.variants import models_from, split_run, untrained_models
from actionparty.games import resolve_games

# `config` is the merged profile of PROFILE_FILE (the Snakefile), which the commands read
# themselves: --config overrides are refused there, so that the file stays the one source of truth.
PROFILE = validate_profile(config, source=PROFILE_FILE)

GAMES = [spec.name for spec in resolve_games(PROFILE)]
# Extra evaluation protocols (profile key protocols): the test split's seeds played by another
# policy, and the models rolled out under each (docs/EVALUATION.md, Protocols).
PROTOCOL_NAMES = list(PROFILE.protocols.names)
PROTOCOL_MODELS = list(PROFILE.protocols.models)
with open(PROFILE.catalogue) as _f:
    _CATALOGUE_ENTRIES = yaml.safe_load(_f)["games"]
# The games' text embeddings (model.text_cache), written once by rule text_embeddings and read
# by every rule that builds a model; empty when the profile encodes its texts in process.
TEXT_CACHE = [PROFILE.model.text_cache] if PROFILE.model.text_cache else []
# The training clips' latents (model.latent_cache): resources.latent_shards shards, each written
# by one job of rule latents and read by every training rule; empty when training encodes its clips.
LATENT_SHARDS = ([os.path.join(PROFILE.model.latent_cache, shard_name(k, PROFILE.resources.latent_shards))
                  for k in range(PROFILE.resources.latent_shards)] if PROFILE.model.latent_cache else [])


def train_cpus(loader_workers):
    """CPUs a training job asks SLURM for (resource cpus_per_task): every process (one per GPU,
    or one on CPU) runs resources.train_threads torch threads and the stage's data-loader
    workers. Locally, Snakemake schedules the job by its `threads` (train_threads)."""
    r = config["resources"]
    return max(1, r["train_gpus"]) * (r["train_threads"] + loader_workers)


def game_entry(wildcards):
    """The game's catalogue entry: a params value, so editing one game reruns only its jobs."""
    return _CATALOGUE_ENTRIES[wildcards.game]


wildcard_constraints:
    split="|".join(SPLITS),
    game="|".join(GAMES),
    protocol="|".join(EXTRA_PROTOCOLS),
