#!/usr/bin/env python3
"""The bridge between DVC and Snakemake (see docs/DVC.md).

    tools/dvc_snakemake.py run PROFILE RULES TARGET... [--if-changed RULES]  # every stage's cmd
    tools/dvc_snakemake.py touch PROFILE [TARGET...]    # after dvc pull/checkout, before plain snakemake
    tools/dvc_snakemake.py data [PROFILE] [--regenerate]  # data/ as data.dvc names it (before dvc repro)

`run`: DVC has decided that a stage is stale (the hash of one of its deps, params or outs changed);
Snakemake executes exactly that stage's jobs:

* ``--allowed-rules RULES``: only the stage's own rules are in the DAG, so files made by other stages
  are plain inputs. Their mtimes are meaningless after a `dvc pull`/`checkout`, and Snakemake 9
  compares mtimes whatever ``--rerun-triggers`` says, so without this a report stage could retrain
  models.
* ``--forcerun RULES``: every job of the stage runs. DVC saw a change that Snakemake cannot (package
  code, a file restored with an old mtime, a stage without metadata in a fresh clone); letting
  Snakemake skip a job here would record a stale output under the new hashes.

RULES is comma-separated. ``--if-changed RULES`` adds rules that may run but are not forced:
Snakemake reruns them only if it sees their inputs change. Meant for a rule whose only inputs are
git-tracked files (the games contact sheet: params/games.yaml), where Snakemake's check (mtime,
then the checksum it recorded) is reliable and a forced rebuild would be wasted. A TARGET may
contain ``{horizon}`` (one target per ``rollout.horizons`` of the profile), ``{swap_horizon}``
(the shortest horizon, the one the swapped rollouts use) and ``{protocol_horizon}`` (the shortest
too: the horizon of the extra evaluation protocols' rollouts). ``CORES`` sets ``--cores`` (default 2);
``SNAKEMAKE_PROFILE`` (read by Snakemake itself) picks an executor profile, e.g.
``SNAKEMAKE_PROFILE=profiles/slurm dvc repro``.

`touch`: after a pull every file has the checkout time as mtime, in no particular order, and a
fresh clone has no .snakemake/ metadata: plain `snakemake` would rebuild much of the DAG. This
runs ``snakemake --touch`` (default target ``all``), which marks existing outputs up to date in
DAG order and records metadata. Refused while ``dvc status`` shows changes: touching would also
hide real ones.

`data`: the dataset is not a stage but ``data.dvc`` (one unit, pushed with the checkpoints), so a
fresh clone has to fetch or rebuild it before ``dvc repro`` can run a stage. When ``data/`` is
absent, it is pulled from the default remote if there is one, else (or with ``--regenerate``)
built by ``snakemake data``; either way it must then equal the hash in ``data.dvc``. Episodes and
LMDBs are byte-reproducible for a seed (docs/DATASET.md), so a regeneration with the code and
profile that made ``data.dvc`` matches it; a mismatch is an error that says so. A ``data/`` that
differs from ``data.dvc`` is never overwritten: that is an edit to record (``dvc add data``) or
to undo (``dvc checkout data.dvc``). PROFILE defaults to the one dvc.yaml's ``vars`` line names.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path


REPO = Path(__file__).resolve().parents[1]


def fail(message: str) -> None:
    print(f"dvc_snakemake: {message}", file=sys.stderr)
    sys.exit(2)


def profile_file(profile: str) -> str:
    path = f"params/{profile}.yaml"
    if not (REPO / path).is_file():
        fail(f"no profile file {path}")
    return path


def expand_targets(targets: list[str], profile_path: str) -> list[str]:
    """Expand ``{horizon}`` over the rollout horizons of the target's model (every horizon of the
    profile, or the shortest only: ``rollout.long_horizon_models``), ``{swap_horizon}`` and
    ``{protocol_horizon}`` to the shortest."""
    from actionparty.config import load_profile
    from actionparty.errors import ProfileError

    try:  # params/<profile>.yaml merged with its base (params/base.yaml), as every stage reads it
        profile = load_profile(profile_path)
    except ProfileError as err:
        fail(str(err))
    shortest = min(profile.rollout.horizons)
    out = []
    for target in targets:
        target = target.replace("{swap_horizon}", str(shortest)).replace("{protocol_horizon}", str(shortest))
        model = re.search(r"results/rollouts/([^/]+)/", target)
        horizons = profile.horizons_of(model.group(1)) if model else sorted(profile.rollout.horizons)
        out += [target.replace("{horizon}", str(h)) for h in horizons] if "{horizon}" in target else [target]
    return out


def environment() -> dict:
    """Prefer the project's virtualenv (snakemake and the `actionparty` CLI), as `make` does."""
    env = dict(os.environ)
    venv_bin = REPO / ".venv" / "bin"
    if (venv_bin / "snakemake").exists():
        env["PATH"] = f"{venv_bin}{os.pathsep}{env.get('PATH', '')}"
    return env


def snakemake(args: list[str], profile_path: str) -> int:
    # Targets go first: --configfile takes every following word as a file.
    cmd = ["snakemake", *args, "--cores", os.environ.get("CORES", "2"), "--configfile", profile_path]
    print("+ " + " ".join(cmd), file=sys.stderr, flush=True)
    return subprocess.call(cmd, cwd=REPO, env=environment())


