"""Metrics on hand-made cases whose right answer is known; the rollout format; the eval config."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch
import yaml

from actionparty.errors import ProfileError, UserError
from actionparty.eval import metrics as M
from actionparty.eval import metrics_file
from actionparty.eval.commands import add_commands
from actionparty.config import EvalConfig
from actionparty.eval.evaluate import combine_metrics, write_table
from actionparty.rollout.rollout_io import (
    Rollout,
    RolloutError,
    choose_swaps,
    read_rollout,
    select_windows,
    swap_actions,
    write_rollout,
)
from actionparty.games.actions import (
    BACKWARD,
    FORWARD,
    INTERACT,
    NOOP,
    STRAFE_LEFT,
    STRAFE_RIGHT,
    TURN_LEFT,
    TURN_RIGHT,
)

S = 8
N_, E_, S_, W_ = range(4)  # facings


def detections(cells, facings, counts=None) -> M.Detections:
    """Detections (N=1, T, S) from per-frame lists of (x, y) cells and facings of the first slots;
    other slots are undetected."""
    t = len(cells)
    cell = np.zeros((1, t, S, 2), np.int64)
    facing = np.zeros((1, t, S), np.int64)
    count = np.zeros((1, t, S), np.int64)
    for i, (cs, fs) in enumerate(zip(cells, facings)):
        for p, (c, f) in enumerate(zip(cs, fs)):
            cell[0, i, p], facing[0, i, p], count[0, i, p] = c, f, 1
    if counts is not None:
        count[0, :, : len(counts[0])] = counts
    return M.Detections(cell, facing, np.where(count > 0, 0.9, 0.1), count)


def truth(cells, facings):
    """Ground-truth (cell (1, T, S, 2), facing (1, T, S)) in the same layout."""
    det = detections(cells, facings)
    return det.cell, det.facing


# ---------------------------------------------------------------------------------------------
# Detection decoding
# ---------------------------------------------------------------------------------------------


def test_decode_detections_counts_cells_above_tau():
    probs = torch.zeros(1, S, 3, 4)
    probs[0, 0, 1, 2] = 0.9  # slot 0 once at (x=2, y=1)
    probs[0, 1, 0, 0], probs[0, 1, 2, 3] = 0.6, 0.7  # slot 1 twice; most confident at (3, 2)
    probs[0, 2, 2, 2] = 0.3  # slot 2 below tau
    facing = torch.zeros(1, 4, 3, 4)
    facing[0, W_, 1, 2] = 5.0
    facing[0, S_, 2, 3] = 5.0
    det = M.decode_detections(probs, facing, tau=0.5)
    assert det.count[0, :3].tolist() == [1, 2, 0]
    assert det.cell[0, 0].tolist() == [2, 1] and det.facing[0, 0] == W_
    assert det.cell[0, 1].tolist() == [3, 2] and det.facing[0, 1] == S_
    assert det.confidence[0, 0] == pytest.approx(0.9) and det.found[0].tolist()[:3] == [True, True, False]


# ---------------------------------------------------------------------------------------------
# MA
# ---------------------------------------------------------------------------------------------


def test_ma_moved_forward_is_right_and_left_in_place_is_wrong():
    # Real game: player 0 faces east and steps forward from (2, 3) to (3, 3).
    gt_cell, gt_facing = truth([[(2, 3)], [(3, 3)]], [[E_], [E_]])
    moved = detections([[(2, 3)], [(3, 3)]], [[E_], [E_]])
    stayed = detections([[(2, 3)], [(2, 3)]], [[E_], [E_]])
    assert M.motion_outcomes(moved, gt_cell, gt_facing)[0, 0, 0]
    assert not M.motion_outcomes(stayed, gt_cell, gt_facing)[0, 0, 0]
    mask = np.zeros((1, 1, S), bool)
    mask[0, 0, 0] = True
    assert M.share(M.motion_outcomes(moved, gt_cell, gt_facing), mask) == 1.0
    assert M.share(M.motion_outcomes(stayed, gt_cell, gt_facing), mask) == 0.0


def test_ma_compares_changes_not_absolute_cells_and_undetected_is_wrong():
    gt_cell, gt_facing = truth([[(2, 3)], [(2, 3)], [(2, 3)]], [[N_], [W_], [W_]])  # turn left, then stay
    shifted = detections([[(5, 5)], [(5, 5)], [(5, 5)]], [[N_], [W_], [W_]])  # drawn elsewhere, same changes
    assert M.motion_outcomes(shifted, gt_cell, gt_facing)[0, :, 0].tolist() == [True, True]
    wrong_turn = detections([[(2, 3)], [(2, 3)], [(2, 3)]], [[N_], [E_], [E_]])
    assert M.motion_outcomes(wrong_turn, gt_cell, gt_facing)[0, :, 0].tolist() == [False, True]
    lost = detections([[(2, 3)], [(2, 3)], [(2, 3)]], [[N_], [W_], [W_]], counts=[[1], [0], [1]])
    assert M.motion_outcomes(lost, gt_cell, gt_facing)[0, :, 0].tolist() == [False, False]
    assert M.real_change(gt_cell, gt_facing)[0, :, 0].tolist() == [True, False]


def test_step_and_frame_masks_skip_absent_and_invisible_players():
    present = np.array([[True, True] + [False] * 6])
    visible = np.zeros((1, 3, S), bool)
    visible[0, :, 0] = True
    visible[0, :, 1] = [True, False, True]  # zapped in frame 1
    steps = M.step_mask(present, visible)
    frames = M.frame_mask(present, visible)
    assert steps[0, :, 0].tolist() == [True, True] and steps[0, :, 1].tolist() == [False, False]
    assert frames[0, :, 1].tolist() == [False, True] and not steps[0, :, 2:].any()


# ---------------------------------------------------------------------------------------------
# SP, DR, EA
# ---------------------------------------------------------------------------------------------


def test_sp_drops_exactly_for_a_vanished_and_a_duplicated_player():
    # Two players over frames 0..4 (frames 1..4 count): player 0 vanishes in frame 2,
    # player 1 is drawn twice in frames 3 and 4.
    counts = [[1, 1], [1, 1], [0, 1], [1, 2], [1, 2]]
    det = detections([[(1, 1), (4, 4)]] * 5, [[N_, N_]] * 5, counts=counts)
    once, seen = M.presence_outcomes(det)
    mask = np.zeros((1, 4, S), bool)
    mask[0, :, :2] = True
    assert M.share(once, mask) == pytest.approx(5 / 8)  # 8 player-frames, 1 vanished + 2 duplicated
    assert M.share(seen, mask) == pytest.approx(7 / 8)  # a duplicate is still detected


def test_ea_counts_only_interact_steps_with_a_real_effect():
    actions = np.array([[[INTERACT, INTERACT, FORWARD, INTERACT]]])
    effect = np.array([[[True, True, False, False]]])
    idm = np.array([[[INTERACT, NOOP, FORWARD, INTERACT]]])
    counted, hit = M.interact_outcomes(idm, actions, effect)
    assert counted[0, 0].tolist() == [True, True, False, False]
    assert M.share(hit, counted) == 0.5


# ---------------------------------------------------------------------------------------------
# Movement rules and BA
# ---------------------------------------------------------------------------------------------


def _room(size=5) -> np.ndarray:
    walk = np.zeros((size, size), bool)
    walk[1:-1, 1:-1] = True
    return walk


def _moves(cell, facing, action, blockers=((0, 0),), found=(False,)):
    c, f = M.apply_moves(np.array(cell), np.array(facing), np.array(action), _room(), np.array(blockers),
                         np.array(found))
    return c.tolist(), int(f)


def test_movement_rules():
    assert _moves((2, 2), N_, FORWARD) == ([2, 1], N_)  # north is y - 1
    assert _moves((2, 2), E_, BACKWARD) == ([1, 2], E_)
    assert _moves((2, 2), N_, STRAFE_LEFT) == ([1, 2], N_)  # left of north is west
    assert _moves((2, 2), S_, STRAFE_RIGHT) == ([1, 2], S_)  # right of south is west
    assert _moves((2, 2), N_, TURN_LEFT) == ([2, 2], W_)
    assert _moves((2, 2), W_, TURN_RIGHT) == ([2, 2], N_)
    assert _moves((2, 2), N_, INTERACT) == ([2, 2], N_) and _moves((2, 2), N_, NOOP) == ([2, 2], N_)
    assert _moves((1, 2), W_, FORWARD) == ([1, 2], W_)  # a wall blocks
    assert _moves((2, 2), E_, FORWARD, [(3, 2)], [True]) == ([2, 2], E_)  # a player blocks
    assert _moves((2, 2), E_, FORWARD, [(3, 2)], [False]) == ([3, 2], E_)  # an undetected one does not
    off = M.apply_moves(np.array([0, 0]), np.array(N_), np.array(FORWARD), np.ones((3, 3), bool),
                        np.zeros((1, 2), np.int64), np.zeros(1, bool))
    assert off[0].tolist() == [0, 0]  # off the map


def test_step_causes_tell_moves_turns_and_blocked_moves_apart():
    # One window, 4 steps of one player on a 5x5 room with a wall ring (walkable 1..3).
    cells = np.array([[[[2, 2]], [[2, 1]], [[2, 1]], [[2, 1]], [[2, 1]], [[2, 1]]]])  # (1, T=6, S=1, 2)
    facing = np.array([[[N_], [N_], [N_], [E_], [E_], [E_]]])
    actions = np.array([[[FORWARD], [FORWARD], [TURN_RIGHT], [FORWARD], [NOOP]]])
    causes = M.step_causes(cells, facing, actions, _room(5)[None])
    names = [M.CAUSES[c] for c in causes[0, :, 0]]
    # moved north; north of (2, 1) is the wall; turned; east of (2, 1) is free, yet it stayed; no-op
    assert names == ["moved", "blocked_wall", "turned", "blocked_player", "still"]


def _binding_case(det_cells, det_facings, counts=None):
    """Players 0 and 1 swapped. Fed actions: player 0 FORWARD (its partner's), player 1 TURN_LEFT."""
    det = detections(det_cells, det_facings, counts)
    actions = np.full((1, 1, S), NOOP)
    actions[0, 0, :2] = [FORWARD, TURN_LEFT]
    return M.binding_outcomes(det, actions, np.array([[0, 1]]), _room(6)[None])


def test_ba_on_a_hand_made_swap():
    start = [(1, 1), (3, 3)]
    # Faithful: player 0 (facing east) steps to (2, 1); player 1 turns from north to west.
    counted, own, other = _binding_case([start, [(2, 1), (3, 3)]], [[E_, N_], [E_, W_]])
    assert counted[0, 0, :3].tolist() == [True, True, False]  # only the swapped pair counts
    assert M.share(own, counted) == 1.0 and M.share(other, counted) == 0.0
    # Bound the wrong way: player 0 turns left (to north), player 1 walks north to (3, 2).
    counted, own, other = _binding_case([start, [(1, 1), (3, 2)]], [[E_, N_], [N_, N_]])
    assert M.share(own, counted) == 0.0 and M.share(other, counted) == 1.0
    # Neither: nobody changes. Both counted, follow neither.
    counted, own, other = _binding_case([start, start], [[E_, N_], [E_, N_]])
    assert counted[0, 0, :2].all() and not own.any() and not other.any()
    # Player 1 lost in frame 1: counted (the actions differ) and wrong.
    counted, own, other = _binding_case([start, start], [[E_, N_], [E_, W_]], counts=[[1, 1], [1, 0]])
    assert counted[0, 0, 1] and not own[0, 0, 1] and not other[0, 0, 1]


def test_ba_skips_steps_where_both_assignments_predict_the_same_move():
    det = detections([[(1, 1), (3, 3)], [(1, 1), (3, 3)]], [[W_, N_], [W_, N_]])
    actions = np.full((1, 1, S), NOOP)
    actions[0, 0, :2] = [FORWARD, INTERACT]  # player 0 faces the wall: FORWARD does nothing, like INTERACT
    counted, own, other = M.binding_outcomes(det, actions, np.array([[0, 1]]), _room(6)[None])
    assert not counted[0, 0, 0]  # player 0: both assignments predict "stay"
    assert counted[0, 0, 1] and own[0, 0, 1] and not other[0, 0, 1]  # player 1 stayed (INTERACT), not north
    counted, *_ = M.binding_outcomes(det, actions, np.array([[-1, -1]]), _room(6)[None])
    assert not counted.any()  # no swap, nothing to count


def test_rule_agreement_on_a_faithful_step():
    det = detections([[(1, 1)], [(2, 1)], [(2, 1)]], [[E_], [E_], [N_]])
    actions = np.full((1, 2, S), NOOP)
    actions[0, :, 0] = [FORWARD, TURN_LEFT]
    assert M.rule_agreement_outcomes(det, actions, _room(6)[None])[0, :, 0].tolist() == [True, True]
    actions[0, 1, 0] = TURN_RIGHT
    assert M.rule_agreement_outcomes(det, actions, _room(6)[None])[0, :, 0].tolist() == [True, False]


# ---------------------------------------------------------------------------------------------
# ST
# ---------------------------------------------------------------------------------------------


def test_state_tracking_errors():
    pred = np.array([[2.2, 3.0], [4.0, 4.6], [1.0, 1.0]])
    gt = np.array([[2, 3], [4, 4], [2, 2]])
    st = M.state_tracking_errors(pred, gt, np.array([0, 1, 2]), np.array([0, 1, 3]))
    np.testing.assert_allclose(st["l1"], [0.2, 0.6, 2.0])
    assert st["exact"].tolist() == [True, False, False] and st["facing"].tolist() == [True, True, False]


# ---------------------------------------------------------------------------------------------
# PSNR, SSIM, FD, I3D-FVD
# ---------------------------------------------------------------------------------------------


def test_psnr_and_ssim_agree_with_torchmetrics():
    from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

    g = torch.Generator().manual_seed(0)
    a = torch.randint(0, 256, (3, 3, 40, 48), generator=g, dtype=torch.uint8)
    b = (a.int() + torch.randint(-40, 41, a.shape, generator=g)).clamp(0, 255).to(torch.uint8)
    ours_psnr, ours_ssim = M.psnr(b, a), M.ssim(b, a)
    for i in range(3):
        ref_psnr = peak_signal_noise_ratio(b[i : i + 1].double(), a[i : i + 1].double(), data_range=255.0)
        ref_ssim = structural_similarity_index_measure(b[i : i + 1].float(), a[i : i + 1].float(), data_range=255.0)
        assert float(ours_psnr[i]) == pytest.approx(float(ref_psnr), rel=1e-5)
        assert float(ours_ssim[i]) == pytest.approx(float(ref_ssim), abs=1e-5)
    assert float(M.psnr(a, a, max_db=100.0)[0]) == 100.0 and float(M.ssim(a, a)[0]) == pytest.approx(1.0)


def test_frechet_distance():
    g = np.random.default_rng(0)
    a = g.normal(size=(200, 6))
    assert M.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)
    # Shifting every feature by 2 adds |mu_a - mu_b|^2 = 6 * 4 and leaves the covariances equal.
    assert M.frechet_distance(a, a + 2.0) == pytest.approx(24.0, rel=1e-6)
    # Against the textbook formula with scipy's general matrix square root.
    linalg = pytest.importorskip("scipy.linalg")
    b = g.normal(size=(150, 6)) @ g.normal(size=(6, 6)) + 0.5
    ca, cb = np.cov(a.T), np.cov(b.T)
    ref = ((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(ca + cb - 2 * linalg.sqrtm(ca @ cb).real)
    assert M.frechet_distance(a, b) == pytest.approx(ref, rel=1e-6)
    with pytest.raises(ValueError, match="at least 2 samples"):
        M.frechet_distance(a[:1], a)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # TorchScript, the format I3D checkpoints ship in
def test_i3d_fvd_from_a_local_torchscript_checkpoint(tmp_path):
    class TinyI3D(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(3, 4)

        def forward(self, x: torch.Tensor, rescale: bool = True, resize: bool = True,
                    return_features: bool = False) -> torch.Tensor:
            assert not rescale and not resize and return_features
            return self.proj(x.mean(dim=(2, 3, 4)))  # (B, 3, T, H, W) -> (B, 4)

    path = tmp_path / "i3d.pt"
    torch.jit.script(TinyI3D()).save(str(path))
    i3d = M.I3DFeatures(str(path))
    videos = torch.randint(0, 256, (5, 3, 3, 16, 16), dtype=torch.uint8)
    feats = i3d(videos)
    assert feats.shape == (5, 4)
    # in calls of at most batch_frames frames (whole videos): the same features
    torch.testing.assert_close(M.I3DFeatures(str(path), batch_frames=7)(videos), feats, rtol=0, atol=1e-12)
    assert M.frechet_distance(feats, feats) == pytest.approx(0.0, abs=1e-8)
    (tmp_path / "plain.pt").write_bytes(b"no")
    with pytest.raises(UserError, match="plain.pt: not a TorchScript archive"):
        M.I3DFeatures(str(tmp_path / "plain.pt"))
    torch.save({"weights": torch.zeros(1)}, tmp_path / "pickle.pt")  # a zip, but a pickle, not TorchScript
    with pytest.raises(UserError, match="pickle.pt: not a TorchScript archive"):
        M.I3DFeatures(str(tmp_path / "pickle.pt"))
    with pytest.raises(UserError, match="I3D checkpoint not found"):
        M.I3DFeatures(str(tmp_path / "none.pt"))


# ---------------------------------------------------------------------------------------------
# Rollout format
# ---------------------------------------------------------------------------------------------


def make_rollout(n=3, h=4, px=16, **extra) -> Rollout:
    g = np.random.default_rng(0)
    present = np.zeros((n, S), bool)
    present[:, :2] = True
    return Rollout(frames=g.integers(0, 256, (n, h + 1, px, px, 3), dtype=np.uint8),
                   episode=np.arange(n, dtype=np.int64), start=np.zeros(n, np.int64), game=np.zeros(n, np.int64),
                   actions=g.integers(0, 8, (n, h, S)).astype(np.int64), present=present,
                   meta={"variant": "full", "horizon": h, "split": "test", "sampling_steps": 8, "seed": 0}, **extra)


def test_rollout_round_trip(tmp_path):
    r = make_rollout(pred_position=np.zeros((3, 5, S, 2), np.float32), pred_facing=np.zeros((3, 5, S), np.int64),
                     swap=np.array([[0, 1], [-1, -1], [1, 0]], np.int64))
    write_rollout(tmp_path / "full/h4.npz", r)
    assert json.loads((tmp_path / "full/h4.json").read_text())["variant"] == "full"
    back = read_rollout(tmp_path / "full/h4.npz")
    assert back.horizon == 4 and back.num == 3 and back.is_swap and back.meta == r.meta
    for name in ("frames", "episode", "actions", "present", "pred_position", "pred_facing", "swap"):
        np.testing.assert_array_equal(getattr(back, name), getattr(r, name))
    with np.load(tmp_path / "full/h4.npz", allow_pickle=False) as z:  # plain numpy, no pickle
        assert z["frames"].shape == (3, 5, 16, 16, 3)


@pytest.mark.parametrize("change, message", [
    (dict(actions=np.zeros((3, 4, S), np.int32)), "field 'actions' has dtype int32, expected int64"),
    (dict(present=np.zeros((3, 7), bool)), r"field 'present' has shape \(3, 7\), expected \(3, 8\)"),
    (dict(actions=np.full((3, 4, S), 9, np.int64)), "field 'actions' holds values outside"),
    (dict(pred_position=np.zeros((3, 4, S, 2), np.float32)), "field 'pred_position' has shape"),
    (dict(swap=np.full((3, 2), 8, np.int64)), "field 'swap' holds slots outside"),
])
def test_rollout_validation_names_the_file_and_field(tmp_path, change, message):
    r = make_rollout()
    for k, v in change.items():
        setattr(r, k, v)
    with pytest.raises(RolloutError, match=f"h4.npz: {message}"):
        write_rollout(tmp_path / "h4.npz", r)


def test_reading_a_bad_rollout_file_fails_in_one_line(tmp_path):
    with pytest.raises(RolloutError, match="h4.npz: rollout file not found"):
        read_rollout(tmp_path / "h4.npz")
    r = make_rollout()
    np.savez(tmp_path / "h4.npz", frames=r.frames, episode=r.episode, start=r.start, game=r.game, actions=r.actions)
    with pytest.raises(RolloutError, match="h4.npz: field 'present' is missing"):
        read_rollout(tmp_path / "h4.npz")
    write_rollout(tmp_path / "h4.npz", r)
    (tmp_path / "h4.json").write_text(json.dumps(dict(r.meta, horizon=20)))
    with pytest.raises(RolloutError, match="h4.json: field 'horizon' is 20 but the frames hold 4 steps"):
        read_rollout(tmp_path / "h4.npz")
    (tmp_path / "h4.json").unlink()
    with pytest.raises(RolloutError, match="h4.json: rollout metadata not found"):
        read_rollout(tmp_path / "h4.npz")
    (tmp_path / "h4.npz").write_bytes(b"truncated")
    with pytest.raises(RolloutError, match="h4.npz: not a readable .npz"):
        read_rollout(tmp_path / "h4.npz")


def test_swaps_and_windows():
    actions = np.arange(2 * 3 * S).reshape(2, 3, S)
    swapped = swap_actions(actions, np.array([[1, 3], [-1, -1]]))
    np.testing.assert_array_equal(swapped[0, :, 1], actions[0, :, 3])
    np.testing.assert_array_equal(swapped[0, :, 3], actions[0, :, 1])
    np.testing.assert_array_equal(swapped[1], actions[1])
    present = np.array([[True, True, True] + [False] * 5, [True] + [False] * 7])
    visible = present.copy()
    visible[0, 1] = False
    swap = choose_swaps(present, visible, seed=3)
    assert swap[0].tolist() == [0, 2] and swap[1].tolist() == [-1, -1]

    class FakeDataset:  # what select_windows reads of a ClipDataset
        clip_steps, path, games = 4, "test.lmdb", ["a", "b"]
        meta = {"episodes": [{"game": 0, "steps": 12}, {"game": 1, "steps": 12}, {"game": 1, "steps": 12}]}

    w = select_windows(FakeDataset(), per_game=4, seed=0)
    assert (w["game"] == 0).sum() == 3 and (w["game"] == 1).sum() == 4  # game a has only 3 windows
    assert set(w["start"].tolist()) <= {0, 4, 8}  # non-overlapping
    again = select_windows(FakeDataset(), per_game=4, seed=0)
    assert all(np.array_equal(w[k], again[k]) for k in w)


# ---------------------------------------------------------------------------------------------
# Config, combined table, CLI
# ---------------------------------------------------------------------------------------------


def test_profiles_eval_sections_validate_and_bad_keys_are_named(repo, tmp_path):
    from actionparty.config import load_profile

    for profile in ("smoke", "tiny", "paper"):
        assert isinstance(load_profile(repo / f"params/{profile}.yaml").eval, EvalConfig)
    data = yaml.safe_load((repo / "params/smoke.yaml").read_text())
    path = tmp_path / "p.yaml"
    data["eval"]["tile"]["depth"] = 3
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ProfileError, match=r"p.yaml: eval.tile.depth: unknown key"):
        load_profile(path)
    del data["eval"]["tile"]["depth"]
    data["eval"]["tau"] = 1.5
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ProfileError, match=r"p.yaml: eval.tau: "):
        load_profile(path)
    del data["eval"]
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ProfileError, match="p.yaml: eval: missing key"):
        load_profile(path)


