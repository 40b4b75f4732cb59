"""Training and rollout: exact resume, torchrun DDP == single process, cached == uncached rollout."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace

import pytest
import torch
import yaml

from actionparty.config import validate_profile
from actionparty.data.lmdb_dataset import build_lmdb
from actionparty.model.checkpoint import load_checkpoint
from actionparty.model.conditioning import NO_ACTION, SubjectInputs
from actionparty.model.factory import build_world_model
from actionparty.model.flow import add_noise, sampling_sigmas, shift_sigma
from actionparty.rollout.sampler import rollout
from actionparty.train.objective import ClipNoise, draw_state_sigmas
from actionparty.train.trainer import TrainJob, train
from actionparty.variants import load_variant
from conftest import REPO, subprocess_env, write_synthetic_episodes


def smoke_profile(tmp_path, **pretrain):
    data = yaml.safe_load((REPO / "params/smoke.yaml").read_text())
    data["catalogue"] = str(REPO / "params/games.yaml")
    data["pretrain"].update(pretrain)
    path = tmp_path / "profile.yaml"
    path.write_text(yaml.safe_dump(data))
    return validate_profile(data, str(path)), path


@pytest.fixture(scope="module")
def train_lmdb(tmp_path_factory):
    root = tmp_path_factory.mktemp("lmdb")
    write_synthetic_episodes(root / "coins", "coins", "train", episodes=2, steps=5, players=2, canvas_cells=12)
    write_synthetic_episodes(root / "clean_up", "clean_up", "train", episodes=2, steps=5, players=4, canvas_cells=12,
                             seed=3)
    build_lmdb([root / "coins", root / "clean_up"], root / "train.lmdb", "train", map_size_mb=64, progress=False)
    return root / "train.lmdb"


def _weights(path):
    state = load_checkpoint(path)
    return state["model"], state["ema"]["shadow"], state["step"]


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tmp_path, train_lmdb):
    profile, _ = smoke_profile(tmp_path, steps=5, checkpoint_every=2, batch_size=3)
    job = lambda out, stop=None: TrainJob(profile, profile.pretrain, train_lmdb, out, "exp-138", build_world_model,
                                          stop_after=stop, progress=False)
    train(job(tmp_path / "straight"))
    train(job(tmp_path / "killed", stop=3))  # "killed" after 3 steps: last checkpoint at step 2
    assert not (tmp_path / "killed/checkpoint.pt").exists()
    assert load_checkpoint(tmp_path / "killed/work/last.pt")["step"] == 2
    train(job(tmp_path / "killed"))  # resumes at step 2
    a, b = _weights(tmp_path / "straight/checkpoint.pt"), _weights(tmp_path / "killed/checkpoint.pt")
    assert a[2] == b[2] == 5
    for k in a[0]:
        assert torch.equal(a[0][k], b[0][k]), k
        assert torch.equal(a[1][k], b[1][k]), k
    log = [yaml.safe_load(l) for l in (tmp_path / "killed/train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4, 5]
    # training moved the weights
    fresh, _, _ = build_world_model(profile)
    assert any(not torch.equal(fresh.state_dict()[k], a[0][k]) for k in a[0])


def test_finetune_snapshots_are_the_learning_curve_points(tmp_path, train_lmdb):
    from actionparty.variants import load_variant
    from actionparty.model.checkpoint import list_snapshots

    profile, _ = smoke_profile(tmp_path)
    variant = load_variant("full", REPO / "params/variants")

    def run(curve_every):
        cfg = profile.finetune.model_copy(update={"steps": 5, "batch_size": 2, "curve_every": curve_every})
        train(TrainJob(profile, cfg, train_lmdb, tmp_path / "ft", "full", lambda p, d: build_world_model(p, d, variant),
                       progress=False, extra_meta={"variant": "full"}))
        return [step for step, _ in list_snapshots(tmp_path / "ft")]

    assert run(2) == [2, 4]  # the final step is the checkpoint itself
    snap = load_checkpoint(tmp_path / "ft/snapshots/step_000002.pt")
    assert snap["step"] == 2 and snap["variant"] == "full" and "optimizer" not in snap
    assert run(3) == [3]  # a fresh run drops the snapshots of the earlier one


def test_x0_loss_space_is_the_plain_weighted_x0_error():
    from types import SimpleNamespace

    from actionparty.train.objective import flow_matching_loss

    class Fixed(torch.nn.Module):  # predicts x0 = 0.5 everywhere (no residual prior)
        has_state, chunk_frames, context_frame, prediction = False, 1, 0, "x0"

        def forward(self, x, sigma, anchor, text, text_mask, **_):
            return SimpleNamespace(x0=torch.full_like(x, 0.5), velocity=torch.zeros_like(x))

    latents = torch.zeros(2, 3, 2, 4, 4)
    latents[:, :, 1, 0, 0] = 1.0  # one changed position per clip
    cfg = SimpleNamespace(loss_space="x0", change_weight=3.0, min_sigma=0.05)
    sigma = torch.tensor([[0.2], [0.9]])
    out = flow_matching_loss(Fixed(), latents, None, None, cfg, ClipNoise(sigma, torch.zeros(2, 3, 1, 4, 4)))
    weight = torch.ones(2, 1, 1, 4, 4)
    weight[:, :, :, 0, 0] = 4.0
    err = (0.5 - latents[:, :, 1:]).pow(2)
    expected = (weight * err).sum() / (weight.sum() * 3)
    torch.testing.assert_close(out.loss, expected)  # no 1/sigma^2: every noise level counts alike
    velocity = flow_matching_loss(Fixed(), latents, None, None, SimpleNamespace(**{**vars(cfg), "loss_space": "velocity"}),
                                  ClipNoise(sigma, torch.zeros(2, 3, 1, 4, 4)))
    assert velocity.loss > out.loss


def test_torchrun_two_processes_equal_one_process(tmp_path, train_lmdb):
    # with self-generated contexts: each process draws the contexts of its own clips
    profile, path = smoke_profile(tmp_path, steps=3, batch_size=4, checkpoint_every=10, self_context=0.5)
    train(TrainJob(profile, profile.pretrain, train_lmdb, tmp_path / "single", "exp-138", build_world_model,
                   progress=False))
    run = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "actionparty",
         "pretrain", "--profile", str(path), "--train-lmdb", str(train_lmdb), "--out", str(tmp_path / "ddp"),
         "--quiet"],
        env={**subprocess_env(), "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    single, ddp = _weights(tmp_path / "single/checkpoint.pt"), _weights(tmp_path / "ddp/checkpoint.pt")
    assert single[2] == ddp[2] == 3
    for k in single[0]:
        torch.testing.assert_close(ddp[0][k], single[0][k], rtol=1e-5, atol=1e-6, msg=k)


def _random_world_model(tmp_path):
    profile, _ = smoke_profile(tmp_path)
    model, codec, text = build_world_model(profile)
    torch.manual_seed(0)
    with torch.no_grad():  # leave the zero-initialised gates: give every weight a random value
        for p in model.parameters():
            p.normal_(0, 0.05)
    return model.eval(), codec, text, profile


def test_cached_rollout_equals_uncached_beyond_the_window(tmp_path):
    model, codec, text, profile = _random_world_model(tmp_path)
    frames = torch.randint(0, 255, (2, 1, 3, 96, 96), dtype=torch.uint8)
    context = codec.encode(frames)
    emb, mask = text(["coins", "clean_up"])
    kw = dict(sampling_steps=3, shift=3.0, window_frames=2)
    cached = rollout(model, context, 6, emb, mask, generator=torch.Generator().manual_seed(1), **kw).latents
    uncached = rollout(model, context, 6, emb, mask, generator=torch.Generator().manual_seed(1), use_cache=False,
                       **kw).latents
    assert cached.shape == (2, 192, 7, 12, 12)
    torch.testing.assert_close(cached, uncached, rtol=1e-4, atol=1e-4)
    # the window matters: without it the rollout differs
    unwindowed = rollout(model, context, 6, emb, mask, generator=torch.Generator().manual_seed(1),
                         sampling_steps=3, shift=3.0, window_frames=None).latents
    assert not torch.allclose(cached[:, :, 4:], unwindowed[:, :, 4:], atol=1e-4)


def test_untrained_residual_model_copies_the_context(tmp_path):
    profile, _ = smoke_profile(tmp_path)
    model, codec, text = build_world_model(profile)  # zero-initialised output: x0 = previous frame
    frames = torch.randint(0, 255, (1, 1, 3, 96, 96), dtype=torch.uint8)
    context = codec.encode(frames)
    emb, mask = text(["coins"])
    out = rollout(model.eval(), context, 3, emb, mask, sampling_steps=2, shift=3.0, window_frames=1).latents
    decoded = codec.decode(out, 96)
    assert torch.equal(decoded[:, 3], frames[:, 0])


def test_context_noise_noises_only_the_contexts_the_model_reads(tmp_path):
    model, codec, text, profile = _random_world_model(tmp_path)
    context = codec.encode(torch.randint(0, 255, (2, 1, 3, 96, 96), dtype=torch.uint8))
    emb, mask = text(["coins", "clean_up"])
    kw = dict(sampling_steps=2, shift=3.0, window_frames=2)
    noisy = rollout(model, context, 3, emb, mask, generator=torch.Generator().manual_seed(1), context_noise=0.1,
                    **kw).latents
    uncached = rollout(model, context, 3, emb, mask, generator=torch.Generator().manual_seed(1), context_noise=0.1,
                       use_cache=False, **kw).latents
    torch.testing.assert_close(noisy, uncached, rtol=1e-4, atol=1e-4)
    plain = rollout(model, context, 3, emb, mask, generator=torch.Generator().manual_seed(1), **kw).latents
    # the context and the first frame (read from the true context) are the same; later frames read noised ones
    assert torch.equal(noisy[:, :, :2], plain[:, :, :2])
    assert not torch.allclose(noisy[:, :, 2:], plain[:, :, 2:], atol=1e-3)
    # an untrained residual model copies what it reads: frame 2 is frame 1 noised at 0.1, as drawn
    copier, codec, text = build_world_model(profile)
    out = rollout(copier.eval(), context, 2, emb, mask, generator=torch.Generator().manual_seed(1), context_noise=0.1,
                  **kw).latents
    torch.testing.assert_close(out[:, :, 1], context[:, :, 0])
    unit = (out[:, :, 2] - 0.9 * out[:, :, 1]) / 0.1
    assert abs(float(unit.std()) - 1.0) < 0.05 and abs(float(unit.mean())) < 0.05


def test_flow_schedule():
    s = torch.linspace(0, 1, 11)
    assert torch.allclose(shift_sigma(s, 1.0), s)
    assert (shift_sigma(s, 3.0) >= s).all()
    sig = sampling_sigmas(4, 3.0)
    assert sig[0] == 1 and sig[-1] == 0 and (sig[1:] < sig[:-1]).all()
    x0, noise = torch.ones(3), torch.zeros(3)
    assert torch.equal(add_noise(x0, noise, torch.tensor(0.0)), x0)
    assert torch.equal(add_noise(x0, noise, torch.tensor(1.0)), noise)


def test_checkpoint_from_another_model_config_is_refused(tmp_path, train_lmdb):
    from actionparty.errors import UserError
    from actionparty.rollout.generate import load_for_rollout

    profile, _ = smoke_profile(tmp_path, steps=1)
    train(TrainJob(profile, profile.pretrain, train_lmdb, tmp_path / "run", "exp-138", build_world_model,
                   progress=False))
    other = profile.model_copy(update={"model": profile.model.model_copy(update={"size": "small"})})
    with pytest.raises(UserError, match=r"trained with model.size='tiny', the profile has 'small'"):
        load_for_rollout(other, tmp_path / "run/checkpoint.pt")
    with pytest.raises(UserError, match="checkpoint not found"):
        load_for_rollout(profile, tmp_path / "nope.pt")


def test_state_first_rollout_cached_equals_uncached_and_snaps_states(tmp_path):
    profile, _ = smoke_profile(tmp_path)
    model, codec, text = build_world_model(profile, variant=load_variant("full", REPO / "params/variants"))
    assert model.state_first and model.conditioning.render is not None
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.05)
    model.eval()
    frames = torch.randint(0, 255, (2, 1, 3, 96, 96), dtype=torch.uint8)
    context = codec.encode(frames)
    emb, mask = text(["coins", "clean_up"])
    present = torch.zeros(2, 8, dtype=torch.bool)
    present[:, :2] = True
    state = model.grid.encode(torch.tensor([[3.0, 4.0], [6.0, 2.0]] + [[0.0, 0.0]] * 6), torch.zeros(8))
    kw = dict(sampling_steps=2, shift=3.0, window_frames=2, actions=torch.randint(0, 7, (2, 3, 8)), present=present,
              context_state=state.expand(2, 1, 8, 6).clone())
    cached = rollout(model, context, 3, emb, mask, generator=torch.Generator().manual_seed(1), **kw)
    uncached = rollout(model, context, 3, emb, mask, generator=torch.Generator().manual_seed(1), use_cache=False, **kw)
    torch.testing.assert_close(cached.latents, uncached.latents, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(cached.states, uncached.states)
    torch.testing.assert_close(cached.states, model.grid.snap(cached.states))  # whole cells, one facing


def test_state_sigmas_are_clean_for_the_given_share_and_repeatable():
    a = draw_state_sigmas(torch.Generator().manual_seed(0), 4000, 1, 3.0, 0.5)
    b = draw_state_sigmas(torch.Generator().manual_seed(0), 4000, 1, 3.0, 0.5)
    assert torch.equal(a, b)
    assert abs(float((a == 0).float().mean()) - 0.5) < 0.03
    assert (a[a > 0] <= 1).all()
    assert (draw_state_sigmas(torch.Generator().manual_seed(0), 100, 1, 3.0, 0.0) > 0).all()


def test_state_first_examples_split_the_video_and_state_losses():
    """A clip with a noisy state is a state example (video at noise 1, no video loss); one with a
    clean state is a video example (no state loss)."""
    from types import SimpleNamespace

    from actionparty.train.objective import flow_matching_loss

    seen = {}

    class Fixed(torch.nn.Module):  # x0 = 0.5 everywhere, states predicted 0.25 off in x
        has_state, chunk_frames, context_frame, prediction = True, 1, 0, "x0"

        def forward(self, x, sigma, anchor, text, text_mask, subjects=None, **_):
            seen.update(sigma=sigma, state_sigma=subjects.state_sigma)
            state_x0 = subjects.state.clone()
            state_x0[..., 1:, :, 0] = states[..., 1:, :, 0] + 0.25
            return SimpleNamespace(x0=torch.full_like(x, 0.5), velocity=torch.zeros_like(x), state_x0=state_x0)

    latents = torch.zeros(2, 3, 2, 4, 4)
    states = torch.zeros(2, 2, 8, 6)
    present = torch.zeros(2, 8, dtype=torch.bool)
    present[:, :2] = True
    cfg = SimpleNamespace(loss_space="x0", state_loss_space="x0", state_loss_weight=1.0, change_weight=0.0,
                          min_sigma=0.05)
    sigma = torch.tensor([[0.3], [0.3]])
    state_sigma = torch.tensor([[0.0], [0.6]])  # clip 0: video example, clip 1: state example
    clip = SubjectInputs(torch.zeros(2, 2, 8, dtype=torch.long), present, state=states)
    out = flow_matching_loss(Fixed(), latents, None, None, cfg,
                             ClipNoise(sigma, torch.zeros(2, 3, 1, 4, 4), torch.zeros(2, 1, 8, 6), state_sigma), clip)
    torch.testing.assert_close(seen["sigma"][:, 1], torch.tensor([0.3, 1.0]))  # the state example's video is noise
    torch.testing.assert_close(seen["state_sigma"][:, 1], torch.tensor([0.0, 0.6]))
    torch.testing.assert_close(torch.tensor(out.stats["video_loss"]), torch.tensor(0.25))  # (0.5 - 0)^2, clip 0 only
    torch.testing.assert_close(torch.tensor(out.stats["state_loss"]), torch.tensor(0.25 ** 2 / 6))  # clip 1 only


def test_context_noise_reaches_the_input_and_anchor_but_not_the_target():
    from types import SimpleNamespace

    from actionparty.train.objective import draw_context_noise, flow_matching_loss

    seen = {}

    class Fixed(torch.nn.Module):  # predicts x0 = the anchor (copy the context)
        has_state, chunk_frames, context_frame, prediction = False, 1, 0, "x0"

        def forward(self, x, sigma, anchor, text, text_mask, **_):
            seen.update(x=x, anchor=anchor)
            return SimpleNamespace(x0=anchor.clone(), velocity=torch.zeros_like(x))

    latents = torch.zeros(2, 3, 2, 4, 4)
    cfg = SimpleNamespace(loss_space="x0", change_weight=0.0, min_sigma=0.05)
    level, noise = draw_context_noise(torch.Generator().manual_seed(0), 2, (3, 1, 4, 4), 0.1)
    assert (level >= 0).all() and (level <= 0.1).all()
    out = flow_matching_loss(Fixed(), latents, None, None, cfg,
                             ClipNoise(torch.full((2, 1), 0.5), torch.zeros(2, 3, 1, 4, 4), context_sigma=level,
                                       context_noise=noise))
    noisy = level[:, None, None, None, None] * noise  # (1 - level) * 0 + level * noise
    torch.testing.assert_close(seen["x"][:, :, :1], noisy)
    torch.testing.assert_close(seen["anchor"][:, :, 1:], noisy)  # frame 1 starts from the noised context
    torch.testing.assert_close(out.loss, noisy.pow(2).mean())  # against the clean frame 1 (all zeros)


def _random_state_model(tmp_path):
    profile, _ = smoke_profile(tmp_path)
    model, codec, text = build_world_model(profile, variant=load_variant("full", REPO / "params/variants"))
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.05)
    return model.eval(), codec, text


def test_own_context_frame_is_what_a_rollout_draws(tmp_path):
    """Self-generated training contexts: the frame drawn from the frame before it, given the
    state the rollout finished with, is the rollout's own frame (same noise, same steps)."""
    from actionparty.train.objective import draw_own_frame

    model, codec, text = _random_state_model(tmp_path)
    context = codec.encode(torch.randint(0, 255, (2, 1, 3, 96, 96), dtype=torch.uint8))
    emb, mask = text(["coins", "clean_up"])
    present = torch.zeros(2, 8, dtype=torch.bool)
    present[:, :2] = True
    state = model.grid.encode(torch.tensor([[3.0, 4.0], [6.0, 2.0]] + [[0.0, 0.0]] * 6), torch.zeros(8))
    state = state.expand(2, 1, 8, 6).clone()
    actions = torch.randint(0, 7, (2, 1, 8))
    out = rollout(model, context, 1, emb, mask, generator=torch.Generator().manual_seed(1), sampling_steps=3,
                  state_sampling_steps=1, shift=3.0, window_frames=1, actions=actions, present=present,
                  context_state=state)
    noise = torch.randn(context.shape, generator=torch.Generator().manual_seed(1))  # the rollout's first draw
    clip = SubjectInputs(torch.cat([torch.full_like(actions, NO_ACTION), actions], dim=1), present, state=out.states)
    drawn = draw_own_frame(model, context, emb, mask, clip, noise, None, 3, 3.0)
    torch.testing.assert_close(drawn, out.latents[:, :, 1:], rtol=1e-4, atol=1e-4)
    # the state decides what is drawn
    moved = out.states.clone()
    moved[:, 1, 0, :2] += 0.5
    other = draw_own_frame(model, context, emb, mask, replace(clip, state=moved), noise, None, 3, 3.0)
    assert not torch.allclose(other, drawn, atol=1e-4)


def test_first_step_split_continues_the_clip(train_lmdb):
    from actionparty.data.lmdb_dataset import ClipDataset, split_first_step

    long, short = ClipDataset(train_lmdb, clip_steps=2), ClipDataset(train_lmdb, clip_steps=1)
    batch = torch.utils.data.default_collate([long.clip(1, 2)])
    first, rest = split_first_step(batch)
    for part, start in ((first, 2), (rest, 3)):
        expected = short.clip(1, start)
        for key, value in expected.items():
            torch.testing.assert_close(part[key][0], value, msg=key)
