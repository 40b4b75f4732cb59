"""The numbers the README and docs/TRAINING.md quote are the committed results (actionparty quote)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from actionparty.report.quoted import QuoteError, Results, quote_file, render
from conftest import subprocess_env

QUOTING = ("README.md", "docs/TRAINING.md")


def test_the_readme_and_training_doc_quote_the_committed_results(repo):
    results = Results.load(repo / "results", repo / "params/variants")
    for name in QUOTING:
        assert quote_file(repo / name, results, check=True) == [], (
            f"{name}: quoted numbers differ from results/; run `actionparty quote {' '.join(QUOTING)}`")


@pytest.fixture
def copied(tmp_path, repo) -> Path:
    """A results folder with the committed metrics and learning curves, and a README copy."""
    out = tmp_path / "results"
    shutil.copytree(repo / "results/metrics", out / "metrics")
    for curve in (repo / "results/finetune").glob("*/curve.json"):
        (out / "finetune" / curve.parent.name).mkdir(parents=True)
        shutil.copy(curve, out / "finetune" / curve.parent.name / "curve.json")
    shutil.copy(repo / "README.md", tmp_path / "README.md")
    return tmp_path


def test_a_changed_result_makes_its_block_stale_and_quote_rewrites_it(copied, repo):
    path = copied / "results/metrics/full.json"
    data = json.loads(path.read_text())
    data["horizons"]["h4"]["overall"]["MA_changing_ci_low"] = 0.123456
    path.write_text(json.dumps(data))
    results = Results.load(copied / "results", repo / "params/variants")
    before = (copied / "README.md").read_text()
    assert quote_file(copied / "README.md", results, check=True) == ["headline"]
    assert (copied / "README.md").read_text() == before  # --check writes nothing
    assert quote_file(copied / "README.md", results) == ["headline"]
    text = (copied / "README.md").read_text()
    assert "95% interval of seed 0 [0.123," in text
    assert quote_file(copied / "README.md", results, check=True) == []
    # only the block changed
    outside = lambda t: t.split("<!-- quoted:headline -->")[0] + t.split("<!-- /quoted -->")[1]  # noqa: E731
    assert outside(text) == outside(before)


def test_blocks_read_seeds_protocols_and_curves(repo):
    results = Results.load(repo / "results", repo / "params/variants")
    full = json.loads((repo / "results/metrics/full.json").read_text())["horizons"]["h4"]["overall"]
    seed1 = json.loads((repo / "results/metrics/full-s1.json").read_text())["horizons"]["h4"]["overall"]
    mean = (full["MA_changing"] + seed1["MA_changing"]) / 2
    assert f"{mean:.3f} ± " in render("headline", results)
    table = render("tiny-table", results)
    assert table.count("\n") == 1 + 6  # header, rule, the six headline rows
    facts = render("tiny-facts", results)
    uniform = json.loads((repo / "results/metrics/uniform/full.json").read_text())
    assert f"uniform {uniform['horizons']['h4']['overall']['MA_changing']:.3f}" in facts
    assert "12 val windows" in facts  # the learning curves are on val, never test


def test_unknown_and_unclosed_blocks_are_one_line_errors(tmp_path, repo):
    results = Results.load(repo / "results", repo / "params/variants")
    bad = tmp_path / "bad.md"
    bad.write_text("x\n<!-- quoted:nonsense -->\n<!-- /quoted -->\n")
    with pytest.raises(QuoteError, match="'nonsense': unknown"):
        quote_file(bad, results)
    bad.write_text("x\n<!-- quoted:headline -->\nno end\n")
    with pytest.raises(QuoteError, match=r"bad.md: 1 .* but 0 closed"):
        quote_file(bad, results)
    assert bad.read_text() == "x\n<!-- quoted:headline -->\nno end\n"


def test_quote_check_exits_non_zero_naming_the_stale_block(copied, repo):
    readme = copied / "README.md"
    readme.write_text(readme.read_text().replace("<!-- quoted:headline -->\n", "<!-- quoted:headline -->\nold\n", 1))
    cmd = [sys.executable, "-m", "actionparty", "quote", "--check", "--results", str(copied / "results"), str(readme)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=repo, env=subprocess_env())
    assert proc.returncode != 0
    assert f"{readme}: quoted block 'headline' differs from" in proc.stdout
    assert "\nold\n" in readme.read_text()
    proc = subprocess.run(cmd[:4] + cmd[5:], capture_output=True, text=True, cwd=repo, env=subprocess_env())
    assert proc.returncode == 0, proc.stderr
    assert "\nold\n" not in readme.read_text()