def cmd_run(args) -> int:
    path = profile_file(args.profile)
    forced = [r for r in args.rules.split(",") if r]
    allowed = forced + [r for r in (args.if_changed or "").split(",") if r]
    if not forced:
        fail("no rules given")
    targets = expand_targets(args.targets, path)
    return snakemake([*targets, "--allowed-rules", *allowed, "--forcerun", *forced, "--rerun-incomplete"], path)


def dvc(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["dvc", *args], cwd=REPO, env=environment(), capture_output=True, text=True)


def dvc_yaml_profile() -> str:
    """The profile named by dvc.yaml's `vars` line (`  - params/<profile>.yaml`)."""
    match = re.search(r"(?m)^  - params/(\w+)\.yaml$", (REPO / "dvc.yaml").read_text())
    if not match:
        fail("dvc.yaml: no `vars` line naming params/<profile>.yaml")
    return match.group(1)


def data_matches_record() -> bool:
    """data/ has the hash data.dvc records. In a fresh clone DVC's cache is empty, and `dvc status`
    then says "not in cache" for a data/ whose hash is the recorded one (a changed data/ reads
    "modified"); that data/ is committed to the cache here, so that `dvc push` and `dvc checkout`
    have it."""
    status = dvc("status", "--json", "data.dvc")
    if status.returncode != 0:
        fail(f"dvc status data.dvc failed: {status.stderr.strip()[-500:]}")
    changes = json.loads(status.stdout or "{}")
    # (With data/ absent and the cache empty, DVC says "not in cache" too.)
    if (REPO / "data").exists() and changes == {"data.dvc": [{"changed outs": {"data": "not in cache"}}]}:
        committed = dvc("commit", "--force", "data.dvc")
        if committed.returncode != 0:
            fail(f"dvc commit data.dvc failed: {committed.stderr.strip()[-500:]}")
        changes = json.loads(dvc("status", "--json", "data.dvc").stdout or "{}")
    return changes == {}


def cmd_data(args) -> int:
    path = profile_file(args.profile or dvc_yaml_profile())
    if not (REPO / "data.dvc").is_file():  # nothing recorded yet: build the dataset and record it
        code = snakemake(["data"], path)
        if code == 0:
            code = subprocess.call(["dvc", "add", "data"], cwd=REPO, env=environment())
        return code
    if data_matches_record():
        print("data/ matches data.dvc", file=sys.stderr)
        return 0
    if (REPO / "data").exists():
        fail("data/ differs from data.dvc: record it (`dvc add data`) or restore the recorded one "
             "(`dvc checkout data.dvc`, or remove data/ to fetch or rebuild it)")
    if not args.regenerate and dvc("config", "core.remote").returncode == 0:
        pulled = dvc("pull", "data.dvc")
        if pulled.returncode == 0 and data_matches_record():
            print("data/ pulled from the default remote", file=sys.stderr)
            return 0
        print(f"dvc pull data.dvc failed ({pulled.stderr.strip()[-300:]}); building data/ instead",
              file=sys.stderr)
    code = snakemake(["data"], path)
    if code != 0:
        return code
    if not data_matches_record():
        fail(f"the regenerated data/ differs from data.dvc: data.dvc was made with other settings or code "
             f"than {path} and this checkout (`dvc add data` records the new dataset)")
    print("regenerated data/ matches data.dvc", file=sys.stderr)
    return 0


def cmd_touch(args) -> int:
    path = profile_file(args.profile)
    status = subprocess.run(["dvc", "status", "--json"], cwd=REPO, env=environment(), capture_output=True, text=True)
    if status.returncode != 0:
        fail(f"dvc status failed: {status.stderr.strip()[-500:]}")
    changed = json.loads(status.stdout or "{}")
    if changed and not args.force:
        fail(f"dvc status shows changes in {', '.join(sorted(changed))}: run `dvc checkout` or `dvc repro` "
             "first (or --force to touch anyway)")
    return snakemake([*(args.targets or ["all"]), "--touch"], path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run one DVC stage's Snakemake rules for its targets")
    run.add_argument("profile", help="profile name: params/<profile>.yaml")
    run.add_argument("rules", help="comma-separated Snakemake rules of the stage")
    run.add_argument("targets", nargs="+", help="files or target rules; {horizon}/{swap_horizon} expand")
    run.add_argument("--if-changed", metavar="RULES", help="comma-separated rules allowed but not forced")
    run.set_defaults(func=cmd_run)
    touch = sub.add_parser("touch", help="after dvc pull/checkout: mark the pulled outputs up to date for Snakemake")
    touch.add_argument("profile", help="profile name: params/<profile>.yaml")
    touch.add_argument("targets", nargs="*", help="Snakemake targets (default: all)")
    touch.add_argument("--force", action="store_true", help="touch even if dvc status shows changes")
    touch.set_defaults(func=cmd_touch)
    data = sub.add_parser("data", help="data/ as data.dvc names it: pulled, or rebuilt and checked (fresh clone)")
    data.add_argument("profile", nargs="?", help="profile name (default: the one dvc.yaml's vars line names)")
    data.add_argument("--regenerate", action="store_true", help="build with Snakemake even if a remote is set")
    data.set_defaults(func=cmd_data)
    args = parser.parse_args(argv)
    os.chdir(REPO)  # paths in a profile (its defaults:, the catalogue) are relative to the repository root
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
