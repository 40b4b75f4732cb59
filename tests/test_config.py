"""Profiles: params/base.yaml plus each profile's overrides, merged and validated; every shipped
profile validates; bad keys are refused naming the file and the key."""

from __future__ import annotations

import json
import subprocess

import pytest
import yaml

from actionparty.cli import main
from actionparty.config import dump_json_schema, load_profile, merged_profile, snakemake_config, validate_profile
from actionparty.variants import split_run
from actionparty.games import CatalogueError, resolve_games
from actionparty.errors import ProfileError
from conftest import copy_workflow, flat_keys

PROFILES = ("smoke", "tiny", "paper")
TWELVE = ["full", "paper", "no_msa", "no_mca", "framewise_mca", "no_rope_sa", "no_state", "no_state_render", "no_glimpse",
          "no_egocentric", "text_action", "global_action"]
HEADLINE_SEEDS = ["full-s1", "paper-s1", "global_action-s1", "text_action-s1"]
# Every value of the three profiles as they were written out in full, before they had a base:
# the merged profiles must stay exactly these. A deliberate change of a profile's value changes
# its entry here too.
EXPANDED = {  # dotted key: (smoke, tiny, paper)
    "profile": ("smoke", "tiny", "paper"),
    "catalogue": ("params/games.yaml", "params/games.yaml", "params/games.yaml"),
    "games": (["coins", "clean_up"], ["coins", "commons_harvest_partnership", "territory_rooms"], "all"),
    "canvas_cells": (12, 12, 12),
    "episodes.steps": (8, 200, 200),
    "episodes.per_split.train": (3, 80, 2000),
    "episodes.per_split.val": (1, 8, 100),
    "episodes.per_split.test": (2, 16, 200),
    "episodes.seed": (0, 0, 0),
    "episodes.policy.stickiness": (0.5, 0.5, 0.5),
    "episodes.policy.action_probs.NOOP": (1.0, 1.0, 1.0),
    "episodes.policy.action_probs.FORWARD": (2.0, 2.0, 2.0),
    "episodes.policy.action_probs.BACKWARD": (1.0, 1.0, 1.0),
    "episodes.policy.action_probs.STRAFE_LEFT": (1.0, 1.0, 1.0),
    "episodes.policy.action_probs.STRAFE_RIGHT": (1.0, 1.0, 1.0),
    "episodes.policy.action_probs.TURN_LEFT": (1.0, 1.0, 1.0),
    "episodes.policy.action_probs.TURN_RIGHT": (1.0, 1.0, 1.0),
    "episodes.policy.action_probs.INTERACT": (0.5, 0.5, 0.5),
    "lmdb.map_size_mb": (256, 4096, 1048576),
    "lmdb.zlib_level": (1, 1, 1),
    "model.size": ("tiny", "small", "wan-1.3b"),
    "model.codec": ("pixel", "pixel", "wan-vae"),
    "model.vae_path": (None, None, "weights/Wan2.1-T2V-1.3B/Wan2.1_VAE.pth"),
    "model.text_encoder": ("tiny", "tiny", "umt5"),
    "model.text_path": (None, None, "weights/Wan2.1-T2V-1.3B/google/umt5-xxl"),
    "model.text_cache": (None, None, "results/text/embeddings.safetensors"),
    "model.latent_cache": (None, None, "results/latents"),
    "model.text_len": (16, 64, 512),
    "model.resolution": (None, None, 512),
    "model.chunk_frames": (1, 1, 1),
    "model.prediction": ("x0", "x0", "velocity"),
    "model.residual_prior": (True, True, False),
    "model.init_checkpoint": (None, None, "weights/Wan2.1-T2V-1.3B"),
    "model.precision": ("fp32", "fp32", "bf16"),
    "model.gradient_checkpointing": (False, False, True),
    "pretrain.steps": (4, 200, 20000),
    "pretrain.batch_size": (4, 16, 64),
    "pretrain.lr": (0.001, 0.001, 2e-05),
    "pretrain.weight_decay": (0.0, 0.01, 0.01),
    "pretrain.warmup_steps": (0, 50, 500),
    "pretrain.grad_clip": (1.0, 1.0, 1.0),
    "pretrain.ema_decay": (0.9, 0.99, 0.999),
    "pretrain.clip_steps": (1, 1, 4),
    "pretrain.timestep_shift": (3.0, 3.0, 5.0),
    "pretrain.loss_space": ("velocity", "velocity", "velocity"),
    "pretrain.min_sigma": (0.05, 0.05, 0.05),
    "pretrain.change_weight": (3.0, 3.0, 0.0),
    "pretrain.context_noise": (0.0, 0.0, 0.0),
    "pretrain.self_context": (0.0, 0.0, 0.0),
    "pretrain.self_context_steps": (2, 2, 2),
    "pretrain.log_every": (1, 10, 50),
    "pretrain.checkpoint_every": (2, 100, 1000),
    "pretrain.seed": (0, 0, 0),
    "pretrain.num_workers": (0, 1, 8),
    "finetune.steps": (3, 500, 10000),
    "finetune.batch_size": (4, 8, 64),
    "finetune.lr": (0.001, 0.001, 1e-05),
    "finetune.weight_decay": (0.0, 0.01, 0.01),
    "finetune.warmup_steps": (0, 100, 500),
    "finetune.grad_clip": (1.0, 1.0, 1.0),
    "finetune.ema_decay": (0.9, 0.99, 0.999),
    "finetune.clip_steps": (1, 1, 4),
    "finetune.timestep_shift": (3.0, 3.0, 5.0),
    "finetune.loss_space": ("velocity", "velocity", "velocity"),
    "finetune.min_sigma": (0.05, 0.05, 0.05),
    "finetune.change_weight": (3.0, 3.0, 0.0),
    "finetune.context_noise": (0.1, 0.1, 0.0),
    "finetune.self_context": (0.5, 0.5, 0.0),
    "finetune.self_context_steps": (1, 1, 2),
    "finetune.log_every": (1, 10, 50),
    "finetune.checkpoint_every": (2, 100, 1000),
    "finetune.seed": (0, 0, 0),
    "finetune.num_workers": (0, 1, 8),
    "finetune.state_loss_weight": (0.1, 1.0, 0.1),
    "finetune.state_loss_space": ("velocity", "x0", "velocity"),
    "finetune.state_clean_fraction": (0.5, 0.65, 0.5),
    "finetune.state_timestep_shift": (20.0, 20.0, 20.0),
    "finetune.curve_every": (2, 100, 2000),
    "finetune.curve_variants": (["full", "global_action"], ["full", "paper", "text_action", "global_action"], TWELVE),
    "variants": (["full", "paper", "no_msa", "no_state", "text_action", "global_action"], TWELVE, TWELVE),
    "seed_runs": (["full-s1"], HEADLINE_SEEDS, HEADLINE_SEEDS),
    "rollout.sampling_steps": (2, 4, 20),
    "rollout.state_sampling_steps": (1, 1, 1),
    "rollout.timestep_shift": (3.0, 3.0, 5.0),
    "rollout.context_noise": (0.05, 0.0, 0.0),
    "rollout.window_frames": (None, None, None),
    "rollout.horizons": ([4], [4, 20], [4, 20]),
    "rollout.long_horizon_models": (None, ["full", "paper", "text_action", "global_action", "pretrained_ar", "static"],
                                    None),
    "rollout.clips_per_game": (2, 24, 64),
    "rollout.sample_clips": (1, 4, 4),
    "rollout.curve_windows_per_game": (1, 4, 16),
    "rollout.seed": (0, 0, 0),
    "eval.seed": (0, 0, 0),
    "eval.tile.patch_width": (32, 64, 128),
    "eval.tile.width": (32, 64, 96),
    "eval.tile.context_cells": (1, 1, 2),
    "eval.tile.game_embedding": (True, True, True),
    "eval.tile.occupied_weight": (4.0, 4.0, 4.0),
    "eval.idm.margin_cells": (2, 2, 2),
    "eval.idm.patch_width": (48, 64, 128),
    "eval.idm.width": (48, 64, 96),
    "eval.train_steps": (150, 1500, 20000),
    "eval.batch_clips": (8, 16, 64),
    "eval.lr": (0.003, 0.002, 0.001),
    "eval.checkpoint_every": (10, 250, 1000),
    "eval.val_clips_per_game": (8, 400, 1000),
    "eval.num_workers": (0, 1, 4),
    "eval.tau": (0.5, 0.5, 0.5),
    "eval.eval_batch_frames": (64, 256, 512),
    "eval.psnr_max_db": (100.0, 100.0, 100.0),
    "eval.i3d_checkpoint": (None, None, None),
    "resources.episode_workers": (1, 2, 8),
    "resources.mem_mb": (2000, 4000, 16000),
    "resources.train_gpus": (0, 0, 8),
    "resources.train_threads": (1, 1, 4),
    "resources.train_mem_mb": (4000, 8000, 256000),
    "resources.train_runtime_min": (30, 120, 2880),
    "resources.rollout_mem_mb": (2000, 4000, 56000),
    "resources.rollout_runtime_min": (30, 60, 480),
    "resources.eval_mem_mb": (2000, 4000, 32000),
    "resources.latent_shards": (1, 1, 8),
    "protocols.names": (["one_mover", "uniform"], ["one_mover", "uniform"], ["one_mover", "uniform"]),
    "protocols.models": (["full", "static"], ["full", "paper", "global_action", "text_action", "static"],
                         ["full", "paper", "global_action", "text_action", "static"]),
}


