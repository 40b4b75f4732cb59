"""The model registry (params/variants/): every row's file says everything about it, and adding a
variant is adding one file."""

from __future__ import annotations

import subprocess

import pytest
import yaml

from actionparty.errors import ProfileError
from actionparty.model.factory import build_world_model
from actionparty.variants import SubjectConditioning, load_variant, models_from, registry, untrained_models
from conftest import REPO, copy_workflow, job_counts

VARIANTS = REPO / "params/variants"
SWITCHES = ("state", "msa", "mca", "spatial_rope", "state_first", "state_render", "glimpse", "egocentric",
            "action_facing")


def test_registry_orders_rows_by_role_source_and_experiment():
    names = list(registry(VARIANTS))
    assert names[:2] == ["paper", "full"] and names[-2:] == ["static", "oracle"]
    roles = [registry(VARIANTS)[n].role for n in names]
    assert roles == sorted(roles, key=("paper", "ours", "ablation", "baseline", "reference").index)
    assert untrained_models(VARIANTS) == ("pretrained_ar", "static")
    assert models_from("ground_truth", VARIANTS) == ("oracle",)


def test_every_subject_variant_spells_out_every_switch():
    for name, variant in registry(VARIANTS).items():
        raw = yaml.safe_load((VARIANTS / f"{name}.yaml").read_text())
        if variant.subject is not None:
            assert set(raw["conditioning"]) == {"kind", *SWITCHES}, name  # no switch left to a default
        if variant.role == "ablation":
            differ = [s for s in SWITCHES if getattr(variant.subject, s, None) != getattr(
                registry(VARIANTS)[variant.ablation_of].subject, s, None)]
            assert differ, f"{name} switches nothing off in {variant.ablation_of}"


def _write(directory, stem, **changes):
    """full.yaml with ``changes`` (a switch or a top-level key; None deletes it) as ``stem``.yaml."""
    data = yaml.safe_load((VARIANTS / "full.yaml").read_text())
    for key, value in changes.items():
        where = data["conditioning"] if key in SWITCHES else data
        if value is None:
            del where[key]
        else:
            where[key] = value
    (directory / f"{stem}.yaml").write_text(yaml.safe_dump(data))


@pytest.mark.parametrize("change, message", [
    ({"msa": None}, "conditioning.subject.msa"),
    ({"colour": None}, "colour"),
    ({"role": "ablation"}, "ablation_of"),
    ({"state": False}, "need state: true"),
    ({"state_first": False}, "state_render needs state_first"),
    ({"source": "copy"}, "takes no conditioning"),
    ({"bogus": 1}, "bogus: unknown key"),
])
def test_a_bad_variant_file_is_one_line_naming_the_file_and_key(tmp_path, change, message):
    _write(tmp_path, "broken", **change)
    with pytest.raises(ProfileError) as err:
        load_variant("broken", tmp_path)
    text = str(err.value)
    assert "\n" not in text and str(tmp_path / "broken.yaml") in text and message in text, text


def test_names_that_could_reach_a_shell_or_a_path_are_refused(tmp_path):
    for name in ("../full", "full;rm", "Full", "a b"):
        with pytest.raises(ProfileError, match="must match"):
            load_variant(name, VARIANTS)


def test_a_new_variant_is_one_file_and_reaches_the_dag(tmp_path, venv_env):
    """Adding params/variants/no_glimpse_ego.yaml and naming it in the profile is all it takes:
    the DAG finetunes, rolls out and evaluates it, and the factory builds its model."""
    work = copy_workflow(tmp_path)
    _write(work / "params/variants", "no_glimpse_ego", name="w/o glimpse, own frame", role="ablation",
           ablation_of="full", experiment="exp-199", colour="tab:gray", glimpse=False, egocentric=False)
    profile = yaml.safe_load((work / "params/smoke.yaml").read_text())
    before = subprocess.run(["snakemake", "all", "-n", "--configfile", "params/smoke.yaml"], cwd=work, env=venv_env,
                            capture_output=True, text=True, timeout=300)
    profile["variants"].append("no_glimpse_ego")
    (work / "params/smoke.yaml").write_text(yaml.safe_dump(profile, sort_keys=False))
    after = subprocess.run(["snakemake", "all", "-n", "--configfile", "params/smoke.yaml"], cwd=work, env=venv_env,
                           capture_output=True, text=True, timeout=300)
    assert before.returncode == 0 and after.returncode == 0, after.stderr[-2000:]
    a, b = job_counts(before.stdout), job_counts(after.stdout)
    horizons = len(profile["rollout"]["horizons"])
    assert b["finetune_variant"] == a["finetune_variant"] + 1
    assert b["metrics"] == a["metrics"] + 1
    assert b["rollout"] == a["rollout"] + 2 * horizons  # plain and swapped actions
    assert "results/finetune/no_glimpse_ego/checkpoint.pt" in after.stdout
    variant = load_variant("no_glimpse_ego", work / "params/variants")
    assert variant.subject == SubjectConditioning(**{**load_variant("full", VARIANTS).subject.model_dump(),
                                                     "glimpse": False, "egocentric": False})


def test_the_factory_builds_each_variant_from_its_file_alone():
    from actionparty.config import load_profile

    profile = load_profile(REPO / "params/smoke.yaml")
    for name, variant in registry(VARIANTS).items():
        if not variant.trained:
            continue
        model, _, text = build_world_model(profile, variant=variant)
        assert model.takes_actions == (variant.conditioning.kind in ("subject", "global"))
        assert model.has_state == bool(variant.subject and variant.subject.state)
        assert text.with_actions == (variant.conditioning.kind == "text")
        if variant.subject is not None:
            assert (model.conditioning.mca is None) == (variant.subject.mca == "none")
            assert (model.conditioning.render is None) == (not variant.subject.state_render)
            assert (model.conditioning.glimpse is None) == (not variant.subject.glimpse)
