"""The paper's method as its own variant (`paper`) and its four ablations: each ablation's one
switch changes what a rollout computes; the recipe (clips of 4 actions in one chunk) reaches the
model; tokens without a spatial position compare time only."""

from __future__ import annotations

import pytest
import torch

from actionparty.config import load_profile
from actionparty.errors import ProfileError
from actionparty.model.dit import Unplaced, unplaced_pairs
from actionparty.model.factory import build_world_model
from actionparty.model.rope import Rope3D, apply_rope
from actionparty.rollout.sampler import rollout
from actionparty.variants import load_variant, registry, variant_profile
from conftest import REPO

VARIANTS = REPO / "params/variants"
PAPER_ABLATIONS = ("no_msa", "no_mca", "framewise_mca", "no_rope_sa")


def test_paper_has_the_papers_mechanisms_only_and_its_ablations_switch_one_each():
    paper = load_variant("paper", VARIANTS).subject
    assert paper.state and paper.msa and paper.mca == "clipwise" and paper.spatial_rope
    assert not (paper.state_first or paper.state_render or paper.glimpse or paper.egocentric or paper.action_facing)
    ablations = {n for n, v in registry(VARIANTS).items() if v.ablation_of == "paper"}
    assert ablations == set(PAPER_ABLATIONS)
    for name in PAPER_ABLATIONS:
        v = load_variant(name, VARIANTS)
        differ = {k for k, value in v.subject.model_dump().items() if value != paper.model_dump()[k]}
        assert len(differ) == 1 and v.recipe == load_variant("paper", VARIANTS).recipe, name
    full = load_variant("full", VARIANTS)
    assert full.role == "ours" and full.recipe is None


def test_the_recipe_gives_clips_of_four_in_one_chunk_at_the_same_frames_per_step():
    tiny = load_profile(REPO / "params/tiny.yaml")
    paper = variant_profile(tiny, load_variant("paper", VARIANTS))
    assert (paper.model.chunk_frames, paper.finetune.clip_steps, paper.finetune.self_context) == (4, 4, 0.0)
    assert paper.finetune.batch_size * 4 == tiny.finetune.batch_size * tiny.finetune.clip_steps
    assert paper.finetune.steps == tiny.finetune.steps and paper.rollout == tiny.rollout
    assert variant_profile(tiny, load_variant("full", VARIANTS)) is tiny
    odd = tiny.model_copy(update={"finetune": tiny.finetune.model_copy(update={"batch_size": 3})})
    with pytest.raises(ProfileError, match="does not divide"):
        variant_profile(odd, load_variant("paper", VARIANTS))


def test_unplaced_tokens_compare_time_only_and_placed_pairs_keep_full_rope():
    torch.manual_seed(0)
    d, n = 24, 7
    rope = Rope3D(d)
    pos = torch.randint(0, 5, (1, n, 3)).double()
    cos, sin = rope(pos)
    cos_t, sin_t = rope(torch.cat([pos[..., :1], torch.zeros_like(pos[..., 1:])], -1))
    free = torch.tensor([False, False, False, False, True, True, True])
    q, k = torch.randn(1, n, 2, d), torch.randn(1, n, 2, d)
    q4, k4 = unplaced_pairs(q, k, cos, sin, Unplaced(free, cos_t, sin_t))
    got = torch.einsum("bqhd,bkhd->hqk", q4, k4) / (4 * d) ** 0.5
    full = torch.einsum("bqhd,bkhd->hqk", apply_rope(q, cos, sin), apply_rope(k, cos, sin)) / d ** 0.5
    time = torch.einsum("bqhd,bkhd->hqk", apply_rope(q, cos_t, sin_t), apply_rope(k, cos_t, sin_t)) / d ** 0.5
    either = free[:, None] | free[None, :]
    torch.testing.assert_close(got, torch.where(either, time, full), rtol=1e-5, atol=1e-5)


