"""DVC over the Snakemake DAG, for real (smoke profile, in a temporary git repo; docs/DVC.md).

The project's DVC files and the package source (a dep of the stages; the commands still run the
installed package) are copied next to a copy of the built smoke workspace (conftest.smoke_build,
`snakemake all`), and dvc.yaml's `vars` line is pointed at the smoke profile. The workspace is
recorded the way a cluster run is: `snakemake all`, `dvc add data`, `dvc commit`, git commit. Those
tests are `slow`; the first one here only reads dvc.yaml with DVC, for every profile.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from actionparty.config import load_profile
from conftest import REPO, copy_build, copy_workflow, subprocess_env

DVC_FILES = ("dvc.yaml", ".dvcignore", ".gitignore", "tools")
EDITED = "full"
# Everything upstream of the report: data generation, training, rollouts, evaluation.
UPSTREAM_RULES = {"episodes", "lmdb", "exp138_train", "finetune_variant", "rollout", "detectors", "metrics",
                  "oracle_metrics", "protocol_episodes", "protocol_lmdb", "protocol_rollout", "protocol_metrics",
                  "protocol_oracle_metrics"}
# The report stage forces these and lets Snakemake decide on the contact sheet (dvc.yaml).
REPORT_RULES = {"combined_metrics", "summary_metrics", "report_build", "report", "exp138_samples",
                "games_contact_sheet"}
# Not versioned by design: resume state of a training run (also in .dvcignore).
SCRATCH = re.compile(r"^results/.*/work/")


def eval_stages(profile) -> set[str]:
    """The stages that read a profile's eval: section (dvc.yaml's params)."""
    protocols = profile.protocols
    return {"detectors", "evaluate_oracle", "evaluate_baseline@pretrained_ar", "evaluate_baseline@static",
            *(f"evaluate@{v}" for v in profile.variants), *(f"evaluate_seeds@{r}" for r in profile.seed_runs),
            *(f"curve@{v}" for v in profile.finetune.curve_variants),
            *(f"protocol_evaluate@{p}-{m}" for p in protocols.names for m in protocols.models),
            *(f"protocol_oracle@{p}" for p in protocols.names)}


def point_vars_at(dvc_yaml: Path, profile: str) -> None:
    """dvc.yaml's `vars` line (the profile switch) -> params/<profile>.yaml."""
    dvc_yaml.write_text(re.sub(r"(?m)^  - params/\w+\.yaml$", f"  - params/{profile}.yaml", dvc_yaml.read_text(),
                               count=1))


@pytest.mark.parametrize("name", ["smoke", "tiny", "paper"])
def test_dvc_reads_each_profile_and_its_base(tmp_path, name):
    """DVC itself parses dvc.yaml with `vars` at the profile: its per-variant stages are the merged
    profile's, and every stage's params name the same sections of params/base.yaml and of the
    profile file, all present in both (DVC refuses a tracked key that a file lacks)."""
    from dvc.repo import Repo
    from dvc.dependency.param import ParamsDependency

    work = copy_workflow(tmp_path, ("dvc.yaml", "params"))
    point_vars_at(work / "dvc.yaml", name)
    Repo.init(str(work), no_scm=True)
    profile = load_profile(work / f"params/{name}.yaml")
    with Repo(str(work)) as repo:
        stages = {stage.name: stage for stage in repo.index.stages}
        for prefix, runs in [("finetune@", profile.variants), ("finetune_seeds@", profile.seed_runs),
                             ("rollouts@", profile.variants), ("evaluate@", profile.variants),
                             ("curve@", profile.finetune.curve_variants)]:
            assert sorted(s for s in stages if s.startswith(prefix)) == sorted(prefix + r for r in runs)
        for address, stage in stages.items():
            tracked = {}
            for dep in stage.deps:
                if isinstance(dep, ParamsDependency) and not dep.def_path.startswith("params/variants/"):
                    tracked[dep.def_path] = sorted(dep.params)
                    dep.get_hash()  # every tracked section is in the file
            assert address == "report" or tracked.keys() == {"params/base.yaml", f"params/{name}.yaml"}, address
            assert len({tuple(keys) for keys in tracked.values()}) <= 1, (address, tracked)


