"""The games catalogue: the real params/games.yaml is complete, and bad catalogues are refused
with one line that names the file, the game and the problem."""

from __future__ import annotations

import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from actionparty.games import CANONICAL_ACTIONS, MAX_PLAYERS, CatalogueError, left_out_substrates, load_catalogue
from actionparty.games import lab2d
from actionparty.games.actions import MAX_MAP_CELLS, MIN_MAP_CELLS, MOVEMENT_NAMES, substrate_action_names
from actionparty.games.catalogue import resolve_games

CATALOGUE = Path(__file__).resolve().parents[1] / "params" / "games.yaml"


@pytest.fixture(scope="module")
def catalogue():
    return load_catalogue(CATALOGUE)


# -- the real catalogue -------------------------------------------------------------------


def test_catalogue_has_46_distinct_substrates_and_3_left_out(catalogue):
    left_out = left_out_substrates(CATALOGUE)
    substrates = [spec.substrate for spec in catalogue.values()]
    assert len(catalogue) == 46
    assert len(set(substrates)) == 46
    assert len(left_out) == 3 and all(len(reason) > 40 for reason in left_out.values())
    assert set(substrates).isdisjoint(left_out)
    assert set(substrates) | set(left_out) == lab2d.substrate_names()  # all 49, each accounted for


def test_every_game_respects_the_mini_map_rules(catalogue):
    for name, spec in catalogue.items():
        assert 2 <= spec.num_players <= MAX_PLAYERS, name
        assert MIN_MAP_CELLS <= spec.width_cells <= MAX_MAP_CELLS, name
        assert MIN_MAP_CELLS <= spec.height_cells <= MAX_MAP_CELLS, name
        assert len(spec.action_map) == len(CANONICAL_ACTIONS), name
        assert spec.action_map[: len(MOVEMENT_NAMES)] == tuple(range(len(MOVEMENT_NAMES))), name
        names = lab2d.substrate_facts(spec.substrate, spec.roles).action_names
        assert names[spec.action_map[-1]] == spec.interact_action, name
        assert spec.description and "\n" not in spec.description, name


def test_catalogue_keeps_file_order(catalogue):
    order = list(yaml.safe_load(CATALOGUE.read_text())["games"])
    assert list(catalogue) == order


def test_resolve_games_selects_from_the_profile():
    profile = SimpleNamespace(catalogue=str(CATALOGUE), games=["coins", "clean_up"])
    assert [spec.name for spec in resolve_games(profile)] == ["coins", "clean_up"]
    assert len(resolve_games(SimpleNamespace(catalogue=str(CATALOGUE), games="all"))) == 46
    with pytest.raises(CatalogueError, match="unknown game 'pong'"):
        resolve_games(profile, ["pong"])


def test_substrate_action_names_are_stable():
    names = lab2d.substrate_facts("fruit_market__concentric_rivers", ["apple_farmer", "banana_farmer"]).action_names
    assert names[:7] == MOVEMENT_NAMES
    assert "eat_apple" in names and "hold+shove=-1" in names and "offer_apple=-3+offer_banana" in names
    assert substrate_action_names(lab2d.action_set("paintball__king_of_the_hill"))[7:] == ("fireZap", "fireZap=2")


def test_spawn_points_come_from_the_legend_per_group():
    """Spawn characters are found from the prefabs' state groups, per avatar spawn group."""
    facts = lab2d.substrate_facts("predator_prey__open", ["predator", "prey"])
    assert facts.player_groups == ("predatorSpawnPoints", "preySpawnPoints")
    assert facts.spawn_chars["predatorSpawnPoints"] == {"X"}
    assert facts.spawn_chars["preySpawnPoints"] == {"*", "&"}
    assert lab2d.substrate_facts("coins", ["default"] * 2).spawn_chars["spawnPoints"] == {"_"}
    assert lab2d.substrate_facts("externality_mushrooms__dense", ["default"] * 2).spawn_chars["spawnPoints"] == {" "}


