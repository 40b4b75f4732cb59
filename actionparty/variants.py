"""The model registry: one file per table row in ``params/variants/<name>.yaml``.

Every model that appears in a table or figure is described by its file and nowhere else: what
it is called, whose it is (the paper's method, ours, an ablation of one of them, a baseline, a
reference row), the experiment id, the plot colour, where its weights come from, and, for the
trained ones, every conditioning switch. The DAG, the model factory, the tables, the figures
and the tests read this registry; adding a variant is adding one file.

    role       paper | ours | ablation | baseline | reference
    source     finetune (trained from exp-138 by the finetune stage) | pretrain (the exp-138
               checkpoint itself) | copy (repeats the context frame) | ground_truth (the oracle)
    conditioning.kind
               subject (subject state tokens, model.subjects) | global (all players' actions in
               the frame's adaLN input) | text (actions in the prompt) | video (no actions)
    recipe     optional: how a trained variant's clips differ from the profile's, where its
               method prescribes it (the paper's: clips of 4 actions denoised as one chunk);
               :func:`variant_profile` applies it

Rows are ordered by role, then source, then experiment id (``registry``).
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, ValidationError, model_validator

from actionparty.errors import ProfileError, validation_error_text

VARIANT_DIR = "params/variants"
ROLES = ("paper", "ours", "ablation", "baseline", "reference")
SOURCES = ("finetune", "pretrain", "copy", "ground_truth")
# Model and variant names reach file paths and shell lines: lower-case words only.
NAME_PATTERN = re.compile(r"[a-z][a-z0-9_]*")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SubjectConditioning(_Strict):
    """Subject state tokens and the mechanisms around them (docs/METHOD.md names each one's
    module). Every switch is spelt out in the variant's file: there are no defaults."""

    kind: Literal["subject"]
    state: bool  # the tokens carry the player's denoised state (else the action only)
    msa: bool  # subject-isolated self-attention
    mca: Literal["framewise", "clipwise", "none"]  # masked action cross-attention
    spatial_rope: bool  # state tokens at their player's position in self-attention's RoPE
    # The state has its own noise level and is finished before the video is drawn from it.
    state_first: bool
    state_render: bool  # video tokens read the players' states at the cells they put them in
    glimpse: bool  # state tokens read the previous frame's latents around their player's cell
    egocentric: bool  # the state path works in each player's own frame (its previous facing)
    # The action embedded jointly with the player's previous facing (the move it makes from
    # there), in the state tokens and MCA's action tokens; else the action alone.
    action_facing: bool

    @model_validator(mode="after")
    def _consistent(self) -> "SubjectConditioning":
        needs_state = [name for name in ("state_first", "state_render", "glimpse", "egocentric")
                       if getattr(self, name)]
        if needs_state and not self.state:
            raise ValueError(f"{', '.join(needs_state)} need state: true (they act on the denoised state)")
        if self.state_render and not self.state_first:
            raise ValueError("state_render needs state_first: the video is drawn from a finished state")
        return self


class GlobalConditioning(_Strict):
    kind: Literal["global"]


class TextConditioning(_Strict):
    kind: Literal["text"]


class VideoConditioning(_Strict):
    """No actions at all: the exp-138 video model."""

    kind: Literal["video"]


Conditioning = Annotated[Union[SubjectConditioning, GlobalConditioning, TextConditioning, VideoConditioning],
                         Field(discriminator="kind")]


class VariantRecipe(_Strict):
    """Where a trained variant's clips differ from the profile's (``finetune.clip_steps`` action
    steps per training clip, ``model.chunk_frames`` latent frames denoised together). The budget
    stays the profile's: as many steps and as many denoised frames per step, so the batch is
    scaled by the profile's clip length over the recipe's (:func:`variant_profile`)."""

    clip_steps: PositiveInt  # action steps per training clip
    chunk_frames: PositiveInt  # latent frames denoised together (block-causal unit; clip-wise MCA's clip)
    # Share of clips given the model's own context (ours; it draws a 2-frame clip): off for
    # a method that does not use it.
    self_context: Annotated[float, Field(ge=0, le=1)] | None = None

    @model_validator(mode="after")
    def _whole_chunks(self) -> "VariantRecipe":
        if self.clip_steps % self.chunk_frames:
            raise ValueError(f"clip_steps {self.clip_steps} is not a whole number of {self.chunk_frames}-frame chunks")
        return self


class VariantConfig(_Strict):
    """One row of the tables (params/variants/<name>.yaml)."""

    name: str  # shown in tables and figures
    description: str
    role: Literal["paper", "ours", "ablation", "baseline", "reference"]
    ablation_of: str | None = None  # the variant an ablation switches one thing off in
    experiment: str | None  # experiment id (exp-138 pretraining, exp-139 ...); none for references
    paper_name: str | None = None  # the row's name in the paper, where the paper has the row
    colour: str  # matplotlib colour of its lines and bars
    source: Literal["finetune", "pretrain", "copy", "ground_truth"]
    conditioning: Conditioning | None  # none for rows without a network (copy, ground truth)
    recipe: VariantRecipe | None = None  # trained variants only; none: the profile's clips

    @model_validator(mode="after")
    def _consistent(self) -> "VariantConfig":
        if self.recipe is not None and self.source != "finetune":
            raise ValueError(f"recipe is for trained variants (source finetune), not source {self.source}")
        if (self.role == "ablation") != (self.ablation_of is not None):
            raise ValueError("ablation_of is set for, and only for, role: ablation")
        has_network = self.source in ("finetune", "pretrain")
        if has_network != (self.conditioning is not None):
            raise ValueError(f"source {self.source} {'needs' if has_network else 'takes no'} conditioning")
        if self.source == "pretrain" and self.conditioning.kind != "video":
            raise ValueError("source pretrain is the exp-138 video model: conditioning.kind must be video")
        if self.source == "finetune" and self.conditioning.kind == "video":
            raise ValueError("a finetuned variant is conditioned on actions: conditioning.kind is not video")
        return self

    @property
    def trained(self) -> bool:
        """Trained by the finetune stage (the profile's ``variants`` list holds only these)."""
        return self.source == "finetune"

    @property
    def subject(self) -> SubjectConditioning | None:
        """The subject-token switches, for kind subject."""
        c = self.conditioning
        return c if isinstance(c, SubjectConditioning) else None


