"""The measured numbers the README and docs/TRAINING.md quote, rendered from results/ alone.

Prose that quotes results goes stale when the DAG is rerun. Every such number is therefore in a
*quoted block* of a Markdown file, between ``<!-- quoted:NAME -->`` and ``<!-- /quoted -->``,
and is written by :func:`render` from the committed results (test split, read once by the
metrics stage; the learning curves are on val windows). ``actionparty quote FILE...`` rewrites the
blocks; ``--check`` only compares and names each stale block (the test suite runs it on the
README and docs/TRAINING.md). What the numbers mean stays outside the blocks, in our words.

Blocks: ``headline`` (the README's summary), ``tiny-table`` (the headline rows) and
``tiny-facts`` (per game, the paper's ablations, our extensions, protocols, curves, intervals,
targets).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from statistics import mean, stdev

from actionparty.atomic import write_text
from actionparty.errors import UserError
from actionparty.report.lineup import Lineup
from actionparty.report.tables import MetricsSet, format_cell, format_number as _f, load_metrics
from actionparty.report.targets import check_targets, ci_half_width, load_protocols
from actionparty.variants import VARIANT_DIR

OURS, PAPER = "full", "paper"
HEADLINE_ROWS = ("paper", "full", "text_action", "global_action", "pretrained_ar", "static")
BLOCK = re.compile(r"(<!-- quoted:(?P<name>[a-z0-9-]+) -->\n)(?P<body>.*?)(<!-- /quoted -->)", re.S)


class QuoteError(UserError):
    """A Markdown file whose quoted blocks cannot be rendered (unknown block, unclosed marker)."""


@dataclass
class Results:
    """What the blocks read: the metrics (episodes protocol and the others), the targets, the curves."""

    root: Path
    metrics: MetricsSet
    protocols: dict[str, MetricsSet]
    lineup: Lineup

    @classmethod
    def load(cls, results: str | Path, variant_dir: str | Path | None = None) -> "Results":
        lineup = Lineup.from_registry(variant_dir or VARIANT_DIR)
        root = Path(results)
        return cls(root, load_metrics(root / "metrics", lineup.names),
                   load_protocols(root / "metrics", lineup.names), lineup)

    def runs(self, model: str) -> list[dict]:
        """The model's runs: seed 0, then its seed runs."""
        first = self.metrics.models.get(model)
        return ([] if first is None else [first]) + self.metrics.seeds.get(model, [])

    def values(self, model: str, metric: str, horizon: int = 4) -> list[float]:
        out = []
        for run in self.runs(model):
            value = (run["horizons"].get(f"h{horizon}") or {}).get("overall", {}).get(metric)
            if value is not None:
                out.append(value)
        return out

    def value(self, model: str, metric: str, horizon: int = 4, protocol: str | None = None,
              part: str = "overall", group: str | None = None):
        metrics = self.metrics if protocol is None else self.protocols.get(protocol)
        return None if metrics is None else metrics.value(model, horizon, metric, part, group)

    def spread(self, model: str, metric: str, horizon: int = 4) -> str:
        """mean ± sd over the model's runs ('0.631 ± 0.036'), or the one run's value."""
        values = self.values(model, metric, horizon)
        if not values:
            return "–"
        if len(values) == 1:
            return _f(values[0])
        return format_cell(mean(values), sd=stdev(values))

    def interval(self, model: str, metric: str, horizon: int = 4, protocol: str | None = None) -> str:
        low, high = (self.value(model, f"{metric}_ci_{side}", horizon, protocol) for side in ("low", "high"))
        return "–" if low is None or high is None else f"[{_f(low)}, {_f(high)}]"

    def span(self, models, metric: str, horizon: int = 4, protocol: str | None = None) -> str:
        """'low–high' of one metric over models (and, on the episodes protocol, their seeds)."""
        values = []
        for model in models:
            if protocol is None:
                values += self.values(model, metric, horizon)
            elif (v := self.value(model, metric, horizon, protocol)) is not None:
                values.append(v)
        if not values:
            return "–"
        low, high = min(values), max(values)
        return _f(low) if _f(low) == _f(high) else f"{_f(low)}–{_f(high)}"

    def curve(self, model: str) -> dict | None:
        path = self.root / "finetune" / model / "curve.json"
        if not path.exists():
            return None
        try:
            curve = json.loads(path.read_text())
            if len(curve["steps"]) != len(curve["MA_changing"]):
                raise ValueError("steps and MA_changing differ in length")
            return curve
        except (ValueError, KeyError, TypeError) as err:
            raise QuoteError(f"{path}: not a learning curve ({err})") from err

    def seeds(self, model: str) -> int:
        return len(self.runs(model))

    def present(self, models) -> tuple[str, ...]:
        return tuple(m for m in models if m in self.metrics.models)

    def baselines(self) -> tuple[str, ...]:
        return self.present(self.lineup.baselines)

    def ablations_of(self, parent: str) -> tuple[str, ...]:
        return self.present(m for m, v in self.lineup.variants.items() if v.ablation_of == parent)

    def targets_met(self) -> str:
        targets = check_targets(self.metrics, self.lineup, self.protocols)
        met = [t.name for t in targets if t.met is True]
        return f"{len(met)} of {len(targets)} targets are met" + (f" ({'; '.join(met)})" if met else "")