def _rollout_of(name, weights=None, use_cache=True, steps=8):
    profile = variant_profile(load_profile(REPO / "params/smoke.yaml"), load_variant(name, VARIANTS))
    model, codec, _ = build_world_model(profile, "cpu", load_variant(name, VARIANTS))
    if weights is None:
        torch.manual_seed(0)
        with torch.no_grad():  # random weights everywhere, the zero-initialised gates included
            for p in model.parameters():
                p.normal_(0, 0.2)
    else:
        report = model.load_state_dict(weights, strict=False)
        assert not report.missing_keys, report.missing_keys  # an ablation only ever removes parameters
    model.eval()
    g = torch.Generator().manual_seed(0)
    px = profile.canvas_px
    context = codec.encode(torch.randint(0, 256, (2, 1, 3, px, px), generator=g, dtype=torch.uint8))
    cells = torch.randint(0, 12, (2, 1, 8, 2), generator=g)
    facing = torch.randint(0, 4, (2, 1, 8), generator=g)
    actions = torch.randint(0, 7, (2, steps, 8), generator=g)
    present = torch.zeros(2, 8, dtype=torch.bool)
    present[:, :4] = True
    text = torch.randn((2, 4, model.dit.config.text_dim), generator=g)
    out = rollout(model, context, steps, text, None, actions=actions, context_state=model.grid.encode(cells, facing),
                  sampling_steps=2, shift=3.0, window_frames=1, generator=torch.Generator().manual_seed(1),
                  present=present, use_cache=use_cache)
    return model, out


def test_each_paper_ablation_changes_the_rollout():
    paper, base = _rollout_of("paper")
    assert paper.chunk_frames == 4 and base.latents.shape[2] == 9
    _, again = _rollout_of("paper", paper.state_dict())
    torch.testing.assert_close(again.latents, base.latents, rtol=0, atol=0)  # same weights, same rollout
    for name in PAPER_ABLATIONS:
        _, out = _rollout_of(name, paper.state_dict())
        assert not torch.allclose(out.latents[:, :, 1:], base.latents[:, :, 1:], atol=1e-4), name
        assert not torch.allclose(out.states[:, 1:], base.states[:, 1:], atol=1e-4), name


@pytest.mark.parametrize("name", ["paper", "no_rope_sa"])
def test_chunked_rollout_cached_equals_uncached(name):
    """Chunks of 4 through a one-frame window (the last frame of the previous chunk), and keys of
    position-free state tokens (4x wider) in the cache: the KV cache computes what recomputing
    every clean frame does."""
    model, cached = _rollout_of(name, steps=12)
    _, uncached = _rollout_of(name, model.state_dict(), use_cache=False, steps=12)
    torch.testing.assert_close(cached.latents, uncached.latents, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(cached.states, uncached.states, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["paper", "full", "global_action"])
def test_finished_frames_are_cached_as_training_conditions_its_context(name, monkeypatch):
    """The cache-update pass gives each finished frame what a training clip's context frame gets:
    no action (NO_ACTION), its own state as the reference, itself as the residual anchor."""
    from actionparty.model.conditioning import NO_ACTION
    from actionparty.model.world import WorldModel

    seen = []
    original = WorldModel.forward

    def spy(self, x, sigma, anchor, *args, update_cache=False, subjects=None, **kw):
        if update_cache:
            seen.append((x.clone(), anchor.clone(), subjects))
        return original(self, x, sigma, anchor, *args, update_cache=update_cache, subjects=subjects, **kw)

    monkeypatch.setattr(WorldModel, "forward", spy)
    model, _ = _rollout_of(name, steps=3 * load_profile_chunk(name))
    assert len(seen) == 3  # the context, then every chunk but the last
    for x, anchor, subjects in seen:
        assert torch.equal(anchor, x)
        assert bool((subjects.actions == NO_ACTION).all())
        if model.has_state:
            assert torch.equal(subjects.prev_state, subjects.state)


def load_profile_chunk(name):
    return variant_profile(load_profile(REPO / "params/smoke.yaml"), load_variant(name, VARIANTS)).model.chunk_frames


TRAINED = sorted(name for name, variant in registry(VARIANTS).items() if variant.trained)


@pytest.mark.parametrize("name", TRAINED)
def test_every_trained_variant_rolls_out_and_its_cache_computes_what_recomputing_does(name):
    """Each variant file, built alone, steps through the sampler the metrics use (the smoke DAG
    runs only a cross-section of them). Over 4 steps (one chunk of the paper's recipe) the KV cache
    matches recomputation up to float reassociation: the random weights (std 0.2) make activations
    large, so the tolerance is 1e-3 rather than the 1e-4 of the trained-scale checks above."""
    model, cached = _rollout_of(name, steps=4)
    _, uncached = _rollout_of(name, model.state_dict(), use_cache=False, steps=4)
    assert cached.latents.shape[2] == 5 and torch.isfinite(cached.latents).all()
    torch.testing.assert_close(cached.latents, uncached.latents, rtol=1e-3, atol=1e-3)
    if model.has_state:
        torch.testing.assert_close(cached.states, uncached.states, rtol=1e-3, atol=1e-3)
