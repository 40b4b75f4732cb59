"""Profiles (params/<profile>.yaml): the one source of truth for every stage's parameters.

A profile file names its base (``defaults: params/base.yaml``) and holds only what differs from
it; the base holds every key, ``???`` (OmegaConf's mandatory value) where each profile must set
its own. The files are merged with OmegaConf (mappings key by key, anything else, lists
included, replaced; a key the base lacks is refused) and the merged result is validated against
the pydantic models below: an unknown key, a missing key or an ill-typed value is refused in one
line naming the file that sets it and the dotted key. The JSON schema that Snakemake validates
its config with (workflow/schemas/config.schema.json) is generated from these models
(``actionparty schema``), so both sides agree by construction.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from actionparty.errors import ProfileError, validation_error_text
from actionparty.variants import VARIANT_DIR, check_name, load_variant, split_run, untrained_models

SPLITS = ("train", "val", "test")
# Evaluation protocols: the policy that plays the test episodes the models are rolled out on.
# "episodes" is the test split itself (its sticky policy); the others replay the test split's
# seeds (the same engine starts) with another policy (actionparty.data.episodes.protocol_actions).
DEFAULT_PROTOCOL = "episodes"
EXTRA_PROTOCOLS = ("one_mover", "uniform")
PROTOCOLS = (DEFAULT_PROTOCOL, *EXTRA_PROTOCOLS)
# Episode seeds of different splits never overlap: seed = base + SPLIT_SEED_STRIDE * split + index.
SPLIT_SEED_STRIDE = 1_000_000

PositiveInt = Annotated[int, Field(ge=1)]
Probability = Annotated[float, Field(gt=0.0, lt=1.0)]


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SplitCounts(StrictModel):
    """Episodes per game for each split."""

    train: PositiveInt
    val: PositiveInt
    test: PositiveInt


class PolicyConfig(StrictModel):
    """Seeded per-player 'sticky' random policy: repeat the last action with probability
    ``stickiness``, else draw from ``action_probs`` (canonical action name -> weight)."""

    stickiness: Annotated[float, Field(ge=0.0, lt=1.0)]
    action_probs: dict[str, Annotated[float, Field(ge=0.0)]]

    @field_validator("action_probs")
    @classmethod
    def _known_actions(cls, probs: dict[str, float]) -> dict[str, float]:
        from actionparty.games.actions import CANONICAL_ACTIONS

        unknown = sorted(set(probs) - set(CANONICAL_ACTIONS))
        if unknown:
            raise ValueError(f"unknown action(s) {unknown}; known: {list(CANONICAL_ACTIONS)}")
        if sum(probs.values()) <= 0:
            raise ValueError("weights must not all be zero")
        return probs

    def probabilities(self) -> list[float]:
        """Weights normalised over the 8 canonical actions, in id order."""
        from actionparty.games.actions import CANONICAL_ACTIONS

        total = sum(self.action_probs.values())
        return [self.action_probs.get(name, 0.0) / total for name in CANONICAL_ACTIONS]


class EpisodesConfig(StrictModel):
    steps: PositiveInt  # actions per episode (frames = steps + 1)
    per_split: SplitCounts
    seed: Annotated[int, Field(ge=0)]
    policy: PolicyConfig

    @model_validator(mode="after")
    def _seeds_fit(self) -> "EpisodesConfig":
        if max(self.per_split.train, self.per_split.val, self.per_split.test) >= SPLIT_SEED_STRIDE:
            raise ValueError(f"at most {SPLIT_SEED_STRIDE - 1} episodes per split (seed ranges must stay disjoint)")
        return self


class LmdbConfig(StrictModel):
    map_size_mb: PositiveInt  # upper bound of one split's LMDB; only address space, not disk
    zlib_level: Annotated[int, Field(ge=0, le=9)]


class ResourcesConfig(StrictModel):
    """Per-rule resources (Snakemake `resources:`); the SLURM profile turns them into sbatch options."""

    episode_workers: PositiveInt
    mem_mb: PositiveInt
    train_gpus: Annotated[int, Field(ge=0)]  # GPUs per training job (torchrun processes); 0 = CPU
    # torch intra-op threads of each training process (one per GPU, or one on CPU); a SLURM
    # training job asks for processes x (train_threads + the stage's data-loader workers) CPUs.
    train_threads: PositiveInt
    train_mem_mb: PositiveInt
    train_runtime_min: PositiveInt
    # One-GPU jobs that roll a model out (rollouts, samples, learning curves): host memory for
    # reading its checkpoint and the model, and the time of the longest horizon (`actionparty estimate`).
    rollout_mem_mb: PositiveInt
    rollout_runtime_min: PositiveInt
    eval_mem_mb: PositiveInt  # CPU evaluation jobs: detector training, metrics, the oracle
    latent_shards: PositiveInt = 1  # one-GPU jobs that write model.latent_cache, each a share of the clips


class TileClassifierConfig(StrictModel):
    """Per-cell player detector (see actionparty.eval.detectors.TileClassifier)."""

    patch_width: PositiveInt  # channels of the 8x8 stride-8 convolution (one vector per cell)
    width: PositiveInt  # channels per cell after the per-cell layer; also the size of the FD features
    context_cells: Annotated[int, Field(ge=0, le=4)]  # margin of context: 3x3 cell convs, one cell each
    game_embedding: bool  # one shared model told the game (True) or a game-agnostic one
    occupied_weight: Annotated[float, Field(gt=0.0)]  # loss weight of occupied cells (background = 1)


class InverseDynamicsConfig(StrictModel):
    """Crops around a player at t-1 and t -> canonical action (detectors.InverseDynamics)."""

    margin_cells: PositiveInt  # crop = (2m+1) x (2m+1) cells centred on the player's t-1 cell
    patch_width: PositiveInt  # channels of the 8x8 stride-8 convolution over both frames
    width: PositiveInt


class EvalConfig(StrictModel):
    """The ``eval:`` section, everything the evaluation stages read: detector sizes and
    training, metric settings. The horizons, test windows and their seed are the rollout
    stage's (``profile.rollout``), so rollouts and the oracle see the same windows by construction."""

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


