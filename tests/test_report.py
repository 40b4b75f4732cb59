"""Reports rebuilt from a synthetic results/ tree: tables copy the metrics JSON exactly and mark
the best non-oracle value, figures exist as PNG and PDF, index.md lists everything, missing
models are reported, corrupt inputs are one-line errors, action icons are judged with the
metric code, and the rows and lines are the variant registry's (a new variant file is a new row)."""

from __future__ import annotations

import argparse
import csv
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from actionparty.atomic import write_json, write_text
from actionparty.data.lmdb_dataset import ClipDataset, build_lmdb
from actionparty.errors import UserError
from actionparty.eval import metrics as M
from actionparty.config import EvalConfig
from actionparty.eval.detectors import Detectors, build_models, load_detectors, save_detectors
from actionparty.eval.evaluate import METRIC_KEYS, SUMMARY_METRICS, ground_truth
from actionparty.eval.metrics_file import MetricsError
from actionparty.rollout.rollout_io import Rollout, select_windows, write_rollout
from actionparty.games.actions import FORWARD, NOOP, TURN_RIGHT
from actionparty.report import figures as F
from actionparty.report import tables as T
from actionparty.report.build import build_report
from actionparty.report.commands import add_commands
from actionparty.report.lineup import Lineup
from conftest import flat_keys, write_synthetic_episodes

GAMES = {"alpha": 2, "beta": 3}  # game -> players
CANVAS = 6
# MA at h4 of each model with a metrics file (pretrained_ar, no_mca, ... have none).
BASE = {"full": 0.77912, "no_glimpse": 0.61234, "text_action": 0.15833, "global_action": 0.21011, "static": 0.37601,
        "oracle": 0.99512}
HORIZONS = (4, 20)


pytestmark = pytest.mark.usefixtures("one_thread")


# ---------------------------------------------------------------------------------------------
# A synthetic results/ tree
# ---------------------------------------------------------------------------------------------


def _metrics_values(model: str, base: float) -> dict:
    """Every metric key, each a distinct 5-decimal number derived from ``base``."""
    values = {}
    for j, key in enumerate(METRIC_KEYS):
        values[key] = round(min(base + 0.001 * j, 0.99999), 5)
    values.update(PSNR=round(20 + 10 * base, 5), FD=round(5 * (1 - base), 5), FVD_I3D=None,
                  ST_l1=round(2 * (1 - base), 5) if model in ("full", "no_glimpse") else None)
    if model not in ("full", "no_glimpse"):
        values.update(ST_exact=None, ST_facing=None, MA_given_ST=None)
    if model == "text_action":
        values["EA"] = None
    values.update(windows=4, player_steps=40, player_frames=40, interact_steps=3, binding_steps=8)
    return values


def metrics_json(model: str) -> dict:
    """The metrics file of a model in BASE, or of a seed run '<model>-s<k>' (MA higher by 0.02 k)."""
    name, seed = model, 0
    if "-s" in model:
        model, seed = model.rsplit("-s", 1)[0], int(model.rsplit("-s", 1)[1])
    horizons = {}
    for h in HORIZONS:
        base = BASE[model] - (0.1 if h == 20 else 0.0) + 0.02 * seed
        horizons[f"h{h}"] = {
            "rollout": None if model == "oracle" else f"results/rollouts/{model}/h{h}.npz", "swap_rollout": None,
            "meta": {"variant": name, "horizon": h, "split": "test", "sampling_steps": 8, "seed": seed},
            "overall": _metrics_values(model, base),
            "per_game": {"alpha": _metrics_values(model, base + 0.01), "beta": _metrics_values(model, base - 0.01)},
            "per_player_count": {"2": _metrics_values(model, base + 0.02), "3": _metrics_values(model, base - 0.02)},
            "per_action": {"NOOP": {"MA": base, "player_steps": 5}},
            "per_cause": {c: {"MA": round(base - 0.01 * i, 5), "player_steps": 5 + i} for i, c in enumerate(M.CAUSES)},
            "ma_curve": [round(base - 0.01 * t, 5) for t in range(h)],
            "sp_curve": [round(base + 0.1 - 0.005 * t, 5) for t in range(h)],
            "ba_curve": [round(base - 0.02 * t, 5) for t in range(h)] if h == 4 else None,
        }
    return {"schema_version": 1, "variant": name, "kind": "oracle" if model == "oracle" else "model", "tau": 0.5,
            "detectors": "results/detectors/detectors.pt", "test_lmdb": "data/lmdb/test.lmdb", "horizons": horizons}


def eval_config() -> EvalConfig:
    return EvalConfig.model_validate(dict(
        seed=0, tile=dict(patch_width=8, width=8, context_cells=1, game_embedding=True, occupied_weight=4.0),
        idm=dict(margin_cells=1, patch_width=8, width=8), train_steps=1, batch_clips=2, lr=1e-3, checkpoint_every=1,
        val_clips_per_game=1, num_workers=0, tau=0.5, eval_batch_frames=64,
        psnr_max_db=100.0, i3d_checkpoint=None))