def _metrics_file(variant, kind, ma):
    row = {"MA": ma, "SP": 0.9, "BA": None, "windows": 2}
    return {"schema_version": 1, "variant": variant, "kind": kind, "horizons": {
        "h20": {"overall": dict(row, MA=ma / 2), "per_game": {}},
        "h4": {"overall": row, "per_game": {"coins": dict(row, MA=1.0)}}}}


def test_combine_metrics_writes_one_table(tmp_path):
    for name, kind, ma in (("oracle", "oracle", 1.0), ("full", "model", 0.8)):
        (tmp_path / f"{name}.json").write_text(json.dumps(_metrics_file(name, kind, ma)))
    rows = combine_metrics([tmp_path / "oracle.json", tmp_path / "full.json"])
    assert [(r["variant"], r["horizon"], r["game"]) for r in rows] == [
        ("oracle", 4, "all"), ("oracle", 4, "coins"), ("oracle", 20, "all"),
        ("full", 4, "all"), ("full", 4, "coins"), ("full", 20, "all")]
    assert rows[3]["MA"] == 0.8 and rows[5]["MA"] == 0.4 and rows[3]["BA"] is None
    write_table(rows, tmp_path / "all.json", tmp_path / "all.csv")
    lines = (tmp_path / "all.csv").read_text().splitlines()
    assert lines[0].startswith("variant,kind,horizon,game,MA,") and len(lines) == 7
    assert json.loads((tmp_path / "all.json").read_text())["rows"] == rows
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(UserError, match="bad.json: not a metrics file"):
        combine_metrics([tmp_path / "bad.json"])


