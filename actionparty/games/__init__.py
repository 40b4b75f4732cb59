"""Melting Pot games: the catalogue of mini-map games and the environment adapter.

    load_catalogue(path) -> {name: GameSpec}      params/games.yaml, fully validated
    GameEnv(spec, seed)                           reset()/step(actions) -> StepRecord
"""

from actionparty.games.actions import CANONICAL_ACTIONS, CELL_PX, FACINGS, MAX_PLAYERS, PLAYER_SLOTS
from actionparty.games.catalogue import (
    CatalogueError,
    GameSpec,
    game_descriptions,
    left_out_substrates,
    load_catalogue,
    resolve_games,
)
from actionparty.games.env import GameEnv, StepRecord

__all__ = [
    "CANONICAL_ACTIONS",
    "CELL_PX",
    "FACINGS",
    "MAX_PLAYERS",
    "PLAYER_SLOTS",
    "CatalogueError",
    "GameEnv",
    "GameSpec",
    "StepRecord",
    "game_descriptions",
    "left_out_substrates",
    "load_catalogue",
    "resolve_games",
]