def write_rollouts(results: Path, test_lmdb: Path) -> None:
    """full: the ground-truth frames with predicted coordinates near the real ones; global_action:
    the context frame copied (both are valid rollout files of the test windows)."""
    for h in HORIZONS:
        ds = ClipDataset(test_lmdb, clip_steps=h)
        w = select_windows(ds, per_game=2, seed=0)
        gt = ground_truth(ds, w["episode"], w["start"], "test")
        frames = np.ascontiguousarray(gt["frames"].transpose(0, 1, 3, 4, 2))
        for model in ("full", "global_action"):
            gen = frames if model == "full" else np.repeat(frames[:, :1], h + 1, axis=1)
            pred = (gt["position"] + 0.2).astype(np.float32) if model == "full" else None
            write_rollout(results / "rollouts" / model / f"h{h}.npz", Rollout(
                gen, w["episode"], w["start"], gt["game"], gt["actions"], gt["present"], pred_position=pred,
                meta={"variant": model, "horizon": h, "split": "test", "sampling_steps": 8, "seed": 0}))


def make_results(root: Path) -> tuple[Path, Path]:
    """results/ with metrics of BASE's models, train logs, a learning curve, rollouts of full and
    global_action, an (untrained) detector bundle; and the test LMDB the rollouts come from."""
    folders = [root / "episodes" / g for g in GAMES]
    for seed, (folder, (game, players)) in enumerate(zip(folders, GAMES.items())):
        write_synthetic_episodes(folder, game, "test", episodes=2, steps=24, players=players, canvas_cells=CANVAS,
                                 seed=seed)
    test_lmdb = root / "test.lmdb"
    build_lmdb(folders, test_lmdb, "test", map_size_mb=16, progress=False)
    results = root / "results"
    for model in (*BASE, "full-s1", "full-s2"):
        write_json(results / "metrics" / f"{model}.json", metrics_json(model))
    write_text(results / "metrics" / "combined.csv", "variant\n")
    logs = {results / "exp-138": 0.5, results / "finetune" / "full": 0.3, results / "finetune" / "global_action": 0.4}
    for folder, loss in logs.items():
        records = [{"step": s, "loss": loss / s, "video_loss": loss / s, "mse_x0": 0.1, "grad_norm": 1.0,
                    "lr": 1e-3, "tokens_per_s": 100.0} for s in range(10, 60, 10)]
        if folder.name == "full":
            for r in records:
                r["state_loss"] = 0.01
        write_text(folder / "train_log.jsonl", "".join(json.dumps(r) + "\n" for r in records))
    write_json(results / "finetune" / "full" / "curve.json", {"steps": [100, 200], "MA": [0.3, 0.6], "BA": [None, 0.5]})
    write_rollouts(results, test_lmdb)
    torch.manual_seed(0)
    cfg = eval_config()
    tile, idm = build_models(len(GAMES), cfg)
    walkable = {g: np.ones((CANVAS, CANVAS), bool) for g in GAMES}
    save_detectors(results / "detectors" / "detectors.pt", Detectors(tile, idm, list(GAMES), walkable, CANVAS * 8, cfg))
    return results, test_lmdb


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The report built twice: from results/ alone, and with the test LMDB."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("report")
    results, test_lmdb = make_results(root)
    alone = build_report(results, root / "reports", rollout_models=("full", "global_action", "pretrained_ar"),
                         windows=2, progress=False)
    with_truth = build_report(results, root / "reports_gt", test_lmdb=test_lmdb, rollout_models=("full",), windows=2,
                              progress=False)
    return dict(root=root, results=results, test_lmdb=test_lmdb, out=root / "reports", alone=alone,
                out_gt=root / "reports_gt", with_truth=with_truth)


def read_csv(path: Path) -> list[dict]:
    return list(csv.DictReader(io.StringIO(path.read_text())))


def md_cells(line: str) -> list[str]:
    """The cells of a Markdown table row."""
    return [c.strip() for c in line.strip().strip("|").split("|")]


# ---------------------------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------------------------


def test_every_table_is_written_in_four_formats(built):
    for name in ("main", "ablation", "per_game", "per_player_count", "per_cause", "seeds"):
        for ext in ("md", "csv", "tex", "html"):
            assert (built["out"] / "tables" / f"{name}.{ext}").stat().st_size > 0


def _mean_sd(model: str, h: int, metric: str, runs=("", "-s1", "-s2")) -> tuple[float, float]:
    import statistics

    values = [metrics_json(model + r)["horizons"][f"h{h}"]["overall"][metric] for r in runs]
    return statistics.fmean(values), statistics.stdev(values)