def test_game_settings_are_the_same_in_every_build():
    """coins draws its coin colours from Python's random: the draw is seeded per substrate."""
    first = lab2d.base_settings("coins", ["default"] * 2)
    assert all(lab2d.base_settings("coins", ["default"] * 2) == first for _ in range(3))


# -- bad catalogues -------------------------------------------------------------------------

GOOD_GAME = {
    "substrate": "stag_hunt_in_the_matrix__repeated",
    "description": "Two players collect tokens.",
    "roles": ["default", "default"],
    "map": "WWWWWWW\nWn 1 nW\nW  2  W\nWn a  W\nWWWWWWW\n",
    "actions": {
        "NOOP": "NOOP",
        "FORWARD": "FORWARD",
        "BACKWARD": "BACKWARD",
        "STRAFE_LEFT": "STEP_LEFT",
        "STRAFE_RIGHT": "STEP_RIGHT",
        "TURN_LEFT": "TURN_LEFT",
        "TURN_RIGHT": "TURN_RIGHT",
        "INTERACT": "interact",
    },
}


def write_catalogue(tmp_path, games: dict, left_out: dict | None = None, **top) -> Path:
    path = tmp_path / "games.yaml"
    data = {"schema_version": 1, "left_out": left_out or {}, "games": games, **top}
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def with_changes(**changes) -> dict:
    game = {key: (dict(value) if isinstance(value, dict) else value) for key, value in GOOD_GAME.items()}
    for key, value in changes.items():
        if value is None:
            del game[key]
        else:
            game[key] = value
    return game


def test_a_good_minimal_catalogue_loads(tmp_path):
    (spec,) = load_catalogue(write_catalogue(tmp_path, {"mini": GOOD_GAME})).values()
    assert (spec.num_players, spec.width_cells, spec.height_cells) == (2, 7, 5)
    assert spec.ascii_map[1] == "Wn 1 nW"
    assert spec.interact_action == "interact" and spec.action_map == (0, 1, 2, 3, 4, 5, 6, 7)


BAD_GAMES = {
    "unknown substrate": (with_changes(substrate="pong"), "unknown substrate 'pong'"),
    "character not in legend": (
        with_changes(map="WWWWWWW\nWn 1 nW\nW  Z  W\nWn a  W\nWWWWWWW\n"),
        "map row 2 column 3: character 'Z' is not in the substrate's legend",
    ),
    "non-rectangular map": (
        with_changes(map="WWWWWWW\nWn 1 nW\nW  2 W\nWn a  W\nWWWWWWW\n"),
        "map row 2 has 6 cells, row 0 has 7 (map must be rectangular)",
    ),
    "too few spawn points": (
        with_changes(roles=["default"] * 4),
        "map has 3 spawn points of group 'spawnPoints' (characters 'n'), 4 players spawn there",
    ),
    "too many players": (with_changes(roles=["default"] * 8), "8 players (roles); a game has 2 to 7"),
    "too few players": (with_changes(roles=["default"]), "1 players (roles); a game has 2 to 7"),
    "unknown role": (with_changes(roles=["default", "king"]), "unknown role 'king'"),
    "unmappable action": (
        with_changes(actions={**GOOD_GAME["actions"], "INTERACT": "fireZap"}),
        "actions: INTERACT -> 'fireZap' is not in the substrate's action set",
    ),
    "movement mapped elsewhere": (
        with_changes(actions={**GOOD_GAME["actions"], "FORWARD": "BACKWARD"}),
        "actions: FORWARD must map to 'FORWARD', not 'BACKWARD'",
    ),
    "missing canonical action": (
        with_changes(actions={k: v for k, v in GOOD_GAME["actions"].items() if k != "INTERACT"}),
        "actions: missing canonical action 'INTERACT'",
    ),
    "map too large": (
        with_changes(map="\n".join(["W" * 13] + ["Wn" + " " * 9 + "nW"] * 3 + ["W" * 13]) + "\n"),
        "map is 13x5 cells; each side must be 5 to 12 cells",
    ),
    "map too small": (with_changes(map="WWWW\nWnnW\nWWWW\n"), "map is 4x3 cells; each side must be 5 to 12 cells"),
    "unknown key": (with_changes(colour="red"), "unknown key 'colour'"),
    "missing key": (with_changes(description=None), "missing key 'description'"),
    "bad settings path": (
        with_changes(settings={"simulation": {"prefabs": {"unicorn": {"x": 1}}}}),
        "bad settings override: settings.simulation.prefabs.unicorn: no such setting",
    ),
    "settings override the map": (
        with_changes(settings={"simulation": {"map": "WWW"}}),
        "settings may not override numPlayers or simulation.map",
    ),
    "substrate refuses the player count": (
        with_changes(substrate="coins", roles=["default"] * 3, map="WWWWW\nW___W\nWCCCW\nWWWWW\nWWWWW\n",
                     actions={**GOOD_GAME["actions"], "INTERACT": "NOOP"}),
        "substrate 'coins' refuses 3 players",
    ),
}


