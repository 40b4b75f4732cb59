"""The games catalogue (params/games.yaml): Melting Pot substrates on hand-made mini maps.

File layout::

    schema_version: 1
    left_out: {<substrate>: <why it is not in the catalogue>, ...}
    games:
      <name>:
        substrate: <key of meltingpot.substrate.SUBSTRATES>
        description: <one paragraph, the text prompt>
        roles: [<role>, ...]              # one per player, 2..7 players
        map: |                            # rectangular, 5..12 cells a side, legend characters only
          ...
        actions: {NOOP: NOOP, FORWARD: FORWARD, ..., INTERACT: <substrate action name>}
        settings: {...}                   # optional overrides of the substrate's lab2d settings

Every problem is refused with a :class:`CatalogueError` whose message is one line naming the
file, the game and the problem.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from actionparty.errors import UserError
from actionparty.games import lab2d
from actionparty.games.actions import (
    CANONICAL_ACTIONS,
    MAX_MAP_CELLS,
    MAX_PLAYERS,
    MIN_MAP_CELLS,
    MIN_PLAYERS,
    MOVEMENT_NAMES,
)

SCHEMA_VERSION = 1
TOP_KEYS = ("schema_version", "left_out", "games")
REQUIRED_KEYS = ("substrate", "description", "roles", "map", "actions")
OPTIONAL_KEYS = ("settings",)


class CatalogueError(UserError, ValueError):
    """A catalogue problem, in one line: file, game, what is wrong."""


@dataclass(frozen=True)
class GameSpec:
    """One catalogue game: a substrate, its mini map, players and action mapping."""

    name: str  # catalogue key
    substrate: str  # key of meltingpot.substrate.SUBSTRATES
    description: str  # one paragraph, used as the text prompt
    ascii_map: tuple[str, ...]  # rows of the mini map
    roles: tuple[str, ...]  # one per player
    action_map: tuple[int, ...]  # (8,) canonical action id -> index into the substrate's action set
    interact_action: str  # name of the substrate action used for INTERACT
    settings: Mapping[str, Any] = field(default_factory=dict, hash=False)  # lab2d overrides (nested merge)

    @property
    def num_players(self) -> int:
        return len(self.roles)

    @property
    def width_cells(self) -> int:
        return len(self.ascii_map[0])

    @property
    def height_cells(self) -> int:
        return len(self.ascii_map)


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise CatalogueError(f"{path}: catalogue file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise CatalogueError(f"{path}: not valid YAML{where}: {getattr(err, 'problem', err)}") from None
    if not isinstance(data, dict):
        raise CatalogueError(f"{path}: expected a mapping with keys {', '.join(TOP_KEYS)}")
    unknown = sorted(set(data) - set(TOP_KEYS))
    if unknown:
        raise CatalogueError(f"{path}: unknown key '{unknown[0]}' (known: {', '.join(TOP_KEYS)})")
    missing = [key for key in TOP_KEYS if key not in data]
    if missing:
        raise CatalogueError(f"{path}: missing key '{missing[0]}'")
    if data["schema_version"] != SCHEMA_VERSION:
        raise CatalogueError(f"{path}: schema_version {data['schema_version']!r} is not {SCHEMA_VERSION}")
    for key in ("left_out", "games"):
        if not isinstance(data[key], dict):
            raise CatalogueError(f"{path}: '{key}' must be a mapping")
    return data


def left_out_substrates(path: str | Path) -> dict[str, str]:
    """Substrates deliberately not in the catalogue -> the recorded reason."""
    path = Path(path)
    data = _read_yaml(path)
    known = lab2d.substrate_names()
    for substrate, reason in data["left_out"].items():
        if substrate not in known:
            raise CatalogueError(f"{path}: left_out: unknown substrate '{substrate}'")
        if not isinstance(reason, str) or not reason.strip():
            raise CatalogueError(f"{path}: left_out: substrate '{substrate}' needs a reason")
    return {substrate: " ".join(reason.split()) for substrate, reason in data["left_out"].items()}


from actionparty.variants import NAME_PATTERN as GAME_NAME  # the same rule as for model names


def load_catalogue(path: str | Path, games: Sequence[str] | None = None) -> dict[str, GameSpec]:
    """Read and validate the catalogue; games in file order.

    Building a game's lab2d settings (the part of validation that takes time) is done for
    ``games`` only when given (a stage that needs one game need not check all 46); the
    file-level checks (left-out list, duplicate substrates, unknown names) always cover all.
    """
    path = Path(path)
    data = _read_yaml(path)
    left_out = left_out_substrates(path)
    if games is not None:
        unknown = [name for name in games if name not in data["games"]]
        if unknown:
            raise CatalogueError(f"{path}: unknown game '{unknown[0]}' (see docs/GAMES.md for the list)")
    result: dict[str, GameSpec] = {}
    used: dict[str, str] = {}  # substrate -> game
    for name, entry in data["games"].items():
        # Game names become file paths and words of shell lines (the DAG's {game} wildcard).
        if not isinstance(name, str) or not GAME_NAME.fullmatch(name):
            raise CatalogueError(f"{path}: game name {name!r} must match {GAME_NAME.pattern} "
                                 "(lower-case letters, digits, _)")
        substrate = entry.get("substrate") if isinstance(entry, dict) else None
        if substrate in left_out:
            raise CatalogueError(f"{path}: game '{name}': substrate '{substrate}' is listed in left_out")
        if substrate in used:
            raise CatalogueError(
                f"{path}: game '{name}': duplicate substrate '{substrate}' (already used by game '{used[substrate]}')"
            )
        used[substrate] = name
        if games is None or name in games:
            result[str(name)] = _parse_game(str(path), str(name), entry)
    return result


def game_descriptions(path: str | Path) -> dict[str, str]:
    """Every game's description (whitespace normalised as in GameSpec), without building games."""
    data = _read_yaml(Path(path))
    return {str(name): " ".join(str(entry.get("description", "")).split()) for name, entry in data["games"].items()}


