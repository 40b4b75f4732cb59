"""The real Snakemake DAG on the smoke profile (no mocks): the whole DAG end to end."""

from __future__ import annotations

import re
import subprocess

import pytest
import yaml

from actionparty.config import SPLITS, load_profile
from actionparty.data.lmdb_dataset import ClipDataset
from conftest import copy_build, copy_workflow, job_counts, subprocess_env

def snakemake(cwd, env, target, *args, timeout=600):
    # Targets go first: --configfile takes every following word as a file.
    return subprocess.run(["snakemake", target, "--cores", "2", *args, "--configfile", "params/smoke.yaml"],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def smoke_data(smoke_build, tmp_path_factory):
    """This module's copy of the smoke DAG built by `snakemake all` (conftest.smoke_build)."""
    return copy_build(smoke_build, tmp_path_factory.mktemp("smoke")), subprocess_env()


@pytest.mark.slow
def test_smoke_dag_runs_for_real(smoke_data):
    work, _ = smoke_data
    profile = load_profile(work / "params/smoke.yaml")
    for split in SPLITS:
        ds = ClipDataset(work / f"data/lmdb/{split}.lmdb", clip_steps=1, expect_canvas_px=profile.canvas_px)
        assert ds.games == list(profile.games)
        expected = getattr(profile.episodes.per_split, split) * len(profile.games)
        assert len(ds.meta["episodes"]) == expected
        for game in profile.games:
            assert (work / f"logs/episodes/{split}/{game}.log").is_file()
            assert (work / f"benchmarks/runs/episodes/{split}/{game}.tsv").is_file()
    # Every model of the profile went through finetuning (variants), rollout and evaluation.
    import json

    models = list(profile.variants) + list(profile.seed_runs) + ["pretrained_ar", "static"]
    for variant in profile.variants + profile.seed_runs:
        assert (work / f"results/finetune/{variant}/checkpoint.pt").is_file()
    # Learning curves: one point per snapshot (every curve_every steps) and the final checkpoint,
    # for finetune.curve_variants only; the other finetunes keep no snapshots.
    steps = profile.finetune.steps
    assert set(profile.finetune.curve_variants) < set(profile.variants)
    for run in profile.variants + profile.seed_runs:
        kept = sorted(p.name for p in (work / f"results/finetune/{run}/snapshots").glob("step_*.pt"))
        assert bool(kept) == (run in profile.finetune.curve_variants), (run, kept)
        assert (work / f"results/finetune/{run}/curve.json").is_file() == (run in profile.finetune.curve_variants)
    for variant in profile.finetune.curve_variants:
        curve = json.loads((work / f"results/finetune/{variant}/curve.json").read_text())
        assert curve["steps"] == list(range(profile.finetune.curve_every, steps, profile.finetune.curve_every)) + [steps]
        assert len(curve["MA"]) == len(curve["BA"]) == len(curve["steps"])
        assert all(v is None or 0 <= v <= 1 for v in curve["MA"] + curve["BA"])
    for model in models + ["oracle"]:
        metrics = json.loads((work / f"results/metrics/{model}.json").read_text())
        assert set(metrics["horizons"]) == {f"h{h}" for h in profile.rollout.horizons}
    combined = json.loads((work / "results/metrics/combined.json").read_text())
    assert {row["variant"] for row in combined["rows"]} == set(models) | {"oracle"}
    assert any((work / "reports/figures/samples/exp-138").glob("*.gif"))
    # The paper's tables and figures, and Snakemake's HTML report with their captions.
    for table in ("main", "ablation", "per_game", "per_player_count", "per_cause", "seeds"):
        for ext in ("md", "csv", "tex"):
            assert (work / f"reports/tables/{table}.{ext}").stat().st_size > 0
    assert (work / "reports/figures/learning_curves.png").is_file()
    assert "ActionParty" in (work / "reports/tables/main.md").read_text()
    html = subprocess.run(["snakemake", "--report", "reports/report.html", "--configfile", "params/smoke.yaml"],
                          cwd=work, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert html.returncode == 0, html.stderr[-2000:]
    assert "action following" in (work / "reports/report.html").read_text()
    # Lua's stdout noise must not reach the logs of our commands.
    log = (work / "logs/episodes/train/clean_up.log").read_text()
    assert "episodes" in log and "WARNING" not in log.upper().replace("WARNINGS", "")


@pytest.mark.slow
def test_rerun_is_a_no_op_and_game_edit_reruns_only_that_game(smoke_data):
    work, env = smoke_data
    dry = snakemake(work, env, "data", "-n")
    assert dry.returncode == 0 and "Nothing to be done" in dry.stdout + dry.stderr
    # Editing one game's catalogue entry reruns that game's episodes (3 splits and the test split
    # again under each extra protocol) and the LMDBs only.
    cat = work / "params/games.yaml"
    data = yaml.safe_load(cat.read_text())
    data["games"]["coins"]["description"] += " Edited."
    cat.write_text(yaml.safe_dump(data, sort_keys=False))
    dry = snakemake(work, env, "data", "-n")
    assert dry.returncode == 0, dry.stderr[-2000:]
    assert job_counts(dry.stdout + dry.stderr) == {"data": 1, "episodes": 3, "lmdb": 3, "protocol_episodes": 2,
                                                   "protocol_lmdb": 2, "total": 11}


def test_dry_run_of_every_profile_lists_the_data_rules(repo, venv_env, tmp_path):
    work = copy_workflow(tmp_path)
    for profile in ("smoke", "tiny", "paper"):
        run = subprocess.run(["snakemake", "all", "-n", "--configfile", f"params/{profile}.yaml"], cwd=work,
                             env=venv_env, capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr[-2000:]
        assert "rule episodes" in run.stdout and "rule lmdb" in run.stdout


def _slurm_plan(tmp_path, profile_file: str, env: dict):
    """The dry run of ``snakemake all`` through the generic SLURM profile on a copy of the
    workflow: (the finished process, its planned jobs by rule)."""
    work = copy_workflow(tmp_path)
    run = subprocess.run(["snakemake", "all", "-n", "--cores", "256", "--profile", "profiles/slurm-generic",
                          "--configfile", profile_file], cwd=work, env=env, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    return run, _planned_jobs(run.stdout)


def _planned_jobs(text: str) -> dict[str, dict]:
    """{rule: {"threads": n, resource: value}} of a dry run's printed plan (one entry per rule)."""
    plan = {}
    for block in re.split(r"\n(?=(?:local)?rule )", text):
        rule = re.match(r"(?:local)?rule (\w+):", block)
        if not rule:
            continue
        threads = re.search(r"^\s+threads: (\d+)", block, re.M)
        resources = re.search(r"^\s+resources: (.*)$", block, re.M)
        job = {"threads": int(threads.group(1)) if threads else 1}
        for item in resources.group(1).split(", ") if resources else []:
            key, _, value = item.partition("=")
            job[key] = int(value) if value.isdigit() else value
        plan.setdefault(rule.group(1), job)
    return plan


def test_paper_jobs_ask_slurm_for_what_they_use(repo, venv_env, tmp_path):
    """Per-rule sbatch sizes of the paper DAG (the generic SLURM profile's plan): training asks
    for every process's threads and loader workers, one-GPU rollout jobs for a GPU and the host
    memory of their checkpoint, for longer than the estimate; the detector and metrics jobs for one
    GPU and their own memory and threads."""
    from actionparty.train.estimate import rollout_estimate
    from actionparty.variants import load_variant

    profile = load_profile(repo / "params/paper.yaml")
    r = profile.resources
    run, plan = _slurm_plan(tmp_path, "params/paper.yaml", venv_env)
    for rule, loader in (("exp138_train", profile.pretrain.num_workers), ("finetune_variant", profile.finetune.num_workers)):
        job = plan[rule]
        assert (job["gpu"], job["threads"], job["mem_mb"]) == (r.train_gpus, r.train_threads, r.train_mem_mb)
        assert job["cpus_per_task"] == r.train_gpus * (r.train_threads + loader) == 96
    hours = max(rollout_estimate(profile, load_variant(v), v).hours_at_40pct_h100 for v in ("full", "paper"))
    for rule in ("rollout", "protocol_rollout", "curve", "exp138_samples"):
        job = plan[rule]
        assert (job["gpu"], job["mem_mb"], job["cpus_per_task"]) == (1, r.rollout_mem_mb, r.train_threads), rule
        if rule != "exp138_samples":  # a few sample clips
            assert job["runtime"] == r.rollout_runtime_min >= 60 * hours, rule
    for rule in ("detectors", "metrics", "oracle_metrics", "protocol_metrics", "protocol_oracle_metrics"):
        job = plan[rule]
        assert (job["gpu"], job["mem_mb"], job["cpus_per_task"]) == (1, r.eval_mem_mb, job["threads"]), rule
    assert plan["episodes"]["cpus_per_task"] == plan["episodes"]["threads"] == r.episode_workers
    # umT5 runs once, in its own one-GPU job; every job that builds a model reads its cache
    assert plan["text_embeddings"]["gpu"] == 1 and run.stdout.count("rule text_embeddings:") == 1
    for rule in ("exp138_train", "exp138_samples", "finetune_variant", "rollout", "protocol_rollout", "curve"):
        block = re.search(rf"\nrule {rule}:\n(.*?)\n\n", run.stdout, re.S).group(1)
        inputs = re.search(r"^\s+input: (.*)$", block, re.M).group(1)
        assert profile.model.text_cache in inputs.split(", "), (rule, inputs)


def test_cpu_profile_jobs_ask_slurm_for_no_gpu(repo, venv_env, tmp_path):
    """Without training GPUs (resources.train_gpus 0, the tiny profile) no job asks for a GPU: the
    GPU jobs' ``gpu`` follows train_gpus, evaluation's included."""
    assert load_profile(repo / "params/tiny.yaml").resources.train_gpus == 0
    _, plan = _slurm_plan(tmp_path, "params/tiny.yaml", venv_env)
    for rule in ("detectors", "metrics", "oracle_metrics", "protocol_metrics", "protocol_oracle_metrics", "rollout",
                 "curve"):
        assert plan[rule]["gpu"] == 0, rule
    assert all(job["gpu"] == 0 for job in plan.values()), {r: j["gpu"] for r, j in plan.items() if j["gpu"]}


def test_config_override_outside_the_profile_file_is_refused(repo, venv_env, tmp_path):
    work = copy_workflow(tmp_path)
    run = subprocess.run(["snakemake", "-n", "--configfile", "params/smoke.yaml", "--config", "canvas_cells=11"],
                         cwd=work, env=venv_env, capture_output=True, text=True, timeout=300)
    assert run.returncode != 0 and "differs from params/smoke.yaml" in run.stdout + run.stderr
