"""The environment adapter: every catalogue game runs on its mini map, and its labels (cell,
facing, visible, interact effect) agree with the actions and with the pixels."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest
import yaml

from actionparty.games import CANONICAL_ACTIONS, CELL_PX, GameEnv, lab2d, load_catalogue
from actionparty.games.actions import (
    BACKWARD,
    FACING_STEP,
    FORWARD,
    INTERACT,
    NOOP,
    STRAFE_LEFT,
    STRAFE_RIGHT,
    TURN_LEFT,
    TURN_RIGHT,
)
from actionparty.games.env import _LuaStdout

CATALOGUE = Path(__file__).resolve().parents[1] / "params" / "games.yaml"
GAME_NAMES = list(yaml.safe_load(CATALOGUE.read_text())["games"])
MOVES = {FORWARD: 0, STRAFE_RIGHT: 1, BACKWARD: 2, STRAFE_LEFT: 3}  # quarter turns from the facing


@pytest.fixture(scope="module")
def catalogue():
    return load_catalogue(CATALOGUE)


def check_record(rec, spec):
    p, h, w = spec.num_players, spec.height_cells, spec.width_cells
    assert rec.frame.dtype == np.uint8 and rec.frame.shape == (h * CELL_PX, w * CELL_PX, 3)
    assert rec.position.dtype == np.int16 and rec.position.shape == (p, 2)
    assert rec.facing.dtype == np.int8 and rec.facing.shape == (p,)
    assert rec.visible.dtype == bool and rec.visible.shape == (p,)
    assert rec.interact_effect.dtype == bool and rec.interact_effect.shape == (p,)
    assert ((rec.facing >= 0) & (rec.facing < 4)).all()
    seen = rec.position[rec.visible]
    assert ((seen >= 0) & (seen < [w, h])).all(), "a visible player outside the map"
    assert len({tuple(xy) for xy in seen.tolist()}) == len(seen), "two visible players in one cell"


@pytest.mark.parametrize("name", GAME_NAMES)
def test_game_builds_resets_and_steps(catalogue, name):
    spec = catalogue[name]
    facts = lab2d.substrate_facts(spec.substrate, spec.roles)
    with GameEnv(spec, seed=0) as env:
        assert env.num_players == spec.num_players
        assert env.frame_shape == (spec.height_cells * CELL_PX, spec.width_cells * CELL_PX, 3)
        first = env.reset()
        check_record(first, spec)
        assert first.visible.all() and not first.interact_effect.any()
        # Positions are cells of the ascii map: every player starts on a spawn point of its group.
        for player, (x, y) in enumerate(first.position.tolist()):
            assert spec.ascii_map[y][x] in facts.spawn_chars[facts.player_groups[player]]
        for action in (FORWARD, TURN_RIGHT, INTERACT, BACKWARD):
            check_record(env.step(np.full(spec.num_players, action)), spec)
        assert env.running


def sticky_random_actions(rng, steps, players, interact_weight=1.0):
    weights = np.array([1, 2, 1, 1, 1, 1, 1, interact_weight])
    fresh = rng.choice(len(CANONICAL_ACTIONS), size=(steps, players), p=weights / weights.sum())
    keep = rng.random((steps, players)) < 0.5
    for t in range(1, steps):
        fresh[t] = np.where(keep[t], fresh[t - 1], fresh[t])
    return fresh


def expected_move(action: int, facing: int) -> tuple[int, int]:
    if action not in MOVES:
        return (0, 0)
    return FACING_STEP[(facing + MOVES[action]) % 4]


@pytest.mark.parametrize(
    "name",
    ["coins", "cooking_asymmetric", "clean_up", "predator_prey_orchard", "running_with_scissors_arena", "territory_open"],
)
def test_labels_follow_actions_and_pixels(catalogue, name):
    """Over sticky random play (2 to 7 players): moves go one cell along the facing or are
    blocked, turns turn by one quarter (or not at all while frozen), nothing else moves or
    turns a visible player, and a visible player's cell shows a sprite over the empty cell."""
    spec = catalogue[name]
    rng = np.random.default_rng(7)
    actions = sticky_random_actions(rng, 250, spec.num_players)
    empty_cell = {}  # (x, y) -> pixels of that cell the last time no player reported it
    moved = turned = sprite_checks = 0
    with GameEnv(spec, seed=3) as env:
        prev = env.reset()
        for t, step_actions in enumerate(actions):
            rec = env.step(step_actions)
            check_record(rec, spec)
            for p, action in enumerate(step_actions.tolist()):
                if not (prev.visible[p] and rec.visible[p]):
                    continue
                delta = tuple((rec.position[p] - prev.position[p]).tolist())
                assert delta in {(0, 0), expected_move(action, int(prev.facing[p]))}, (t, p, action, delta)
                moved += delta != (0, 0)
                turn = (int(rec.facing[p]) - int(prev.facing[p])) % 4
                allowed = {TURN_LEFT: {0, 3}, TURN_RIGHT: {0, 1}}.get(action, {0})
                assert turn in allowed, (t, p, action, turn)
                turned += turn != 0
            # Effects only ever follow INTERACT.
            assert not rec.interact_effect[step_actions != INTERACT].any()
            occupied = {tuple(xy) for xy in rec.position.tolist()}
            for p in np.flatnonzero(rec.visible):
                x, y = rec.position[p].tolist()
                if (x, y) in empty_cell:
                    cell = rec.frame[y * CELL_PX : (y + 1) * CELL_PX, x * CELL_PX : (x + 1) * CELL_PX]
                    assert not np.array_equal(cell, empty_cell[(x, y)]), f"step {t}: no sprite at player {p}'s cell"
                    sprite_checks += 1
            for y in range(spec.height_cells):
                for x in range(spec.width_cells):
                    if (x, y) not in occupied:
                        empty_cell[(x, y)] = rec.frame[y * CELL_PX : (y + 1) * CELL_PX, x * CELL_PX : (x + 1) * CELL_PX]
            prev = rec
    assert moved > 20 and turned > 20 and sprite_checks > 100


