"""Profiles: every shipped profile validates; bad keys are refused naming file and key."""

from __future__ import annotations

import json

import pytest
import yaml

from actionparty.cli import main
from actionparty.config import dump_json_schema, load_profile
from actionparty.variants import split_run
from actionparty.games import CatalogueError, resolve_games
from actionparty.errors import ProfileError

PROFILES = ("smoke", "tiny", "paper")


@pytest.mark.parametrize("name", PROFILES)
def test_shipped_profiles_validate(repo, name):
    profile = load_profile(repo / "params" / f"{name}.yaml")
    assert profile.profile == name
    specs = resolve_games(profile)
    assert specs and all(max(s.width_cells, s.height_cells) <= profile.canvas_cells for s in specs)


def test_paper_profile_has_every_catalogue_game(repo):
    assert len(resolve_games(load_profile(repo / "params/paper.yaml"))) == 46


def test_tiny_profile_has_two_and_four_player_games(repo):
    counts = {s.num_players for s in resolve_games(load_profile(repo / "params/tiny.yaml"))}
    assert 2 in counts and 4 in counts


def _write(tmp_path, repo, edit):
    data = yaml.safe_load((repo / "params/smoke.yaml").read_text())
    data["catalogue"] = str(repo / "params/games.yaml")
    edit(data)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda d: d["episodes"].update(stepz=3), r"bad.yaml: episodes.stepz: unknown key"),
        (lambda d: d["episodes"].pop("steps"), r"bad.yaml: episodes.steps: missing key"),
        (lambda d: d["episodes"].update(steps="many"), r"bad.yaml: episodes.steps: Input should be a valid integer"),
        (lambda d: d["episodes"]["policy"]["action_probs"].update(JUMP=1), r"action_probs: Value error, unknown action"),
        (lambda d: d["episodes"]["policy"].update(stickiness=1.5), r"episodes.policy.stickiness: Input should be less"),
        (lambda d: d.update(canvas_cells=2), r"bad.yaml: canvas_cells: Input should be greater"),
        (lambda d: d.update(seed_runs=["full"]), r"seed_runs: 'full' is not <variant>-s<k>"),
        (lambda d: d.update(seed_runs=["nope-s1"]), r"seed_runs: 'nope-s1' is not <variant>-s<k>"),
        (lambda d: d.update(seed_runs=["full-s1", "full-s1"]), r"seed_runs: a run is listed twice"),
        (lambda d: d["finetune"].update(loss_space="pixels"), r"finetune.loss_space: Input should be"),
        (lambda d: d["rollout"].update(long_horizon_models=["nope"]), r"long_horizon_models: 'nope' is not a variant"),
        (lambda d: d["finetune"].update(curve_variants=["full-s1"]), r"curve_variants: 'full-s1' is not a variant"),
    ],
)
def test_bad_profile_is_refused_with_key(tmp_path, repo, edit, message):
    with pytest.raises(ProfileError, match=message):
        load_profile(_write(tmp_path, repo, edit))


def test_run_names_split_into_variant_and_seed_offset():
    assert split_run("full") == ("full", 0)
    assert split_run("global_action-s2") == ("global_action", 2)
    assert split_run("no_rope_sa-s10") == ("no_rope_sa", 10)


def test_long_horizons_are_for_the_listed_models_and_their_seed_runs(tmp_path, repo):
    def edit(d):
        d["rollout"].update(horizons=[20, 4], long_horizon_models=["full", "static"])

    profile = load_profile(_write(tmp_path, repo, edit))
    assert profile.horizons_of("full") == profile.horizons_of("full-s1") == profile.horizons_of("static") == [4, 20]
    assert profile.horizons_of("no_msa") == profile.horizons_of("pretrained_ar") == [4]
    everyone = load_profile(_write(tmp_path, repo, lambda d: d["rollout"].update(horizons=[20, 4])))
    assert everyone.horizons_of("no_msa") == [4, 20]


def test_unknown_game_is_refused(tmp_path, repo):
    path = _write(tmp_path, repo, lambda d: d.update(games=["coins", "pacman"]))
    with pytest.raises(CatalogueError, match=r"unknown game 'pacman'"):
        resolve_games(load_profile(path))


def test_cli_reports_one_line_and_exit_2(tmp_path, repo, capsys):
    path = _write(tmp_path, repo, lambda d: d.update(games=["pacman"]))
    assert main(["validate", "--profile", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "pacman" in err


def test_snakemake_schema_is_generated_from_the_models(repo):
    assert (repo / "workflow/schemas/config.schema.json").read_text() == dump_json_schema()
    json.loads(dump_json_schema())
