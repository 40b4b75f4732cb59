"""Melting Pot substrate settings: build, override, instrument and flatten them for dmlab2d.

This is the only module that reads Melting Pot's config internals. It answers three
questions for the catalogue and the environment adapter:

- what does a substrate offer? (:func:`substrate_facts`: map legend, spawn points per
  spawn group, action names);
- what are the lab2d settings of a game? (:func:`game_settings`: the substrate's settings for
  the game's roles, the mini map, the catalogue's overrides and a ``LocationObserver`` on every
  avatar so that dmlab2d reports ``<i>.POSITION`` and ``<i>.ORIENTATION``, and a one-cell
  avatar view whose ``<i>.LAYER`` says whether the avatar is on the grid);
- what does dmlab2d get? (:func:`flatten_settings`, the string->string table, as Melting Pot's
  own builder makes it, and :func:`level_script`, the same table inside a Lua level script so
  that Lua receives it in one fixed order).
"""

from __future__ import annotations

import copy
import functools
import os
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from actionparty.games.actions import substrate_action_names

# Added to every avatar: reports `<player>.POSITION` (x=column, y=row) and `<player>.ORIENTATION`.
LOCATION_OBSERVER = {
    "component": "LocationObserver",
    "kwargs": {"objectIsAvatar": True, "alsoReportOrientation": True},
}
# Every avatar's own view shrunk to its own cell. Its `<player>.LAYER` observation is then the
# sprite id on each layer of that cell, and an avatar taken off the grid (Melting Pot's "wait"
# state: zapped, eaten, between interactions) sees nothing but the out-of-view sprite on every
# layer: an exact, cheap visibility signal. The view only shapes the per-player observations,
# which we do not read; the one game rule that queries it is hidden_agenda's (left out).
OWN_CELL_VIEW = {"left": 0, "right": 0, "forward": 0, "backward": 0, "centered": True}


def substrate_names() -> frozenset[str]:
    """The keys of ``meltingpot.substrate.SUBSTRATES``."""
    from meltingpot.configs import substrates

    return frozenset(substrates.SUBSTRATES)


@functools.lru_cache(maxsize=None)
def _config(substrate: str):
    from meltingpot.configs import substrates

    return substrates.get_config(substrate)


def valid_roles(substrate: str) -> frozenset[str]:
    """The role names the substrate accepts."""
    return frozenset(_config(substrate).valid_roles)


# Characters outside a substrate's charPrefabMap place nothing; every Melting Pot map uses ' '
# that way (an empty cell), so it is part of every legend.
EMPTY_CELL = " "


def legend_prefabs(entry: Any) -> list[str]:
    """Prefab names a ``charPrefabMap`` entry can place (entries nest 'all'/'choice' lists)."""
    if isinstance(entry, str):
        return [entry]
    return [name for item in entry["list"] for name in legend_prefabs(item)]


def _component(obj: Mapping, name: str) -> Mapping | None:
    for comp in obj.get("components", ()):
        if comp.get("component") == name:
            return comp
    return None


def avatar_objects(settings: Mapping) -> list[Mapping]:
    """The avatar game objects (those with an ``Avatar`` component), one per player, in
    player order, plus the ``avatar`` prefab where avatars are built from it (boat_race)."""
    sim = settings["simulation"]
    objects = [obj for obj in sim.get("gameObjects", ()) if _component(obj, "Avatar") is not None]
    if "avatar" in sim.get("prefabs", {}):
        objects.append(sim["prefabs"]["avatar"])
    return objects


@dataclass(frozen=True)
class SubstrateFacts:
    """What the catalogue validates against, read from the substrate's own config.

    legend:         map character -> prefab names it places (``charPrefabMap``)
    spawn_chars:    spawn group -> map characters that hold a spawn point of that group
                    (a prefab is a spawn point of group g when one of its states is in group g)
    player_groups:  spawn group of each player, for the roles the facts were built with
    action_names:   names of the action-set entries (see actions.substrate_action_names)
    """

    legend: Mapping[str, tuple[str, ...]]
    spawn_chars: Mapping[str, frozenset[str]]
    player_groups: tuple[str, ...]
    action_names: tuple[str, ...]


def map_string(ascii_map: Sequence[str]) -> str:
    """Rows -> Melting Pot's map string (it starts with a newline, which positions skip)."""
    return "\n" + "\n".join(ascii_map) + "\n"