@pytest.mark.parametrize("index, name", list(enumerate(PROFILES)))
def test_merged_profiles_equal_the_expanded_ones_key_by_key(repo, index, name):
    merged = flat_keys(load_profile(repo / "params" / f"{name}.yaml").model_dump(mode="json"))
    expected = {key: values[index] for key, values in EXPANDED.items()}
    assert list(merged) == list(expected)
    wrong = {key: (merged[key], expected[key]) for key in expected if merged[key] != expected[key]}
    assert not wrong, wrong
    # Snakemake's config: the same values, without the optional keys left at null (validate()
    # adds those from the schema, as it did for complete profile files).
    config = snakemake_config(repo / "params" / f"{name}.yaml")
    assert validate_profile(config, name) == load_profile(repo / "params" / f"{name}.yaml")
    assert ("vae_path" in config["model"]) == (name == "paper") and "window_frames" not in config["rollout"]


@pytest.mark.parametrize("name", PROFILES)
def test_shipped_profiles_validate(repo, name):
    profile = load_profile(repo / "params" / f"{name}.yaml")
    assert profile.profile == name
    specs = resolve_games(profile)
    assert specs and all(max(s.width_cells, s.height_cells) <= profile.canvas_cells for s in specs)


def test_profile_files_hold_only_their_differences_from_the_base(repo):
    base = flat_keys(yaml.safe_load((repo / "params/base.yaml").read_text()))
    for name in PROFILES:
        own = flat_keys(yaml.safe_load((repo / "params" / f"{name}.yaml").read_text()))
        assert own.pop("defaults") == "params/base.yaml"
        assert set(own) <= set(base), set(own) - set(base)
        assert not [key for key, value in own.items() if base[key] == value], name


