"""The paper's tables from ``results/metrics/{model}.json``, as Markdown, LaTeX, HTML and CSV.

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
a new ``params/variants/<name>.yaml`` is a new row. A model repeated with other seeds
(``<model>-s<k>.json``) shows the mean over its runs ± the sample standard deviation; a metric
that carries a 95% interval (``<metric>_ci_low``, ``<metric>_ci_high`` beside it in ``overall``)
shows it in brackets. Each table is a pandas DataFrame (:func:`frame`), rendered by
``to_markdown``, ``Styler.to_latex``, ``Styler.to_html`` and ``to_csv``; two functions decide
for all of them what a reader sees: :func:`shown` rounds (3 decimals) and :meth:`Table.best`
marks the best value of each column, bold in Markdown, LaTeX and HTML. The best is that of the
competing rows (the oracle bounds every other row and does not compete), compared as shown
(rounded), all rows sharing it bold; nothing is bold in a column whose competing values are all
equal, nor where the best is 0 shared by several rows. The CSV keeps full precision (the mean
over runs as computed; a single run's number exactly as its JSON holds it). Models whose metrics
file is missing are listed under the table, not silently dropped.
"""

from __future__ import annotations

import html
import math
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from actionparty.atomic import write_text
from actionparty.eval import metrics_file
from actionparty.eval.metrics import CAUSES
from actionparty.eval.metrics_file import MetricsError
from actionparty.report.lineup import Lineup
from actionparty.variants import split_run

# Metrics where lower is better; every other shown metric is better higher.
LOWER_IS_BETTER = frozenset({"FD", "FVD_I3D", "ST_l1", "duplicated", "vanished", "BA_other"})
MAIN_METRICS = ("MA_changing", "BA", "MA", "SP", "DR", "EA", "PSNR", "SSIM", "FD")  # the headline pair first
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

DECIMALS = 3  # what the Markdown, LaTeX and HTML tables show; the CSV keeps full precision
_DASH = "–"


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

    @property
    def competes(self) -> bool:
        """A spread (an sd column) has no better direction."""
        return not self.metric.endswith(" sd")


@dataclass
class Row:
    model: str
    label: str
    experiment: str
    values: list  # one per column: the number (the mean over the runs) or None
    bounds: bool = False  # the oracle's row: it bounds the others and does not compete
    sd: list | None = None  # per column: sample sd over the runs (None: one run, or not measured)
    ci: list | None = None  # per column: (low, high) of a 95% interval, or None
    runs: int = 1  # metrics files averaged: the model and its seed runs