def test_main_table_csv_has_full_precision_and_the_seed_mean(built):
    rows = read_csv(built["out"] / "tables" / "main.csv")
    assert [r["model"] for r in rows] == ["full", "text_action", "global_action", "static", "oracle"]
    keys = [f"h{h}/{m}" for h in HORIZONS for m in T.MAIN_METRICS]
    assert list(rows[0])[:4] == ["model", "experiment", "label", "runs"]
    assert list(rows[0])[4:] == keys + [f"{k} sd" for k in keys]  # full has seed runs: a spread per column
    by_model = {r["model"]: r for r in rows}
    assert by_model["full"]["experiment"] == "exp-139" and "exp-146" in by_model["global_action"]["label"]
    for model, row in by_model.items():
        if model == "full":
            continue
        data = metrics_json(model)["horizons"]
        assert row["runs"] == "1" and row["h4/MA sd"] == ""
        for h in HORIZONS:
            for m in T.MAIN_METRICS:
                expected = data[f"h{h}"]["overall"][m]
                assert row[f"h{h}/{m}"] == ("" if expected is None else repr(expected)), (model, h, m)
    mean, sd = _mean_sd("full", 4, "MA")  # full, full-s1, full-s2: 0.77912, 0.79912, 0.81912
    assert by_model["full"]["runs"] == "3" and "3 seeds" in by_model["full"]["label"]
    assert float(by_model["full"]["h4/MA"]) == mean and float(by_model["full"]["h4/MA sd"]) == sd  # not rounded
    assert by_model["full"]["h4/MA"] == repr(mean)


def test_shown_tables_round_and_show_mean_and_sd(built):
    md = (built["out"] / "tables" / "main.md").read_text()
    full = next(line for line in md.splitlines() if line.startswith("| ActionParty+ (ours) (exp-139), 3 seeds"))
    assert "**0.799 ± 0.020**" in full  # mean 0.79912, sd 0.02, 3 decimals
    static = md_cells(next(line for line in md.splitlines() if line.startswith("| Static")))
    assert static[1 + T.MAIN_METRICS.index("MA")] == f"{metrics_json('static')['horizons']['h4']['overall']['MA']:.3f}" == "0.376"
    assert "0.37601" not in md and "mean ± sample standard deviation" in md
    assert "95% CI: not shown" in md  # the synthetic metrics carry no interval
    tex = (built["out"] / "tables" / "main.tex").read_text()
    assert r"\textbf{0.799 $\pm$ 0.020}" in tex and r"\midrule" + "\nOracle" in tex
    html = (built["out"] / "tables" / "main.html").read_text()
    assert "<strong>0.799 ± 0.020</strong>" in html and html.startswith("<!DOCTYPE html>")
    assert 'class="data row4 col0 bounds"' in html  # the oracle's row (5th) is marked as bounds


def test_best_is_not_bold_on_all_equal_columns_or_shared_zeros():
    cols = [T.Column("h4", m, "4") for m in ("MA", "EA", "FD", "duplicated", "SP")]
    rows = [T.Row("a", "A", "", [0.5, 0.0, 0.0, 0.0, 0.90011]),
            T.Row("b", "B", "", [0.4, 0.0, 0.0, 0.1, 0.90049]),
            T.Row("c", "C", "", [0.5, 0.0, 1.0, 0.2, 0.3]),
            T.Row("o", "Oracle", "", [1.0, 1.0, 0.0, 0.0, 1.0], bounds=True)]
    best = T.Table("t", "t", cols, rows).best()
    # MA: a tie at 0.5 (both bold); EA: all 0.0 (none, the oracle's 1.0 does not compete);
    # FD: 0.0 shared by a and b (none); duplicated: a's 0.0 alone is best; SP: equal when rounded.
    assert best == [{0, 2}, set(), set(), {0}, {0, 1}]
    md = T.to_markdown(T.Table("t", "t", cols, rows))
    assert "**0.000**" in md and md.count("**") == 2 * 5 + 2  # the caption's bold + 5 bold cells


def test_ablation_and_breakdown_tables(built):
    ablation = read_csv(built["out"] / "tables" / "ablation.csv")
    assert [r["model"] for r in ablation] == ["full", "no_glimpse"]
    assert float(ablation[0]["h4/ST_l1"]) == _mean_sd("full", 4, "ST_l1")[0]
    assert ablation[1]["h4/ST_l1"] == repr(metrics_json("no_glimpse")["horizons"]["h4"]["overall"]["ST_l1"])
    md = (built["out"] / "tables" / "ablation.md").read_text()
    assert "no_mca" in md and "no_state" in md  # reported as missing, not dropped silently
    per_game = read_csv(built["out"] / "tables" / "per_game.csv")
    assert list(per_game[0])[4:8] == ["alpha/MA", "alpha/SP", "beta/MA", "beta/SP"]
    assert [r["model"] for r in per_game] == ["full", "no_glimpse", "text_action", "global_action", "static", "oracle"]
    assert per_game[1]["beta/SP"] == repr(metrics_json("no_glimpse")["horizons"]["h4"]["per_game"]["beta"]["SP"])
    counts = read_csv(built["out"] / "tables" / "per_player_count.csv")
    assert list(counts[0])[4:8] == ["2 players/MA", "2 players/SP", "3 players/MA", "3 players/SP"]
    assert counts[1]["3 players/MA"] == repr(metrics_json("no_glimpse")["horizons"]["h4"]["per_player_count"]["3"]["MA"])



