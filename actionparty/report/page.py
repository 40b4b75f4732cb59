"""``reports/index.html``: the whole report as one page, read top to bottom, that opens from disk.

Sections, in order: what was missing; the main table; the paper's published numbers beside ours
and what differs; the targets; the ablation table; per game, per player count (table and
figure), per cause and over seeds; training and learning curves; per-step curves; the GIF
gallery per game (real game | each gallery model, same test window, predicted-state rings) at
every horizon the rollouts hold; the rollout figures. Images are referenced by relative paths
inside the report folder; the style is inline; there is no script and nothing from the network.

``reports/gallery.html`` is the gallery alone with every GIF embedded as a data URI: the
Snakemake ``--report`` shows it inline (its viewer does not show GIF files).
"""

from __future__ import annotations

import base64
import html
from pathlib import Path

from actionparty.atomic import write_text
from actionparty.report.gallery import Gallery
from actionparty.report.lineup import Lineup
from actionparty.report.tables import MetricsSet, Table, format_number, standalone_html, to_html
from actionparty.report.targets import Target

# The paper's headline numbers as SPEC.md quotes them (a third-party summary of the paper).
PAPER = {"MA": (0.779, 0.158), "SP": (0.903, 0.668)}  # metric -> (ActionParty, best baseline)
PAPER_SOURCE = ("a third-party summary of the paper (quoted in the project's specification), not the paper's "
                "own tables; the best baseline there is the best of Text-Action, Pretrained AR and Zero-shot I2V")


def _e(text) -> str:
    return html.escape(str(text))


def _section(anchor: str, title: str, body: str) -> str:
    return f'<section id="{anchor}">\n<h2>{_e(title)}</h2>\n{body}</section>\n'


def _figure(out: Path, paths: list[Path], caption: str) -> str:
    png = next(p for p in paths if p.suffix == ".png")
    pdf = next((p for p in paths if p.suffix == ".pdf"), None)
    link = f' (<a href="{_e(pdf.relative_to(out).as_posix())}">pdf</a>)' if pdf else ""
    return (f'<figure><img class="figure" src="{_e(png.relative_to(out).as_posix())}" alt="{_e(png.stem)}">'
            f"<figcaption>{_e(caption)}{link}</figcaption></figure>\n")


def _table_block(table: Table, caption: str, links: list[Path], out: Path) -> str:
    files = " · ".join(f'<a href="{_e(p.relative_to(out).as_posix())}">{p.suffix[1:]}</a>' for p in links)
    return f'<p>{_e(caption)} ({files})</p>\n<div class="scroll">\n{to_html(table)}</div>\n'


def paper_comparison(metrics: MetricsSet, lineup: Lineup) -> str:
    """The paper's MA and SP (ActionParty, best baseline) beside ours at the shortest horizon,
    and what differs between the two."""
    short = metrics.horizons()[0]

    def ours(model: str, metric: str):
        runs = [metrics.models[model], *metrics.seeds.get(model, [])] if model in metrics.models else []
        values = [((r["horizons"].get(f"h{short}") or {}).get("overall") or {}).get(metric) for r in runs]
        return [v for v in values if isinstance(v, (int, float))]

    rows = []
    for metric, (paper_method, paper_base) in PAPER.items():
        full = ours("full", metric)
        shown = "–" if not full else format_number(sum(full) / len(full)) + (
            f" (mean of {len(full)} seeds)" if len(full) > 1 else "")
        base = {m: ours(m, metric) for m in lineup.baselines}
        base = {m: sum(v) / len(v) for m, v in base.items() if v}
        best = max(base, key=base.get) if base else None
        rows.append(f"<tr><th>{metric}</th><td class=num>{paper_method:.3f}</td><td class=num>{paper_base:.3f}</td>"
                    f"<td class=num>{_e(shown)}</td><td class=num>"
                    f"{'–' if best is None else _e(format_number(base[best]) + ' (' + lineup.label(best) + ')')}"
                    "</td></tr>")
    games = metrics.groups("per_game", short)
    windows = (metrics.entry("full", short) or {}).get("overall", {}).get("windows") if "full" in metrics.models else None
    table = ('<table class="plain"><thead><tr><th>metric</th><th>paper: ActionParty</th><th>paper: best baseline</th>'
             f"<th>ours: ActionParty (full), h{short}</th><th>ours: best baseline, h{short}</th></tr></thead>"
             f"<tbody>{''.join(rows)}</tbody></table>\n")
    differs = [
        f"<b>Source of the paper's numbers</b>: {_e(PAPER_SOURCE)}.",
        "<b>Scale</b>: the paper trains on 46 Melting Pot games on mini maps at 512×512 from Wan2.1-T2V-1.3B; these "
        f"results cover {len(games)} game{'s' if len(games) != 1 else ''} ({_e(', '.join(games))})"
        + (f", {windows} test windows at h{short}" if windows else "")
        + ", with the profile's model, canvas and training budget (params/&lt;profile&gt;.yaml).",
        "<b>Metric definition</b>: our MA counts a (player, step) as followed when the evaluation detectors see in "
        "the generated frames the same change of (cell, facing) as in the real game (docs/EVALUATION.md); SP is "
        "the share of (player, step) where that player is detected exactly once with confidence ≥ τ. The paper's "
        "classifiers and protocol are its own, so the numbers compare in kind, not digit for digit.",
        "<b>Baselines</b>: ours are the registry's baselines (" + _e(", ".join(lineup.label(m) for m in lineup.baselines))
        + "); the paper's include a Zero-shot I2V model that is not reproduced here.",
        "<b>Horizon</b>: ours are measured at the shortest horizon of the results (h" + str(short) + "); "
        "the main table has every horizon.",
    ]
    return table + "<ul>" + "".join(f"<li>{d}</li>" for d in differs) + "</ul>\n"