def resolve_games(profile, names: Sequence[str] | None = None) -> list[GameSpec]:
    """The GameSpecs a profile asks for (``profile.catalogue``, ``profile.games``: a list of
    names or ``"all"``), or ``names`` from that catalogue when given."""
    wanted = names if names is not None else profile.games
    if wanted == "all":
        return list(load_catalogue(profile.catalogue).values())
    catalogue = load_catalogue(profile.catalogue, list(wanted))
    return [catalogue[name] for name in wanted]  # in the order asked for


# -- one game -----------------------------------------------------------------------------


def _parse_game(source: str, name: str, entry: Any) -> GameSpec:
    def fail(problem: str) -> CatalogueError:
        return CatalogueError(f"{source}: game '{name}': {problem}")

    if not isinstance(entry, dict):
        raise fail("entry must be a mapping")
    unknown = sorted(set(entry) - set(REQUIRED_KEYS) - set(OPTIONAL_KEYS))
    if unknown:
        raise fail(f"unknown key '{unknown[0]}' (known: {', '.join(REQUIRED_KEYS + OPTIONAL_KEYS)})")
    missing = [key for key in REQUIRED_KEYS if key not in entry]
    if missing:
        raise fail(f"missing key '{missing[0]}'")

    substrate = entry["substrate"]
    if substrate not in lab2d.substrate_names():
        raise fail(f"unknown substrate '{substrate}'")
    description = entry["description"]
    if not isinstance(description, str) or not description.strip():
        raise fail("description must be a non-empty string")

    roles = entry["roles"]
    if not isinstance(roles, list) or not all(isinstance(role, str) for role in roles):
        raise fail("roles must be a list of role names")
    if not MIN_PLAYERS <= len(roles) <= MAX_PLAYERS:
        raise fail(f"{len(roles)} players (roles); a game has {MIN_PLAYERS} to {MAX_PLAYERS}")
    valid = lab2d.valid_roles(substrate)
    bad = [role for role in roles if role not in valid]
    if bad:
        raise fail(f"unknown role '{bad[0]}' for substrate '{substrate}' (valid: {', '.join(sorted(valid))})")
    try:
        facts = lab2d.substrate_facts(substrate, roles)
    except (AssertionError, ValueError) as err:  # e.g. coins: "Wrong number of players"
        raise fail(f"substrate '{substrate}' refuses {len(roles)} players {roles}: {err}") from None

    ascii_map = _parse_map(entry["map"], facts, fail)
    _check_spawn_points(ascii_map, facts, fail)
    action_map, interact = _parse_actions(entry["actions"], facts, fail)

    settings = entry.get("settings") or {}
    if not isinstance(settings, dict):
        raise fail("settings must be a mapping of overrides")
    # The map and the player count come from `map:` and `roles:`; overriding them would break
    # the frame shape and the labels.
    if "numPlayers" in settings or "map" in (settings.get("simulation") or {}):
        raise fail("settings may not override numPlayers or simulation.map (use roles: and map:)")
    try:
        lab2d.game_settings(substrate, roles, ascii_map, settings)
    except lab2d.OverrideError as err:
        raise fail(f"bad settings override: {err}") from None
    except (AssertionError, ValueError, KeyError, IndexError) as err:  # the substrate's own builder
        raise fail(f"substrate '{substrate}' cannot build this game: {type(err).__name__}: {err}") from None

    return GameSpec(
        name=name,
        substrate=substrate,
        description=" ".join(description.split()),
        ascii_map=ascii_map,
        roles=tuple(roles),
        action_map=action_map,
        interact_action=interact,
        settings=settings,
    )


