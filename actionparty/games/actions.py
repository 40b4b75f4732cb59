"""The 8 canonical actions shared by every game, and how substrate actions are named.

Every Melting Pot substrate's action set is a tuple of dicts (dmlab2d action key -> value).
All 49 start with the same 7 movement entries; what follows is substrate-specific
(``fireZap``, ``interact``, ``mine``, ...). The catalogue refers to substrate actions by
name, so :func:`substrate_action_names` gives each entry a stable one:

- the 7 movement entries are ``NOOP FORWARD BACKWARD STEP_LEFT STEP_RIGHT TURN_LEFT TURN_RIGHT``;
- any other entry is named by its non-zero keys, ``key`` when the value is 1 and ``key=value``
  otherwise, joined with ``+`` in key order: ``fireZap``, ``fireZap=2``, ``hold+shove=-1``,
  ``offer_apple=-3+offer_banana``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

CANONICAL_ACTIONS = (
    "NOOP",
    "FORWARD",
    "BACKWARD",
    "STRAFE_LEFT",
    "STRAFE_RIGHT",
    "TURN_LEFT",
    "TURN_RIGHT",
    "INTERACT",
)  # ids 0..7
ACTION_IDS = {name: i for i, name in enumerate(CANONICAL_ACTIONS)}
NOOP, FORWARD, BACKWARD, STRAFE_LEFT, STRAFE_RIGHT, TURN_LEFT, TURN_RIGHT, INTERACT = range(8)

FACINGS = ("N", "E", "S", "W")  # ids 0..3, Melting Pot's ORIENTATION order
# Cell step (dx, dy) of "forward" for each facing; y grows downwards (row index).
FACING_STEP = ((0, -1), (1, 0), (0, 1), (-1, 0))

MAX_PLAYERS = 7
MIN_PLAYERS = 2
PLAYER_SLOTS = 8  # players are padded to this many slots downstream
CELL_PX = 8  # every Melting Pot sprite is 8x8 pixels
MAX_MAP_CELLS = 12  # mini maps fit a 12x12-cell canvas
MIN_MAP_CELLS = 5

# The substrate's own names of its 7 movement entries, in action-set order.
MOVEMENT_NAMES = ("NOOP", "FORWARD", "BACKWARD", "STEP_LEFT", "STEP_RIGHT", "TURN_LEFT", "TURN_RIGHT")
# The dmlab2d values of those entries (move: 0 none, 1 forward, 2 right, 3 backward, 4 left).
_MOVEMENT_VALUES = (
    {},
    {"move": 1},
    {"move": 3},
    {"move": 4},
    {"move": 2},
    {"turn": -1},
    {"turn": 1},
)


def _nonzero(entry: Mapping[str, int]) -> dict[str, int]:
    return {key: int(value) for key, value in entry.items() if value}


def substrate_action_names(action_set: Sequence[Mapping[str, int]]) -> tuple[str, ...]:
    """Names of a substrate's action-set entries (see the module docstring), in order.

    Raises ValueError if the set does not start with the 7 standard movement entries, since
    the canonical movement actions would then mean something else in that game.
    """
    head = [_nonzero(entry) for entry in action_set[: len(MOVEMENT_NAMES)]]
    if head != list(_MOVEMENT_VALUES):
        raise ValueError(f"action set does not start with the 7 movement actions: {head}")
    names = list(MOVEMENT_NAMES)
    for entry in action_set[len(MOVEMENT_NAMES) :]:
        parts = [key if value == 1 else f"{key}={value}" for key, value in sorted(_nonzero(entry).items())]
        names.append("+".join(parts) or "NOOP")
    return tuple(names)