def zap_events(env) -> list[int]:
    """0-based targets of this step's Lua 'zap' events (the test's independent oracle)."""
    targets = []
    for name, payload in env._env.events():
        if name == "zap":
            fields = list(payload)
            targets.append(int(fields[fields.index(b"target") + 1]) - 1)
    return targets


def test_zapped_players_are_invisible_until_they_respawn(catalogue):
    """commons_harvest removes a zapped player for framesTillRespawn steps: the visible flags
    must match what the Lua zap events say, step for step. The only other way to be flagged
    invisible is to stand under an opaque beam (the cell is then one flat colour)."""
    spec = catalogue["commons_harvest_open"]
    settings = lab2d.game_settings(spec.substrate, spec.roles, spec.ascii_map, spec.settings)
    zapper = next(c for c in lab2d.avatar_objects(settings)[0]["components"] if c["component"] == "Zapper")
    respawn = zapper["kwargs"]["framesTillRespawn"]
    rng = np.random.default_rng(1)
    actions = sticky_random_actions(rng, 300, spec.num_players, interact_weight=6.0)
    gone_until = np.full(spec.num_players, -1)
    zaps = removed_steps = 0
    with GameEnv(spec, seed=1) as env:
        env.reset()
        for t, step_actions in enumerate(actions):
            rec = env.step(step_actions)
            for target in zap_events(env):
                gone_until[target] = t + respawn
                zaps += 1
            removed = t <= gone_until
            assert not rec.visible[removed].any(), f"step {t}: a removed player is flagged visible"
            for p in np.flatnonzero(~rec.visible & ~removed):
                x, y = rec.position[p].tolist()
                cell = rec.frame[y * CELL_PX : (y + 1) * CELL_PX, x * CELL_PX : (x + 1) * CELL_PX]
                assert len(np.unique(cell.reshape(-1, 3), axis=0)) == 1, f"step {t}: player {p} hidden by what?"
            removed_steps += removed.sum()
    assert zaps >= 3 and removed_steps >= 3 * respawn


def test_interact_effects_are_recorded(catalogue):
    """Cooks picking up and putting down, and the cleaning beam, show as effects; coins has no
    interaction, so its INTERACT never has one."""
    for name, at_least in (("cooking_asymmetric", 5), ("clean_up", 5), ("coins", 0)):
        spec = catalogue[name]
        actions = sticky_random_actions(np.random.default_rng(0), 200, spec.num_players, interact_weight=4.0)
        with GameEnv(spec, seed=0) as env:
            env.reset()
            effects = sum(int(env.step(a).interact_effect.sum()) for a in actions)
        assert effects >= at_least if at_least else effects == 0, (name, effects)


def test_step_refuses_bad_actions_and_steps_before_reset(catalogue):
    spec = catalogue["coins"]
    with GameEnv(spec, seed=0) as env:
        with pytest.raises(RuntimeError, match="call reset"):
            env.step(np.zeros(2, int))
        env.reset()
        with pytest.raises(ValueError, match="expected 2 action ids"):
            env.step(np.zeros(3, int))
        with pytest.raises(ValueError, match="expected 2 action ids"):
            env.step(np.array([0, 8]))
        env.step(np.array([NOOP, FORWARD]))
        assert env.reset().visible.all()  # a second episode in the same env
    with pytest.raises(RuntimeError, match="closed"):
        env.reset()


def test_lua_stdout_is_kept_out_of_ours(capfd, caplog):
    """Text written to fd 1 while dmlab2d runs lands in the capture file, is logged at DEBUG,
    and our own prints before and after still reach stdout."""
    caplog.set_level(logging.DEBUG, logger="actionparty.games.env")
    lua = _LuaStdout()
    print("before", flush=True)
    lua.enter()
    os.write(1, b"WARNING: lua says hi\n")
    lua.exit()
    print("after", flush=True)
    lua.close()
    assert capfd.readouterr().out == "before\nafter\n"
    assert "lua: WARNING: lua says hi" in caplog.text


def test_env_runs_keep_stdout_clean(catalogue, capfd):
    spec = catalogue["chicken_repeated"]
    with GameEnv(spec, seed=0) as env:
        env.reset()
        for _ in range(20):
            env.step(np.full(spec.num_players, INTERACT))
    assert capfd.readouterr().out == ""
