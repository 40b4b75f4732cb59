"""ActionParty's mechanisms act as defined: subject isolation, spatial RoPE, frame-wise MCA,
ablation flags, empty slots."""

from __future__ import annotations

import pytest
import torch

import actionparty.model.dit as dit_module
from actionparty.model.dit import make_dit
from actionparty.games.actions import FACING_STEP
from actionparty.model.conditioning import (
    NO_ACTION,
    STATE_DIM,
    CallLayout,
    StateGrid,
    SubjectInputs,
    SubjectTokens,
    to_own_frame,
)
from actionparty.model.conditioning.glimpse import read_glimpse
from actionparty.model.conditioning.render import render_map
from actionparty.model.world import WorldModel
from actionparty.variants import SubjectConditioning

S = 8
GRID = 6  # tokens per side


# The paper's mechanisms only (the state denoised with the video, spatial RoPE, MSA, frame-wise
# MCA); each test switches on or off what it is about.
PAPER_MECHANISMS = dict(kind="subject", state=True, msa=True, mca="framewise", spatial_rope=True, state_first=False,
                        state_render=False, glimpse=False, egocentric=False, action_facing=True)


def subject_model(dit, **flags) -> WorldModel:
    grid = StateGrid(GRID, GRID)
    return WorldModel(dit, SubjectTokens(dit, SubjectConditioning(**{**PAPER_MECHANISMS, **flags}), grid), grid)


def make_model(layers=1, chunk=1, **flags) -> WorldModel:
    torch.manual_seed(0)
    dit = make_dit("tiny", in_dim=12, out_dim=12, patch_size=(1, 1, 1), num_layers=layers, chunk_frames=chunk)
    model = subject_model(dit, **flags)
    with torch.no_grad():  # random weights everywhere, zero-initialised gates included
        for p in model.parameters():
            p.normal_(0, 0.3)
    return model.eval()


def call(model, frames=1, state=None, actions=None, present=None, x=None, offset=0, anchor=None):
    torch.manual_seed(1)
    x = torch.randn(1, 12, frames, GRID, GRID) if x is None else x
    sigma = torch.full((1, frames), 0.5)
    if state is None:
        state = torch.rand(1, frames, S, STATE_DIM) * 2 - 1
    if actions is None:
        actions = torch.randint(0, NO_ACTION, (1, frames, S))
    if present is None:
        present = torch.ones(1, S, dtype=torch.bool)
    text = torch.randn(1, 4, model.dit.config.text_dim)
    return model(x, sigma, x, text, None, frame_offset=offset,
                 subjects=SubjectInputs(actions, present, prev_state=state if anchor is None else anchor, state=state))


def state_out(pred, frames=1):
    return pred.raw.extra.view(1, frames, S, -1)


@pytest.mark.parametrize("msa", [True, False])
def test_subject_isolation_within_a_layer(msa):
    model = make_model(msa=msa, mca="none")
    state = torch.rand(1, 1, S, STATE_DIM) * 2 - 1
    a = state_out(call(model, state=state))
    moved = state.clone()
    moved[0, 0, 0] += 0.7  # perturb player 0's state token
    b = state_out(call(model, state=moved))
    assert not torch.allclose(a[0, 0, 0], b[0, 0, 0])  # its own output changes
    others_same = torch.allclose(a[0, 0, 1:], b[0, 0, 1:], atol=1e-6)
    assert others_same == msa  # with MSA the other players cannot see it (one layer: no video relay)


def _state_attention(model, monkeypatch, yx):
    """Attention logits of slot 0's state token over the video tokens (block 0), (y, x) per head,
    with the player's reference position (its previous state) at cell ``yx``."""
    captured = {}
    original = dit_module.attention

    def spy(q, k, v, mask=None):
        captured.setdefault("qk", (q, k, mask))
        return original(q, k, v, mask)

    monkeypatch.setattr(dit_module, "attention", spy)
    grid = model.grid
    anchor = grid.encode(torch.zeros(1, 1, S, 2), torch.zeros(1, 1, S, dtype=torch.long))
    anchor[0, 0, 0] = grid.encode(torch.tensor([float(yx[1]), float(yx[0])]), torch.tensor(0))
    state = anchor.clone()  # the token reads the state relative to the anchor: same content at any cell
    x = torch.zeros(1, 12, 1, GRID, GRID)  # identical video tokens: only RoPE tells them apart
    call(model, state=state, anchor=anchor, x=x, actions=torch.zeros(1, 1, S, dtype=torch.long))
    q, k, _ = captured["qk"]
    nv = GRID * GRID
    logits = torch.einsum("hd,khd->hk", q[0, nv], k[0, :nv])
    return logits.view(-1, GRID, GRID)