def sh(cwd: Path, env: dict, *cmd: str, timeout: int = 600) -> str:
    """Run a command; stdout and stderr in one stream, so DVC's and Snakemake's lines keep their order."""
    run = subprocess.run(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         timeout=timeout)
    assert run.returncode == 0, f"{' '.join(cmd)} failed:\n{run.stdout[-4000:]}"
    return run.stdout


def stages_run(output: str) -> list[str]:
    return re.findall(r"Running stage '([^']+)'", output)


def snakemake_jobs(output: str) -> list[tuple[str, dict]]:
    """(rule, wildcards) of every job Snakemake announced."""
    jobs, lines = [], output.splitlines()
    for i, line in enumerate(lines):
        m = re.fullmatch(r"(?:local)?rule (\w+):", line.strip())
        if not m:
            continue
        wildcards = {}
        for follow in lines[i + 1:]:
            if not follow.startswith("    "):
                break
            if follow.strip().startswith("wildcards:"):
                wildcards = dict(kv.split("=", 1) for kv in follow.split(":", 1)[1].strip().split(", "))
        jobs.append((m.group(1), wildcards))
    return jobs


def dvc_status(cwd: Path, env: dict) -> dict:
    return json.loads(sh(cwd, env, "dvc", "status", "--json").strip().splitlines()[-1])