def test_the_base_alone_is_not_a_profile(repo):
    with pytest.raises(ProfileError, match=r"^params/base.yaml: profile: missing key \(params/base.yaml leaves it "):
        load_profile("params/base.yaml")


def test_paper_profile_has_every_catalogue_game(repo):
    assert len(resolve_games(load_profile(repo / "params/paper.yaml"))) == 46


def test_tiny_profile_has_two_and_four_player_games(repo):
    counts = {s.num_players for s in resolve_games(load_profile(repo / "params/tiny.yaml"))}
    assert 2 in counts and 4 in counts


def _override(tmp_path, repo, data, defaults="params/smoke.yaml", name="over.yaml"):
    """A profile file in tmp_path: ``data`` on top of ``defaults``."""
    path = tmp_path / name
    path.write_text(yaml.safe_dump({"defaults": str(repo / defaults), **data}, sort_keys=False))
    return path


def test_mappings_merge_and_lists_replace(tmp_path, repo):
    path = _override(tmp_path, repo, {"episodes": {"policy": {"action_probs": {"NOOP": 5}}},
                                      "rollout": {"horizons": [20]}, "games": ["coins"]})
    profile, smoke = load_profile(path), load_profile(repo / "params/smoke.yaml")
    assert profile.episodes.policy.action_probs == {**smoke.episodes.policy.action_probs, "NOOP": 5}
    assert profile.rollout.horizons == [20] and profile.games == ["coins"]
    assert profile.episodes.steps == smoke.episodes.steps == 8  # smoke's override of the base's 200
    assert profile.model_copy(update={"episodes": smoke.episodes, "rollout": smoke.rollout, "games": smoke.games}) \
        == smoke


