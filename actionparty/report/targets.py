"""The result the project exists to show, checked against its numeric targets.

Targets for ActionParty (`full`) from results/metrics alone: action following at the shortest
horizon on every game, against the best trained or pretrained baseline and the copy-the-context
floor, subject preservation, binding under swapped actions, and action following over the long
horizon. ``actionparty targets`` prints the check; the report writes it to ``reports/targets.md``.
"""

from __future__ import annotations

from dataclasses import dataclass

from actionparty.report.lineup import Lineup
from actionparty.report.tables import MetricsSet

# (what, threshold) of the targets; MA_GAME applies to every game.
MA_GAME = 0.8
MA_VS_BASELINE = 3.0
SP_MIN = 0.95
BA_MIN = 0.85
MA_LONG = 0.6


@dataclass
class Target:
    name: str
    wanted: str
    measured: str
    met: bool | None  # None: not measurable from these results


def _fmt(value) -> str:
    return "–" if value is None else f"{value:.3f}"


def check_targets(metrics: MetricsSet, lineup: Lineup | None = None) -> list[Target]:
    """ActionParty (``full``) against the targets; the baselines (role baseline) and the copy
    floor (source copy) are the rows of the variant registry (default: params/variants)."""
    lineup = Lineup.from_registry() if lineup is None else lineup
    horizons = metrics.horizons()
    short, long = horizons[0], horizons[-1]
    out: list[Target] = []

    def value(model, horizon, metric, part="overall", group=None):
        return metrics.value(model, horizon, metric, part, group)

    games = metrics.groups("per_game", short)
    for game in games:
        ma = value("full", short, "MA", "per_game", game)
        out.append(Target(f"MA h{short}, {game}", f">= {MA_GAME}", _fmt(ma), None if ma is None else ma >= MA_GAME))
    ma = value("full", short, "MA")
    baselines = {m: value(m, short, "MA") for m in lineup.baselines}
    known = {m: v for m, v in baselines.items() if v is not None}
    if known and ma is not None:
        best = max(known, key=known.get)
        out.append(Target(f"MA h{short} vs best baseline ({best} {known[best]:.3f})", f">= {MA_VS_BASELINE}x",
                          f"{ma / known[best]:.2f}x" if known[best] > 0 else "–",
                          ma >= MA_VS_BASELINE * known[best]))
    else:
        out.append(Target(f"MA h{short} vs best baseline", f">= {MA_VS_BASELINE}x", "–", None))
    floors = [v for v in (value(m, short, "MA") for m in lineup.floors) if v is not None]
    floor = max(floors) if floors else None
    out.append(Target(f"MA h{short} vs copy floor ({_fmt(floor)})", "above", _fmt(ma),
                      None if ma is None or floor is None else ma > floor))
    sp, ba = value("full", short, "SP"), value("full", short, "BA")
    out.append(Target(f"SP h{short}", f">= {SP_MIN}", _fmt(sp), None if sp is None else sp >= SP_MIN))
    out.append(Target(f"BA h{short}", f">= {BA_MIN}", _fmt(ba), None if ba is None else ba >= BA_MIN))
    if long != short:
        ma_long = value("full", long, "MA")
        out.append(Target(f"MA h{long}", f">= {MA_LONG}", _fmt(ma_long),
                          None if ma_long is None else ma_long >= MA_LONG))
    return out


def targets_markdown(targets: list[Target]) -> str:
    met = sum(t.met is True for t in targets)
    lines = [f"**ActionParty (`full`) against its targets: {met} of {len(targets)} met.**", "",
             "| target | wanted | measured | met |", "|:---|---:|---:|:---:|"]
    for t in targets:
        lines.append(f"| {t.name} | {t.wanted} | {t.measured} | {'–' if t.met is None else ('yes' if t.met else 'no')} |")
    return "\n".join(lines) + "\n"