class ModelConfig(StrictModel):
    """The world model: DiT size, latent codec, text encoder, objective parameterisation."""

    size: str  # a key of actionparty.model.DIT_SIZES
    codec: Literal["pixel", "wan-vae"]
    vae_path: str | None = None  # local Wan2.1 VAE (wan-vae)
    text_encoder: Literal["tiny", "umt5"]
    text_path: str | None = None  # local umt5-xxl encoder + tokenizer (umt5)
    # The games' text embeddings written once by `actionparty embed-text`; models then read them
    # and never build the encoder (Text-Action still does: its prompts carry the actions).
    text_cache: str | None = None
    # The training clips' latents written once by `actionparty encode-latents` (a folder of
    # resources.latent_shards LMDBs); training then reads them and never runs the codec's encoder.
    latent_cache: str | None = None
    text_len: PositiveInt
    resolution: PositiveInt | None = None  # frames are upscaled (nearest) to this many pixels a side
    chunk_frames: PositiveInt  # latent frames denoised together (block-causal attention unit)
    prediction: Literal["x0", "velocity"]
    residual_prior: bool  # x0 = previous frame's latent + network output ("no change" by default)
    init_checkpoint: str | None = None  # Wan2.1-T2V weights to start pretraining from
    precision: Literal["fp32", "bf16"]
    gradient_checkpointing: bool

    @field_validator("size")
    @classmethod
    def _known_size(cls, size: str) -> str:
        from actionparty.model.sizes import DIT_SIZES

        if size not in DIT_SIZES:
            raise ValueError(f"unknown size {size!r}; known: {', '.join(DIT_SIZES)}")
        return size