def _parse_map(text: Any, facts: lab2d.SubstrateFacts, fail) -> tuple[str, ...]:
    if not isinstance(text, str):
        raise fail("map must be a block string, one line per row")
    rows = text.strip("\n").split("\n")
    for i, row in enumerate(rows):
        if len(row) != len(rows[0]):
            raise fail(f"map row {i} has {len(row)} cells, row 0 has {len(rows[0])} (map must be rectangular)")
    height, width = len(rows), len(rows[0])
    if not (MIN_MAP_CELLS <= width <= MAX_MAP_CELLS and MIN_MAP_CELLS <= height <= MAX_MAP_CELLS):
        raise fail(f"map is {width}x{height} cells; each side must be {MIN_MAP_CELLS} to {MAX_MAP_CELLS} cells")
    for i, row in enumerate(rows):
        for j, char in enumerate(row):
            if char not in facts.legend and char != lab2d.EMPTY_CELL:
                raise fail(
                    f"map row {i} column {j}: character {char!r} is not in the substrate's legend "
                    f"(charPrefabMap {''.join(sorted(facts.legend))!r}, or ' ' for an empty cell)"
                )
    return tuple(rows)


def _check_spawn_points(ascii_map: tuple[str, ...], facts: lab2d.SubstrateFacts, fail) -> None:
    for group in sorted(set(facts.player_groups)):
        chars = facts.spawn_chars[group]
        have = sum(row.count(char) for row in ascii_map for char in chars)
        need = facts.player_groups.count(group)
        if have < need:
            raise fail(
                f"map has {have} spawn points of group '{group}' (characters {''.join(sorted(chars))!r}), "
                f"{need} players spawn there"
            )


def _parse_actions(actions: Any, facts: lab2d.SubstrateFacts, fail) -> tuple[tuple[int, ...], str]:
    if not isinstance(actions, dict):
        raise fail("actions must map each canonical action to a substrate action name")
    unknown = [key for key in actions if key not in CANONICAL_ACTIONS]
    if unknown:
        raise fail(f"actions: unknown canonical action '{unknown[0]}' (known: {', '.join(CANONICAL_ACTIONS)})")
    missing = [key for key in CANONICAL_ACTIONS if key not in actions]
    if missing:
        raise fail(f"actions: missing canonical action '{missing[0]}'")
    indices = []
    for canonical_id, canonical in enumerate(CANONICAL_ACTIONS):
        target = actions[canonical]
        if target not in facts.action_names:
            raise fail(
                f"actions: {canonical} -> '{target}' is not in the substrate's action set "
                f"({', '.join(facts.action_names)})"
            )
        # Movement labels must mean what they say: the 7 map onto the substrate's own 7.
        if canonical_id < len(MOVEMENT_NAMES) and target != MOVEMENT_NAMES[canonical_id]:
            raise fail(f"actions: {canonical} must map to '{MOVEMENT_NAMES[canonical_id]}', not '{target}'")
        indices.append(facts.action_names.index(target))
    return tuple(indices), actions["INTERACT"]