def targets_html(targets: list[Target]) -> str:
    met = sum(t.met is True for t in targets)
    rows = "".join(f"<tr><td>{_e(t.name)}</td><td class=num>{_e(t.wanted)}</td><td class=num>{_e(t.measured)}</td>"
                   f"<td>{'–' if t.met is None else ('yes' if t.met else 'no')}</td></tr>" for t in targets)
    return (f"<p><b>ActionParty (full) against its targets: {met} of {len(targets)} met.</b></p>\n"
            '<table class="plain"><thead><tr><th>target</th><th>wanted</th><th>measured</th><th>met</th></tr>'
            f"</thead><tbody>{rows}</tbody></table>\n")


def gallery_html(gallery: Gallery, src) -> str:
    """The gallery's tables (one per horizon); ``src(path)`` gives each GIF's ``src``."""
    parts = [f'<p class="note">{_e(n)}</p>\n' for n in gallery.notes]
    if gallery.rows:
        parts.insert(0, "<p>Each row is one test window of one game, rolled out from the same real context frame "
                        "with the recorded actions; rings mark the model's own predicted cell of each player in its "
                        "colour (the real game has none).</p>\n")
    for h in gallery.horizons:
        head = "".join(f"<th>{_e(label)}</th>" for _, label in gallery.columns)
        body = []
        for row in gallery.rows.get(h, []):
            cells = []
            for name, label in gallery.columns:
                path = row["cells"].get(name)
                cells.append(f'<td><img src="{src(path)}" alt="{_e(row["game"])}: {_e(label)}, h{h}"></td>'
                             if path is not None else '<td class="absent">no rollout of this window</td>')
            body.append(f'<tr><th>{_e(row["game"])}<br><span class="note">{_e(row["window"])}</span></th>'
                        + "".join(cells) + "</tr>")
        parts.append(f"<h3>Horizon {h}</h3>\n<table class=\"gallery\"><thead><tr><th>game</th>{head}</tr></thead>"
                     f"<tbody>{''.join(body)}</tbody></table>\n")
    return "".join(parts)


def _data_uri(path: Path) -> str:
    return "data:image/gif;base64," + base64.b64encode(path.read_bytes()).decode()


def write_gallery_page(out: Path, gallery: Gallery) -> Path:
    """``{out}/gallery.html``: the gallery with its GIFs embedded (no other file needed)."""
    path = out / "gallery.html"
    body = "<h1>Rollouts side by side</h1>\n" + gallery_html(gallery, _data_uri)
    write_text(path, standalone_html("ActionParty reproduction: rollouts side by side", body))
    return path


def write_page(out: Path, summary, tables: dict[str, Table], metrics: MetricsSet, lineup: Lineup,
               targets: list[Target] | None, gallery: Gallery, results: Path) -> Path:
    """``{out}/index.html`` from what :func:`.build.build_report` wrote (``summary``)."""
    def rel(path: Path) -> str:
        return _e(path.relative_to(out).as_posix())

    sections = []
    toc = []

    def add(anchor, title, body):
        toc.append(f'<a href="#{anchor}">{_e(title)}</a>')
        sections.append(_section(anchor, title, body))

    def table(name):
        return _table_block(tables[name], summary.captions[name], summary.tables[name], out) if name in tables else ""

    def figure(name):
        return _figure(out, summary.figures[name], summary.captions[name]) if name in summary.figures else ""

    if summary.missing:
        add("missing", "Missing inputs", "<ul>" + "".join(f'<li class="missing">{_e(m)}</li>' for m in summary.missing)
            + "</ul>\n")
    add("main", "Main results", table("main"))
    add("paper", "The paper's numbers beside ours", paper_comparison(metrics, lineup))
    if targets is not None:
        add("targets", "Targets", targets_html(targets))
    add("ablation", "Ablations", table("ablation"))
    add("per-game", "Per game", table("per_game"))
    add("per-player-count", "Per number of players", table("per_player_count") + figure("per_player_count"))
    if "per_cause" in tables:
        add("per-cause", "Per cause of the real step", table("per_cause"))
    if "seeds" in tables:
        add("seeds", "Over seeds", table("seeds"))
    if "protocols" in tables:
        add("protocols", "Test protocols", table("protocols"))
    curves = figure("training_curves") + figure("learning_curves")
    if summary.plots:
        kinds = {}
        for p in summary.plots:
            kinds.setdefault(p.parent, []).append(p)
        curves += ("<p>The same curves as data for <code>dvc plots</code> (one record per step): "
                   + "; ".join(f"<code>{rel(folder)}/</code> " + ", ".join(f'<a href="{rel(p)}">{_e(p.stem)}</a>'
                                                                      for p in paths)
                               for folder, paths in kinds.items()) + ".</p>\n")
    add("curves", "Training and learning curves", curves or '<p class="absent">No training logs or curves.</p>\n')
    add("steps", "Per rollout step", figure("ma_curve"))
    add("gallery", "Rollouts side by side", gallery_html(gallery, rel))
    rollouts = "".join(figure(n) for n in summary.figures if n.startswith("rollout_"))
    add("rollouts", "Rollout figures", rollouts or '<p class="absent">No rollout figures (no rollouts).</p>\n')

    intro = (f"<h1>ActionParty reproduction: report</h1>\n<p>Rebuilt from <code>{_e(results)}</code> by "
             "<code>actionparty report</code>. Numbers are rounded to 3 decimals (full precision in each table's "
             "CSV); bold = best non-oracle value of its column; the oracle row bounds the others.</p>\n"
             f"<nav>{' · '.join(toc)}</nav>\n")
    path = out / "index.html"
    write_text(path, standalone_html("ActionParty reproduction: report", intro + "".join(sections)))
    return path