def file_hashes(root: Path) -> dict[str, str]:
    hashes = {}
    for top in ("data", "results", "reports"):
        for path in sorted((root / top).rglob("*")):
            rel = path.relative_to(root).as_posix()
            if path.is_file() and not SCRATCH.match(rel):
                hashes[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return hashes


def git_commit(cwd: Path, env: dict, message: str) -> None:
    sh(cwd, env, "git", "add", "-A")
    sh(cwd, env, "git", "-c", "user.name=test", "-c", "user.email=test@example.org", "commit", "-q", "-m", message)


@pytest.fixture(scope="module")
def project(smoke_build, tmp_path_factory):
    """A git + DVC repo over the built smoke DAG, recorded (dvc.lock, data.dvc)."""
    env = subprocess_env()
    env["DVC_NO_ANALYTICS"] = "1"
    work = copy_build(smoke_build, tmp_path_factory.mktemp("dvc"))
    for name in DVC_FILES:
        (shutil.copytree if (REPO / name).is_dir() else shutil.copy)(REPO / name, work / name)
    shutil.copytree(REPO / "actionparty", work / "actionparty", ignore=shutil.ignore_patterns("__pycache__"))
    (work / ".dvc").mkdir()
    for name in (".dvc/config", ".dvc/.gitignore"):  # not the cache or local config of the checkout
        shutil.copy(REPO / name, work / name)
    point_vars_at(work / "dvc.yaml", "smoke")
    sh(work, env, "git", "init", "-q")
    sh(work, env, "dvc", "add", "data")
    sh(work, env, "dvc", "commit", "--force")
    ignored = subprocess.run(["git", "check-ignore", "-q", "results/metrics/full.json"], cwd=work, env=env)
    assert ignored.returncode == 1, "results/metrics/ must not be git-ignored (metrics JSON are cache: false, " \
                                    "committed to git): see the .gitignore in docs/DVC.md"
    git_commit(work, env, "workflow and smoke results")
    assert dvc_status(work, env) == {}
    return work, env


def edited_status(work: Path, env: dict, path: str, edit) -> set[str]:
    """The stages `dvc status` calls stale after ``edit`` of the YAML file ``path``; the file is put back."""
    original = (work / path).read_text()
    data = yaml.safe_load(original)
    edit(data)
    (work / path).write_text(yaml.safe_dump(data, sort_keys=False))
    try:
        return set(dvc_status(work, env))
    finally:
        (work / path).write_text(original)


@pytest.mark.slow
def test_an_edit_of_the_base_or_the_profile_makes_the_stages_that_read_it_stale(project):
    work, env = project
    expected = eval_stages(load_profile(work / "params/smoke.yaml"))
    base_eval = edited_status(work, env, "params/base.yaml", lambda d: d["eval"].update(psnr_max_db=90.0))
    assert base_eval == expected
    assert edited_status(work, env, "params/smoke.yaml", lambda d: d["eval"].update(lr=0.004)) == expected
    assert edited_status(work, env, "params/base.yaml", lambda d: d["pretrain"].update(grad_clip=0.5)) == {"pretrain"}
    assert dvc_status(work, env) == {}


@pytest.fixture(scope="module")
def variant_rerun(project):
    """Edit a parameter of one variant (a param of its finetune stage); `dvc status`, then `dvc repro`."""
    work, env = project
    path = work / f"params/variants/{EDITED}.yaml"
    variant = yaml.safe_load(path.read_text())
    variant["conditioning"]["spatial_rope"] = not variant["conditioning"]["spatial_rope"]
    path.write_text(yaml.safe_dump(variant, sort_keys=False))
    status = dvc_status(work, env)
    return work, env, status, sh(work, env, "dvc", "repro")


@pytest.mark.slow
def test_variant_edit_reruns_only_that_variant_and_the_report(variant_rerun):
    work, env, status, out = variant_rerun
    # The variant and its seed run (the smoke profile repeats `full` as full-s1) are stale.
    seed_run = f"{EDITED}-s1"
    assert set(status) == {f"finetune@{EDITED}", f"finetune_seeds@{seed_run}"}
    assert sorted(stages_run(out)) == sorted([
        f"finetune@{EDITED}", f"rollouts@{EDITED}", f"evaluate@{EDITED}", f"curve@{EDITED}",
        f"finetune_seeds@{seed_run}", f"rollouts_seeds@{seed_run}", f"evaluate_seeds@{seed_run}", "report",
        *(f"protocol_{stage}@{protocol}-{EDITED}" for stage in ("rollouts", "evaluate")
          for protocol in ("one_mover", "uniform"))])
    jobs = snakemake_jobs(out)
    rules = {rule for rule, _ in jobs}
    assert rules - REPORT_RULES == {"finetune_variant", "rollout", "metrics", "curve", "protocol_rollout",
                                    "protocol_metrics"}, rules
    assert "games_contact_sheet" not in rules  # params/games.yaml did not change
    for rule, wildcards in jobs:
        if rule in {"finetune_variant", "rollout", "metrics", "curve", "protocol_rollout", "protocol_metrics"}:
            assert wildcards.get("variant", wildcards.get("model")) in (EDITED, seed_run), (rule, wildcards)
    assert sum(rule == "rollout" for rule, _ in jobs) == 4  # h4 and h4_swap of the variant and its seed run
    assert dvc_status(work, env) == {}
    # The effect shows in `dvc metrics diff` of the flat summary: the edited variant's and its
    # seed run's numbers, nobody else's.
    diff = json.loads(sh(work, env, "dvc", "metrics", "diff", "--json"))
    changed = {key.split(".")[0] for key, change in diff.get("results/metrics/summary.json", {}).items()
               if change.get("diff") not in (0, None)}
    assert changed and changed <= {EDITED, seed_run}, diff


@pytest.mark.slow
def test_rerun_after_a_parameter_change_starts_training_afresh(variant_rerun):
    work, *_ = variant_rerun
    assert "resuming from" not in (work / f"logs/finetune/{EDITED}.log").read_text()


def lock_outs(text: str, stage: str) -> dict[str, str]:
    """{path: md5} of a stage's outs in a dvc.lock."""
    return {out["path"]: out["md5"] for out in yaml.safe_load(text)["stages"][stage]["outs"]}


@pytest.fixture(scope="module")
def fresh_clone(project, tmp_path_factory):
    """A `git clone` of the recorded project (no remote yet): no data/, no DVC cache, no outputs
    but the metrics JSON in git; then the dataset rebuilt as `make repro` does and one stage run."""
    work, env = project
    clone = tmp_path_factory.mktemp("clone") / "project"
    sh(work, env, "git", "clone", "-q", str(work), str(clone))
    before = dvc_status(clone, env)
    rebuilt = sh(clone, env, "python", "tools/dvc_snakemake.py", "data", "--regenerate")
    after_data = dvc_status(clone, env)
    repro = sh(clone, env, "dvc", "repro", "--single-item", "pretrain")
    return clone, env, before, rebuilt, after_data, repro


@pytest.mark.slow
def test_a_fresh_clone_rebuilds_the_dataset_to_the_committed_hash(fresh_clone):
    clone, env, before, rebuilt, after_data, _ = fresh_clone
    # `dvc status` in the clone names what is missing: the dataset and every stage's outputs.
    assert "data.dvc" in before and {"pretrain", f"finetune@{EDITED}", "report"} <= set(before), before
    # Episodes and LMDBs are byte-reproducible: Snakemake's rebuild has the committed data.dvc hash.
    assert "regenerated data/ matches data.dvc" in rebuilt
    assert "data.dvc" not in after_data and "pretrain" in after_data
    # A data/ that differs from the record is refused, never overwritten.
    (clone / "data/lmdb/extra.txt").write_text("edit")
    refused = subprocess.run(["python", "tools/dvc_snakemake.py", "data"], cwd=clone, env=env,
                             capture_output=True, text=True)
    (clone / "data/lmdb/extra.txt").unlink()
    assert refused.returncode == 2 and "data/ differs from data.dvc" in refused.stderr, refused.stderr


@pytest.mark.slow
def test_a_fresh_clone_reproduces_a_stage_byte_for_byte(fresh_clone):
    clone, env, _, _, _, repro = fresh_clone
    assert stages_run(repro) == ["pretrain"]
    committed = sh(clone, env, "git", "show", "HEAD:dvc.lock")
    # The exp-138 checkpoint trained in the clone has the hash recorded by the original run;
    # only the training log differs (it records the throughput, tokens_per_s).
    assert lock_outs((clone / "dvc.lock").read_text(), "pretrain")["results/exp-138/checkpoint.pt"] == \
        lock_outs(committed, "pretrain")["results/exp-138/checkpoint.pt"]
    assert "pretrain" not in dvc_status(clone, env)


@pytest.fixture(scope="module")
def pulled(project, tmp_path_factory):
    """Commit, push to a local remote, delete cache and outputs as in a fresh clone, pull."""
    work, env = project
    remote = tmp_path_factory.mktemp("remote")
    sh(work, env, "dvc", "remote", "add", "-d", "store", str(remote))
    git_commit(work, env, "results and remote")
    sh(work, env, "dvc", "push")
    before = file_hashes(work)
    for name in (".dvc/cache", "data", "results", "reports", ".snakemake", "logs", "benchmarks"):
        shutil.rmtree(work / name, ignore_errors=True)
    sh(work, env, "git", "checkout", "--", ".")  # the metrics JSON (cache: false) live in git
    sh(work, env, "dvc", "pull")
    return work, env, before, file_hashes(work)


@pytest.mark.slow
def test_pull_restores_data_checkpoints_and_results_byte_identical(pulled):
    work, env, before, after = pulled
    assert any(p.startswith("data/lmdb/train.lmdb/") for p in before)
    assert f"results/finetune/{EDITED}/checkpoint.pt" in before and "reports/index.md" in before
    assert sorted(after) == sorted(before)
    assert after == before
    assert dvc_status(work, env) == {}
    assert "Data and pipelines are up to date" in sh(work, env, "dvc", "repro")


@pytest.mark.slow
def test_report_rebuilds_after_pull_without_training(pulled):
    work, env, _, _ = pulled
    out = sh(work, env, "dvc", "repro", "--force", "--single-item", "report")
    assert stages_run(out) == ["report"]
    rules = {rule for rule, _ in snakemake_jobs(out)}
    assert not rules & UPSTREAM_RULES, rules
    assert {"report_build", "combined_metrics"} <= rules <= REPORT_RULES - {"games_contact_sheet"}, rules
    assert (work / "reports/index.md").is_file() and (work / "reports/tables/main.md").is_file()
    assert dvc_status(work, env) == {}
    # Plain Snakemake after a pull: `touch` marks the pulled outputs up to date, nothing reruns.
    sh(work, env, "python", "tools/dvc_snakemake.py", "touch", "smoke")
    dry = sh(work, env, "snakemake", "all", "-n", "--cores", "2", "--configfile", "params/smoke.yaml")
    assert "Nothing to be done" in dry


