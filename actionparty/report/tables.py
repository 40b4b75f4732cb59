"""The paper's tables from ``results/metrics/{model}.json``, as Markdown, CSV and LaTeX.

=================  ================================================================================
main               the methods (ActionParty), the baselines, the copy floor and the oracle x MA SP
                   DR EA BA PSNR SSIM FD x horizons (4, 20)
ablation           each method and its ablations, the same metrics plus state tracking (ST)
per_game           MA and SP per model x game (shortest horizon, h4)
per_player_count   MA and SP per model x number of players (h4)
per_cause          MA per model x cause of the real step (h4)
seeds              mean and sd over seeds of the models repeated with other seeds
=================  ================================================================================

Rows, their order, labels and experiment ids come from the variant registry (:mod:`.lineup`):
a new ``params/variants/<name>.yaml`` is a new row. Values are copied exactly as the metrics JSON
holds them (``repr`` of the parsed number), so a reader can grep a table for a number of the JSON.
In Markdown and LaTeX the best non-oracle value of each column is bold (ties: all of them); the
oracle bounds every other row, it does not compete. Models whose metrics file is missing are
listed under the table, not silently dropped.
"""

from __future__ import annotations

import csv
import io
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from actionparty.atomic import write_text
from actionparty.eval import metrics_file
from actionparty.eval.metrics import CAUSES
from actionparty.eval.metrics_file import MetricsError
from actionparty.report.lineup import Lineup
from actionparty.variants import split_run

# Metrics where lower is better; every other shown metric is better higher.
LOWER_IS_BETTER = frozenset({"FD", "FVD_I3D", "ST_l1", "duplicated", "vanished", "BA_other"})
MAIN_METRICS = ("MA", "SP", "DR", "EA", "BA", "PSNR", "SSIM", "FD")
ABLATION_METRICS = ("MA", "SP", "DR", "EA", "BA", "ST_l1", "ST_exact", "MA_given_ST", "PSNR", "SSIM", "FD")
BREAKDOWN_METRICS = ("MA", "SP")
SEED_METRICS = ("MA", "SP", "BA")


# ---------------------------------------------------------------------------------------------
# Reading results/metrics
# ---------------------------------------------------------------------------------------------


@dataclass
class MetricsSet:
    """The metrics files found under ``results/metrics``: model -> parsed JSON, and the missing
    ones (model -> expected path)."""

    root: Path
    models: dict[str, dict]
    missing: dict[str, Path] = field(default_factory=dict)
    seeds: dict[str, list[dict]] = field(default_factory=dict)  # model -> its seed runs (<model>-s<k>.json)

    def horizons(self) -> list[int]:
        """Every horizon any model reports, ascending."""
        return sorted({metrics_file.horizon_steps(k) for d in self.models.values() for k in d["horizons"]})

    def entry(self, model: str, horizon: int) -> dict | None:
        data = self.models.get(model)
        return None if data is None else data["horizons"].get(f"h{horizon}")

    def value(self, model: str, horizon: int, metric: str, part: str = "overall", group: str | None = None):
        """One number (or None): ``part`` is overall, per_game or per_player_count (then ``group``
        is the game or the player count)."""
        entry = self.entry(model, horizon)
        if entry is None:
            return None
        values = entry.get(part, {}) if group is None else entry.get(part, {}).get(group)
        return None if not isinstance(values, dict) else values.get(metric)

    def groups(self, part: str, horizon: int) -> list[str]:
        """Games (sorted by name) or player counts (numerically) that any model reports."""
        keys = {k for m in self.models for k in ((self.entry(m, horizon) or {}).get(part) or {})}
        return sorted(keys, key=lambda k: (int(k), k) if k.isdigit() else (0, k))


def load_metrics(metrics_dir: str | Path, models: tuple[str, ...] | None = None) -> MetricsSet:
    """Read ``{metrics_dir}/{model}.json`` of every model (default: every row of the variant
    registry) that has one, and its seed runs ``{model}-s<k>.json``; missing ones are recorded.
    MetricsError if the folder holds none of them, or if a present file is corrupt
    (:func:`actionparty.eval.metrics_file.read`)."""
    models = Lineup.from_registry().names if models is None else models
    root = Path(metrics_dir)
    found, missing = {}, {}
    seeds: dict[str, list[dict]] = {}
    for model in models:
        path = root / f"{model}.json"
        if path.exists():
            found[model] = metrics_file.read(path, model)
            runs = sorted((split_run(p.stem)[1], p) for p in root.glob(f"{model}-s*.json")
                          if split_run(p.stem)[0] == model)
            if runs:
                seeds[model] = [metrics_file.read(p, p.stem) for _, p in runs]
        else:
            missing[model] = path
    if not found:
        raise MetricsError(f"{root}: no metrics files ({', '.join(f'{m}.json' for m in models[:3])}, ...); "
                           "run the evaluate stage first")
    return MetricsSet(root, found, missing, seeds)


