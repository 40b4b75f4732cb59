"""The metrics file ``results/metrics/{model}.json``: its schema, and the one writer and reader.

The evaluate stage writes it (:func:`write`); ``combine-metrics`` and the report read it
(:func:`read`). The layout (docs/EVALUATION.md, ``actionparty.eval.evaluate``)::

    {"schema_version": 1, "variant": str, "kind": "model" | "oracle", ...,
     "horizons": {"h<H>": {"overall": {metric: number | null},
                           "per_game": {game: {...}}, "per_player_count": {"<P>": {...}},
                           "ma_curve": [...] | null, "sp_curve": ..., "ba_curve": ..., ...}}}

Anything else is a :class:`MetricsError` of one line naming the file and the field.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from actionparty.atomic import write_json
from actionparty.errors import UserError

METRICS_SCHEMA = 1
KINDS = ("model", "oracle")
GROUPS = ("per_game", "per_player_count")  # breakdowns holding a metrics object per group
CURVES = ("ma_curve", "sp_curve", "ba_curve")


class MetricsError(UserError):
    """A metrics file (or another report input) that is unreadable or not in the documented layout."""


def horizon_steps(key: str) -> int | None:
    """'h4' -> 4; None for a key that is not a horizon."""
    m = re.fullmatch(r"h(\d+)", key)
    return int(m.group(1)) if m else None


def _number_or_null(value) -> bool:
    return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))


def _check_horizon(source: str, key: str, entry) -> None:
    if horizon_steps(key) is None:
        raise MetricsError(f"{source}: horizon key '{key}' is not of the form h<steps>")
    if not isinstance(entry, dict) or not isinstance(entry.get("overall"), dict):
        raise MetricsError(f"{source}: field 'horizons.{key}.overall' is missing")
    groups = {f"horizons.{key}.overall": entry["overall"]}
    for part in GROUPS:
        if not isinstance(entry.get(part, {}), dict):
            raise MetricsError(f"{source}: field 'horizons.{key}.{part}' is not an object")
        groups.update({f"horizons.{key}.{part}.{g}": v for g, v in entry.get(part, {}).items()})
    for where, values in groups.items():
        if not isinstance(values, dict):
            raise MetricsError(f"{source}: field '{where}' is not an object")
        bad = [k for k, v in values.items() if not _number_or_null(v)]
        if bad:
            raise MetricsError(f"{source}: field '{where}.{bad[0]}' is not a number or null")
    for curve in CURVES:
        if entry.get(curve) is not None and not isinstance(entry[curve], list):
            raise MetricsError(f"{source}: field 'horizons.{key}.{curve}' is not a list")


def check(data, source: str, model: str | None = None) -> dict:
    """``data`` unchanged if it is a metrics file's content (of ``model``, when given);
    MetricsError naming ``source`` and the first wrong field otherwise."""
    if not isinstance(data, dict):
        raise MetricsError(f"{source}: not a metrics file (a JSON object with field 'schema_version')")
    if "schema_version" not in data:
        raise MetricsError(f"{source}: not a metrics file: field 'schema_version' is missing")
    if data["schema_version"] != METRICS_SCHEMA:
        raise MetricsError(f"{source}: field 'schema_version' is {data['schema_version']!r}; "
                           f"this code reads metrics files of schema {METRICS_SCHEMA}")
    for key in ("variant", "kind", "horizons"):
        if key not in data:
            raise MetricsError(f"{source}: field '{key}' is missing")
    if not isinstance(data["variant"], str):
        raise MetricsError(f"{source}: field 'variant' is not a string")
    if model is not None and data["variant"] != model:
        raise MetricsError(f"{source}: field 'variant' is '{data['variant']}', expected '{model}'")
    if data["kind"] not in KINDS:
        raise MetricsError(f"{source}: field 'kind' is {data['kind']!r}, not one of {', '.join(KINDS)}")
    horizons = data["horizons"]
    if not isinstance(horizons, dict) or not horizons:
        raise MetricsError(f"{source}: field 'horizons' is not an object with a horizon 'h<steps>'")
    for key, entry in horizons.items():
        _check_horizon(source, key, entry)
    return data


def read(path: str | Path, model: str | None = None) -> dict:
    """The parsed metrics file ``path`` (of ``model``, when given), checked by :func:`check`."""
    path = Path(path)
    if not path.is_file():
        raise MetricsError(f"{path}: metrics file not found")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise MetricsError(f"{path}: not valid JSON ({str(err).splitlines()[0]})") from None
    return check(data, str(path), model)


def write(path: str | Path, data: dict) -> None:
    """Write a metrics file atomically; what :func:`read` would refuse is refused before writing."""
    write_json(path, check(data, str(path)))