class TrainConfig(StrictModel):
    """One training run (pretraining or a finetune): optimisation and the flow objective."""

    steps: PositiveInt
    batch_size: PositiveInt  # global batch (split over torchrun processes)
    lr: Annotated[float, Field(gt=0)]
    weight_decay: Annotated[float, Field(ge=0)]
    warmup_steps: Annotated[int, Field(ge=0)]
    grad_clip: Annotated[float, Field(gt=0)]
    ema_decay: Annotated[float, Field(ge=0, lt=1)]
    clip_steps: PositiveInt  # action steps per training clip (1 context frame + clip_steps frames)
    timestep_shift: Annotated[float, Field(gt=0)]
    # "velocity": |v_hat - v|^2 (for x0 prediction |x0_hat - x0|^2 / max(sigma, min_sigma)^2);
    # "x0": |x0_hat - x0|^2, every noise level weighted alike (x0 prediction only)
    loss_space: Literal["velocity", "x0"]
    min_sigma: Annotated[float, Field(gt=0, le=1)]  # floor of sigma in the velocity-space x0 loss
    change_weight: Annotated[float, Field(ge=0)]  # loss weight 1 + change_weight on cells that change
    # Training contexts are noised at a level drawn uniformly in [0, context_noise] (the model is
    # not told): it learns to draw the next frame from an imperfect one, as in a rollout.
    context_noise: Annotated[float, Field(ge=0, le=1)]
    # This share of the training clips gets, as its context, the model's own drawing of the
    # context frame from the frame before it (current weights, no gradient, ``self_context_steps``
    # Euler steps; a state model draws it from the true state): the model learns to continue from
    # its own sprites, as it must in a rollout. Costs one extra frame per clip and the sampling.
    self_context: Annotated[float, Field(ge=0, le=1)]
    self_context_steps: PositiveInt
    log_every: PositiveInt
    checkpoint_every: PositiveInt
    seed: Annotated[int, Field(ge=0)]
    num_workers: Annotated[int, Field(ge=0)]


class FinetuneConfig(TrainConfig):
    """Action finetuning from the exp-138 checkpoint: the same budget for every variant."""

    state_loss_weight: Annotated[float, Field(ge=0)]  # lambda in loss = video + lambda * state
    state_loss_space: Literal["velocity", "x0"]  # like loss_space, for the state tokens' loss
    # State-first variants: share of clips whose states are given clean (the video is drawn from a
    # finished state); the others draw the state's noise level independently of the video's.
    state_clean_fraction: Annotated[float, Field(ge=0, le=1)]
    # The state examples' noise levels: timestep shift of their draw (like timestep_shift). A large
    # shift keeps them near noise 1, where a one-step state pass (rollout.state_sampling_steps: 1)
    # draws the state; at lower levels the noisy state gives the move away.
    state_timestep_shift: Annotated[float, Field(gt=0)]
    curve_every: Annotated[int, Field(ge=0)]  # EMA snapshot every this many steps for the learning curve (0: none)
    # Variants that keep those snapshots and get a learning curve (their seed runs do not).
    curve_variants: list[str]


class RolloutConfig(StrictModel):
    """Autoregressive sampling from test-split context frames."""

    sampling_steps: PositiveInt
    state_sampling_steps: PositiveInt  # state-first models: Euler steps of the states' pass (then sampling_steps of video)
    timestep_shift: Annotated[float, Field(gt=0)]
    # Noise level of each generated frame as the next step's context (the frames kept are as
    # drawn); a model finetuned on noised contexts (finetune.context_noise) drifts less with it.
    context_noise: Annotated[float, Field(ge=0, lt=1)]
    window_frames: PositiveInt | None = None  # earlier latent frames kept in the KV cache (default: clip_steps)
    horizons: list[PositiveInt]
    # Models rolled out at every horizon (a seed run follows its variant); the others only at
    # the shortest one. null: every model. Required (the base's value is null, every model).
    long_horizon_models: list[str] | None
    clips_per_game: PositiveInt  # test windows rolled out per game and horizon
    sample_clips: PositiveInt  # clips drawn into the sample figures/GIFs
    curve_windows_per_game: PositiveInt  # test windows per game of a learning-curve point (MA, BA)
    seed: Annotated[int, Field(ge=0)]


