"""The result the project exists to show, checked against its numeric targets.

Every number comes from results/metrics (the test split, read once by the DAG's metrics stage),
never from a unit test. Targets of ours (``full``) at the shortest horizon unless named:

* MA_changing (action following on the player-steps whose real cell or facing changed: copying
  scores 0) and BA (binding under swapped actions) >= 0.85 on every game, under the test
  episodes' own policy and, for MA_changing, under the ``uniform`` protocol;
* SP >= 0.95; MA_changing >= 0.7 at the longest horizon; EA >= 0.3 in every game whose oracle
  EA is >= 0.8 (the detectors can see interactions there); SSIM >= 0.85 (shortest) and >= 0.7
  (longest horizon): players a person can see;
* a 95% bootstrap half-width of MA_changing and BA <= 0.03 (enough windows for the claims);
* the paper's claim: from ``one_mover`` (control without binding) to ``uniform`` (everyone
  acts), each baseline's MA_changing falls by at least twice as much as ours, and by at least
  0.1 more.

``actionparty targets`` prints the check; the report writes it to ``reports/targets.md``. A
target whose numbers are absent (a protocol not run, an interval not computed) is "–", not met.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from actionparty.eval.metrics_file import MetricsError
from actionparty.report.lineup import Lineup
from actionparty.report.tables import MetricsSet, load_metrics

OURS = "full"
CONTROL_MIN = 0.85  # MA_changing and BA, per game
SP_MIN = 0.95
CONTROL_LONG = 0.7  # MA_changing at the longest horizon
EA_MIN, EA_ORACLE = 0.3, 0.8
SSIM_SHORT, SSIM_LONG = 0.85, 0.7
CI_HALF_WIDTH = 0.03
CLAIM_RATIO, CLAIM_MARGIN = 2.0, 0.1
PROTOCOLS = ("one_mover", "uniform")


@dataclass
class Target:
    name: str
    wanted: str
    measured: str
    met: bool | None  # None: not measurable from these results


def _fmt(value) -> str:
    return "–" if value is None else f"{value:.3f}"


def _at_least(name: str, value, threshold: float) -> Target:
    return Target(name, f">= {threshold}", _fmt(value), None if value is None else value >= threshold)


def ci_half_width(metrics: MetricsSet, model: str, horizon: int, metric: str) -> float | None:
    """Half the width of the metric's 95% bootstrap interval in the model's metrics file, or None."""
    low, high = (metrics.value(model, horizon, f"{metric}_ci_{side}") for side in ("low", "high"))
    return None if low is None or high is None else (high - low) / 2


def check_targets(metrics: MetricsSet, lineup: Lineup | None = None,
                  protocols: dict[str, MetricsSet] | None = None) -> list[Target]:
    """Ours (``full``) against the targets. ``protocols``: the metrics of the extra test-split
    protocols (``one_mover``, ``uniform``: results/metrics/<protocol>/); the baselines are the
    registry's role-baseline rows (default registry: params/variants)."""
    lineup = Lineup.from_registry() if lineup is None else lineup
    protocols = protocols or {}
    horizons = metrics.horizons()
    short, long = horizons[0], horizons[-1]
    out: list[Target] = []

    def value(model, horizon, metric, part="overall", group=None, where=metrics):
        return where.value(model, horizon, metric, part, group)

    uniform = protocols.get("uniform")
    for game in metrics.groups("per_game", short):
        for metric in ("MA_changing", "BA"):
            out.append(_at_least(f"{metric} h{short}, {game}", value(OURS, short, metric, "per_game", game),
                                 CONTROL_MIN))
        measured = None if uniform is None else value(OURS, short, "MA_changing", "per_game", game, uniform)
        out.append(_at_least(f"MA_changing h{short}, {game}, uniform protocol", measured, CONTROL_MIN))
    out.append(_at_least(f"SP h{short}", value(OURS, short, "SP"), SP_MIN))
    if long != short:
        out.append(_at_least(f"MA_changing h{long}", value(OURS, long, "MA_changing"), CONTROL_LONG))
    for game in metrics.groups("per_game", short):
        if (value("oracle", short, "EA", "per_game", game) or 0.0) >= EA_ORACLE:
            out.append(_at_least(f"EA h{short}, {game} (oracle EA >= {EA_ORACLE})",
                                 value(OURS, short, "EA", "per_game", game), EA_MIN))
    out.append(_at_least(f"SSIM h{short}", value(OURS, short, "SSIM"), SSIM_SHORT))
    if long != short:
        out.append(_at_least(f"SSIM h{long}", value(OURS, long, "SSIM"), SSIM_LONG))
    for metric in ("MA_changing", "BA"):
        half = ci_half_width(metrics, OURS, short, metric)
        out.append(Target(f"{metric} h{short} 95% CI half-width", f"<= {CI_HALF_WIDTH}", _fmt(half),
                          None if half is None else half <= CI_HALF_WIDTH))
    out += _claim(lineup, protocols, short)
    return out


def _claim(lineup: Lineup, protocols: dict[str, MetricsSet], horizon: int) -> list[Target]:
    """The paper's claim: MA_changing falls from one_mover to uniform far more for each baseline."""
    wanted = f">= {CLAIM_RATIO:g}x ours and >= ours + {CLAIM_MARGIN}"
    if not all(p in protocols for p in PROTOCOLS):
        return [Target("baselines' MA_changing fall, one_mover -> uniform", wanted, "–", None)]

    def fall(model):
        a, b = (protocols[p].value(model, horizon, "MA_changing") for p in PROTOCOLS)
        return None if a is None or b is None else a - b

    ours = fall(OURS)
    out = []
    for baseline in lineup.baselines:
        theirs = fall(baseline)
        if theirs is None:
            continue
        met = None if ours is None else theirs >= CLAIM_RATIO * max(ours, 0.0) and theirs >= ours + CLAIM_MARGIN
        out.append(Target(f"MA_changing fall one_mover -> uniform, {baseline} (ours {_fmt(ours)})", wanted,
                          _fmt(theirs), met))
    return out or [Target("baselines' MA_changing fall, one_mover -> uniform", wanted, "–", None)]


def load_protocols(metrics_dir: str | Path, models: tuple[str, ...]) -> dict[str, MetricsSet]:
    """The protocols' metrics that exist under ``metrics_dir``/<protocol>/ (none: {})."""
    out = {}
    for protocol in PROTOCOLS:
        folder = Path(metrics_dir) / protocol
        if folder.is_dir():
            try:
                out[protocol] = load_metrics(folder, models)
            except MetricsError:
                if any(folder.glob("*.json")):
                    raise
    return out


def targets_markdown(targets: list[Target]) -> str:
    met = sum(t.met is True for t in targets)
    lines = [f"**ActionParty+ (ours, `full`) against its targets: {met} of {len(targets)} met** "
             "(test split, read once by the metrics stage).", "",
             "| target | wanted | measured | met |", "|:---|---:|---:|:---:|"]
    for t in targets:
        lines.append(f"| {t.name} | {t.wanted} | {t.measured} | {'–' if t.met is None else ('yes' if t.met else 'no')} |")
    return "\n".join(lines) + "\n"