def test_state_token_rope_follows_its_coordinate(monkeypatch):
    model = make_model(mca="none")
    a = _state_attention(model, monkeypatch, (1, 1))
    monkeypatch.undo()
    b = _state_attention(model, monkeypatch, (3, 4))
    # Relative positions: moving the reference by (+2, +3) cells translates the attention logits.
    torch.testing.assert_close(b[:, 2:, 3:], a[:, : GRID - 2, : GRID - 3], rtol=1e-4, atol=1e-5)
    assert not torch.allclose(a, b)
    # ... so the most-attended video token changes with it (head 0, in the shared interior).
    inner_a, inner_b = a[0, : GRID - 2, : GRID - 3], b[0, 2:, 3:]
    peak_a = divmod(int(inner_a.argmax()), GRID - 3)
    peak_b = divmod(int(inner_b.argmax()), GRID - 3)
    assert peak_a == peak_b  # same peak relative to the player's own position
    full_peak_a, full_peak_b = divmod(int(a[0].argmax()), GRID), divmod(int(b[0].argmax()), GRID)
    assert full_peak_a != full_peak_b


def test_without_spatial_rope_the_coordinate_does_not_move_attention(monkeypatch):
    model = make_model(mca="none", spatial_rope=False)
    a = _state_attention(model, monkeypatch, (1, 1))
    monkeypatch.undo()
    b = _state_attention(model, monkeypatch, (3, 4))
    torch.testing.assert_close(a, b)
    # No spatial position at all: identical video tokens get identical scores wherever they are
    # (a state token at the grid origin would still favour the tokens near the corner).
    torch.testing.assert_close(a, a[:, :1, :1].expand_as(a))


@pytest.mark.parametrize("mca, independent", [("framewise", True), ("clipwise", False)])
def test_framewise_mca_keeps_other_steps_actions_out(mca, independent):
    """In a chunk of two frames (one clip), clip-wise MCA lets the first frame read the second
    step's actions; frame-wise does not. Block-causal attention lets frame 0 see frame 1 within
    the chunk, so MSA is off and the state tokens carry no action to isolate the MCA path."""
    model = make_model(chunk=2, mca=mca)
    for p in model.conditioning.action_embed.parameters():
        p.data.zero_()  # the actions reach the video through MCA only
    model.conditioning.turned_action_embed.weight.data.zero_()
    actions = torch.randint(0, NO_ACTION, (1, 2, S))
    a = call(model, frames=2, actions=actions).x0
    other = actions.clone()
    other[0, 1] = (other[0, 1] + 1) % NO_ACTION  # change only the second step's actions
    b = call(model, frames=2, actions=other).x0
    if independent:  # frame 0's video still sees frame 1's tokens through self-attention in the chunk
        mask = model.conditioning.mca(actions, torch.ones(1, S, dtype=torch.bool), torch.zeros_like(actions),
                                      torch.arange(2), *model.dit.rope(torch.zeros(1, 2 * S, 3)),
                                      model.dit.token_layout((2, GRID, GRID)))["mask"][0]
        nv = GRID * GRID
        assert not mask[:nv, S:].any() and mask[:nv, :S].all() and mask[nv:, S:].all() and not mask[nv:, :S].any()
    else:
        assert not torch.allclose(a[:, :, 0], b[:, :, 0], atol=1e-6)
    assert not torch.allclose(a[:, :, 1], b[:, :, 1])  # the second step sees its own actions