def _good_metrics_file() -> dict:
    return dict(_metrics_file("full", "model", 0.8), tau=0.5)


@pytest.mark.parametrize("content, message", [
    ('{"schema_version": 1, "horizons": {"h4": ', "not valid JSON"),
    ("[1, 2]", "not a metrics file"),
    (json.dumps({k: v for k, v in _good_metrics_file().items() if k != "schema_version"}),
     "field 'schema_version' is missing"),
    (json.dumps(dict(_good_metrics_file(), schema_version=2)), "field 'schema_version' is 2; this code reads "
                                                                "metrics files of schema 1"),
    (json.dumps({k: v for k, v in _good_metrics_file().items() if k != "horizons"}),
     "field 'horizons' is missing"),
    (json.dumps(dict(_good_metrics_file(), horizons={})), "field 'horizons' is not an object with a horizon"),
    (json.dumps({k: v for k, v in _good_metrics_file().items() if k != "kind"}), "field 'kind' is missing"),
    (json.dumps(dict(_good_metrics_file(), kind="baseline")), "field 'kind' is 'baseline', not one of model, oracle"),
    (json.dumps(dict(_good_metrics_file(), horizons={"h4": {"per_game": {}}})), "field 'horizons.h4.overall'"),
])
def test_every_reader_of_a_bad_metrics_file_gives_the_same_line(tmp_path, repo, capsys, content, message):
    """combine-metrics, report and targets read metrics files with one reader: one line naming the
    file and the field, exit 2."""
    from actionparty.cli import main

    bad = tmp_path / "results" / "metrics" / "full.json"
    bad.parent.mkdir(parents=True)
    bad.write_text(content)
    variants = ["--variants", str(repo / "params" / "variants")]
    lines = set()
    for argv in (["combine-metrics", "--out-json", str(tmp_path / "c.json"), "--out-csv", str(tmp_path / "c.csv"),
                  str(bad)],
                 ["report", "--results", str(tmp_path / "results"), "--out", str(tmp_path / "r"), "--quiet", *variants],
                 ["targets", "--results", str(tmp_path / "results"), *variants]):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith(f"error: {bad}: ") and message in err and err.count("\n") == 1, (argv, err)
        lines.add(err)
    assert len(lines) == 1
    assert not (tmp_path / "c.csv").exists() and not (tmp_path / "r").exists()


