"""Evaluation protocols (docs/EVALUATION.md, Protocols): the test split's seeds played again by
another policy. The policies' statistics and determinism, real Melting Pot episodes from the same
engine starts as the test split's, their real LMDB, the profile's validation, and the DAG's jobs."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest
import yaml

from actionparty.cli import main
from actionparty.config import EXTRA_PROTOCOLS, load_profile, merged_profile
from actionparty.data.episodes import (
    generate_episodes,
    one_mover_actions,
    protocol_actions,
    sticky_actions,
    uniform_actions,
)
from actionparty.data.lmdb_dataset import ClipDataset, build_lmdb
from actionparty.data.npz import load_npz
from actionparty.errors import ProfileError, UserError
from actionparty.games import resolve_games
from actionparty.games.actions import CANONICAL_ACTIONS, NOOP
from conftest import copy_workflow, job_counts

ACTIONS = len(CANONICAL_ACTIONS)


def rng(seed=0):
    return np.random.default_rng([seed, 7])


def test_one_mover_moves_exactly_one_player_per_step_uniformly():
    steps, players = 7000, 7
    actions = one_mover_actions(rng(), steps, players)
    assert actions.shape == (steps, players) and actions.dtype == np.int8
    moving = actions != NOOP
    assert (moving.sum(axis=1) == 1).all()  # exactly one non-NOOP per step, everyone else NOOP
    # The mover: uniform over the players; its action: uniform over the 7 non-NOOP actions
    # (expected 1000 each; 5 standard deviations is about +-150).
    movers = np.bincount(moving.argmax(axis=1), minlength=players)
    moves = np.bincount(actions[moving], minlength=ACTIONS)
    assert moves[NOOP] == 0
    assert np.abs(movers - steps / players).max() < 150, movers
    assert np.abs(moves[1:] - steps / (ACTIONS - 1)).max() < 150, moves


def test_uniform_draws_every_action_without_stickiness():
    steps, players = 8000, 4
    actions = uniform_actions(rng(), steps, players)
    assert actions.shape == (steps, players) and actions.dtype == np.int8
    counts = np.bincount(actions.ravel(), minlength=ACTIONS)
    assert counts.min() > 0 and np.abs(counts - actions.size / ACTIONS).max() < 5 * np.sqrt(actions.size / ACTIONS)
    # A repeat of the previous action happens by chance only (1/8), not as in the sticky policy.
    repeats = (actions[1:] == actions[:-1]).mean()
    assert abs(repeats - 1 / ACTIONS) < 0.01, repeats
    probs = load_profile("params/smoke.yaml").episodes.policy.probabilities()
    sticky = sticky_actions(rng(), steps, players, probs, 0.5)
    assert (sticky[1:] == sticky[:-1]).mean() > 0.5


@pytest.mark.parametrize("protocol", ["episodes", *EXTRA_PROTOCOLS])
def test_policies_are_deterministic_given_the_seed(protocol):
    probs = load_profile("params/smoke.yaml").episodes.policy.probabilities()
    first = protocol_actions(protocol, rng(3), 50, 5, probs, 0.5)
    assert np.array_equal(first, protocol_actions(protocol, rng(3), 50, 5, probs, 0.5))
    assert not np.array_equal(first, protocol_actions(protocol, rng(4), 50, 5, probs, 0.5))
    if protocol == "episodes":  # the test split's policy is the sticky one, as it was
        assert np.array_equal(first, sticky_actions(rng(3), 50, 5, probs, 0.5))


def test_unknown_protocol_and_a_protocol_of_another_split_are_refused(tmp_path):
    probs = load_profile("params/smoke.yaml").episodes.policy.probabilities()
    with pytest.raises(UserError, match="unknown protocol 'bogus'"):
        protocol_actions("bogus", rng(), 5, 2, probs, 0.5)
    profile = load_profile("params/smoke.yaml")
    (spec,) = resolve_games(profile, ["coins"])
    with pytest.raises(UserError, match="protocol 'uniform' replays the test split's episodes"):
        generate_episodes(spec, "train", profile, tmp_path / "out", progress=False, protocol="uniform")
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def played(tmp_path_factory):
    """A real game's test episodes (smoke profile) under every protocol, and their LMDBs."""
    root = tmp_path_factory.mktemp("protocols")
    profile = load_profile("params/smoke.yaml")
    (spec,) = resolve_games(profile, ["coins"])
    out = {}
    for protocol in ("episodes", *EXTRA_PROTOCOLS):
        name = "test" if protocol == "episodes" else f"test_{protocol}"
        folder = root / "episodes" / name / spec.name
        manifest = generate_episodes(spec, "test", profile, folder, progress=False, protocol=protocol)
        lmdb = root / f"{name}.lmdb"
        build_lmdb([folder], lmdb, "test", profile.lmdb.map_size_mb, profile.lmdb.zlib_level, progress=False)
        episodes = [load_npz(folder / e["file"]) for e in manifest["episodes"]]
        out[protocol] = dict(folder=folder, manifest=manifest, lmdb=lmdb, episodes=episodes)
    return profile, spec, out


