"""The whole report from ``results/`` alone: tables, figures, GIFs, plot data, ``index.md``
and ``index.html``.

    results/metrics/{model}.json                 -> tables/{main,ablation,per_game,...}.{md,csv,tex,html}
                                                    figures/{per_player_count,ma_curve}.{png,pdf}
    results/exp-138/train_log.jsonl,
    results/finetune/{variant}/train_log.jsonl   -> figures/training_curves.{png,pdf}, plots/train_loss/{run}.json
    results/finetune/{variant}/curve.json        -> figures/learning_curves.{png,pdf}, plots/curves/{variant}.json
    results/rollouts/{model}/h{H}.npz
      (+ results/detectors/detectors.pt,
       + optional test LMDB for ground truth)    -> figures/rollout_{model}.{png,pdf}, gifs/{model}_{n}.gif,
                                                    gifs/gallery/h{H}/{game}_{real|model}.gif, gallery.html
    everything above                             -> index.md (every output with its caption),
                                                    index.html (one page, top to bottom; :mod:`.page`)

Whatever is missing (a model a smaller profile does not run, no detector bundle, no test LMDB) is
left out and named in ``index.md`` and in the returned summary; a corrupt input is a one-line
UserError naming the file. No GPU and no data/ are needed (the test LMDB only adds the
ground-truth rows).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from actionparty.atomic import write_text
from actionparty.report import figures as F
from actionparty.report import tables as T
from actionparty.report.gallery import GALLERY_MODELS, Gallery, build_gallery
from actionparty.report.lineup import Lineup
from actionparty.report.page import targets_html, write_gallery_page, write_page
from actionparty.report.plots import write_plot_data
from actionparty.report.targets import check_targets, load_protocols, targets_markdown
from actionparty.variants import VARIANT_DIR

# One sentence per output; the owner may reuse them for workflow/report/*.rst captions.
CAPTIONS = {
    "main": "The paper's method (ActionParty (paper), exp-150) and ours (ActionParty+, exp-139) against the Text-Action, Global-Action and Pretrained-AR baselines, the "
            "copy-the-context floor and the oracle (ground-truth frames through the same detectors), on action "
            "following (MA), subject preservation (SP), detection rate (DR), Interact effect (EA), binding (BA), "
            "PSNR, SSIM and the Fréchet distance of detector features (FD, not an FVD) at horizons 4 and 20.",
    "ablation": "The paper's method against its four ablations (w/o MSA, w/o MCA, frame-wise MCA, no RoPE in SA) and "
                "ours against the ablations of its extensions (w/o state, state render, glimpse, own frame) on "
                "the same metrics plus state tracking of the model's own predicted coordinates (ST_l1 in cells, "
                "ST_exact share of exact cells) and MA where that predicted state is right (MA_given_ST: how "
                "faithfully the video draws the model's own state).",
    "per_game": "MA and SP of every model and the oracle in each game, at the shortest horizon.",
    "per_player_count": "MA and SP of every model and the oracle by the number of players in the scene, at the "
                        "shortest horizon.",
    "per_cause": "MA of every model by what really happened to the player at that step: it moved, turned, tried "
                 "to move into a wall, tried to move into a free cell that another player held or took, or stayed "
                 "(no-op, Interact), at the shortest horizon.",
    "protocols": "MA_changing, MA and SP of the headline rows under each test-split protocol: the test episodes' "
                 "own sticky policy, one player acting at a time with everyone else still (one_mover: control "
                 "without binding), every player acting uniformly at random (uniform: the nearest to the paper's "
                 "protocol); all scored against what the real game recorded.",
    "seeds": "Mean and sample standard deviation of MA, SP and BA over the seeds of the models that were repeated "
             "with another training and sampling seed (same test windows).",
    "fig_per_player_count": "MA and SP against the number of players in the scene, one line per model (ActionParty "
                            "bold, ablations dashed, copy floor dotted, oracle dash-dotted), one row per horizon.",
    "fig_ma_curve": "MA per rollout step (and SP per generated frame) at horizon {horizon}, one line per model: how "
                    "action following and player identity drift over a long autoregressive rollout.",
    "fig_training_curves": "Training loss per logged step: video-only pretraining (exp-138) and the action "
                           "finetuning of every variant (total loss, and the state-token loss of the subject "
                           "variants).",
    "fig_learning_curves": "MA, BA and SP (those measured) at finetuning checkpoints on a few test windows, one "
                           "line per variant.",
    "fig_rollout": "{label}: {windows} test windows at horizon {horizon}; rows: {rows}; circles mark the model's "
                   "predicted coordinates of each player in its colour; under each generated step, one icon per "
                   "player for the action it was fed, {criterion}.",
    "gif": "{label}, test window {n} at horizon {horizon}: {what}.",
}


@dataclass
class ReportSummary:
    """What was written (by kind) and what was missing (human-readable lines)."""

    tables: dict[str, list[Path]] = field(default_factory=dict)
    figures: dict[str, list[Path]] = field(default_factory=dict)
    gifs: dict[str, list[Path]] = field(default_factory=dict)
    captions: dict[str, str] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    plots: list[Path] = field(default_factory=list)  # plot data for dvc plots (plots/train_loss, plots/curves)
    gallery: Gallery | None = None
    pages: dict[str, Path] = field(default_factory=dict)  # index.md, index.html, gallery.html


def _rollout_files(folder: Path) -> dict[int, Path]:
    """Plain (non-swap) rollout files of one model: horizon -> path."""
    out = {}
    for path in folder.glob("h*.npz"):
        m = re.fullmatch(r"h(\d+)\.npz", path.name)
        if m:
            out[int(m.group(1))] = path
    return dict(sorted(out.items()))


def _training_inputs(results: Path, lineup: Lineup, summary: ReportSummary) -> tuple[dict | None, dict, dict]:
    pretrain_log = results / "exp-138" / "train_log.jsonl"
    pretrain = F.read_train_log(pretrain_log) if pretrain_log.is_file() else None
    if pretrain is None:
        summary.missing.append(f"pretraining log {pretrain_log}")
    finetune, curves = {}, {}
    folder = results / "finetune"
    order = {m: i for i, m in enumerate(lineup.names)}
    runs = sorted((p for p in folder.glob("*") if p.is_dir()), key=lambda p: (order.get(p.name, 99), p.name))
    for run in runs:
        if (run / "train_log.jsonl").is_file():
            finetune[run.name] = F.read_train_log(run / "train_log.jsonl")
        if (run / "curve.json").is_file():
            curves[run.name] = F.read_learning_curve(run / "curve.json")
    gone = [v for v in lineup.trained if v not in finetune]
    if gone:
        summary.missing.append(f"finetuning logs {folder}/{{{','.join(gone)}}}/train_log.jsonl")
    return pretrain, finetune, curves


def parameter_counts(profile, lineup: Lineup) -> dict[str, int]:
    """Every network row's parameter count, built on the meta device (no weights, no memory):
    the exp-138 video model for source pretrain, each trained variant as its recipe builds it."""
    from actionparty.train.estimate import build_on_meta
    from actionparty.variants import variant_profile

    out = {}
    for name, v in lineup.variants.items():
        if v.source == "finetune":
            model, _ = build_on_meta(variant_profile(profile, v), v)
        elif v.source == "pretrain":
            model, _ = build_on_meta(profile)
        else:
            continue
        out[name] = sum(p.numel() for p in model.parameters())
    return out


def build_report(results: str | Path = "results", out: str | Path = "reports", test_lmdb: str | Path | None = None,
                 rollout_models: tuple[str, ...] = ("full", "global_action"), windows: int = 3,
                 rollout_horizon: int = 4, progress: bool = True, variant_dir: str | Path = VARIANT_DIR,
                 gallery_models: tuple[str, ...] = GALLERY_MODELS, gallery_games: int = 8,
                 profile=None) -> ReportSummary:
    """Write every table, figure and GIF that ``results`` allows under ``out``, then ``index.md``
    and ``index.html``. Rows and lines: every model of the variant registry ``variant_dir``
    (:mod:`.lineup`).

    rollout_horizon: the horizon of the rollout figures (columns = steps; the nearest available
    file is used if that one is missing); GIFs use each model's longest rollout. The gallery
    (:mod:`.gallery`): ``gallery_models`` side by side on one window of each of up to
    ``gallery_games`` games, at every horizon their rollouts hold. ``profile`` (optional): the
    profile the results were made with, for each model's parameter count in the main table.
    """
    results, out = Path(results), Path(out)
    summary = ReportSummary()
    lineup = Lineup.from_registry(variant_dir)
    metrics = T.load_metrics(results / "metrics", lineup.names)
    summary.missing += [f"metrics of {m} ({p})" for m, p in metrics.missing.items()]

    protocols = load_protocols(results / "metrics", lineup.names)
    parameters = None if profile is None else parameter_counts(profile, lineup)
    tables = {t.name: t for t in T.build_tables(metrics, lineup, protocols, parameters)}
    bar = tqdm(total=len(tables) + 3 + len(rollout_models), desc="report", unit="part", disable=not progress)
    for table in tables.values():
        summary.tables[table.name] = T.write_table(table, out / "tables")
        summary.captions[table.name] = CAPTIONS[table.name]
        bar.update()
    targets = check_targets(metrics, lineup, protocols) if "full" in metrics.models else None
    if targets is not None:
        write_text(out / "targets.md", targets_markdown(targets))
        write_text(out / "targets.html", T.standalone_html("ActionParty against its targets", targets_html(targets)))

    _metric_figures(metrics, lineup, results, out / "figures", summary)
    bar.update()
    detectors = _detector_bundle(results, summary)
    if test_lmdb is None:
        summary.missing.append("test LMDB (--test-lmdb): rollout figures and GIFs without ground truth")
    for model in rollout_models:
        bar.set_postfix_str(model)
        _rollout_outputs(model, results, out, lineup.label(model), detectors, test_lmdb, windows, rollout_horizon,
                         summary)
        bar.update()
    bar.set_postfix_str("gallery")
    summary.gallery = build_gallery(results, out, lineup, test_lmdb, gallery_models, gallery_games,
                                    game_names=None if detectors is None else list(detectors.games))
    if summary.gallery.rows:
        summary.pages["gallery.html"] = write_gallery_page(out, summary.gallery)
    else:
        summary.missing.append(f"rollouts for the gallery ({results}/rollouts/{{{','.join(gallery_models)}}}/h<H>.npz)")
    bar.update()
    bar.close()
    summary.pages["index.md"] = write_index(out, summary, results)
    summary.pages["index.html"] = write_page(out, summary, tables, metrics, lineup, targets, summary.gallery, results)
    return summary


def _metric_figures(metrics: T.MetricsSet, lineup: Lineup, results: Path, figures: Path,
                    summary: ReportSummary) -> None:
    """Per player count, per step, training and learning curves (those the inputs allow)."""
    summary.figures["per_player_count"] = F.player_count_figure(metrics, lineup, figures / "per_player_count")
    summary.captions["per_player_count"] = CAPTIONS["fig_per_player_count"]
    horizons = metrics.horizons()
    long = 20 if 20 in horizons else horizons[-1]
    summary.figures["ma_curve"] = F.step_curves_figure(metrics, lineup, figures / "ma_curve", long)
    summary.captions["ma_curve"] = CAPTIONS["fig_ma_curve"].format(horizon=long)

    pretrain, finetune, curves = _training_inputs(results, lineup, summary)
    summary.plots = write_plot_data(pretrain, finetune, curves, figures.parent / "plots")
    if pretrain is not None or finetune:
        summary.figures["training_curves"] = F.training_curves_figure(pretrain, finetune, lineup,
                                                                      figures / "training_curves")
        summary.captions["training_curves"] = CAPTIONS["fig_training_curves"]
    if curves:
        summary.figures["learning_curves"] = F.learning_curves_figure(curves, lineup, figures / "learning_curves")
        summary.captions["learning_curves"] = CAPTIONS["fig_learning_curves"]
    else:
        summary.missing.append(f"learning curves ({results}/finetune/<variant>/curve.json): none yet")


def _detector_bundle(results: Path, summary: ReportSummary):
    """The detectors of ``results`` (they judge the action icons), or None (noted as missing)."""
    bundle = results / "detectors" / "detectors.pt"
    if not bundle.is_file():
        summary.missing.append(f"detector bundle {bundle} (action icons not judged)")
        return None
    from actionparty.eval.detectors import load_detectors

    return load_detectors(bundle)


def _rollout_outputs(model: str, results: Path, out: Path, label: str, detectors, test_lmdb, windows: int,
                     horizon: int, summary: ReportSummary) -> None:
    files = _rollout_files(results / "rollouts" / model)
    if not files:
        summary.missing.append(f"rollouts of {model} ({results / 'rollouts' / model}/h<H>.npz)")
        return
    shown = min(files, key=lambda h: (abs(h - horizon), h))
    view = F.rollout_view(files[shown], model, windows, detectors, test_lmdb)
    name = f"rollout_{model}"
    title = f"{label}, horizon {view.horizon}"
    summary.figures[name] = F.rollout_figure(view, title, out / "figures" / name)
    rows = "ground truth, generated" if view.truth_frames is not None else \
        "generated only (no ground-truth row: no --test-lmdb given)"
    summary.captions[name] = CAPTIONS["fig_rollout"].format(label=label, windows=view.frames.shape[0],
                                                            horizon=view.horizon, rows=rows,
                                                            criterion=view.criterion)
    longest = max(files)
    gif_view = view if longest == shown else F.rollout_view(files[longest], model, windows, None, test_lmdb)
    summary.gifs[model] = F.rollout_gifs(gif_view, out / "gifs")
    what = ("ground truth (left) beside generated (right)" if gif_view.truth_frames is not None
            else "generated frames (no ground truth: no --test-lmdb given)")
    for n, path in enumerate(summary.gifs[model]):
        summary.captions[path.stem] = CAPTIONS["gif"].format(label=label, n=n, horizon=gif_view.horizon, what=what)


def write_index(out: Path, summary: ReportSummary, results: Path) -> Path:
    """``{out}/index.md``: every table, figure and GIF with its caption, and what was missing."""
    def rel(path: Path) -> str:
        return path.relative_to(out).as_posix()

    lines = ["# ActionParty reproduction: report", "",
             f"Rebuilt from `{results}` by `actionparty report`; the same report as one page: "
             "[index.html](index.html). Tables are Markdown, CSV, LaTeX and HTML; figures PNG and PDF. Numbers are "
             "rounded to 3 decimals (full precision in the CSV), mean ± sd over seeds where a model has seed runs; "
             "bold = best non-oracle value.", ""]
    combined = results / "metrics" / "combined.csv"
    if combined.is_file():
        lines += [f"Every metric of every model, game and horizon in one table: `{combined}`.", ""]
    if summary.missing:
        lines += ["## Missing inputs", ""] + [f"- {m}" for m in summary.missing] + [""]
    if (out / "targets.md").is_file():
        lines += ["## Targets", "", (out / "targets.md").read_text().strip(), ""]
    lines += ["## Tables", ""]
    for name, paths in summary.tables.items():
        links = " · ".join(f"[{p.suffix[1:]}]({rel(p)})" for p in paths)
        lines += [f"### {name}", "", f"{summary.captions[name]} ({links})", ""]
        lines += [(paths[0].read_text().strip()), ""]
    lines += ["## Figures", ""]
    for name, paths in summary.figures.items():
        png = next(p for p in paths if p.suffix == ".png")
        pdf = next(p for p in paths if p.suffix == ".pdf")
        lines += [f"### {name}", "", f"{summary.captions[name]}", "", f"![{name}]({rel(png)}) ([pdf]({rel(pdf)}))", ""]
    if summary.plots:
        lines += ["## Plot data (dvc plots)", "", ", ".join(f"[{rel(p)}]({rel(p)})" for p in summary.plots), ""]
    if summary.gallery is not None and summary.gallery.rows:
        lines += ["## Gallery", "", "Real game beside each model on the same test window, per game and horizon: "
                  "[index.html#gallery](index.html#gallery) (GIFs under `gifs/gallery/`; embedded in "
                  "[gallery.html](gallery.html)).", ""]
    if summary.gifs:
        lines += ["## GIFs", ""]
        for paths in summary.gifs.values():
            lines += [f"- [{p.name}]({rel(p)}): {summary.captions[p.stem]}" for p in paths]
        lines.append("")
    path = out / "index.md"
    write_text(path, "\n".join(lines))
    return path