def test_clipwise_mca_never_reads_a_later_chunk_and_is_framewise_in_one_frame_chunks():
    clip1, frame1 = make_model(mca="clipwise"), make_model(mca="framewise")
    actions = torch.randint(0, NO_ACTION, (1, 2, S))
    torch.testing.assert_close(call(clip1, frames=2, actions=actions).x0, call(frame1, frames=2, actions=actions).x0)
    # Chunks of two: frames 0-1 and 2-3; frame 1's video never reads frame 2's actions.
    model = make_model(chunk=2, mca="clipwise")
    layout = model.dit.token_layout((4, GRID, GRID))
    mask = model.conditioning.mca(torch.randint(0, NO_ACTION, (1, 4, S)), torch.ones(1, S, dtype=torch.bool),
                                  torch.zeros(1, 4, S, dtype=torch.long), torch.arange(4),
                                  *model.dit.rope(torch.zeros(1, 4 * S, 3)), layout)["mask"][0]
    chunk_of_video = layout.q_frames[: layout.num_video] // 2
    chunk_of_action = torch.arange(4).repeat_interleave(S) // 2
    torch.testing.assert_close(mask, (chunk_of_video[:, None] == chunk_of_action[None]))


def test_no_mca_removes_action_cross_attention_only():
    full, no_mca = make_model(), make_model(mca="none")
    extra = {n for n, _ in full.named_parameters()} - {n for n, _ in no_mca.named_parameters()}
    assert extra and all("extra_cross_attn" in n or n.startswith("conditioning.mca.") for n in extra)
    assert {n for n, _ in no_mca.named_parameters()} <= {n for n, _ in full.named_parameters()}


def test_no_state_removes_state_input_and_head_only():
    full, no_state = make_model(), make_model(state=False)
    assert not no_state.has_state and full.has_state
    extra = {n for n, _ in full.named_parameters()} - {n for n, _ in no_state.named_parameters()}
    assert extra and all(n.startswith(("conditioning.state_in", "conditioning.state_head")) for n in extra)


def test_no_msa_changes_only_state_to_state_attention():
    full, no_msa = make_model(), make_model(msa=False)
    assert {n for n, _ in full.named_parameters()} == {n for n, _ in no_msa.named_parameters()}
    layout = full.dit.token_layout((1, GRID, GRID), call_extra(full), None, 0)
    present = torch.ones(1, S, dtype=torch.bool)
    a, b = full.conditioning.isolation_mask(layout, present)[0], no_msa.conditioning.isolation_mask(layout, present)[0]
    differ = a != b
    q_state, k_state = layout.q_tags >= 0, layout.k_tags >= 0
    assert differ.any()
    assert not differ[~q_state].any() and not differ[:, ~k_state].any()  # only state->state entries
    same_slot = layout.q_tags[:, None] == layout.k_tags[None, :]
    assert not differ[same_slot].any()  # a player's own tokens are visible in both


def call_extra(model):
    from actionparty.model.dit import ExtraTokens

    return ExtraTokens(torch.zeros(1, S, model.dit.config.dim), torch.zeros(1, S, 3), torch.zeros(1, S),
                       torch.zeros(S, dtype=torch.long), tags=torch.arange(S))


@pytest.mark.parametrize("msa", [True, False])
def test_empty_slots_contribute_nothing(msa):
    model = make_model(layers=2, msa=msa)
    present = torch.tensor([[True, True, True, False, False, False, False, False]])
    state = torch.rand(1, 1, S, STATE_DIM) * 2 - 1
    actions = torch.randint(0, NO_ACTION, (1, 1, S))
    a = call(model, state=state, actions=actions, present=present)
    state2, actions2 = state.clone(), actions.clone()
    state2[0, 0, 3:] = torch.rand(5, STATE_DIM)
    actions2[0, 0, 3:] = (actions2[0, 0, 3:] + 3) % NO_ACTION
    b = call(model, state=state2, actions=actions2, present=present)
    torch.testing.assert_close(a.x0, b.x0)  # video unaffected
    torch.testing.assert_close(state_out(a)[0, 0, :3], state_out(b)[0, 0, :3])  # present players unaffected


def test_state_grid_round_trip():
    grid = StateGrid(canvas_cells=12, grid_side=32)
    pos = torch.tensor([[0.0, 0.0], [11.0, 5.0], [3.0, 7.0]])
    facing = torch.tensor([0, 1, 3])
    state = grid.encode(pos, facing)
    assert state[:, :2].abs().max() <= 6.0  # cell units about the canvas centre
    # A one-cell move changes the state by 1, as much as a facing entry.
    torch.testing.assert_close(grid.encode(pos + torch.tensor([1.0, 0.0]), facing)[:, 0] - state[:, 0],
                               torch.ones(3))
    back, f = grid.decode(state)
    torch.testing.assert_close(back, pos)
    assert torch.equal(f, facing)