def test_metrics_file_is_written_atomically_and_read_back(tmp_path):
    path = tmp_path / "metrics" / "full.json"
    metrics_file.write(path, _good_metrics_file())
    assert metrics_file.read(path, "full") == _good_metrics_file()
    with pytest.raises(metrics_file.MetricsError, match="full.json: field 'variant' is 'full', expected 'static'"):
        metrics_file.read(path, "static")
    broken = _good_metrics_file()
    broken["horizons"]["h4"]["overall"]["MA"] = "0.8"
    with pytest.raises(metrics_file.MetricsError, match=r"other.json: field 'horizons\.h4\.overall\.MA' is not a number"):
        metrics_file.write(tmp_path / "metrics" / "other.json", broken)
    assert sorted(p.name for p in path.parent.iterdir()) == ["full.json"]  # nothing written, no temporary left
    with pytest.raises(metrics_file.MetricsError, match="missing.json: metrics file not found"):
        metrics_file.read(tmp_path / "missing.json")


def test_commands_register_and_run(tmp_path):
    parser = argparse.ArgumentParser()
    add_commands(parser.add_subparsers(dest="command", required=True))
    (tmp_path / "full.json").write_text(json.dumps(_metrics_file("full", "model", 0.8)))
    args = parser.parse_args(["combine-metrics", "--out-json", str(tmp_path / "t.json"), "--out-csv",
                              str(tmp_path / "t.csv"), str(tmp_path / "full.json")])
    args.func(args)
    assert (tmp_path / "t.csv").is_file()
    for command in ("train-detectors", "evaluate", "evaluate-oracle"):
        with pytest.raises(SystemExit):  # --profile and the paths are required
            parser.parse_args([command])
    args = parser.parse_args(["evaluate-oracle", "--profile", str(tmp_path / "none.yaml"), "--test-lmdb", "x",
                              "--detectors", "y", "--out", "z"])
    with pytest.raises(ProfileError, match="none.yaml: profile not found"):
        args.func(args)


