"""The smoke `data` DAG through SLURM, for real: a private one-node cluster (tools/slurm_local.sh)
runs every job that `snakemake --profile profiles/slurm` submits with sbatch.

Skipped, with the script's reason, where the cluster cannot start (no apt, not root, daemons refused);
deselect with `-m "not slurm"`. Determinism: episodes are byte-reproducible for a seed, so the SLURM
run's data files (episodes and LMDBs) equal a local run's byte for byte.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import time
from pathlib import Path

import pytest

from actionparty.config import SPLITS, load_profile
from actionparty.data.lmdb_dataset import ClipDataset
from conftest import REPO, copy_workflow, job_counts, subprocess_env

pytestmark = pytest.mark.slurm

SCRIPT = REPO / "tools/slurm_local.sh"
SKIP_CODE = 77
SMOKE = ("--configfile", "params/smoke.yaml")
PLUGINS = ("snakemake_executor_plugin_slurm", "snakemake_executor_plugin_cluster_generic")
SUBMITTED = re.compile(r"Job (\d+) has been submitted with SLURM jobid (\d+) \(log: (.+?)\)\.")


def run(cmd, cwd, env, timeout):
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def stop_cluster(state: Path) -> None:
    subprocess.run(["bash", str(SCRIPT), "stop", str(state)], capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """(state dir, environment for snakemake/sbatch, seconds to start); daemons stopped at teardown."""
    missing = [name for name in PLUGINS if importlib.util.find_spec(name) is None]
    if missing:  # an install defect, not a property of the machine: fail, do not skip
        pytest.fail(f"{', '.join(missing)} not installed: they belong to the project's dependencies")
    state = tmp_path_factory.mktemp("slurm")
    t0 = time.monotonic()
    try:
        start = run(["bash", str(SCRIPT), "start", str(state)], REPO, None, timeout=900)
    except BaseException:
        stop_cluster(state)
        raise
    start_s = time.monotonic() - t0
    if start.returncode == SKIP_CODE:
        stop_cluster(state)
        lines = start.stderr.strip().splitlines() or ["(no reason given)"]
        pytest.skip(f"local SLURM cluster cannot run here: {lines[-1]}")
    if start.returncode != 0:
        stop_cluster(state)
        pytest.fail(f"tools/slurm_local.sh start failed ({start.returncode}):\n{start.stderr[-3000:]}")
    env = subprocess_env()
    # Only our cluster: no outer allocation, no site defaults for partition/account.
    for key in list(env):
        if key.startswith(("SLURM_", "SBATCH_", "SRUN_", "SNAKEMAKE_PROFILE")):
            del env[key]
    env["SLURM_CONF"] = str(state / "slurm.conf")
    try:
        yield state, env, start_s
    finally:
        stop_cluster(state)


@pytest.fixture(scope="module")
def runs(cluster, smoke_build, tmp_path_factory):
    """The smoke `data` target through SLURM in a fresh copy of the workflow; the local run to
    compare it with is the smoke DAG built by conftest.smoke_build."""
    state, env, start_s = cluster
    work = copy_workflow(tmp_path_factory.mktemp("slurm_smoke"))
    dry = run(["snakemake", "data", "-n", *SMOKE], work, env, timeout=300)
    assert dry.returncode == 0, dry.stderr[-3000:]
    expected = job_counts(dry.stdout + dry.stderr)
    expected.pop("total")
    expected.pop("data")  # the target rule only collects inputs: Snakemake itself "runs" it
    cmd = ["snakemake", "data", "--profile", "profiles/slurm", *SMOKE,
           "--slurm-status-command", "squeue",  # no slurmdbd here: sacct is disabled
           "--slurm-init-seconds-before-status-checks", "2", "--seconds-between-status-checks", "2",
           "--slurm-keep-successful-logs", "--latency-wait", "5", "--retries", "0"]
    t0 = time.monotonic()
    slurm = run(cmd, work, env, timeout=900)
    slurm_s = time.monotonic() - t0
    output = slurm.stdout + slurm.stderr
    (state / "snakemake_slurm.log").write_text(output)
    assert slurm.returncode == 0, output[-4000:]
    print(f"\nslurm: cluster start {start_s:.1f}s, slurm run {slurm_s:.1f}s, "
          f"{len(SUBMITTED.findall(output))} sbatch jobs")
    return smoke_build, work, output, expected


def test_every_job_went_through_sbatch(cluster, runs):
    state, _, _ = cluster
    _, work, output, expected = runs
    submitted = SUBMITTED.findall(output)
    per_rule: dict[str, int] = {}
    for _, _, log in submitted:
        rule = re.search(r"/rule_([^/]+)/", log).group(1)
        per_rule[rule] = per_rule.get(rule, 0) + 1
    assert per_rule == expected, f"sbatch submissions per rule {per_rule} != jobs of the DAG {expected}"
    slurm_ids = [int(sid) for _, sid, _ in submitted]
    assert len(set(slurm_ids)) == len(slurm_ids)
    assert "localrule episodes" not in output and "localrule lmdb" not in output
    # The controller saw every submission, and every job completed (one jobcomp line per job).
    ctld = (state / "slurmctld.log").read_text()
    completed = {int(m) for m in re.findall(r"JobId=(\d+) .*?JobState=COMPLETED", (state / "jobcomp.txt").read_text())}
    for sid in slurm_ids:
        assert f"_slurm_rpc_submit_batch_job: JobId={sid} " in ctld
        assert sid in completed, f"SLURM job {sid} did not complete"
    # Each job's SLURM log shows the rule's command run inside the allocation (through srun).
    for _, sid, log in submitted:
        text = Path(log).read_text()
        assert "Shell command: actionparty" in text and "Finished jobid" in text, log


def test_slurm_outputs_match_a_local_run(runs):
    """Episodes are byte-reproducible for a seed (docs/DATASET.md), so every data file of the
    SLURM run, the LMDBs included, equals the local run's byte for byte."""
    local, work, _, _ = runs
    files = {p.relative_to(local) for p in (local / "data").rglob("*") if p.is_file()}
    assert files == {p.relative_to(work) for p in (work / "data").rglob("*") if p.is_file()}
    profile = load_profile(local / "params/smoke.yaml")
    for path in sorted(files):
        assert (local / path).read_bytes() == (work / path).read_bytes(), path
    for split in SPLITS:
        a = ClipDataset(local / f"data/lmdb/{split}.lmdb", clip_steps=1, expect_canvas_px=profile.canvas_px)
        assert a.games == list(profile.games)
        assert len(a.meta["episodes"]) == getattr(profile.episodes.per_split, split) * len(profile.games)


def test_sbatch_command_profile_runs_a_job(cluster, tmp_path_factory):
    """profiles/slurm-generic (cluster-generic executor + an sbatch command line): one job."""
    state, env, _ = cluster
    work = copy_workflow(tmp_path_factory.mktemp("slurm_generic"))
    target = "data/episodes/val/coins"
    done = run(["snakemake", target, "--profile", "profiles/slurm-generic", *SMOKE,
                "--seconds-between-status-checks", "2", "--latency-wait", "5", "--retries", "0"],
               work, env, timeout=600)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    ids = re.findall(r"Submitted job \d+ with external jobid '(\d+)'", output)
    assert len(ids) == 1, output[-4000:]
    assert (work / target / "manifest.json").is_file()
    assert (work / f"logs/slurm/episodes/{ids[0]}.log").is_file()
    assert re.search(rf"JobId={ids[0]} .*?JobState=COMPLETED", (state / "jobcomp.txt").read_text())
