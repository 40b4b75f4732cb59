"""The latent cache (model.latent_cache): which clips it holds, that training reads it and then
computes what encoding on the fly computes, and the one-line refusals of a wrong cache."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
import torch
import yaml

from actionparty.config import validate_profile
from actionparty.data.latent_cache import LatentCache, codec_identity, dataset_identity
from actionparty.data.lmdb_dataset import build_lmdb
from actionparty.errors import DatasetError
from actionparty.model.checkpoint import PRETRAIN_STAGE, load_checkpoint
from actionparty.model.factory import build_world_model
from actionparty.train.latents import encode_latents, shard_clips
from actionparty.train.trainer import PERMUTATION_MAX_ITEMS, StepBatchSampler, TrainJob, train
from actionparty.train.distributed import step_generator
from actionparty.variants import finetune_run
from conftest import REPO, subprocess_env, write_synthetic_episodes


@pytest.fixture(scope="module")
def train_lmdb(tmp_path_factory):
    root = tmp_path_factory.mktemp("lmdb")
    write_synthetic_episodes(root / "coins", "coins", "train", episodes=2, steps=6, players=2, canvas_cells=12)
    write_synthetic_episodes(root / "clean_up", "clean_up", "train", episodes=2, steps=6, players=4,
                             canvas_cells=12, seed=3)
    build_lmdb([root / "coins", root / "clean_up"], root / "train.lmdb", "train", map_size_mb=64, progress=False)
    return root / "train.lmdb"


def cached_profile(tmp_path, cache, shards=2, **finetune):
    """params/smoke.yaml with a latent cache, a few steps a stage; finetunes with self-generated
    contexts (their clips carry the frame before the context: a second latent per clip)."""
    data = yaml.safe_load((REPO / "params/smoke.yaml").read_text())
    data["catalogue"] = str(REPO / "params/games.yaml")
    data["model"]["latent_cache"] = str(cache)
    data["resources"]["latent_shards"] = shards
    data["pretrain"].update(steps=3, batch_size=3, checkpoint_every=10)
    data["finetune"].update({"steps": 3, "batch_size": 3, "checkpoint_every": 10, "curve_every": 0, "self_context": 0.5,
                             **finetune})
    data["variants"], data["seed_runs"] = ["full", "global_action"], ["full-s1"]
    path = tmp_path / "profile.yaml"
    path.write_text(yaml.safe_dump(data))
    return validate_profile(data, str(path)), path


def without_cache(profile):
    return profile.model_copy(update={"model": profile.model.model_copy(update={"latent_cache": None})})


def encode_all(profile, train_lmdb, cache):
    for k in range(profile.resources.latent_shards):
        encode_latents(profile, train_lmdb, cache, k, profile.resources.latent_shards, progress=False)


def test_training_reads_the_cache_and_computes_what_encoding_computes(tmp_path, train_lmdb, monkeypatch):
    cache = tmp_path / "latents"
    profile, _ = cached_profile(tmp_path, cache)
    encode_all(profile, train_lmdb, cache)
    plain = without_cache(profile)

    def run(p, stage, out, init=None):
        if stage == PRETRAIN_STAGE:
            cfg, build = p.pretrain, build_world_model
        else:
            variant, p, cfg = finetune_run(p, stage)
            build = lambda prof, device: build_world_model(prof, device, variant)  # noqa: E731
        train(TrainJob(p, cfg, train_lmdb, out, stage, build, init_from=init, progress=False))
        return load_checkpoint(out / "checkpoint.pt")

    a = run(plain, PRETRAIN_STAGE, tmp_path / "pre_plain")
    fa = run(plain, "full-s1", tmp_path / "ft_plain", init=tmp_path / "pre_plain/checkpoint.pt")
    # With the cache, the codec never encodes: not the clips, not the frames before the contexts.
    from actionparty.model.world import FrameCodec

    def refuse(*_):
        raise AssertionError("the codec encoded a clip the cache holds")

    monkeypatch.setattr(FrameCodec, "encode", refuse)
    b = run(profile, PRETRAIN_STAGE, tmp_path / "pre_cached")
    fb = run(profile, "full-s1", tmp_path / "ft_cached", init=tmp_path / "pre_plain/checkpoint.pt")
    for x, y in ((a, b), (fa, fb)):
        for k in x["model"]:
            assert torch.equal(x["model"][k], y["model"][k]), k
        assert x["profile"] == y["profile"]  # where latents came from is not what the model is
    assert (tmp_path / "pre_plain/checkpoint.pt").read_bytes() == (tmp_path / "pre_cached/checkpoint.pt").read_bytes()


def test_shards_split_the_steps_and_finetunes_share_pretraining_draws(tmp_path, train_lmdb):
    profile, _ = cached_profile(tmp_path, tmp_path / "c", shards=1, self_context=0.0)
    one = shard_clips(profile, train_lmdb, 0, 1)
    halves = shard_clips(profile, train_lmdb, 0, 2), shard_clips(profile, train_lmdb, 1, 2)
    assert set(halves[0]) | set(halves[1]) == set(one)
    # Without self-generated contexts, a seed-0 finetune with pretraining's sampler settings
    # draws what pretraining drew: only the seed-1 run adds clips.
    pre = profile.model_copy(update={"variants": [], "seed_runs": []})
    seed0 = profile.model_copy(update={"seed_runs": []})
    assert shard_clips(seed0, train_lmdb, 0, 1) == shard_clips(pre, train_lmdb, 0, 1)
    assert set(shard_clips(pre, train_lmdb, 0, 1)) < set(one)
    assert all(frames == profile.pretrain.clip_steps + 1 for _, _, frames in one)


def test_a_cache_of_another_run_codec_or_dataset_is_refused(tmp_path, train_lmdb):
    cache = tmp_path / "latents"
    profile, _ = cached_profile(tmp_path, cache)
    encode_all(profile, train_lmdb, cache)
    codec, dataset = codec_identity(profile.model), dataset_identity(train_lmdb)
    LatentCache(cache, codec, dataset)  # fits
    with pytest.raises(DatasetError, match=r"field 'codec' is 'pixel:None:None', expected 'wan-vae"):
        LatentCache(cache, "wan-vae:weights/x:512", dataset)
    with pytest.raises(DatasetError, match=r"field 'dataset'"):
        LatentCache(cache, codec, "0" * 64)
    with pytest.raises(DatasetError, match=r"no latents of episode 0, frames 0\.\.8"):
        LatentCache(cache, codec, dataset).get(0, 0, 9)
    # training longer than the cache was written for: the first clip it lacks is named
    longer = profile.model_copy(update={"pretrain": profile.pretrain.model_copy(update={"steps": 40})})
    with pytest.raises(DatasetError, match=r"latents: no latents of episode \d+, frames \d+\.\.\d+ \(written for other"):
        train(TrainJob(longer, longer.pretrain, train_lmdb, tmp_path / "longer", PRETRAIN_STAGE, build_world_model,
                       progress=False))
    shutil.rmtree(cache / "shard-1-of-2.lmdb")
    with pytest.raises(DatasetError, match=r"shard-0-of-2\.lmdb are not one complete set"):
        LatentCache(cache, codec, dataset)
    shutil.rmtree(cache)
    with pytest.raises(DatasetError, match=r"no latent cache here"):
        LatentCache(cache, codec, dataset)


def test_encode_latents_cli_refuses_a_profile_without_a_cache(tmp_path, train_lmdb):
    profile, path = cached_profile(tmp_path, tmp_path / "c")
    data = yaml.safe_load(path.read_text())
    data["model"]["latent_cache"] = None
    path.write_text(yaml.safe_dump(data))
    run = subprocess.run([sys.executable, "-m", "actionparty", "encode-latents", "--profile", str(path),
                          "--train-lmdb", str(train_lmdb), "--out", str(tmp_path / "c")],
                         env=subprocess_env(), capture_output=True, text=True, timeout=120)
    assert run.returncode != 0
    assert run.stderr.strip().splitlines()[-1].endswith("model.latent_cache is null (the profile's training encodes its clips)")
    assert not (tmp_path / "c").exists()


def test_wan_vae_latents_cached_equal_encoded_within_float_rounding():
    from wan_standins import tiny_diffusers_vae

    from actionparty.model.codecs import WanVaeCodec

    codec = WanVaeCodec(tiny_diffusers_vae())
    video = torch.rand(6, 3, 5, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    batched = codec.encode(video)  # as the cache encodes (a batch of clips)
    for i in range(len(video)):  # as a training step might (another batch composition)
        torch.testing.assert_close(codec.encode(video[i:i + 1])[0], batched[i], rtol=0, atol=1e-5)


def test_step_sampler_draws_without_replacement_at_any_size():
    small = StepBatchSampler(5000, 8, 3, 0, 10, slice(2, 6))
    for step in range(10):  # below the threshold: the head of a permutation, as always
        head = torch.randperm(5000, generator=step_generator(3, step, stream=1))[:8][2:6].tolist()
        assert small.batch(step) == head
    n = PERMUTATION_MAX_ITEMS * 16
    large = StepBatchSampler(n, 64, 0, 0, 200, slice(None))
    batches = [large.global_indices(step) for step in range(200)]
    assert all(len(set(b)) == 64 and all(0 <= i < n for i in b) for b in batches)
    assert batches == [large.global_indices(step) for step in range(200)]  # a function of (seed, step)
    drawn = torch.tensor(batches).flatten().float()
    assert abs(drawn.mean().item() / n - 0.5) < 0.02  # uniform over the clips


def test_a_damaged_record_is_named_in_one_line(tmp_path, train_lmdb):
    import lmdb

    from actionparty.data.latent_cache import clip_key
    from actionparty.data.lmdb_dataset import _seal

    cache = tmp_path / "latents"
    profile, _ = cached_profile(tmp_path, cache, shards=1)
    encode_all(profile, train_lmdb, cache)
    (episode, first, frames), second = shard_clips(profile, train_lmdb, 0, 1)[:2]
    env = lmdb.open(str(cache / "shard-0-of-1.lmdb"))
    with env.begin(write=True) as txn:
        txn.put(clip_key(episode, first, frames), _seal(b"\0" * 12))  # sealed, but not a clip's latents
        raw = bytearray(txn.get(clip_key(*second)))
        raw[-1] ^= 0xFF  # a flipped byte
        txn.put(clip_key(*second), bytes(raw))
    env.close()
    reader = LatentCache(cache, codec_identity(profile.model), dataset_identity(train_lmdb))
    with pytest.raises(DatasetError, match=r"record c/\d{6}/\d{4}/\d{2} has 12 bytes, expected \d+"):
        reader.get(episode, first, frames)
    with pytest.raises(DatasetError, match=r"failed its checksum"):
        reader.get(*second)