def base_settings(substrate: str, roles: Sequence[str], ascii_map: Sequence[str] | None = None) -> dict:
    """The substrate's own lab2d settings for ``roles`` (a fresh, mutable copy), built for
    ``ascii_map`` when given.

    The map goes into the config before building because some builders derive game objects
    from it (collaborative_cooking places an inventory on every counter cell); the builders
    read it from ``config.layout.ascii_map`` or ``config.ascii_map``. Some builders draw from
    Python's global ``random`` (coins picks its two coin colours), so the draw is seeded with
    the substrate name: a game looks the same in every process.
    """
    cfg = _config(substrate)
    if ascii_map is not None:
        cfg = copy.deepcopy(cfg)
        holder = cfg.layout if "layout" in cfg and "ascii_map" in cfg.layout else cfg
        if "ascii_map" in holder:
            holder.ascii_map = map_string(ascii_map)
    state = random.getstate()
    random.seed(substrate)
    try:
        settings = cfg.lab2d_settings_builder(roles=tuple(roles), config=cfg)
    finally:
        random.setstate(state)
    settings = _plain(settings)  # fresh containers all the way down: safe to edit
    if ascii_map is not None:  # the builders that keep their map in a module constant
        settings["simulation"]["map"] = map_string(ascii_map)
    return settings


def _plain(value: Any) -> Any:
    """A copy made of plain dicts and lists (from ConfigDicts, immutable mappings, tuples),
    so that overrides can edit it; scalars are shared (they are immutable)."""
    kind = type(value)
    if kind is dict:
        return {key: _plain(item) for key, item in value.items()}
    if kind is list or kind is tuple:
        return [_plain(item) for item in value]
    if kind in (str, int, float, bool) or value is None:
        return value
    if hasattr(value, "to_dict"):  # ml_collections.ConfigDict
        return _plain(value.to_dict())
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value


def substrate_facts(substrate: str, roles: Sequence[str]) -> SubstrateFacts:
    """Facts about ``substrate`` played with ``roles`` (roles decide the spawn groups)."""
    return _substrate_facts(substrate, tuple(roles))


@functools.lru_cache(maxsize=256)
def _substrate_facts(substrate: str, roles: tuple[str, ...]) -> SubstrateFacts:
    cfg = _config(substrate)
    settings = base_settings(substrate, roles)
    sim = settings["simulation"]
    legend = {char: tuple(legend_prefabs(entry)) for char, entry in sim["charPrefabMap"].items()}
    prefab_groups = {}
    for name, prefab in sim["prefabs"].items():
        manager = _component(prefab, "StateManager") or {}
        states = manager.get("kwargs", {}).get("stateConfigs", ())
        prefab_groups[name] = {group for state in states for group in state.get("groups", ()) or ()}
    avatars = avatar_objects(settings)
    groups = [_component(obj, "Avatar")["kwargs"].get("spawnGroup", "spawnPoints") for obj in avatars]
    if "avatar" in sim.get("prefabs", {}):  # one prefab for all players
        groups = groups[-1:] * len(roles)
    spawn_chars = {
        group: frozenset(
            char for char, prefabs in legend.items() if any(group in prefab_groups.get(p, ()) for p in prefabs)
        )
        for group in set(groups)
    }
    return SubstrateFacts(
        legend=legend,
        spawn_chars=spawn_chars,
        player_groups=tuple(groups),
        action_names=substrate_action_names(cfg.action_set),
    )


def action_set(substrate: str) -> tuple[Mapping[str, int], ...]:
    """The substrate's action set: entry i is the dmlab2d action dict of discrete action i."""
    return tuple(dict(entry) for entry in _config(substrate).action_set)


class OverrideError(ValueError):
    """An override path that does not exist in the substrate's settings."""


def merge_overrides(target: Any, overrides: Mapping, path: str = "settings") -> None:
    """Apply ``overrides`` onto ``target`` in place: a nested dict merge, where a mapping
    applied onto a *list* of dicts addresses the items by name, i.e. every item whose
    ``component`` (components) or ``name`` (game objects, prefabs) equals the key.

    Example (coins)::

        simulation: {prefabs: {coin: {components: {ChoiceCoinRegrow: {kwargs: {regrowRate: 0.02}}}}}}

    Keys that do not exist are refused (OverrideError naming the dotted path), except inside
    ``kwargs``, where a component may take an argument its config leaves at the default.
    """
    for key, value in overrides.items():
        where = f"{path}.{key}"
        if isinstance(target, list):
            items = [item for item in target if isinstance(item, dict) and key in (item.get("component"), item.get("name"))]
            if not items:
                raise OverrideError(f"{where}: no item named '{key}'")
            for item in items:
                if not isinstance(value, Mapping):
                    raise OverrideError(f"{where}: list items can only be merged with a mapping")
                merge_overrides(item, value, where)
            continue
        if not isinstance(target, dict):
            raise OverrideError(f"{where}: cannot descend into a {type(target).__name__}")
        if key not in target and not path.endswith("kwargs"):
            raise OverrideError(f"{where}: no such setting")
        if isinstance(value, Mapping) and isinstance(target.get(key), (dict, list)):
            merge_overrides(target[key], value, where)
        else:
            target[key] = _plain(value)