# ---------------------------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Column:
    group: str  # header above the metric: 'h4', a game, '3 players'
    metric: str
    source: str = ""  # where the value lives in the JSON: the horizon key, game or player count

    @property
    def key(self) -> str:
        return f"{self.group}/{self.metric}"

    @property
    def lower_is_better(self) -> bool:
        return self.metric in LOWER_IS_BETTER


@dataclass
class Row:
    model: str
    label: str
    experiment: str
    values: list  # one per column: float, int or None (exactly as in the JSON)
    bounds: bool = False  # the oracle's row: it bounds the others and does not compete


@dataclass
class Table:
    name: str
    title: str
    columns: list[Column]
    rows: list[Row]
    notes: list[str] = field(default_factory=list)

    def best(self) -> list[set[int]]:
        """Per column, the indices of the rows holding the best value of the competing rows."""
        out = []
        for c, col in enumerate(self.columns):
            if col.metric.endswith(" sd"):  # a spread has no better direction
                out.append(set())
                continue
            vals = [(i, r.values[c]) for i, r in enumerate(self.rows)
                    if not r.bounds and isinstance(r.values[c], (int, float))]
            if not vals:
                out.append(set())
                continue
            target = (min if col.lower_is_better else max)(v for _, v in vals)
            out.append({i for i, v in vals if v == target})
        return out