def test_protocol_episodes_start_where_the_test_split_starts(played):
    profile, spec, out = played
    test = out["episodes"]
    assert "protocol" not in test["manifest"]  # the test split's manifest as it always was
    for protocol in EXTRA_PROTOCOLS:
        got = out[protocol]
        assert got["manifest"]["protocol"] == protocol and got["manifest"]["split"] == "test"
        assert [e["seed"] for e in got["manifest"]["episodes"]] == [e["seed"] for e in test["manifest"]["episodes"]]
        assert len(got["episodes"]) == profile.episodes.per_split.test
        for mine, theirs in zip(got["episodes"], test["episodes"]):
            assert np.array_equal(mine["frames"][0], theirs["frames"][0])  # the same engine start
            assert np.array_equal(mine["position"][0], theirs["position"][0])
            assert not np.array_equal(mine["actions"], theirs["actions"])  # another policy
            assert mine["actions"].shape == (profile.episodes.steps, spec.num_players)
    for arrays in out["one_mover"]["episodes"]:
        assert ((arrays["actions"] != NOOP).sum(axis=1) == 1).all()


def test_protocol_episodes_are_byte_reproducible(played, tmp_path):
    profile, spec, out = played
    again = generate_episodes(spec, "test", profile, tmp_path / "again", progress=False, protocol="one_mover")
    assert again["episodes"] == out["one_mover"]["manifest"]["episodes"]  # same files, same sha256


def test_protocol_lmdb_is_a_test_split_naming_its_protocol(played):
    profile, _, out = played
    assert "protocol" not in ClipDataset(out["episodes"]["lmdb"], clip_steps=1).meta
    for protocol in EXTRA_PROTOCOLS:
        ds = ClipDataset(out[protocol]["lmdb"], clip_steps=4, expect_canvas_px=profile.canvas_px)
        assert ds.meta["split"] == "test" and ds.meta["protocol"] == protocol
        clip = ds.clip(0, 0)
        assert np.array_equal(clip["actions"][:, : out[protocol]["episodes"][0]["actions"].shape[1]].numpy(),
                              out[protocol]["episodes"][0]["actions"][:4])


def test_evaluate_refuses_a_test_lmdb_of_another_protocol(played, tmp_path, capsys):
    _, _, out = played
    for lmdb, protocol, found in [(out["episodes"]["lmdb"], "uniform", "episodes"),
                                  (out["uniform"]["lmdb"], "one_mover", "uniform")]:
        code = main(["evaluate", "--profile", "params/smoke.yaml", "--variant", "full", "--protocol", protocol,
                     "--test-lmdb", str(lmdb), "--detectors", str(tmp_path / "none.pt"),
                     "--rollouts", str(tmp_path / "h4.npz"), "--out", str(tmp_path / "m.json")])
        err = capsys.readouterr().err.strip()
        assert code == 2 and err.count("\n") == 0
        assert f"test episodes of protocol '{found}', not --protocol {protocol}" in err


def _bad(tmp_path, edit):
    data = merged_profile("params/smoke.yaml")
    edit(data["protocols"])
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda p: p.update(names=["one_mover", "bogus"]),
         r"^\S*bad.yaml: protocols.names: Value error, unknown protocol 'bogus'; known: one_mover, uniform$"),
        (lambda p: p.update(names=["episodes"]), r"protocols.names: .*unknown protocol 'episodes' \(the test split's"),
        (lambda p: p.update(names=["uniform", "uniform"]), r"protocols.names: Value error, a protocol is listed twice"),
        (lambda p: p.update(models=["full", "nope"]),
         r"^\S*bad.yaml: protocols.models: Value error, unknown model 'nope' \(no params/variants/nope.yaml\)$"),
        (lambda p: p.update(models=["oracle"]), r"protocols.models: Value error, 'oracle' is not rolled out"),
        (lambda p: p.update(models=["no_msa-s3"]), r"protocols.models: 'no_msa-s3' is not a model of this profile"),
        (lambda p: p.update(models=[]), r"protocols: names and models are both empty"),
        (lambda p: p.update(horizon=4), r"bad.yaml: protocols.horizon: unknown key$"),
    ],
)
def test_bad_protocols_are_refused_in_one_line_naming_the_key(tmp_path, edit, message):
    with pytest.raises(ProfileError, match=message) as err:
        load_profile(_bad(tmp_path, edit))
    assert "\n" not in str(err.value)


def test_smoke_dry_run_lists_the_protocol_jobs(venv_env, tmp_path):
    work = copy_workflow(tmp_path)
    run = subprocess.run(["snakemake", "all", "-n", "-p", "--cores", "2", "--configfile", "params/smoke.yaml"],
                         cwd=work, env=venv_env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    out = run.stdout + run.stderr
    profile = load_profile(work / "params/smoke.yaml")
    protocols, models, games = profile.protocols.names, profile.protocols.models, profile.games
    assert sorted(protocols) == sorted(EXTRA_PROTOCOLS) and models == ["full", "static"]
    counts = job_counts(out)
    assert {rule: counts.get(rule) for rule in ("protocol_episodes", "protocol_lmdb", "protocol_rollout",
                                                "protocol_metrics", "protocol_oracle_metrics")} == {
        "protocol_episodes": len(protocols) * len(games), "protocol_lmdb": len(protocols),
        "protocol_rollout": len(protocols) * len(models), "protocol_metrics": len(protocols) * len(models),
        "protocol_oracle_metrics": len(protocols)}
    horizon = min(profile.rollout.horizons)
    for protocol in protocols:
        assert f"--split test --protocol {protocol} --out data/episodes/test_{protocol}/coins" in out
        assert f"--lmdb data/lmdb/test_{protocol}.lmdb --horizon {horizon}" in out
        for model in models:
            assert f"--out results/rollouts/{protocol}/{model}/h{horizon}.npz" in out
            assert f"--variant {model} --protocol {protocol}" in out
            assert f"--out results/metrics/{protocol}/{model}.json" in out
    # The test split's own jobs keep their paths.
    assert "--out results/rollouts/full/h4.npz" in out and "--out results/metrics/full.json" in out