def test_targets_are_checked_from_the_metrics(built):
    from actionparty.report.targets import check_targets

    metrics = T.load_metrics(built["results"] / "metrics")
    targets = {t.name: t for t in check_targets(metrics)}
    changing = metrics_json("full")["horizons"]["h4"]["per_game"]["alpha"]["MA_changing"]
    assert targets["MA_changing h4, alpha"].met is (changing >= 0.85)
    assert targets["MA_changing h4, alpha"].measured == f"{changing:.3f}"
    assert targets["MA_changing h4, alpha, uniform protocol"].met is None  # no protocol metrics: not measured
    assert targets["baselines' MA_changing fall, one_mover -> uniform"].met is None
    assert targets["MA_changing h20"].measured == f"{metrics_json('full')['horizons']['h20']['overall']['MA_changing']:.3f}"
    assert targets["MA_changing h4 95% CI half-width"].met is None  # the synthetic files carry no interval
    assert "## Targets" in (built["out"] / "index.md").read_text()
    assert f"of {len(targets)} met" in (built["out"] / "targets.md").read_text()
    # The protocols' fall: a baseline that loses its control when everyone moves, ours that keeps it.
    def protocol(values):
        return T.MetricsSet(Path("p"), {m: {"variant": m, "horizons": {"h4": {"overall": {"MA_changing": v}}}}
                                         for m, v in values.items()}, {}, {})
    claim = check_targets(metrics, protocols={"one_mover": protocol({"full": 0.9, "global_action": 0.8}),
                                              "uniform": protocol({"full": 0.85, "global_action": 0.3})})
    fall = next(t for t in claim if t.name.startswith("MA_changing fall one_mover -> uniform, global_action"))
    assert fall.met is True and fall.measured == "0.500"


def test_per_cause_and_seed_tables(built):
    causes = read_csv(built["out"] / "tables" / "per_cause.csv")
    assert list(causes[0])[4:4 + len(M.CAUSES)] == [f"{c}/MA" for c in M.CAUSES]
    assert causes[1]["blocked_wall/MA"] == repr(metrics_json("no_glimpse")["horizons"]["h4"]["per_cause"]["blocked_wall"]["MA"])
    seeds = read_csv(built["out"] / "tables" / "seeds.csv")
    assert [r["model"] for r in seeds] == ["full"] and "3 seeds" in seeds[0]["label"]
    ma = [metrics_json(m)["horizons"]["h4"]["overall"]["MA"] for m in ("full", "full-s1", "full-s2")]
    assert float(seeds[0]["h4/MA mean"]) == pytest.approx(sum(ma) / 3, abs=1e-5)
    assert float(seeds[0]["h4/MA sd"]) == pytest.approx(0.02, abs=1e-5)  # seeds 0, 1, 2 differ by 0.02 each


# ---------------------------------------------------------------------------------------------
# Figures, GIFs, index
# ---------------------------------------------------------------------------------------------