@pytest.mark.parametrize("command, paths", [
    ("train-detectors", ["--train-lmdb", "a", "--val-lmdb", "b", "--out", "c", "--accuracy", "d"]),
    ("evaluate", ["--variant", "full", "--test-lmdb", "a", "--detectors", "b", "--rollouts", "c", "--out", "d"]),
    ("evaluate-oracle", ["--test-lmdb", "a", "--detectors", "b", "--out", "c"]),
    ("detector-robustness", ["--lmdb", "a", "--detectors", "b"]),
])
def test_evaluation_commands_check_their_device_first(tmp_path, capsys, command, paths):
    """--device cpu is accepted (the command goes on to read its profile); a device that is not
    one, or a GPU this machine lacks, is one line naming --device and exit 2, before any file is read."""
    from actionparty.cli import main

    argv = [command, "--profile", str(tmp_path / "none.yaml"), *paths]
    assert main([*argv, "--device", "cpu"]) == 2
    assert "none.yaml: profile not found" in capsys.readouterr().err
    bad = {"nope": "not a device (cpu, cuda or cuda:N)", "mps": "not a device", "cuda:99": "CUDA GPU"}
    if not torch.cuda.is_available():
        bad["cuda"] = "no CUDA GPU is available here"
    for device, message in bad.items():
        assert main([*argv, "--device", device]) == 2, device
        err = capsys.readouterr().err
        assert err.startswith(f"error: --device {device}: ") and message in err and err.count("\n") == 1, err


def test_bootstrap_interval_over_windows_holds_the_share_and_narrows_with_more_windows():
    from actionparty.eval.evaluate import bootstrap_share_ci

    rng = np.random.default_rng(0)
    small = rng.random((20, 4, 3)) < 0.7
    large = rng.random((400, 4, 3)) < 0.7
    mask_s, mask_l = np.ones_like(small), np.ones_like(large)
    low, high = bootstrap_share_ci(small, mask_s)
    assert low < small.mean() < high and (low, high) == bootstrap_share_ci(small, mask_s)  # seeded
    low_l, high_l = bootstrap_share_ci(large, mask_l)
    assert low_l < large.mean() < high_l and high_l - low_l < (high - low) / 2
    assert bootstrap_share_ci(small[:1], mask_s[:1]) == (None, None)  # one window: no interval
    # A window with nothing counted adds nothing: the interval of the counted ones is unchanged.
    padded, pad_mask = np.concatenate([small, small[:1]]), np.concatenate([mask_s, np.zeros_like(mask_s[:1])])
    assert bootstrap_share_ci(padded, pad_mask)[0] == pytest.approx(low, abs=0.03)