def test_snap_gives_the_nearest_whole_cell_and_one_facing():
    grid = StateGrid(canvas_cells=12, grid_side=12)
    state = grid.encode(torch.tensor([[3.0, 7.0]]), torch.tensor([2]))
    noisy = state + torch.tensor([[0.4, -0.3, 0.2, -0.1, 0.3, 0.0]])
    torch.testing.assert_close(grid.snap(noisy), state)


def test_state_render_draws_each_player_at_its_cells_only():
    """The render path puts a player's embeddings on the cells of its new and previous states:
    with the gates open, only those cells' outputs move when the player's new state moves."""
    model = make_model(state_first=True, state_render=True)
    grid = model.grid
    present = torch.zeros(1, S, dtype=torch.bool)
    present[0, 0] = True
    prev = grid.encode(torch.tensor([2.0, 2.0]), torch.tensor(0)).expand(1, 1, S, STATE_DIM).clone()
    moved = prev.clone()
    moved[0, 0, 0, :2] = grid.encode(torch.tensor([3.0, 2.0]), torch.tensor(0))[:2]  # one cell east
    actions = torch.zeros(1, 1, S, dtype=torch.long)
    a = call(model, state=prev, actions=actions, present=present, anchor=prev)
    b = call(model, state=moved, actions=actions, present=present, anchor=prev)
    # The whole frame attends to the player's tokens, so compare the linear path's own share.
    feature = torch.randn(1, 1, S, model.dit.config.dim)
    drawn_a = render_map(prev, present, grid, (GRID, GRID), feature)
    drawn_b = render_map(moved, present, grid, (GRID, GRID), feature)
    diff = (drawn_b - drawn_a).abs().sum(-1).view(GRID, GRID)
    assert set(map(tuple, diff.nonzero().tolist())) == {(2, 2), (2, 3)}  # (row, col): left (2, 2), entered (2, 3)
    assert not torch.allclose(a.x0[0, :, 0, 2, 3], b.x0[0, :, 0, 2, 3])
    # A present player's state at a fractional position spreads over the four nearest cells.
    half = moved.clone()
    half[0, 0, 0, :2] += 0.5
    spread = render_map(half, present, grid, (GRID, GRID), feature)
    assert int((spread.abs().sum(-1) > 0).sum()) == 4
    # Absent players draw nothing.
    assert render_map(prev, torch.zeros(1, S, dtype=torch.bool), grid, (GRID, GRID), feature).abs().sum() == 0


def test_render_gates_start_closed():
    torch.manual_seed(0)
    dit = make_dit("tiny", in_dim=12, out_dim=12, patch_size=(1, 1, 1), num_layers=1, chunk_frames=1)
    with_render = subject_model(dit, state_first=True, state_render=True).eval()
    x = torch.randn(1, 12, 1, GRID, GRID)
    state = torch.rand(1, 1, S, STATE_DIM) * 2 - 1
    subjects = SubjectInputs(torch.zeros(1, 1, S, dtype=torch.long), torch.ones(1, S, dtype=torch.bool), state, state)
    text = torch.randn(1, 4, dit.config.text_dim)
    sigma = torch.full((1, 1), 0.5)
    out = with_render.conditioning(dit, subjects, CallLayout((1, GRID, GRID), 0, None, None, x, sigma))
    assert out.video_cond.abs().sum() == 0 and out.out_cond.abs().sum() == 0
    pred = with_render(x, sigma, x, text, None, frame_offset=0, subjects=subjects)
    assert torch.isfinite(pred.x0).all()


