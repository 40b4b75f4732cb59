# The paper's tables and figures, rebuilt from results/ alone (plus the test LMDB for the
# ground-truth rows of the rollout figures).

REPORT_TABLES = ["main", "ablation", "per_game", "per_player_count", "per_cause"] + (["seeds"] if SEED_RUNS else [])
# Rollout figures: ActionParty against the global-action baseline when the profile runs them.
ROLLOUT_FIGURE_MODELS = [m for m in ("full", "global_action") if m in VARIANTS] or VARIANTS[:1]
REPORT_FIGURES = ["per_player_count", "ma_curve", "training_curves"] + [f"rollout_{m}" for m in ROLLOUT_FIGURE_MODELS]
if CURVES:
    REPORT_FIGURES.append("learning_curves")
LONG_HORIZON = max(HORIZONS)


rule report_build:
    input:
        combined="results/metrics/combined.json",
        metrics=expand("results/metrics/{model}.json", model=MODELS + ["oracle"]),
        logs=["results/exp-138/train_log.jsonl"] + expand("results/finetune/{variant}/train_log.jsonl", variant=VARIANTS),
        curves=CURVES,
        rollouts=rollout_files(MODELS),
        detectors="results/detectors/detectors.pt",
        test="data/lmdb/test.lmdb",
    output:
        index="reports/index.md",
        targets="reports/targets.md",
        tables=expand("reports/tables/{table}.{ext}", table=REPORT_TABLES, ext=["csv", "tex"]),
        other_tables=expand("reports/tables/{table}.md", table=[t for t in REPORT_TABLES if t not in ("main", "ablation")]),
        main=report("reports/tables/main.md", caption="../report/main.rst", category="Tables"),
        ablation=report("reports/tables/ablation.md", caption="../report/ablation.rst", category="Tables"),
        figures=expand("reports/figures/{figure}.pdf", figure=REPORT_FIGURES),
        player_count=report("reports/figures/per_player_count.png", caption="../report/per_player_count.rst",
                            category="Figures"),
        ma_curve=report("reports/figures/ma_curve.png", caption="../report/ma_curve.rst", category="Figures"),
        training=report("reports/figures/training_curves.png", caption="../report/training_curves.rst",
                        category="Figures"),
        rollouts=report(expand("reports/figures/rollout_{model}.png", model=ROLLOUT_FIGURE_MODELS),
                        caption="../report/rollout.rst", category="Rollouts"),
        gifs=report(directory("reports/gifs"), patterns=["{name}.gif"], caption="../report/gifs.rst",
                    category="Rollouts"),
    params:
        results=lambda wc, input: os.path.dirname(os.path.dirname(input.combined)),
        out=lambda wc, output: os.path.dirname(output.index),
        rollout_models=" ".join(ROLLOUT_FIGURE_MODELS),
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    log:
        "logs/report.log",
    benchmark:
        "benchmarks/runs/report.tsv"
    shell:
        "actionparty report --results {params.results:q} --out {params.out:q} --test-lmdb {input.test:q}"
        " --rollout-models {params.rollout_models:q} --threads {threads} > {log:q} 2>&1"


rule report:
    input:
        rules.report_build.output,