class ProtocolsConfig(StrictModel):
    """Extra evaluation protocols (``protocols:``): the test split's episodes played again, from
    the same seeds, by another policy (docs/EVALUATION.md, Protocols). Their models are rolled
    out at the shortest horizon on ``rollout.clips_per_game`` windows per game and scored
    against what the game recorded."""

    names: list[str]  # of EXTRA_PROTOCOLS; the test split's own ("episodes") always runs
    models: list[str]  # models rolled out under each of them (of the profile's models)

    @field_validator("names")
    @classmethod
    def _known_protocols(cls, names: list[str]) -> list[str]:
        for name in names:
            if name not in EXTRA_PROTOCOLS:
                also = " (the test split's own protocol, always run)" if name == DEFAULT_PROTOCOL else ""
                raise ValueError(f"unknown protocol {name!r}{also}; known: {', '.join(EXTRA_PROTOCOLS)}")
        if len(set(names)) != len(names):
            raise ValueError("a protocol is listed twice")
        return names

    @field_validator("models")
    @classmethod
    def _known_models(cls, names: list[str]) -> list[str]:
        from actionparty.variants import registry

        known = registry()
        for name in names:
            check_name(split_run(name)[0], "model")
            model = known.get(split_run(name)[0])
            if model is None:
                raise ValueError(f"unknown model {name!r} (no {VARIANT_DIR}/{split_run(name)[0]}.yaml)")
            if model.source == "ground_truth":
                raise ValueError(f"{name!r} is not rolled out (source ground_truth)")
        if len(set(names)) != len(names):
            raise ValueError("a model is listed twice")
        return names


class Profile(StrictModel):
    profile: str
    catalogue: str  # path of the games catalogue
    games: list[str] | Literal["all"]
    canvas_cells: Annotated[int, Field(ge=5, le=64)]  # frames are padded onto a square canvas of this many cells
    episodes: EpisodesConfig
    lmdb: LmdbConfig
    model: ModelConfig
    pretrain: TrainConfig
    finetune: FinetuneConfig
    variants: list[str]  # finetuned variants to run (params/variants/<name>.yaml)
    # Repeats of a variant with another training and sampling seed, named <variant>-s<k> (k >= 1:
    # finetune.seed + k, rollout.seed + k for the sampling noise; the same test windows).
    seed_runs: list[str]
    rollout: RolloutConfig
    eval: EvalConfig
    resources: ResourcesConfig
    protocols: ProtocolsConfig

    @field_validator("profile")
    @classmethod
    def _profile_name(cls, name: str) -> str:
        try:  # it names params/<profile>.yaml in the DAG's shell lines
            return check_name(name, "profile")
        except ProfileError as err:
            raise ValueError(str(err)) from None

    @field_validator("variants")
    @classmethod
    def _variants_exist(cls, names: list[str]) -> list[str]:
        for name in names:
            check_name(name, "variant")
            if not (Path(VARIANT_DIR) / f"{name}.yaml").is_file():
                raise ValueError(f"unknown variant {name!r} (no {VARIANT_DIR}/{name}.yaml)")
            if not load_variant(name).trained:
                raise ValueError(f"{name!r} is not a finetuned variant ({VARIANT_DIR}/{name}.yaml: source)")
        return names

    @model_validator(mode="after")
    def _seed_runs_known(self) -> "Profile":
        for run in self.seed_runs:
            variant, offset = split_run(run)
            if offset == 0 or variant not in self.variants:
                raise ValueError(f"seed_runs: {run!r} is not <variant>-s<k> with k >= 1 and a variant of 'variants'")
        if len(set(self.seed_runs)) != len(self.seed_runs):
            raise ValueError("seed_runs: a run is listed twice")
        for name in self.finetune.curve_variants:
            if name not in self.variants:
                raise ValueError(f"finetune.curve_variants: {name!r} is not a variant of 'variants'")
        untrained = list(untrained_models())
        for name in self.rollout.long_horizon_models or []:
            if name not in self.variants + untrained:
                raise ValueError(f"rollout.long_horizon_models: {name!r} is not a variant of 'variants' "
                                 f"nor one of {', '.join(untrained)}")
        for name in self.protocols.models:
            if name not in self.variants + self.seed_runs + untrained:
                raise ValueError(f"protocols.models: {name!r} is not a model of this profile (its variants, "
                                 f"seed_runs, {', '.join(untrained)})")
        if bool(self.protocols.names) != bool(self.protocols.models):
            raise ValueError("protocols: names and models are both empty (no extra protocol) or both set")
        return self

    def horizons_of(self, model: str) -> list[int]:
        """The horizons a model (a variant, a seed run, or an untrained model) is rolled out at."""
        horizons = sorted(self.rollout.horizons)
        wanted = self.rollout.long_horizon_models
        return horizons if wanted is None or split_run(model)[0] in wanted else horizons[:1]

    @property
    def canvas_px(self) -> int:
        from actionparty.games.actions import CELL_PX

        return self.canvas_cells * CELL_PX