def _names(models) -> str:
    return ", ".join(f"`{m}`" for m in models)


def headline(r: Results) -> str:
    baselines = r.baselines()
    return (
        f"On the player-steps whose real cell or facing changed, `{OURS}` draws the right change in "
        f"{r.spread(OURS, 'MA_changing')} of them ({r.seeds(OURS)} seeds; 95% interval of seed 0 "
        f"{r.interval(OURS, 'MA_changing')}), and {r.spread(OURS, 'BA')} of its players follow a swap of "
        f"actions; with every player acting at random (the `uniform` protocol, seed 0) it draws "
        f"{_f(r.value(OURS, 'MA_changing', protocol='uniform'))} of the changes. `{PAPER}` gives MA_changing "
        f"{r.span((PAPER,), 'MA_changing')} ({r.seeds(PAPER)} seeds), its {len(r.ablations_of(PAPER))} ablations "
        f"{r.span(r.ablations_of(PAPER), 'MA_changing')}, the baselines ({_names(baselines)}) "
        f"{r.span(baselines, 'MA_changing')}. {r.targets_met()}.")


def tiny_table(r: Results) -> str:
    lines = ["| model | runs | MA_changing | its 95% interval (seed 0) | BA | its 95% interval (seed 0) | MA | SP "
             "| SSIM | h20 MA_changing | h20 SSIM |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for model in r.present(HEADLINE_ROWS):
        lines.append(
            f"| {r.lineup.label(model)} | {r.seeds(model)} | {r.spread(model, 'MA_changing')} "
            f"| {r.interval(model, 'MA_changing')} | {r.spread(model, 'BA')} | {r.interval(model, 'BA')} "
            f"| {r.spread(model, 'MA')} | {r.spread(model, 'SP')} | {r.spread(model, 'SSIM')} "
            f"| {r.spread(model, 'MA_changing', 20)} | {r.spread(model, 'SSIM', 20)} |")
    return "\n".join(lines)


def _curves(r: Results, models) -> str:
    """'at steps 100, ..., 500 (12 val windows): `full` 0.000, ...; `paper` ...' (models that have one)."""
    curves = {m: c for m in models if (c := r.curve(m)) is not None}
    if not curves:
        return "none"
    first = next(iter(curves.values()))
    head = f"at steps {', '.join(str(s) for s in first['steps'])} ({first['windows']} {first['split']} windows): "
    return head + "; ".join(f"`{m}` {', '.join(_f(v) for v in c['MA_changing'])}"
                            + ("" if c["steps"] == first["steps"] else f" (steps {', '.join(map(str, c['steps']))})")
                            for m, c in curves.items())


def tiny_facts(r: Results) -> str:
    per_game = ", ".join(f"{g} {_f(r.value(OURS, 'MA_changing', part='per_game', group=g))}"
                         for g in r.metrics.groups("per_game", 4))
    paper_family = (PAPER,) + r.ablations_of(PAPER)
    extensions = ", ".join(f"{r.lineup.variants[m].name} {_f(r.value(m, 'MA_changing'))} / {_f(r.value(m, 'BA'))}"
                           for m in r.ablations_of(OURS))
    baselines = r.baselines()
    half = {metric: ci_half_width(r.metrics, OURS, 4, metric) for metric in ("MA_changing", "BA")}
    protocols = ", ".join(f"{p} {_f(r.value(OURS, 'MA_changing', protocol=p))} {r.interval(OURS, 'MA_changing', protocol=p)}"
                          for p in r.protocols)
    baseline_protocols = "; ".join([f"episodes {r.span(baselines, 'MA_changing')}"] + [
        f"{p} {r.span(baselines, 'MA_changing', protocol=p)}" for p in r.protocols])
    facts = [
        f"`{OURS}` per game (MA_changing, seed 0): {per_game}.",
        f"`{PAPER}` and its ablations ({_names(paper_family[1:])}), every seed: MA_changing "
        f"{r.span(paper_family, 'MA_changing')}, BA {r.span(paper_family, 'BA')}.",
        f"Our extensions, each off once (MA_changing / BA, seed 0): {extensions}; `{OURS}` "
        f"{_f(r.value(OURS, 'MA_changing'))} / {_f(r.value(OURS, 'BA'))}.",
        f"Protocols, MA_changing of `{OURS}` (seed 0): episodes {_f(r.value(OURS, 'MA_changing'))} "
        f"{r.interval(OURS, 'MA_changing')}" + (f", {protocols}" if protocols else "")
        + f"; of the baselines: {baseline_protocols}.",
        f"Learning curves (MA_changing of the EMA snapshots) {_curves(r, (OURS, PAPER) + baselines)}.",
        f"SSIM of `{OURS}` ({r.seeds(OURS)} seeds): {r.span((OURS,), 'SSIM')} at h4, {r.span((OURS,), 'SSIM', 20)} at h20; "
        f"copying the context {_f(r.value('static', 'SSIM'))} / {_f(r.value('static', 'SSIM', 20))}.",
        f"95% half-width of `{OURS}`'s MA_changing {_f(half['MA_changing'])} and of its BA {_f(half['BA'])} "
        f"(seed 0, {r.value(OURS, 'windows')} test windows).",
        f"{r.targets_met()} (`actionparty targets`).",
    ]
    return "\n".join(f"- {line}" for line in facts)


RENDERERS = {"headline": headline, "tiny-table": tiny_table, "tiny-facts": tiny_facts}


def render(name: str, results: Results) -> str:
    if name not in RENDERERS:
        raise QuoteError(f"quoted block '{name}': unknown (known: {', '.join(RENDERERS)})")
    return RENDERERS[name](results)


def quote_file(path: str | Path, results: Results, check: bool = False) -> list[str]:
    """Render every quoted block of ``path``; return the names of those that differed (written
    back unless ``check``). QuoteError for an unknown block or a marker left open."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise QuoteError(f"{path}: cannot read ({err.strerror})") from err
    opened = len(re.findall(r"<!-- quoted:", text))
    blocks = list(BLOCK.finditer(text))
    if opened != len(blocks):
        raise QuoteError(f"{path}: {opened} '<!-- quoted:NAME -->' markers but {len(blocks)} closed by '<!-- /quoted -->'")
    stale = []

    def replace(match: re.Match) -> str:
        name = match["name"]
        body = render(name, results) + "\n"
        if body != match["body"]:
            stale.append(name)
        return match.group(1) + body + match.group(4)

    new = BLOCK.sub(replace, text)
    if stale and not check:
        write_text(path, new)
    return stale
