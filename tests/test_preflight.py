"""``actionparty preflight`` and ``validate``: stand-in weights of both layouts for a paper-shaped
profile (the paper's codec, text encoder and resources; a tiny DiT), and the problems it names."""

from __future__ import annotations

import pytest
from wan_standins import (
    PAPER_SHAPED,
    paper_profile,
    paper_shaped_standins,
    tiny_dit,
    write_diffusers_pipeline,
    write_wan_release,
)

from actionparty.cli import main
from actionparty.config import load_profile
from actionparty.preflight import _estimates, check_gpus, format_table, preflight
from actionparty.weights import check_weight_paths

H100S = [("NVIDIA H100 80GB HBM3", 80 * 10**9)] * 8


@pytest.fixture(scope="module")
def standins():
    return paper_shaped_standins()


def by_item(checks):
    return {c.item: c for c in checks}


def test_release_layout_passes(repo, tmp_path, standins, capsys):
    weights = write_wan_release(tmp_path / "Wan2.1-T2V-1.3B", **standins)
    path = paper_profile(repo, tmp_path, weights)
    checks = by_item(preflight(load_profile(path), tmp_path / "data", gpus=H100S))
    for key in ("model.init_checkpoint", "model.vae_path", "model.text_path"):
        assert checks[key].status == "ok" and checks[f"{key} keys"].status == "ok", checks[f"{key} keys"].detail
    assert "release layout, diffusion_pytorch_model.safetensors" in checks["model.init_checkpoint"].detail
    assert "float32" in checks["model.init_checkpoint"].detail and "bfloat16" in checks["model.text_path"].detail
    assert checks["model.init_checkpoint config"].status == "ok"
    assert checks["model.vae_path"].detail.count("Wan keys") == 1 and checks["model.vae_path shape"].status == "ok"
    assert checks["model.text_path tokenizer"].status == "ok" and checks["model.text_path width"].status == "ok"
    assert checks["cuda:7"].status == "ok" and "runtime pretrain" in checks
    assert main(["validate", "--profile", str(path)]) == 0
    capsys.readouterr()


def test_the_text_cache_is_absent_there_or_stale(repo, tmp_path, standins):
    from actionparty.model.factory import embed_texts

    weights = write_wan_release(tmp_path / "Wan2.1-T2V-1.3B", **standins)
    profile = load_profile(paper_profile(repo, tmp_path, weights))
    check = by_item(preflight(profile, tmp_path / "data", gpus=H100S))["model.text_cache"]
    assert check.status == "info" and "absent; rule text_embeddings writes it" in check.detail
    embed_texts(profile, profile.model.text_cache)
    check = by_item(preflight(profile, tmp_path / "data", gpus=H100S))["model.text_cache"]
    assert check.status == "ok" and "2 games, width 4096" in check.detail
    other = profile.model_copy(update={"games": ["coins", "clean_up", "territory_rooms"]})
    check = by_item(preflight(other, tmp_path / "data", gpus=H100S))["model.text_cache"]
    assert check.status == "problem" and "no embedding of 'territory_rooms'" in check.detail


def test_diffusers_layout_passes(repo, tmp_path, standins):
    weights = write_diffusers_pipeline(tmp_path / "Wan2.1-T2V-1.3B-Diffusers", **standins)
    checks = preflight(load_profile(paper_profile(repo, tmp_path, weights, release=False)), tmp_path, gpus=H100S)
    assert [c for c in checks if c.status == "problem"] == []
    table = format_table(checks)
    assert "diffusers layout" in table and "diffusers folder" in table and "vs UMT5EncoderModel: all" in table