def variant_profile(profile, variant: "VariantConfig | None"):
    """``profile`` as ``variant`` trains and rolls out (its :class:`VariantRecipe` applied), or
    ``profile`` itself without a recipe. The finetune stage, rollouts, learning curves and the
    estimate all read a variant's model through this."""
    recipe = None if variant is None else variant.recipe
    if recipe is None:
        return profile
    data = profile.model_dump()
    ft = data["finetune"]
    frames_per_step = ft["batch_size"] * ft["clip_steps"]
    if frames_per_step % recipe.clip_steps:
        raise ProfileError(f"variant '{variant.name}': recipe.clip_steps {recipe.clip_steps} does not divide the "
                           f"profile's {frames_per_step} denoised frames per step (finetune.batch_size x clip_steps)")
    ft.update(clip_steps=recipe.clip_steps, batch_size=frames_per_step // recipe.clip_steps)
    if recipe.self_context is not None:
        ft["self_context"] = recipe.self_context
    data["model"]["chunk_frames"] = recipe.chunk_frames
    try:
        return type(profile).model_validate(data)
    except ValidationError as err:
        raise ProfileError(f"variant '{variant.name}': its recipe gives an invalid profile: "
                           f"{validation_error_text(err)[1]}") from None


def finetune_run(profile, run: str):
    """A finetune run ('full', or 'full-s1': seed finetune.seed + 1) -> (its variant, the profile
    as that variant trains, the run's finetune config)."""
    name, offset = split_run(run)
    variant = load_variant(name)
    trained = variant_profile(profile, variant)  # its recipe's clips, if it has one
    return variant, trained, trained.finetune.model_copy(update={"seed": trained.finetune.seed + offset})


def check_name(name: str, what: str = "model") -> str:
    """``name`` unchanged, or ProfileError: names become file paths and words in shell lines."""
    if not NAME_PATTERN.fullmatch(name):
        raise ProfileError(f"{what} name {name!r} must match {NAME_PATTERN.pattern} (lower-case letters, digits, _)")
    return name


def load_variant(name: str, directory: str | Path = VARIANT_DIR) -> VariantConfig:
    """The variant file ``<directory>/<name>.yaml``, validated (one-line ProfileError otherwise)."""
    check_name(name, "variant")
    path = Path(directory) / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in Path(directory).glob("*.yaml"))
        raise ProfileError(f"{path}: unknown variant '{name}'; known: {', '.join(known)}")
    return _load(path)


def _load(path: Path) -> VariantConfig:
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ProfileError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    try:
        variant = VariantConfig.model_validate(data)
    except ValidationError as err:
        raise ProfileError(f"{path}: {validation_error_text(err)[1]}") from None
    if variant.ablation_of is not None and not (path.parent / f"{variant.ablation_of}.yaml").is_file():
        raise ProfileError(f"{path}: ablation_of: no variant '{variant.ablation_of}'")
    return variant


def _order(item: tuple[str, VariantConfig]) -> tuple:
    name, v = item
    number = int(re.sub(r"\D", "", v.experiment) or 0) if v.experiment else 0
    return ROLES.index(v.role), SOURCES.index(v.source), number, name


def registry(directory: str | Path = VARIANT_DIR) -> dict[str, VariantConfig]:
    """Every variant file of ``directory``, in table order (role, source, experiment id)."""
    return dict(_registry(str(Path(directory).resolve())))


@lru_cache(maxsize=8)
def _registry(directory: str) -> tuple[tuple[str, VariantConfig], ...]:
    paths = sorted(Path(directory).glob("*.yaml"))
    if not paths:
        raise ProfileError(f"{directory}: no variant files (params/variants/<name>.yaml)")
    items = [(check_name(p.stem, "variant"), _load(p)) for p in paths]
    return tuple(sorted(items, key=_order))


def models_from(source: str, directory: str | Path = VARIANT_DIR) -> tuple[str, ...]:
    """Names of the registry's rows of one ``source``, in table order."""
    if source not in SOURCES:
        raise ValueError(f"unknown source {source!r}; known: {', '.join(SOURCES)}")
    return tuple(name for name, v in registry(directory).items() if v.source == source)


def untrained_models(directory: str | Path = VARIANT_DIR) -> tuple[str, ...]:
    """Rolled out and evaluated but not finetuned: the exp-138 model and the copy floor."""
    return models_from("pretrain", directory) + models_from("copy", directory)


def split_run(name: str) -> tuple[str, int]:
    """A model or run name -> (variant, seed offset): 'full-s1' -> ('full', 1), 'full' -> ('full', 0)."""
    m = re.fullmatch(r"(.+)-s(\d+)", name)
    return (m.group(1), int(m.group(2))) if m else (name, 0)