def test_figures_are_png_and_pdf(built):
    names = {"per_player_count", "ma_curve", "training_curves", "learning_curves", "rollout_full",
             "rollout_global_action"}
    assert set(built["alone"].figures) == names
    for name in names:
        assert (built["out"] / "figures" / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert (built["out"] / "figures" / f"{name}.pdf").read_bytes()[:5] == b"%PDF-"


def test_index_lists_every_output_and_what_is_missing(built):
    summary = built["alone"]
    index = (built["out"] / "index.md").read_text()
    outputs = [p for kind in (summary.tables, summary.figures, summary.gifs) for ps in kind.values() for p in ps]
    assert len(outputs) == 6 * 4 + 6 * 2 + 2 * 2
    for path in outputs:
        assert path.relative_to(built["out"]).as_posix() in index
    assert "pretrained_ar" in index and "no_state" in index  # missing metrics
    assert "--test-lmdb" in index  # no ground truth in this build
    assert "MA per rollout step" in index and "horizon 20" in index


def test_ground_truth_appears_beside_generated_with_the_test_lmdb(built):
    caption = built["with_truth"].captions["rollout_full"]
    assert "rows: ground truth, generated" in caption
    assert "rows: generated only" in built["alone"].captions["rollout_full"]
    import imageio.v2 as imageio

    alone = imageio.mimread(built["out"] / "gifs" / "full_0.gif")
    paired = imageio.mimread(built["out_gt"] / "gifs" / "full_0.gif")
    assert len(alone) == len(paired) == 21  # the longest rollout, h20
    assert paired[0].shape[1] > 2 * alone[0].shape[1]  # ground truth | gap | generated


def test_rollout_view_judges_every_fed_action(built):
    detectors = load_detectors(built["results"] / "detectors" / "detectors.pt")
    view = F.rollout_view(built["results"] / "rollouts" / "full" / "h4.npz", "full", 2, detectors, built["test_lmdb"])
    assert view.verdict.shape == (2, 4, 8) and view.truth_frames.shape == view.frames.shape
    assert (view.verdict[~np.broadcast_to(view.present[:, None], view.verdict.shape)] == -1).all()
    assert view.titles[0].startswith("alpha") and view.titles[1].startswith("beta")  # one window per game first


# ---------------------------------------------------------------------------------------------
# Missing and corrupt inputs
# ---------------------------------------------------------------------------------------------


def test_missing_rollouts_and_models_are_reported_not_fatal(built):
    summary = built["alone"]  # pretrained_ar was asked for but has neither metrics nor rollouts
    assert "rollout_pretrained_ar" not in summary.figures and "pretrained_ar" not in summary.gifs
    assert any("rollouts of pretrained_ar" in m for m in summary.missing)
    assert any("metrics of pretrained_ar" in m for m in summary.missing)


def _report_cli(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_commands(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["report", *argv])


def test_corrupt_metrics_file_is_a_one_line_error_naming_it(built, tmp_path):
    results = tmp_path / "results"
    write_json(results / "metrics" / "full.json", metrics_json("full"))
    bad = results / "metrics" / "static.json"
    write_text(bad, '{"schema_version": 1, "horizons": {"h4": ')
    args = _report_cli(["--results", str(results), "--out", str(tmp_path / "r"), "--quiet"])
    with pytest.raises(UserError) as err:
        args.func(args)
    message = str(err.value)
    assert message.startswith(str(bad)) and "\n" not in message
    write_json(bad, dict(metrics_json("static"), horizons={"h4": {"per_game": {}}}))
    with pytest.raises(MetricsError, match=r"static\.json: field 'horizons\.h4\.overall'"):
        T.load_metrics(results / "metrics")
    broken = metrics_json("static")
    broken["horizons"]["h20"]["per_game"]["beta"]["MA"] = "0.5"
    write_json(bad, broken)
    with pytest.raises(MetricsError, match=r"field 'horizons\.h20\.per_game\.beta\.MA' is not a number"):
        T.load_metrics(results / "metrics")
    write_json(bad, metrics_json("full"))  # another model's file under this name
    with pytest.raises(MetricsError, match="field 'variant' is 'full', expected 'static'"):
        T.load_metrics(results / "metrics")


def test_no_metrics_at_all_and_corrupt_train_log_are_refused(tmp_path):
    with pytest.raises(MetricsError, match="no metrics files"):
        T.load_metrics(tmp_path / "metrics")
    log = tmp_path / "train_log.jsonl"
    write_text(log, '{"step": 10, "loss": 1.0}\n{"step": 20, "lo')
    with pytest.raises(MetricsError, match=r"train_log\.jsonl: line 2 is not valid JSON"):
        F.read_train_log(log)


# ---------------------------------------------------------------------------------------------
# Judging an action from detections (hand-made)
# ---------------------------------------------------------------------------------------------


def _detections(cell: list, facing: list, count: list) -> M.Detections:
    """One window, T frames, S = 2 slots from nested lists."""
    cell, facing, count = np.array([cell]), np.array([facing]), np.array([count])
    return M.Detections(cell, facing, np.ones(count.shape, np.float32), count)


def test_judge_actions_against_the_real_change_and_the_movement_rules():
    # slot 0 moves north twice (facing N); slot 1 turns right then stays; frames 0..2.
    det = _detections(cell=[[[2, 3], [4, 4]], [[2, 2], [4, 4]], [[2, 1], [4, 4]]],
                      facing=[[0, 1], [0, 2], [0, 2]], count=[[1, 1], [1, 1], [1, 0]])
    actions = np.array([[[FORWARD, TURN_RIGHT], [FORWARD, NOOP]]])
    present = np.array([[True, True]])
    truth = {"position": np.array([[[[2, 3], [4, 4]], [[2, 2], [4, 4]], [[2, 2], [4, 4]]]]),  # slot 0 blocked at t=2
             "facing": np.array([[[0, 1], [0, 2], [0, 2]]]),
             "visible": np.array([[[True, True], [True, True], [True, True]]])}
    verdict = F.judge_actions(det, actions, present, truth=truth)
    # step 1: both as real; step 2: slot 0 moved but really stayed; slot 1 vanished -> not executed
    assert verdict.tolist() == [[[1, 1], [0, 0]]]
    truth["visible"][0, 2, 1] = False  # slot 1 not drawn in the real frame 2: not scored
    assert F.judge_actions(det, actions, present, truth=truth).tolist() == [[[1, 1], [0, -1]]]
    # Without ground truth: the movement rules on an open floor (the move north is expected).
    walkable = np.ones((1, 6, 6), bool)
    assert F.judge_actions(det, actions, present, walkable).tolist() == [[[1, 1], [1, 0]]]
    walkable[0, 1, 2] = False  # a wall north of (2, 2): moving there was not possible
    assert F.judge_actions(det, actions, np.array([[True, False]]), walkable).tolist() == [[[1, -1], [0, -1]]]


def test_pick_windows_spreads_over_games():
    game = np.array([0, 0, 0, 1, 1, 2])
    assert F.pick_windows(game, 4) == [0, 3, 5, 1]
    assert F.pick_windows(game, 10) == [0, 3, 5, 1, 4, 2]


def test_latex_escapes_and_formats():
    assert T.latex_escape("no_glimpse 5% & #1") == r"no\_glimpse 5\% \& \#1"
    assert T.format_value(0.1) == "0.1" and T.format_value(None) == "" and T.format_value(12) == "12"
    assert T.format_number(0.12345) == "0.123" and T.format_number(None) == "–" and T.format_number(36) == "36"
    assert T.format_cell(0.5, 0.01234, (0.4, 0.6)) == "0.500 ± 0.012 [0.400, 0.600]"


# ---------------------------------------------------------------------------------------------
# Rows and lines from the variant registry
# ---------------------------------------------------------------------------------------------


def write_registry(folder: Path, repo: Path, **extra: dict) -> Path:
    """A copy of params/variants plus one file per keyword (name -> the file's fields)."""
    shutil.copytree(repo / "params" / "variants", folder)
    for name, fields in extra.items():
        (folder / f"{name}.yaml").write_text(yaml.safe_dump(fields, sort_keys=False))
    return folder


def variant_fields(like: str, repo: Path, **changes) -> dict:
    """The fields of params/variants/<like>.yaml with ``changes``."""
    return {**yaml.safe_load((repo / "params" / "variants" / f"{like}.yaml").read_text()), **changes}


def test_the_registry_gives_the_rows_of_every_table(repo):
    lineup = Lineup.from_registry(repo / "params" / "variants")
    of_paper = ("no_msa", "no_mca", "framewise_mca", "no_rope_sa")
    of_full = ("no_state", "no_state_render", "no_glimpse", "no_egocentric")
    assert lineup.main == ("paper", "full", "text_action", "global_action", "pretrained_ar", "static", "oracle")
    assert lineup.ablation == ("paper", *of_paper, "full", *of_full)
    assert lineup.names == ("paper", "full", *of_paper, *of_full, "text_action", "global_action", "pretrained_ar",
                            "static", "oracle")
    assert lineup.trained == ("paper", "full", *of_paper, *of_full, "text_action", "global_action")
    assert lineup.baselines == ("text_action", "global_action", "pretrained_ar") and lineup.floors == ("static",)
    assert lineup.label("full") == "ActionParty+ (ours) (exp-139)" and lineup.label("oracle") == "Oracle (ground truth)"
    assert lineup.label("full-s1") == "full-s1" and lineup.experiment("static") == ""
    assert [m for m in lineup.names if lineup.bounds(m)] == ["oracle"]
    assert lineup.style("full") == dict(color="tab:blue", linestyle="-", linewidth=2.4)
    assert lineup.style("no_glimpse")["linestyle"] == "--" and lineup.style("static")["linestyle"] == ":"
    assert lineup.style("oracle") == dict(color="black", linestyle="-.", linewidth=1.3)
    assert lineup.style("full-s1")["color"] == "tab:gray"  # not a registry row


def test_ablations_follow_the_row_they_descend_from(tmp_path, repo):
    folder = write_registry(tmp_path / "variants", repo,
                            no_msa_no_mca=variant_fields("no_msa", repo, name="w/o MSA, MCA", ablation_of="no_msa",
                                                         experiment="exp-151"),
                            text_no_names=variant_fields("no_msa", repo, name="Text w/o names",
                                                         ablation_of="text_action", experiment="exp-152"))
    lineup = Lineup.from_registry(folder)
    assert lineup.ablation[:3] == ("paper", "no_msa", "no_msa_no_mca")  # depth first under its parent
    assert lineup.ablation[-2:] == ("text_action", "text_no_names")  # a baseline with an ablation
    assert "text_no_names" not in lineup.main and "text_no_names" in lineup.names


@pytest.mark.parametrize("role", ["ablation", "baseline"])
def test_a_new_variant_file_is_a_new_row_and_line(tmp_path, repo, role):
    """One new params/variants file, no code change: its row in the tables, its line in the figures."""
    if role == "ablation":
        fields = variant_fields("no_glimpse", repo, name="w/o binding", experiment="exp-150", colour="crimson")
        table, after = "ablation", "no_egocentric"  # the ablations' last experiment id before exp-150
    else:
        fields = variant_fields("global_action", repo, name="Slot-Action", experiment="exp-150", colour="crimson")
        table, after = "main", "global_action"  # the finetuned baselines come before the pretrained one
    lineup = Lineup.from_registry(write_registry(tmp_path / "variants", repo, new_one=fields))
    metrics_dir = tmp_path / "metrics"
    for model in ("full", "no_egocentric", "global_action", "oracle", "new_one"):
        write_json(metrics_dir / f"{model}.json", dict(metrics_json("no_glimpse"), variant=model))
    metrics = T.load_metrics(metrics_dir, lineup.names)
    tables = {t.name: t for t in T.build_tables(metrics, lineup)}
    rows = [r.model for r in tables[table].rows]
    assert rows[rows.index(after) + 1] == "new_one"
    for name in (table, "per_game", "per_player_count"):
        csv_rows = {r["model"]: r for r in read_csv(T.write_table(tables[name], tmp_path / "tables")[1])}
        assert csv_rows["new_one"]["label"] == f"{fields['name']} (exp-150)"
    md = T.to_markdown(tables[table])
    assert f"| {fields['name']} (exp-150) " in md and "new_one" not in md  # not reported missing
    fig = F.player_count_plot(metrics, lineup)
    lines = {line.get_label(): line for line in fig.axes[0].get_lines()}
    assert lines[f"{fields['name']} (exp-150)"].get_color() == "crimson"
    assert lines[f"{fields['name']} (exp-150)"].get_linestyle() == ("--" if role == "ablation" else "-")
    steps = F.step_curves_plot(metrics, lineup, 4)
    assert f"{fields['name']} (exp-150)" in [line.get_label() for line in steps.axes[0].get_lines()]
    import matplotlib.pyplot as plt

    plt.close(fig)
    plt.close(steps)


# ---------------------------------------------------------------------------------------------
# The flat summary metric, the plot data, the page and its gallery
# ---------------------------------------------------------------------------------------------


def _combine_cli(argv: list[str]) -> None:
    from actionparty.eval.commands import add_commands as add_eval_commands

    parser = argparse.ArgumentParser()
    add_eval_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["combine-metrics", *argv])
    args.func(args)


def test_summary_changes_exactly_the_model_whose_metrics_changed(tmp_path):
    metrics = tmp_path / "metrics"
    models = ("full", "global_action", "oracle")
    for model in models:
        write_json(metrics / f"{model}.json", metrics_json(model))
    files = [str(metrics / f"{m}.json") for m in models]
    out = tmp_path / "summary.json"
    _combine_cli(["--out-summary", str(out), *files])
    before = json.loads(out.read_text())
    assert list(before) == sorted(models) and list(before["full"]) == ["h20", "h4"]
    assert before["full"]["h4"] == {k: metrics_json("full")["horizons"]["h4"]["overall"][k]
                                    for k in SUMMARY_METRICS}
    changed = metrics_json("global_action")
    changed["horizons"]["h20"]["overall"]["MA"] = 0.5
    write_json(metrics / "global_action.json", changed)
    _combine_cli(["--out-summary", str(out), *files])
    after = json.loads(out.read_text())

    diff = {k for k, v in flat_keys(after).items() if flat_keys(before)[k] != v}
    assert diff == {"global_action.h20.MA"} and len(flat_keys(after)) == 3 * 2 * len(SUMMARY_METRICS)
    with pytest.raises(UserError, match="combine-metrics: nothing to write"):
        _combine_cli(files)


def test_plot_data_are_records_dvc_can_draw(built):
    plots = built["out"] / "plots"
    assert sorted(p.name for p in (plots / "train_loss").iterdir()) == ["exp-138.json", "full.json", "global_action.json"]
    full = json.loads((plots / "train_loss" / "full.json").read_text())
    assert [r["step"] for r in full] == [10, 20, 30, 40, 50]
    assert full[0] == {"step": 10, "loss": 0.03, "state_loss": 0.01, "video_loss": 0.03}  # losses only
    assert "state_loss" not in json.loads((plots / "train_loss" / "global_action.json").read_text())[0]
    assert json.loads((plots / "curves" / "full.json").read_text()) == [{"step": 100, "MA": 0.3},
                                                                       {"step": 200, "MA": 0.6, "BA": 0.5}]


def test_the_page_reads_top_to_bottom_with_the_gallery(built):
    page = (built["out_gt"] / "index.html").read_text()
    order = ["Main results", "The paper&#x27;s numbers beside ours", "Targets", "Ablations", "Per game",
             "Per number of players", "Training and learning curves", "Rollouts side by side"]
    positions = [page.index(f">{title}</h2>") for title in order]
    assert positions == sorted(positions)
    assert "0.779" in page and "0.158" in page and "third-party summary" in page and "95% CI: not shown" in page
    assert "<strong>0.799 ± 0.020</strong>" in page and "http" not in page and "<script" not in page
    gallery = built["with_truth"].gallery
    assert gallery.horizons == [4, 20] and [c for c, _ in gallery.columns] == ["real", "full", "paper", "global_action",
                                                                                 "text_action"]
    assert "Not in the variant registry" not in page
    row = gallery.rows[20][0]
    assert row["game"] == "alpha" and row["cells"]["text_action"] is None  # no rollouts of text_action
    assert row["cells"]["paper"] is None
    import imageio.v2 as imageio

    real, full = (imageio.mimread(row["cells"][c]) for c in ("real", "full"))
    assert len(real) == len(full) == 21 and real[0].shape == full[0].shape  # the same window, same size
    assert not np.array_equal(real[0], full[0])  # the rings of the predicted state on the model's frames
    for path in gallery.paths:
        assert f'src="{path.relative_to(built["out_gt"]).as_posix()}"' in page
    alone = (built["out"] / "index.html").read_text()
    assert "No test LMDB given (--test-lmdb)" in alone and ">real game<" not in alone


def test_the_gallery_says_what_is_missing_without_rollouts(tmp_path, repo):
    from actionparty.report.gallery import build_gallery
    from actionparty.report.page import gallery_html

    gallery = build_gallery(tmp_path / "results", tmp_path / "reports", Lineup.from_registry(repo / "params" / "variants"))
    assert not gallery.rows and not (tmp_path / "reports").exists()
    assert "No rollout files under" in gallery_html(gallery, str)


def test_the_page_loads_in_a_headless_browser(built):
    """Debian's chromium through Playwright: no console error, every image decoded."""
    chromium = Path("/usr/bin/chromium")
    if not chromium.is_file():
        pytest.skip("no /usr/bin/chromium (apt-get install -y chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="no playwright (pip install playwright)")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(chromium), args=["--no-sandbox"])
        try:
            for path in (built["out_gt"] / "index.html", built["out_gt"] / "gallery.html"):
                page = browser.new_page()
                problems = []
                page.on("console", lambda m: problems.append(m.text) if m.type in ("error", "warning") else None)
                page.on("pageerror", lambda e: problems.append(str(e)))
                page.on("requestfailed", lambda r: problems.append(f"failed: {r.url}"))
                page.goto(path.resolve().as_uri(), wait_until="load")
                images = page.evaluate("Array.from(document.images).map(i => [i.src.slice(0, 80), i.naturalWidth])")
                assert len(images) >= 12 and problems == [], (path, problems)
                assert [src for src, width in images if not width > 0] == [], path
                page.close()
        finally:
            browser.close()


def test_protocol_table_and_parameter_counts(built, repo):
    from actionparty.config import load_profile
    from actionparty.model.factory import build_world_model
    from actionparty.report.build import parameter_counts
    from actionparty.variants import load_variant, variant_profile

    lineup = Lineup.from_registry(repo / "params" / "variants")
    metrics = T.load_metrics(built["results"] / "metrics", lineup.names)

    def protocol(name, values):
        return T.MetricsSet(Path(name), {m: {"variant": m, "protocol": name, "horizons": {"h4": {"overall": {
            "MA_changing": v, "MA_changing_ci_low": v - 0.05, "MA_changing_ci_high": v + 0.05, "MA": v, "SP": 0.9}}}}
            for m, v in values.items()}, {}, {})

    protocols = {"one_mover": protocol("one_mover", {"full": 0.9, "global_action": 0.8}),
                 "uniform": protocol("uniform", {"full": 0.85, "global_action": 0.3})}
    profile = load_profile(repo / "params" / "smoke.yaml")
    counts = parameter_counts(profile, lineup)
    full, _, _ = build_world_model(profile, "cpu", load_variant("full", repo / "params" / "variants"))
    assert counts["full"] == sum(p.numel() for p in full.parameters())
    assert counts["paper"] < counts["full"] and "static" not in counts and counts["pretrained_ar"] < counts["paper"]
    paper, _, _ = build_world_model(variant_profile(profile, lineup.variants["paper"]), "cpu", lineup.variants["paper"])
    assert counts["paper"] == sum(p.numel() for p in paper.parameters())
    tables = {t.name: t for t in T.build_tables(metrics, lineup, protocols, counts)}
    table = tables["protocols"]
    assert [r.model for r in table.rows] == ["full", "global_action"]
    assert [c.key for c in table.columns][:4] == ["episodes/MA_changing", "episodes/MA", "episodes/SP",
                                                 "one_mover/MA_changing"]
    md = T.to_markdown(table)
    assert "0.300 [0.250, 0.350]" in md and "0.850 [0.800, 0.900]" in md
    main = T.to_markdown(tables["main"])
    assert f"{counts['full'] / 1e6:.2f} M" in main and "parameters" in main
    assert T.frame(tables["main"])["parameters"].tolist()[0] == counts.get(tables["main"].rows[0].model)
    assert "<strong>" in T.to_html(tables["main"])