def test_glimpse_reads_the_cells_around_the_player():
    grid = StateGrid(GRID, GRID)  # GRID x GRID cells, one latent position per cell
    latents = torch.arange(GRID * GRID, dtype=torch.float).view(1, 1, 1, GRID, GRID).expand(1, 12, 1, GRID, GRID)
    state = grid.encode(torch.tensor([[2.0, 3.0], [0.0, 0.0]]), torch.tensor([0, 1]))  # (x, y) cells
    state = torch.cat([state, state[:1].expand(S - 2, -1)]).view(1, 1, S, STATE_DIM)
    seen = read_glimpse(latents, state, grid).view(1, 1, S, 9, 12)[..., 0]  # channel 0 of each of the 9 cells
    row, col = 3, 2
    expect = [(row + dy) * GRID + (col + dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
    torch.testing.assert_close(seen[0, 0, 0], torch.tensor(expect, dtype=torch.float))
    # In the corner, the cells off the canvas read zero.
    torch.testing.assert_close(seen[0, 0, 1], torch.tensor([0, 0, 0, 0, 0, 1, 0, GRID, GRID + 1], dtype=torch.float))


def test_glimpse_changes_the_state_tokens_only_through_the_previous_frame():
    model = make_model(glimpse=True)
    x = torch.randn(1, 12, 1, GRID, GRID)
    anchor = torch.randn(1, 12, 1, GRID, GRID)
    state = model.grid.encode(torch.tensor([2.0, 2.0]), torch.tensor(0)).expand(1, 1, S, STATE_DIM).clone()
    subjects = SubjectInputs(torch.zeros(1, 1, S, dtype=torch.long), torch.ones(1, S, dtype=torch.bool), state, state)
    text = torch.randn(1, 4, model.dit.config.text_dim)
    sigma = torch.full((1, 1), 0.5)
    a = model(x, sigma, anchor, text, None, frame_offset=0, subjects=subjects)
    far = anchor.clone()
    far[..., 5, 5] += 3.0  # a cell outside every player's 3 x 3 glimpse
    b = model(x, sigma, far, text, None, frame_offset=0, subjects=subjects)
    torch.testing.assert_close(a.raw.extra, b.raw.extra)
    near = anchor.clone()
    near[..., 3, 3] += 3.0  # the cell south-east of the players
    c = model(x, sigma, near, text, None, frame_offset=0, subjects=subjects)
    assert not torch.allclose(a.raw.extra, c.raw.extra)


def test_own_frame_is_the_canvas_turned_by_the_facing():
    """A north-facing player's "one cell forward, still facing north" is, for a player facing k,
    FACING_STEP[k] and facing k; the two directions are inverse quarter turns."""
    grid = StateGrid(canvas_cells=12, grid_side=12)
    forward_north = grid.encode(torch.tensor([0.0, -1.0]), torch.tensor(0)) - grid.encode(torch.zeros(2), torch.tensor(0))
    forward_north[2:] = grid.encode(torch.zeros(2), torch.tensor(0))[2:]  # the facing one-hot itself
    for k in range(4):
        canvas = to_own_frame(forward_north, torch.tensor(k), inverse=True)
        assert canvas[:2].tolist() == list(map(float, FACING_STEP[k]))
        assert int(canvas[2:].argmax()) == k
    state, facing = torch.randn(5, 3, STATE_DIM), torch.randint(0, 4, (5, 3))
    torch.testing.assert_close(to_own_frame(to_own_frame(state, facing), facing, inverse=True), state)


def test_egocentric_glimpse_reads_the_cells_in_front_first():
    grid = StateGrid(GRID, GRID)
    latents = torch.arange(GRID * GRID, dtype=torch.float).view(1, 1, 1, GRID, GRID).expand(1, 12, 1, GRID, GRID)
    x, y = 2, 3
    for k, front in enumerate([[(x - 1, y - 1), (x, y - 1), (x + 1, y - 1)],  # facing N: the row above, west to east
                               [(x + 1, y - 1), (x + 1, y), (x + 1, y + 1)],  # E: the column east, north to south
                               [(x + 1, y + 1), (x, y + 1), (x - 1, y + 1)],  # S: the row below, east to west
                               [(x - 1, y + 1), (x - 1, y), (x - 1, y - 1)]]):  # W: the column west, south to north
        facing = torch.full((1, 1, S), k)
        state = grid.encode(torch.tensor([float(x), float(y)]), torch.tensor(k)).expand(1, 1, S, STATE_DIM)
        seen = read_glimpse(latents, state, grid, facing).view(1, 1, S, 9, 12)[0, 0, 0, :, 0]
        assert seen[:3].tolist() == [float(cy * GRID + cx) for cx, cy in front]
        assert seen[4] == y * GRID + x  # the centre is the player's own cell


def test_own_frame_is_on_for_the_state_variants_but_no_egocentric():
    from pathlib import Path

    from actionparty.variants import load_variant

    variants = Path(__file__).resolve().parents[1] / "params/variants"
    assert load_variant("full", variants).subject.egocentric
    assert not load_variant("no_egocentric", variants).subject.egocentric
    assert not load_variant("no_state", variants).subject.egocentric  # nothing to turn
    assert load_variant("global_action", variants).subject is None