@dataclass
class Table:
    name: str
    title: str
    columns: list[Column]
    rows: list[Row]
    notes: list[str] = field(default_factory=list)
    parameters: dict[str, int] | None = None  # model -> parameter count, a column before the metrics

    @property
    def shown_columns(self) -> int:
        """Columns a reader sees after the labels: the parameters (if any) and the metrics."""
        return len(self.columns) + (1 if self.parameters else 0)

    def best(self) -> list[set[int]]:
        """Per column, the indices of the rows holding the best value of the competing rows,
        compared as shown (rounded). Empty where nothing competes, where every competing value is
        the same, and where the best is 0 held by several rows."""
        out = []
        for c, col in enumerate(self.columns):
            vals = [(i, round(r.values[c], DECIMALS)) for i, r in enumerate(self.rows)
                    if col.competes and not r.bounds and _is_number(r.values[c])]
            if len({v for _, v in vals}) < 2:
                out.append(set())
                continue
            target = (min if col.lower_is_better else max)(v for _, v in vals)
            winners = {i for i, v in vals if v == target}
            out.append(set() if target == 0 and len(winners) > 1 else winners)
        return out

    @property
    def has_spread(self) -> bool:
        return any(r.sd and any(s is not None for s in r.sd) for r in self.rows)

    @property
    def has_ci(self) -> bool:
        return any(r.ci and any(c is not None for c in r.ci) for r in self.rows)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def format_value(value) -> str:
    """Full precision, for the CSV: the number as the JSON wrote it (``repr``); '' for null."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    return repr(value) if isinstance(value, float) else str(value)


def format_number(value) -> str:
    """What a reader sees: a float rounded to 3 decimals, an int as is, '–' for null."""
    if value is None:
        return _DASH
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.{DECIMALS}f}" if math.isfinite(value) else str(value)
    return str(value)


def format_cell(value, sd=None, ci=None) -> str:
    """'0.744', '0.744 ± 0.012' (mean ± sd over seeds), '0.744 [0.712, 0.771]' (95% interval)."""
    text = format_number(value)
    if value is None:
        return text
    if sd is not None:
        text += f" ± {format_number(float(sd))}"
    if ci is not None:
        text += f" [{format_number(float(ci[0]))}, {format_number(float(ci[1]))}]"
    return text


def _missing_note(metrics: MetricsSet, models: tuple[str, ...]) -> list[str]:
    gone = [m for m in models if m in metrics.missing]
    if not gone:
        return []
    return ["Not available (no metrics file): " + ", ".join(f"{m} ({metrics.missing[m]})" for m in gone)]


def _runs(metrics: MetricsSet, model: str) -> list[dict]:
    return [metrics.models[model], *metrics.seeds.get(model, [])]


def _row(metrics: MetricsSet, model: str, columns: list[Column], lineup: Lineup, lookup, ci_lookup=None) -> Row:
    """One row: per column the mean over the model's runs (one run: its number as is), the sample
    sd where there are two runs or more, and the 95% interval of a single run that carries one."""
    runs = _runs(metrics, model)
    values, spread, intervals = [], [], []
    for col in columns:
        got = [lookup(data, col) for data in runs]
        numbers = [v for v in got if _is_number(v)]
        if len(runs) == 1 or len(numbers) < 2:
            values.append(got[0])
            spread.append(None)
        else:
            values.append(statistics.fmean(numbers))
            spread.append(statistics.stdev(numbers))
        intervals.append(ci_lookup(runs[0], col) if ci_lookup is not None and len(runs) == 1 else None)
    label = lineup.label(model) + (f", {len(runs)} seeds" if len(runs) > 1 else "")
    return Row(model, label, lineup.experiment(model), values, lineup.bounds(model), spread, intervals, len(runs))


def _rows(metrics: MetricsSet, models: tuple[str, ...], columns: list[Column], lineup: Lineup, lookup,
          ci_lookup=None) -> list[Row]:
    return [_row(metrics, m, columns, lineup, lookup, ci_lookup) for m in models if m in metrics.models]


def _horizon_columns(metrics: MetricsSet, names: tuple[str, ...]) -> list[Column]:
    return [Column(f"h{h}", name, str(h)) for h in metrics.horizons() for name in names]


def _overall_values(data: dict, col: Column) -> dict:
    return ((data["horizons"].get(f"h{col.source}") or {}).get("overall") or {})


def _overall(data: dict, col: Column):
    return _overall_values(data, col).get(col.metric)


def _overall_ci(data: dict, col: Column):
    """(low, high) from ``<metric>_ci_low`` and ``<metric>_ci_high`` of ``overall``, if both are numbers."""
    values = _overall_values(data, col)
    low, high = values.get(f"{col.metric}_ci_low"), values.get(f"{col.metric}_ci_high")
    return (low, high) if _is_number(low) and _is_number(high) else None


def _ci_note(table: Table) -> list[str]:
    if table.has_ci:
        return ["In brackets: the 95% confidence interval the metrics file gives."]
    return ["95% CI: not shown; the metrics files carry no confidence interval yet "
            "(the table shows one where a metric has <metric>_ci_low and <metric>_ci_high)."]


def _spread_note(table: Table) -> list[str]:
    seeded = [r.label for r in table.rows if r.runs > 1]
    if not seeded:
        return ["One run per model (no seed runs in these results): no spread shown."]
    return ["Rows with seeds: mean ± sample standard deviation over the runs (" + "; ".join(seeded) + "); "
            "the other rows are one run."]


def main_table(metrics: MetricsSet, lineup: Lineup, parameters: dict[str, int] | None = None) -> Table:
    """The methods, baselines and references; ``parameters``: each model's parameter count
    (``parameter_counts``), shown in its own column."""
    columns = _horizon_columns(metrics, MAIN_METRICS)
    table = Table("main", "Main results: the paper's method and ours against the baselines, the copy floor and "
                  "the oracle", columns, _rows(metrics, lineup.main, columns, lineup, _overall, _overall_ci),
                  _missing_note(metrics, lineup.main))
    table.parameters = parameters
    table.notes = _spread_note(table) + _ci_note(table) + table.notes
    if parameters:
        table.notes.append("parameters: every weight of the model as it is trained (the DiT, its action modules and "
                           "embedders; not the frozen text encoder or codec); every trained row had the same steps "
                           "and denoised frames per step.")
    return table


PROTOCOL_METRICS = ("MA_changing", "MA", "SP")
PROTOCOL_ORDER = ("episodes", "one_mover", "uniform")


def protocol_table(metrics: MetricsSet, protocols: dict[str, MetricsSet], lineup: Lineup) -> Table | None:
    """MA_changing, MA and SP at the shortest horizon under each test protocol (``episodes``:
    the test split's own policy; ``one_mover``, ``uniform``: results/metrics/<protocol>/), one
    row per model evaluated under an extra protocol. None without protocol metrics."""
    if not protocols:
        return None
    sets = {"episodes": metrics, **protocols}
    names = [p for p in PROTOCOL_ORDER if p in sets]
    horizon = min(h for m in sets.values() for h in m.horizons())
    columns = [Column(p, metric, str(horizon)) for p in names for metric in PROTOCOL_METRICS]  # group: protocol
    models = tuple(m for m in lineup.names if any(m in sets[p].models for p in names if p != "episodes"))

    def cells(model, lookup):
        data = [sets[c.group].models.get(model) for c in columns]
        return [None if d is None else lookup(d, c) for d, c in zip(data, columns)]

    rows = [Row(m, lineup.label(m), lineup.experiment(m), cells(m, _overall), bounds=lineup.bounds(m),
                ci=cells(m, _overall_ci)) for m in models]
    table = Table("protocols", f"Test protocols, horizon {horizon}: the test episodes' own sticky policy, one "
                  "player acting at a time (one_mover: control without binding) and every player acting "
                  "uniformly at random (uniform)", columns, rows, [])
    table.notes = _ci_note(table)
    return table


def ablation_table(metrics: MetricsSet, lineup: Lineup) -> Table:
    columns = _horizon_columns(metrics, ABLATION_METRICS)
    table = Table("ablation", "Ablations of ActionParty's mechanisms (ST: state tracking of the predicted "
                  "coordinates, l1 in cells and share exact)", columns,
                  _rows(metrics, lineup.ablation, columns, lineup, _overall, _overall_ci),
                  _missing_note(metrics, lineup.ablation))
    table.notes = _spread_note(table) + table.notes
    return table


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

    def value(data, col):
        values = ((data["horizons"].get(f"h{horizon}") or {}).get(part) or {}).get(col.source)
        return values.get(col.metric) if isinstance(values, dict) else None

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
        values = [_overall(r, Column(col.group, name, col.source)) for r in _runs(metrics, model)]
        values = [v for v in values if _is_number(v)]
        if len(values) < 2:
            return None
        return statistics.fmean(values) if stat == "mean" else statistics.stdev(values)

    rows = [Row(m, f"{lineup.label(m)}, {1 + len(metrics.seeds[m])} seeds", lineup.experiment(m),
                [value(m, c) for c in columns], lineup.bounds(m), runs=1 + len(metrics.seeds[m])) for m in models]
    return Table("seeds", "Headline models over seeds: mean and sample standard deviation", columns, rows)


def build_tables(metrics: MetricsSet, lineup: Lineup, protocols: dict[str, MetricsSet] | None = None,
                 parameters: dict[str, int] | None = None) -> list[Table]:
    tables = [main_table(metrics, lineup, parameters), ablation_table(metrics, lineup),
              breakdown_table(metrics, lineup, "per_game"), breakdown_table(metrics, lineup, "per_player_count")]
    if metrics.groups("per_cause", metrics.horizons()[0]):
        tables.append(breakdown_table(metrics, lineup, "per_cause"))
    if metrics.seeds:
        tables.append(seeds_table(metrics, lineup))
    by_protocol = protocol_table(metrics, protocols or {}, lineup)
    if by_protocol is not None:
        tables.append(by_protocol)
    return tables


# ---------------------------------------------------------------------------------------------
# DataFrames: the numbers (CSV) and what a reader sees (Markdown, LaTeX, HTML)
# ---------------------------------------------------------------------------------------------


def frame(table: Table) -> pd.DataFrame:
    """Full precision, one row per model: model, experiment, label, runs, then ``<group>/<metric>``
    per column, followed by ``<key> sd`` (tables with seed runs) and ``<key> ci_low``/``ci_high``
    (metrics with a 95% interval). Cells hold the numbers as computed (object dtype: an int stays
    an int), None where not measured."""
    data = {"model": [r.model for r in table.rows], "experiment": [r.experiment for r in table.rows],
            "label": [r.label for r in table.rows], "runs": [r.runs for r in table.rows]}
    if table.parameters:
        data["parameters"] = [table.parameters.get(r.model) for r in table.rows]
    for c, col in enumerate(table.columns):
        data[col.key] = [r.values[c] for r in table.rows]
    if table.has_spread:
        for c, col in enumerate(table.columns):
            data[f"{col.key} sd"] = [r.sd[c] if r.sd else None for r in table.rows]
    if table.has_ci:
        for c, col in enumerate(table.columns):
            for k, end in enumerate(("ci_low", "ci_high")):
                data[f"{col.key} {end}"] = [r.ci[c][k] if r.ci and r.ci[c] else None for r in table.rows]
    return pd.DataFrame(data, dtype=object)


def shown(table: Table, bold=lambda text: text) -> pd.DataFrame:
    """What the reader sees: the labels as index, (group, metric) as two column levels, each cell
    rounded (:func:`format_cell`) and passed through ``bold`` where :meth:`Table.best` says so."""
    best = table.best()
    cells = [[bold(text) if i in best[c] else text for c, text in enumerate(_row_texts(r))]
             for i, r in enumerate(table.rows)]
    keys = [(c.group, c.metric) for c in table.columns]
    if table.parameters:
        cells = [[format_parameters(table.parameters.get(r.model)), *row] for r, row in zip(table.rows, cells)]
        keys = [("", "parameters"), *keys]
    columns = pd.MultiIndex.from_tuples(keys, names=["", ""])
    return pd.DataFrame(cells, index=pd.Index([r.label for r in table.rows]), columns=columns, dtype=object)


def format_parameters(count: int | None) -> str:
    """1330048 -> '1.33 M'; None -> the dash."""
    if count is None:
        return _DASH
    return f"{count / 1e9:.2f} B" if count >= 1e9 else f"{count / 1e6:.2f} M"


def _row_texts(row: Row) -> list[str]:
    n = len(row.values)
    sd, ci = row.sd or [None] * n, row.ci or [None] * n
    return [format_cell(row.values[c], sd[c], ci[c]) for c in range(n)]


def _caption(table: Table) -> str:
    return (f"{table.title}. Best non-oracle value per column in bold; numbers rounded to {DECIMALS} decimals "
            f"(full precision in {table.name}.csv); {_DASH} = not applicable or not measured.")


def to_csv(table: Table) -> str:
    """The numbers at full precision (a single run's exactly as its JSON holds them); '' = null."""
    return frame(table).to_csv(index=False, lineterminator="\n", na_rep="")


def to_markdown(table: Table) -> str:
    lines = [f"**{_caption(table)}**", ""]
    if table.rows:
        df = shown(table, bold=lambda text: f"**{text}**")
        df.columns = [f"{g} {m}" for g, m in df.columns]
        df.index.name = "method"
        lines.append(df.to_markdown(tablefmt="pipe", disable_numparse=True,
                                    colalign=("left",) + ("right",) * table.shown_columns))
    else:
        lines.append("(no model of this table has a metrics file)")
    lines += [""] + [f"_{note}_" for note in table.notes]
    return "\n".join(lines).rstrip() + "\n"


_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\^{}"}


def latex_escape(text: str) -> str:
    return re.sub(r"[\\&%$#_{}~^]", lambda m: _LATEX_SPECIAL[m.group()], text)


def to_latex(table: Table) -> str:
    """A booktabs table from ``Styler.to_latex``: groups (horizons, games, player counts) over the
    metrics, scaled to the text width, a rule above the oracle, the notes under it."""
    caption = latex_escape(_caption(table))
    lines = [r"% generated by `actionparty report` from results/metrics; needs \usepackage{booktabs,graphicx}"]
    if not table.rows:
        lines += [r"\begin{table}[t]", r"\centering", rf"\caption{{{caption}}}",
                  r"(no model of this table has a metrics file)", r"\end{table}"]
        return "\n".join(lines) + "\n"
    df = shown(table, bold=lambda text: rf"\textbf{{{text}}}")
    df = df.map(lambda text: text.replace(" ± ", r" $\pm$ ").replace(_DASH, "--"))
    styler = df.style.format_index(latex_escape, axis=0).format_index(latex_escape, axis=1)
    body = styler.to_latex(hrules=True, multicol_align="c", column_format="l" + "r" * table.shown_columns)
    body_lines = body.strip().splitlines()
    out = []
    header_done = False
    oracle = {latex_escape(r.label) for r in table.rows if r.bounds}
    for line in body_lines:
        if line == r"\midrule":
            header_done = True
        elif not header_done and line.startswith(" & ") and "multicolumn" not in line:
            line = "Method" + line  # the metric row names the label column
        elif header_done and any(line.startswith(f"{o} &") for o in oracle):
            out.append(r"\midrule")
        if line.startswith(r"\begin{tabular}"):
            out.append(r"\resizebox{\textwidth}{!}{%")
        out.append(line)
        if line.startswith(r"\end{tabular}"):
            out[-1] += "}"
    lines += [r"\begin{table}[t]", r"\centering", rf"\caption{{{caption}}}",
              rf"\label{{tab:{table.name.replace('_', '-')}}}", *out]
    for note in table.notes:
        lines.append(r"\par\smallskip\footnotesize " + latex_escape(note))
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"


def to_html(table: Table, notes: bool = True) -> str:
    """An HTML ``<table class="results">`` (``Styler.to_html``), the best values in ``<strong>``,
    the oracle's row marked ``class="bounds"``; no script, no external style. ``notes``: the
    notes under it as a paragraph each."""
    if not table.rows:
        return '<p class="empty">No model of this table has a metrics file.</p>\n'
    df = shown(table, bold=lambda text: f"<strong>{text}</strong>")
    styler = (df.style.format_index(html.escape, axis=0).format_index(html.escape, axis=1)
              .set_uuid(table.name).set_table_attributes('class="results"')
              .set_caption(html.escape(_caption(table))))
    oracle = [i for i, r in enumerate(table.rows) if r.bounds]
    if oracle:
        styler = styler.set_td_classes(pd.DataFrame(
            [["bounds" if i in oracle else "" for _ in df.columns] for i in range(len(table.rows))],
            index=df.index, columns=df.columns))
    text = re.sub(r'<style type="text/css">\s*</style>\n', "", styler.to_html(doctype_html=False))
    if notes:
        text += "".join(f'<p class="note">{html.escape(n)}</p>\n' for n in table.notes)
    return text


# The look of every HTML table and page of the report (inline: the pages open from disk).
STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 1.5em auto; max-width: 1400px;
       padding: 0 1em; color: #1b1b1b; line-height: 1.45; }
h1, h2, h3 { line-height: 1.2; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 2em; }
table.results, table.plain { border-collapse: collapse; margin: .6em 0; font-size: 13px; }
table.results caption { caption-side: top; text-align: left; font-size: 13px; color: #333; padding: .3em 0; }
table.results th, table.results td, table.plain th, table.plain td { border: 1px solid #d5d5d5; padding: 3px 7px; }
table.results td, table.plain td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
table.results th.row_heading { text-align: left; white-space: nowrap; }
table.results td.bounds { color: #666; background: #f4f4f4; }
table.results thead th { background: #f0f3f7; }
p.note { font-size: 12px; color: #444; margin: .2em 0; }
.scroll { overflow-x: auto; }
figure { margin: 1em 0; } figcaption { font-size: 13px; color: #333; max-width: 1000px; }
img.figure { max-width: 100%; height: auto; border: 1px solid #eee; }
table.gallery td, table.gallery th { border: 1px solid #ddd; padding: 4px; text-align: center; vertical-align: top;
                                     font-size: 12px; }
table.gallery img { image-rendering: pixelated; width: 192px; height: auto; }
.missing { color: #8a4b00; overflow-wrap: anywhere; } .absent { color: #888; font-style: italic; }
"""


def standalone_html(title: str, body: str) -> str:
    """A whole HTML document around ``body``, the style inline (no external file)."""
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{html.escape(title)}</title>\n'
            f"<style>{STYLE}</style>\n</head>\n<body>\n{body}</body>\n</html>\n")


def to_html_page(table: Table) -> str:
    """:func:`to_html` as a document of its own (``tables/{name}.html``, the Snakemake report's view)."""
    return standalone_html(table.title, f'<div class="scroll">\n{to_html(table)}</div>\n')


def write_table(table: Table, folder: str | Path) -> list[Path]:
    """``{folder}/{name}.md|csv|tex|html``, each written atomically; returns the paths."""
    folder = Path(folder)
    paths = []
    for ext, render in (("md", to_markdown), ("csv", to_csv), ("tex", to_latex), ("html", to_html_page)):
        path = folder / f"{table.name}.{ext}"
        write_text(path, render(table))
        paths.append(path)
    return paths