@pytest.mark.parametrize(
    "data, message",
    [
        ({"episodes": {"stepz": 3}}, r"over.yaml: episodes.stepz: unknown key \(not in .*params/smoke.yaml\)"),
        ({"modle": {"size": "tiny"}}, r"over.yaml: modle: unknown key"),
        ({"episodes": {"policy": {"action_probs": {"JUMP": 1}}}}, r"over.yaml: episodes.policy.action_probs.JUMP: "
                                                                  r"unknown key"),
        ({"rollout": {"horizons": {"h": 4}}}, r"over.yaml: rollout.horizons: a mapping cannot replace a list"),
        ({"episodes": {"steps": "many"}}, r"over.yaml: episodes.steps: Input should be a valid integer"),
        ({"episodes": {"steps": "${pretrain.steps}"}}, r"over.yaml: episodes.steps: interpolations"),
        ({"episodes": None}, r"over.yaml: episodes: Input should be a valid dictionary"),
    ],
)
def test_bad_override_is_refused_naming_its_file_and_key(tmp_path, repo, data, message):
    with pytest.raises(ProfileError, match=message):
        load_profile(_override(tmp_path, repo, data))


def test_a_value_the_base_leaves_to_each_profile_must_be_set(tmp_path, repo):
    smoke = yaml.safe_load((repo / "params/smoke.yaml").read_text())
    del smoke["defaults"], smoke["model"]["size"]
    path = _override(tmp_path, repo, smoke, defaults="params/base.yaml")
    with pytest.raises(ProfileError, match=r"over.yaml: model.size: missing key \(.*params/base.yaml leaves it to "
                                           r"each profile: \?\?\?\)"):
        load_profile(path)
    smoke["model"]["size"] = "tiny"
    del smoke["eval"]  # a whole section: named as the section
    with pytest.raises(ProfileError, match=r"over.yaml: eval: missing key \(.*base.yaml leaves eval.tile.patch_width"):
        load_profile(_override(tmp_path, repo, smoke, defaults="params/base.yaml"))


def test_a_bad_value_in_the_base_is_named_with_the_base(tmp_path, repo):
    base = yaml.safe_load((repo / "params/base.yaml").read_text())
    base["eval"]["tau"] = 1.5
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base, sort_keys=False))
    smoke = yaml.safe_load((repo / "params/smoke.yaml").read_text())
    smoke["defaults"] = str(tmp_path / "base.yaml")
    (tmp_path / "smoke.yaml").write_text(yaml.safe_dump(smoke, sort_keys=False))
    with pytest.raises(ProfileError, match=rf"^{tmp_path}/base.yaml: eval.tau: Input should be less than 1"):
        load_profile(tmp_path / "smoke.yaml")


def test_defaults_must_name_a_file_outside_the_chain(tmp_path, repo):
    (tmp_path / "over.yaml").write_text("defaults: params/nope.yaml\n")
    with pytest.raises(ProfileError, match=r"over.yaml: defaults: no file params/nope.yaml \(paths are relative"):
        load_profile(tmp_path / "over.yaml")
    (tmp_path / "a.yaml").write_text(f"defaults: {tmp_path}/b.yaml\n")
    (tmp_path / "b.yaml").write_text(f"defaults: {tmp_path}/a.yaml\n")
    with pytest.raises(ProfileError, match=r"b.yaml: defaults: .*a.yaml is already in the chain of bases"):
        load_profile(tmp_path / "a.yaml")


def _write(tmp_path, repo, edit):
    """A complete profile (smoke merged with its base, no defaults:), edited."""
    data = merged_profile(repo / "params/smoke.yaml")
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
    assert main(["validate", "--profile", str(_override(tmp_path, repo, {"lmdb": {"zlib": 1}}))]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "over.yaml: lmdb.zlib: unknown key" in err


def test_snakemake_refuses_a_bad_profile_key_in_one_line(tmp_path, venv_env):
    work = copy_workflow(tmp_path)
    smoke = work / "params/smoke.yaml"
    smoke.write_text(smoke.read_text().replace("\n  steps: 8\n", "\n  stepz: 8\n"))
    run = subprocess.run(["snakemake", "-n", "--configfile", "params/smoke.yaml"], cwd=work, env=venv_env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 2
    assert (run.stdout + run.stderr).strip() == "params/smoke.yaml: episodes.stepz: unknown key (not in params/base.yaml)"


def test_snakemake_schema_is_generated_from_the_models(repo):
    from jsonschema import Draft202012Validator

    assert (repo / "workflow/schemas/config.schema.json").read_text() == dump_json_schema()
    schema = json.loads(dump_json_schema())
    # the draft Snakemake validates with (else it warns on every run)
    assert schema["$schema"] == Draft202012Validator.META_SCHEMA["$schema"]
    Draft202012Validator.check_schema(schema)
    for name in PROFILES:
        Draft202012Validator(schema).validate(merged_profile(repo / "params" / f"{name}.yaml"))