# ---------------------------------------------------------------------------------------------
# Composition: a profile file is its base plus overrides (OmegaConf merge), then validated.

DEFAULTS_KEY = "defaults"
MISSING = "???"  # OmegaConf's mandatory value: the base leaves it to every profile


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise ProfileError(f"{path}: profile not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ProfileError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ProfileError(f"{path}: a profile must be a mapping")
    return data


def _walk(data, where: str = ""):
    """(dotted key, value) of every leaf of nested mappings, in file order (lists are leaves)."""
    for key, value in data.items():
        dotted = f"{where}{key}"
        if isinstance(value, dict) and value:
            yield from _walk(value, f"{dotted}.")
        else:
            yield dotted, value


def _check_literal(source: str, data: dict) -> None:
    """Values are literals: DVC reads the files as they are, so an interpolation would show it
    something else than the stages get."""
    def strings(value):
        if isinstance(value, str):
            yield value
        elif isinstance(value, list):
            for item in value:
                yield from strings(item)
        elif isinstance(value, dict):
            for item in value.values():
                yield from strings(item)

    for dotted, value in _walk(data):
        if any("${" in s for s in strings(value)):
            raise ProfileError(f"{source}: {dotted}: interpolations (${{...}}) are not supported; write the value")


def _kind_clash(base, override, where: str = "") -> tuple[str, str, str] | None:
    """The first key where a mapping meets a list (OmegaConf cannot merge them; it names no key)."""
    for key, value in override.items():
        if key not in base:
            continue
        dotted, old = f"{where}{key}", base[key]
        if isinstance(value, dict) and isinstance(old, dict):
            found = _kind_clash(old, value, f"{dotted}.")
            if found:
                return found
        elif {type(value), type(old)} == {dict, list}:
            return dotted, type(value).__name__, type(old).__name__
    return None


def _merge(base: dict, base_source: str, override: dict, source: str) -> dict:
    """``override`` on top of ``base``: mappings merge key by key, everything else (lists included)
    is replaced. A key that the base does not have is refused (OmegaConf's struct mode)."""
    from omegaconf import OmegaConf
    from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

    clash = _kind_clash(base, override)
    if clash:
        dotted, new, old = clash
        kinds = {"dict": "a mapping", "list": "a list"}
        raise ProfileError(f"{source}: {dotted}: {kinds[new]} cannot replace {kinds[old]} of {base_source}")
    try:
        merged = OmegaConf.create(base)
        OmegaConf.set_struct(merged, True)
        merged = OmegaConf.merge(merged, OmegaConf.create(override))
        return OmegaConf.to_container(merged, resolve=False)
    except ConfigKeyError as err:
        raise ProfileError(f"{source}: {err.full_key}: unknown key (not in {base_source})") from None
    except OmegaConfBaseException as err:
        where = getattr(err, "full_key", None) or "<root>"
        raise ProfileError(f"{source}: {where}: {str(err).splitlines()[0]}") from None


def _compose(data: dict, source: str, seen: tuple[str, ...] = ()) -> tuple[dict, list[tuple[str, dict]]]:
    """The mapping ``data`` (read from ``source``) on top of its ``defaults:`` chain.

    Returns the merged mapping and the chain of (file, its own mapping), the profile first: the
    files an error may come from."""
    data = dict(data)
    parent = data.pop(DEFAULTS_KEY, None)
    _check_literal(source, data)
    if parent is None:
        return data, [(source, data)]
    if not isinstance(parent, str):
        raise ProfileError(f"{source}: {DEFAULTS_KEY}: must be the path of one profile file (e.g. params/base.yaml)")
    if not Path(parent).is_file():
        raise ProfileError(f"{source}: {DEFAULTS_KEY}: no file {parent} (paths are relative to the working "
                           "directory, the repository root)")
    seen += (str(Path(source).resolve()),)
    if str(Path(parent).resolve()) in seen:
        raise ProfileError(f"{source}: {DEFAULTS_KEY}: {parent} is already in the chain of bases")
    base, chain = _compose(_read_yaml(Path(parent)), parent, seen)
    return _merge(base, parent, data, source), [(source, data), *chain]


def _has(data, loc: tuple) -> bool:
    for part in loc:
        if isinstance(data, dict) and part in data:
            data = data[part]
        elif isinstance(data, list) and isinstance(part, int) and part < len(data):
            data = data[part]
        else:
            return False
    return True


def _origin(chain: list[tuple[str, dict]], loc: tuple) -> str:
    """The file of ``chain`` that sets the value at ``loc`` (the nearest to the profile), else the
    profile itself."""
    for depth in range(len(loc), 0, -1):
        for source, data in chain:
            if _has(data, loc[:depth]):
                return source
    return chain[0][0]


def _check_missing(merged: dict, chain: list[tuple[str, dict]]) -> None:
    """A value the base leaves to each profile (``???``) that the profile does not set: named by
    the highest key the profile file lacks (``eval`` when it has no ``eval:`` section at all)."""
    missing = [dotted for dotted, value in _walk(merged) if value == MISSING]
    if not missing:
        return
    source, own = chain[0]
    parts = missing[0].split(".")
    depth = next((d for d in range(1, len(parts) + 1) if not _has(own, tuple(parts[:d]))), len(parts))
    key = ".".join(parts[:depth])
    declared = next((s for s, data in reversed(chain) if _has(data, tuple(parts))), source)
    what = "it" if key == missing[0] else missing[0]
    more = f"; +{len(missing) - 1} more" if len(missing) > 1 else ""
    raise ProfileError(f"{source}: {key}: missing key ({declared} leaves {what} to each profile: {MISSING}{more})")


def _format_error(chain: list[tuple[str, dict]], err: ValidationError) -> str:
    loc, text = validation_error_text(err)
    return f"{_origin(chain, loc)}: {text}"


def _merged(data: dict, source: str) -> tuple[Profile, dict]:
    merged, chain = _compose(data, source)
    _check_missing(merged, chain)
    try:
        return Profile.model_validate(merged), merged
    except ValidationError as err:
        raise ProfileError(_format_error(chain, err)) from None


def validate_profile(data: dict, source: str = "<config>") -> Profile:
    """Validate a profile mapping (composed with its ``defaults:`` chain when it names one);
    raise ProfileError naming the file (``source`` or the base that sets the value) and the key."""
    return _merged(data, source)[0]


def merged_profile(path: str | Path) -> dict:
    """The profile file ``path`` merged with its bases and validated, as a plain mapping: what
    Snakemake's ``config`` becomes (the Snakefile)."""
    return _merged(_read_yaml(Path(path)), str(path))[1]


def _drop_defaults(data: dict, model: type[BaseModel]) -> dict:
    """``data`` without the optional keys left at their default (null)."""
    out = {}
    for key, value in data.items():
        field = model.model_fields.get(key)
        if field is not None and not field.is_required() and value is None and field.default is None:
            continue
        sub = field.annotation if field is not None else None
        if isinstance(value, dict) and isinstance(sub, type) and issubclass(sub, BaseModel):
            value = _drop_defaults(value, sub)
        out[key] = value
    return out


def snakemake_config(path: str | Path) -> dict:
    """The merged, validated profile as Snakemake's ``config`` (the Snakefile), in the form a
    complete profile file had before profiles had a base: the optional keys at their default
    (``model.vae_path: null``, ...) are left out, for Snakemake's ``validate`` to fill in from
    the schema at the end of their section. A rule's params are compared by their repr, key order
    included, so this keeps the jobs of an existing workspace up to date."""
    return _drop_defaults(merged_profile(path), Profile)


def load_profile(path: str | Path) -> Profile:
    """The profile file ``path`` (params/<profile>.yaml) merged with its bases and validated."""
    return _merged(_read_yaml(Path(path)), str(path))[0]


def profile_json_schema() -> dict:
    """JSON schema of a (merged) profile, for Snakemake's ``validate`` (kept in workflow/schemas/).
    pydantic writes JSON Schema 2020-12, the draft Snakemake validates with."""
    schema = Profile.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "ActionParty profile (generated by `actionparty schema`; do not edit)"
    return schema


def dump_json_schema() -> str:
    return json.dumps(profile_json_schema(), indent=2, sort_keys=True) + "\n"