def test_missing_and_wrong_files_are_named_one_line_each(repo, tmp_path, standins, capsys):
    weights = write_wan_release(tmp_path / "Wan2.1-T2V-1.3B", skip=("Wan2.1_VAE.pth", "models_t5_umt5-xxl-enc-bf16.pth"),
                                **standins)
    path = paper_profile(repo, tmp_path, weights, text_len=256)  # the DiT's text_len differs from config.json
    with pytest.raises(SystemExit) as exit_:
        main(["preflight", "--profile", str(path), "--data", str(tmp_path / "data"), "--require-gpus"])
    assert exit_.value.code == 1
    problems = [line for line in capsys.readouterr().out.splitlines() if line.startswith("problem: ")]
    assert len(problems) == 4, problems
    assert f"problem: model.vae_path: {weights}/Wan2.1_VAE.pth not found" in problems
    assert any(p.startswith("problem: model.text_path: umt5: ") and "no models_t5_umt5-xxl-enc-bf16.pth" in p
               for p in problems)
    assert any("model.init_checkpoint config" in p and "text_len 512 (profile 256)" in p for p in problems)
    assert any(p.startswith("problem: visible GPUs: none visible here") for p in problems)
    assert main(["validate", "--profile", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"model.vae_path = {weights}/Wan2.1_VAE.pth not found" in err


def test_coverage_names_missing_and_reshaped_tensors(repo, tmp_path, standins):
    other = tiny_dit(**{**PAPER_SHAPED, "num_layers": 1, "ffn_dim": 96})
    weights = write_wan_release(tmp_path / "w", **{**standins, "dit": other})
    checks = by_item(preflight(load_profile(paper_profile(repo, tmp_path, weights)), tmp_path, gpus=H100S[:1]))
    detail = checks["model.init_checkpoint keys"].detail
    assert checks["model.init_checkpoint keys"].status == "problem"
    assert "missing (first blocks.1." in detail and "of another shape (first blocks.0.ffn.0.bias: (96,), model (128,))" in detail
    assert checks["visible GPUs"].status == "problem"  # 1 visible, 8 asked for


def test_gpu_memory_against_the_paper_estimate(repo):
    profile = load_profile(repo / "params/paper.yaml")  # wan-1.3b: 43.6 GB per GPU when finetuning
    estimates = _estimates(profile)
    small = by_item(check_gpus(profile, estimates, [("NVIDIA L4", 24 * 10**9)] * 8, require_gpus=False))
    assert small["cuda:0"].status == "problem" and "24.0 GB; estimate 43.6 GB per GPU" in small["cuda:0"].detail
    assert by_item(check_gpus(profile, estimates, H100S, require_gpus=False))["cuda:0"].status == "ok"
    assert by_item(check_gpus(profile, estimates, [], require_gpus=False))["visible GPUs"].status == "warn"


def test_rollout_jobs_against_the_paper_estimate(repo):
    from actionparty.config import load_variant
    from actionparty.preflight import check_slurm
    from actionparty.train.estimate import rollout_estimate

    profile = load_profile(repo / "params/paper.yaml")
    e = rollout_estimate(profile, load_variant("full"), "full")
    # 46 games x 64 windows, 20 frames, 20 Euler steps + state pass + cache pass, 1,024 + 8 tokens.
    assert (e.windows, e.horizon, e.passes_per_step, e.tokens_per_frame, e.window_frames) == (2944, 20, 22, 1032, 4)
    assert 3.5 < e.hours_at_40pct_h100 < 5 and 30 < e.host_memory_gb < 40
    assert e.hours_at_40pct_h100 * 60 <= profile.resources.rollout_runtime_min
    assert e.host_memory_gb * 1e3 <= profile.resources.rollout_mem_mb
    checks = by_item(check_slurm(profile, _estimates(profile)))
    assert checks["runtime rollout:full"].status == checks["memory rollout:full"].status == "ok"
    short = profile.model_copy(update={"resources": profile.resources.model_copy(
        update={"rollout_runtime_min": 120, "rollout_mem_mb": 16000})})
    checks = by_item(check_slurm(short, _estimates(short)))
    assert checks["runtime rollout:full"].status == checks["memory rollout:full"].status == "problem"
    assert "rollout_runtime_min 120" in checks["runtime rollout:full"].detail


def test_check_weight_paths_needs_no_torch_and_names_the_key(repo):
    profile = load_profile(repo / "params/paper.yaml")
    with pytest.raises(Exception, match=r"model.init_checkpoint = weights/Wan2.1-T2V-1.3B not found"):
        check_weight_paths(profile)
    check_weight_paths(load_profile(repo / "params/tiny.yaml"))  # pixel codec, tiny text: nothing to find
