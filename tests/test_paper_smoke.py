"""The paper's code paths end to end: params/paper_smoke.yaml (params/paper.yaml at toy sizes)
through the real Snakemake DAG on CPU, from stand-in weight files in the official Wan2.1 release
layout: Wan VAE codec, umT5 text with its embeddings cached once, initialisation from
diffusion_pytorch_model.safetensors, the same rules."""

from __future__ import annotations

import json
import math
import re
import subprocess

import numpy as np
import pytest
import yaml

from actionparty.config import load_profile
from conftest import REPO, copy_workflow, flat_keys, subprocess_env

# What paper_smoke may change from paper: counts, sizes and where jobs run; never the method.
SIZE_KEYS = ("profile", "games", "episodes.", "lmdb.", "model.size", "model.resolution", "pretrain.", "finetune.",
             "variants", "seed_runs", "rollout.", "eval.", "resources.", "protocols.")


def test_paper_smoke_differs_from_paper_only_in_sizes():
    paper = flat_keys(load_profile(REPO / "params/paper.yaml").model_dump(mode="json"))
    smoke = flat_keys(load_profile(REPO / "params/paper_smoke.yaml").model_dump(mode="json"))
    assert set(paper) == set(smoke)
    changed = sorted(k for k in paper if paper[k] != smoke[k])
    assert changed and all(k.startswith(SIZE_KEYS) for k in changed), [k for k in changed if not k.startswith(SIZE_KEYS)]
    for key in ("model.codec", "model.text_encoder", "model.text_cache", "model.latent_cache", "model.init_checkpoint",
                "model.precision",
                "model.prediction", "model.residual_prior", "model.chunk_frames"):
        assert smoke[key] == paper[key], key


@pytest.fixture(scope="module")
def paper_smoke(tmp_path_factory):
    from wan_standins import paper_shaped_standins, write_wan_release

    work = copy_workflow(tmp_path_factory.mktemp("paper_smoke"))
    standins = paper_shaped_standins()
    write_wan_release(work / "weights/Wan2.1-T2V-1.3B", **standins)
    run = subprocess.run(["snakemake", "all", "--cores", "2", "--configfile", "params/paper_smoke.yaml"], cwd=work,
                         env=subprocess_env(), capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    return work, run.stdout + run.stderr, len(standins["dit"].state_dict())


@pytest.mark.slow
def test_paper_smoke_dag_runs_end_to_end_on_the_official_layout(paper_smoke):
    work, log, dit_tensors = paper_smoke
    profile = load_profile(work / "params/paper_smoke.yaml")
    assert "steps (100%) done" in log
    # exp-138 starts from every tensor of the release's DiT file
    assert f"weights/Wan2.1-T2V-1.3B (official keys): loaded {dit_tensors} tensors" in (work / "logs/pretrain.log").read_text()
    # umT5 ran once, in its own job, into the cache every model-building job read
    assert len(re.findall(r"Rule: text_embeddings\)", log)) == 1
    from safetensors import safe_open

    with safe_open(str(work / profile.model.text_cache), framework="pt") as f:
        assert f.metadata()["__encoder__"] == "umt5:512:weights/Wan2.1-T2V-1.3B/google/umt5-xxl"
        assert f.get_tensor("coins/emb").shape == (512, 4096)
    # the Wan VAE encoded the training clips once, in the profile's shards, and every run read them
    shards = profile.resources.latent_shards
    assert len(re.findall(r"Rule: latents\)", log)) == shards
    assert sorted(p.name for p in (work / profile.model.latent_cache).iterdir()) == [
        f"shard-{k}-of-{shards}.lmdb" for k in range(shards)]
    for run_log in ["logs/pretrain.log", *(f"logs/finetune/{run}.log" for run in [*profile.variants, *profile.seed_runs])]:
        assert f"latents are read from {shards} shards (nothing is encoded)" in (work / run_log).read_text(), run_log
    # every model's rollout went through the Wan VAE and back to game frames; metrics are finite
    windows = len(profile.games) * profile.rollout.clips_per_game
    for model in [*profile.variants, "pretrained_ar", "static"]:
        frames = np.load(work / f"results/rollouts/{model}/h4.npz")["frames"]
        assert frames.shape == (windows, 5, profile.canvas_px, profile.canvas_px, 3), model
        overall = json.loads((work / f"results/metrics/{model}.json").read_text())["horizons"]["h4"]["overall"]
        assert overall["windows"] == windows
        assert all(math.isfinite(overall[k]) for k in ("MA", "SP", "PSNR", "SSIM", "FD")), model
    assert (work / "results/finetune/full/curve.json").is_file()
    assert (work / "reports/index.html").is_file()
    summary = yaml.safe_load((work / "results/metrics/summary.json").read_text())
    assert set(profile.variants) <= set(summary)