def format_value(value) -> str:
    """The number as the JSON wrote it (no rounding); '' for null."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    return repr(value) if isinstance(value, float) else str(value)


def _missing_note(metrics: MetricsSet, models: tuple[str, ...]) -> list[str]:
    gone = [m for m in models if m in metrics.missing]
    if not gone:
        return []
    return ["Not available (no metrics file): " + ", ".join(f"{m} ({metrics.missing[m]})" for m in gone)]


def _rows(metrics: MetricsSet, models: tuple[str, ...], columns: list[Column], lineup: Lineup, lookup) -> list[Row]:
    return [Row(m, lineup.label(m), lineup.experiment(m), [lookup(m, c) for c in columns], lineup.bounds(m))
            for m in models if m in metrics.models]


def _horizon_columns(metrics: MetricsSet, names: tuple[str, ...]) -> list[Column]:
    return [Column(f"h{h}", name, str(h)) for h in metrics.horizons() for name in names]


def _overall(metrics: MetricsSet):
    return lambda model, col: metrics.value(model, int(col.source), col.metric)


def main_table(metrics: MetricsSet, lineup: Lineup) -> Table:
    columns = _horizon_columns(metrics, MAIN_METRICS)
    return Table("main", "Main results: ActionParty against the baselines, the copy floor and the oracle",
                 columns, _rows(metrics, lineup.main, columns, lineup, _overall(metrics)),
                 _missing_note(metrics, lineup.main))


def ablation_table(metrics: MetricsSet, lineup: Lineup) -> Table:
    columns = _horizon_columns(metrics, ABLATION_METRICS)
    return Table("ablation", "Ablations of ActionParty's mechanisms (ST: state tracking of the predicted "
                 "coordinates, l1 in cells and share exact)", columns,
                 _rows(metrics, lineup.ablation, columns, lineup, _overall(metrics)),
                 _missing_note(metrics, lineup.ablation))


def breakdown_table(metrics: MetricsSet, lineup: Lineup, part: str) -> Table:
    """per_game or per_player_count: MA and SP per model x group at the shortest horizon;
    per_cause: MA per cause of the real step (moved, turned, blocked by a wall or a player, still)."""
    horizon = metrics.horizons()[0]
    groups = metrics.groups(part, horizon)
    if part == "per_cause":
        groups = [c for c in CAUSES if c in groups]
    label = (lambda g: f"{g} players") if part == "per_player_count" else (lambda g: g)
    names = ("MA",) if part == "per_cause" else BREAKDOWN_METRICS
    columns = [Column(label(g), name, g) for g in groups for name in names]

    def value(model, col):
        return metrics.value(model, horizon, col.metric, part, col.source)

    title = {"per_game": f"MA and SP per game, horizon {horizon}",
             "per_player_count": f"MA and SP per number of players, horizon {horizon}",
             "per_cause": f"MA per cause of the real step, horizon {horizon} (blocked: a move action that "
                          "left the player in place, against a wall or another player)"}[part]
    return Table(part, title, columns, _rows(metrics, lineup.names, columns, lineup, value),
                 _missing_note(metrics, lineup.names))


def seeds_table(metrics: MetricsSet, lineup: Lineup) -> Table:
    """Mean and sample standard deviation over seeds of the headline metrics, for the models
    that were repeated with other seeds (profile ``seed_runs``)."""
    models = tuple(m for m in lineup.names if m in metrics.seeds)
    columns = [Column(f"h{h}", f"{name} {stat}", str(h)) for h in metrics.horizons() for name in SEED_METRICS
               for stat in ("mean", "sd")]

    def value(model, col):
        name, stat = col.metric.split()
        runs = [metrics.models[model], *metrics.seeds[model]]
        values = [((r["horizons"].get(f"h{col.source}") or {}).get("overall") or {}).get(name) for r in runs]
        values = [v for v in values if isinstance(v, (int, float))]
        if len(values) < 2:
            return None
        return round(statistics.mean(values) if stat == "mean" else statistics.stdev(values), 5)

    rows = [Row(m, f"{lineup.label(m)}, {1 + len(metrics.seeds[m])} seeds", lineup.experiment(m),
                [value(m, c) for c in columns], lineup.bounds(m)) for m in models]
    return Table("seeds", "Headline models over seeds: mean and sample standard deviation", columns, rows)


def build_tables(metrics: MetricsSet, lineup: Lineup) -> list[Table]:
    tables = [main_table(metrics, lineup), ablation_table(metrics, lineup),
              breakdown_table(metrics, lineup, "per_game"), breakdown_table(metrics, lineup, "per_player_count")]
    if metrics.groups("per_cause", metrics.horizons()[0]):
        tables.append(breakdown_table(metrics, lineup, "per_cause"))
    if metrics.seeds:
        tables.append(seeds_table(metrics, lineup))
    return tables


# ---------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------

_DASH = "–"


def to_markdown(table: Table) -> str:
    best = table.best()
    head = ["method"] + [f"{c.group} {c.metric}" for c in table.columns]
    lines = [f"**{table.title}.** Best non-oracle value per column in bold; {_DASH} = not applicable "
             "or not measured.", "", "| " + " | ".join(head) + " |",
             "|" + "|".join([":---"] + ["---:"] * len(table.columns)) + "|"]
    for i, row in enumerate(table.rows):
        cells = [row.label]
        for c, value in enumerate(row.values):
            text = format_value(value) or _DASH
            cells.append(f"**{text}**" if i in best[c] else text)
        lines.append("| " + " | ".join(cells) + " |")
    if not table.rows:
        lines.append("| (no model of this table has a metrics file) |" + " |" * len(table.columns))
    lines += [""] + [f"_{note}_" for note in table.notes]
    return "\n".join(lines).rstrip() + "\n"


def to_csv(table: Table) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["model", "experiment", "label"] + [c.key for c in table.columns])
    for row in table.rows:
        writer.writerow([row.model, row.experiment, row.label] + [format_value(v) for v in row.values])
    return buf.getvalue()


_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\^{}"}


def latex_escape(text: str) -> str:
    return re.sub(r"[\\&%$#_{}~^]", lambda m: _LATEX_SPECIAL[m.group()], text)


def to_latex(table: Table) -> str:
    """A booktabs table: a header row of groups (horizons, games, player counts) over the metrics."""
    best = table.best()
    groups: list[tuple[str, int]] = []
    for col in table.columns:
        if groups and groups[-1][0] == col.group:
            groups[-1] = (col.group, groups[-1][1] + 1)
        else:
            groups.append((col.group, 1))
    lines = [r"% generated by `actionparty report` from results/metrics; needs \usepackage{booktabs,graphicx}",
             r"\begin{table}[t]", r"\centering",
             rf"\caption{{{latex_escape(table.title)}. Best non-oracle value per column in bold.}}",
             rf"\label{{tab:{table.name.replace('_', '-')}}}",
             r"\resizebox{\textwidth}{!}{%", r"\begin{tabular}{l" + "r" * len(table.columns) + "}", r"\toprule"]
    spans, start = [], 2
    for name, n in groups:
        spans.append(rf"\multicolumn{{{n}}}{{c}}{{{latex_escape(name)}}}")
    lines.append(" & " + " & ".join(spans) + r" \\")
    rules = []
    for _, n in groups:
        rules.append(rf"\cmidrule(lr){{{start}-{start + n - 1}}}")
        start += n
    lines.append(" ".join(rules))
    lines.append("Method & " + " & ".join(latex_escape(c.metric) for c in table.columns) + r" \\")
    lines.append(r"\midrule")
    for i, row in enumerate(table.rows):
        if row.bounds:
            lines.append(r"\midrule")
        cells = []
        for c, value in enumerate(row.values):
            text = latex_escape(format_value(value)) or "--"
            cells.append(rf"\textbf{{{text}}}" if i in best[c] else text)
        lines.append(latex_escape(row.label) + " & " + " & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}}"]
    for note in table.notes:
        lines.append(r"\par\smallskip\footnotesize " + latex_escape(note))
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"


def write_table(table: Table, folder: str | Path) -> list[Path]:
    """``{folder}/{name}.md|csv|tex``, each written atomically; returns the paths."""
    folder = Path(folder)
    paths = []
    for ext, render in (("md", to_markdown), ("csv", to_csv), ("tex", to_latex)):
        path = folder / f"{table.name}.{ext}"
        write_text(path, render(table))
        paths.append(path)
    return paths