@pytest.mark.parametrize("case", list(BAD_GAMES))
def test_bad_game_is_refused_with_one_line(tmp_path, case):
    game, problem = BAD_GAMES[case]
    path = write_catalogue(tmp_path, {"mini": game})
    with pytest.raises(CatalogueError) as err:
        load_catalogue(path)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: game 'mini': "), message
    assert problem in message, message


def test_duplicate_substrate_is_refused(tmp_path):
    path = write_catalogue(tmp_path, {"first": GOOD_GAME, "second": GOOD_GAME})
    with pytest.raises(CatalogueError, match=r"game 'second': duplicate substrate .* \(already used by game 'first'\)"):
        load_catalogue(path)


def test_left_out_substrate_cannot_be_a_game(tmp_path):
    path = write_catalogue(tmp_path, {"mini": GOOD_GAME}, left_out={GOOD_GAME["substrate"]: "no room for it here"})
    with pytest.raises(CatalogueError, match="game 'mini': substrate .* is listed in left_out"):
        load_catalogue(path)


@pytest.mark.parametrize(
    "text, problem",
    [
        ("schema_version: 1\nleft_out: {}\ngames: {}\nextra: 1\n", "unknown key 'extra'"),
        ("schema_version: 1\nleft_out: {}\n", "missing key 'games'"),
        ("schema_version: 2\nleft_out: {}\ngames: {}\n", "schema_version 2 is not 1"),
        ("schema_version: 1\nleft_out: {pong: too old}\ngames: {}\n", "left_out: unknown substrate 'pong'"),
        ("games: [a, b\n", "not valid YAML (line 2)"),
    ],
)
def test_bad_catalogue_file_is_refused(tmp_path, text, problem):
    path = tmp_path / "games.yaml"
    path.write_text(textwrap.dedent(text))
    with pytest.raises(CatalogueError) as err:
        load_catalogue(path)
    assert str(err.value).startswith(f"{path}: ") and problem in str(err.value)
    assert "\n" not in str(err.value)


def test_missing_catalogue_file_is_refused(tmp_path):
    with pytest.raises(CatalogueError, match="catalogue file not found"):
        load_catalogue(tmp_path / "nope.yaml")


@pytest.mark.parametrize("name", ["co`touch pwned`ins", "../escape", "Coins", "two words", "a;b"])
def test_a_game_name_that_could_reach_a_shell_or_a_path_is_refused(tmp_path, name):
    """Game names become the DAG's {game} wildcard, file paths and words of shell lines."""
    path = write_catalogue(tmp_path, {name: GOOD_GAME})
    with pytest.raises(CatalogueError) as err:
        load_catalogue(path)
    assert "\n" not in str(err.value) and "must match" in str(err.value) and not (tmp_path / "pwned").exists()