def game_settings(substrate: str, roles: Sequence[str], ascii_map: Sequence[str], overrides: Mapping) -> dict:
    """Lab2d settings of a game: the substrate's settings for ``roles``, with ``ascii_map``
    as its map, ``overrides`` merged in, a LocationObserver on every avatar and every avatar's
    view shrunk to its own cell (``OWN_CELL_VIEW``)."""
    settings = base_settings(substrate, roles, ascii_map)
    merge_overrides(settings, overrides)
    for avatar in avatar_objects(settings):
        avatar["components"].append(copy.deepcopy(LOCATION_OBSERVER))
        _component(avatar, "Avatar")["kwargs"]["view"] = dict(OWN_CELL_VIEW)
    return settings


def flatten_settings(settings: Mapping) -> dict[str, str]:
    """The dmlab2d string table, made exactly as ``meltingpot.utils.substrates.builder`` does
    (avatars from an ``avatar`` prefab, level directory, '$' -> '.' keys); no seed yet."""
    from meltingpot.utils.substrates import builder
    from ml_collections import config_dict

    lab2d = config_dict.ConfigDict(copy.deepcopy(dict(settings))).unlock()
    builder.maybe_build_and_add_avatar_objects(lab2d)
    builder.locate_and_overwrite_level_directory(lab2d)
    return builder.parse_python_settings_for_dmlab2d(lab2d)


# Settings that dmlab2d's C++ side consumes itself; they never reach the Lua ``init``.
_ENGINE_SETTINGS = ("levelName", "levelDirectory", "mixerSeed")


def lua_string(text: str) -> str:
    """``text`` as a Lua string literal (bytes outside printable ASCII as decimal escapes of
    three digits: Lua reads up to three, so a shorter one would swallow a digit after it)."""
    out = []
    for byte in text.encode():
        if byte in (0x22, 0x5C):  # " and \
            out.append("\\" + chr(byte))
        elif 32 <= byte < 127:
            out.append(chr(byte))
        else:
            out.append("\\%03d" % byte)
    return '"' + "".join(out) + '"'


def level_script(flat: Mapping[str, str]) -> dict[str, str]:
    """dmlab2d settings that run the level of ``flat`` (see :func:`flatten_settings`) through
    a small Lua level script holding every other setting, in sorted order.

    Why: dmlab2d keeps the settings it is given in an ``absl::flat_hash_map`` whose iteration
    order is salted with heap addresses, and pushes them into Lua in that order. The order in
    which Lua first sees a string decides its table-hash id, and so the order in which
    Melting Pot's ``pairs()`` loops walk string-keyed tables (spawn groups, avatars): the same
    seed spawned players differently from one Lua state to the next. A level script given as
    ``levelName = "=<source>"`` is parsed in source order instead, so the settings reach Lua in
    one fixed order. Two more things make a string's id depend on where memory happens to be,
    and the script turns both off for the life of the Lua state:

    - LuaJIT's trace compiler places machine code at addresses probed with the same PRNG that
      draws the string ids, so a compiled trace shifts every id drawn after it depending on the
      process's memory map (measured: with it on, 2 of 8 builds of commons_harvest_partnership
      still spawned differently);
    - the garbage collector: a string it frees and Lua makes again gets a fresh id, and which
      strings are freed before they are needed again depends on the memory map (measured:
      coins spawned its two players either way round from one build to the next until the
      collector was stopped, but always the same way with address randomisation off). A Lua
      state lives for one episode and Melting Pot's Lua allocates little per step (no visible
      growth of the process over 2,000 steps of clean_up or allelopathic_harvest), so nothing
      needs collecting before the state is dropped at the next reset.

    The per-episode ``env_seed`` is left out here and passed as the one remaining plain
    setting (a single entry has one order); the script copies it into the table.
    """
    directory, name = flat["levelDirectory"], flat["levelName"]
    level_file = os.path.join(directory, name + ".lua")
    if os.path.isfile(level_file):  # the lookup dmlab2d itself does for a level name
        root = os.path.dirname(level_file)
    else:
        root = os.path.join(directory, name)
        level_file = os.path.join(root, "init.lua")
    lines = [
        "if jit then jit.off() end",
        'collectgarbage("stop")',
        f"package.path = {lua_string(root + '/?.lua;')} .. package.path",
        f"local api = dofile({lua_string(level_file)})",
        "local settings = {}",
    ]
    lines += [f"settings[{lua_string(k)}] = {lua_string(v)}" for k, v in sorted(flat.items())
              if k not in _ENGINE_SETTINGS and k != "env_seed"]
    lines += [
        "local init = api.init",
        "api.init = function(self, kwargs)",
        "  for key, value in pairs(kwargs) do settings[key] = value end",
        "  return init(self, settings)",
        "end",
        "return api",
    ]
    return {"levelName": "=" + "\n".join(lines) + "\n", "levelDirectory": directory}
