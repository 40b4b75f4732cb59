# The paper's tables and figures, rebuilt from results/ alone (plus the test LMDB for the
# ground-truth rows of the rollout figures and the real game's column of the gallery).

REPORT_TABLES = (["main", "ablation", "per_game", "per_player_count", "per_cause"] + (["seeds"] if SEED_RUNS else [])
                 + (["protocols"] if PROTOCOL_NAMES else []))
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
        protocols=PROTOCOL_METRICS,
        logs=["results/exp-138/train_log.jsonl"] + expand("results/finetune/{variant}/train_log.jsonl", variant=VARIANTS),
        curves=CURVES,
        rollouts=rollout_files(MODELS),
        detectors="results/detectors/detectors.pt",
        test="data/lmdb/test.lmdb",
    output:
        index="reports/index.md",
        page="reports/index.html",
        targets="reports/targets.md",
        targets_page=report("reports/targets.html", caption="../report/targets.rst", category="Targets"),
        tables=expand("reports/tables/{table}.{ext}", table=REPORT_TABLES, ext=["md", "csv", "tex"]),
        # Snakemake's report shows HTML inline (not Markdown): each table as a page of its own.
        main=report("reports/tables/main.html", caption="../report/main.rst", category="Tables",
                    labels={"table": "main"}),
        ablation=report("reports/tables/ablation.html", caption="../report/ablation.rst", category="Tables",
                        labels={"table": "ablation"}),
        per_game=report("reports/tables/per_game.html", caption="../report/per_game_table.rst", category="Tables",
                        labels={"table": "per game"}),
        per_player_count=report("reports/tables/per_player_count.html", caption="../report/per_player_count_table.rst",
                                category="Tables", labels={"table": "per player count"}),
        per_cause=report("reports/tables/per_cause.html", caption="../report/per_cause.rst", category="Tables",
                         labels={"table": "per cause"}),
        seeds=report(["reports/tables/seeds.html"] if SEED_RUNS else [],
                     caption="../report/seeds.rst", category="Tables", labels={"table": "seeds"}),
        protocols=report(["reports/tables/protocols.html"] if PROTOCOL_NAMES else [],
                         caption="../report/protocols.rst", category="Tables", labels={"table": "protocols"}),
        figures=expand("reports/figures/{figure}.pdf", figure=REPORT_FIGURES),
        player_count=report("reports/figures/per_player_count.png", caption="../report/per_player_count.rst",
                            category="Figures"),
        ma_curve=report("reports/figures/ma_curve.png", caption="../report/ma_curve.rst", category="Figures"),
        training=report("reports/figures/training_curves.png", caption="../report/training_curves.rst",
                        category="Figures"),
        learning=report(["reports/figures/learning_curves.png"] if CURVES else [],
                        caption="../report/learning_curves.rst", category="Figures"),
        rollouts=report(expand("reports/figures/rollout_{model}.png", model=ROLLOUT_FIGURE_MODELS),
                        caption="../report/rollout.rst", category="Rollouts"),
        # The gallery with its GIFs embedded (data URIs): the report's viewer shows it inline,
        # which it does not do for GIF files.
        gallery=report("reports/gallery.html", caption="../report/gallery.rst", category="Rollouts"),
        gifs=directory("reports/gifs"),
        plots=directory("reports/plots"),  # records for dvc plots: train_loss/{run}.json, curves/{variant}.json
    params:
        results=lambda wc, input: os.path.dirname(os.path.dirname(input.combined)),
        out=lambda wc, output: os.path.dirname(output.index),
        rollout_models=ROLLOUT_FIGURE_MODELS,  # a list: `:q` quotes each name on its own
        profile=PROFILE_FILE,
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
        " --profile {params.profile:q} --rollout-models {params.rollout_models:q} --threads {threads} > {log:q} 2>&1"


# The flat summary metric (model x horizon x MA, MA_changing, SP, BA) that `dvc metrics show/diff`
# reads; the per-model files stay the detailed outputs.
rule summary_metrics:
    input:
        expand("results/metrics/{model}.json", model=MODELS + ["oracle"]),
        PROTOCOL_METRICS,  # results/metrics/<protocol>/<model>.json (evaluate.smk)
    output:
        "results/metrics/summary.json",
    log:
        "logs/summary_metrics.log",
    shell:
        "actionparty combine-metrics --out-summary {output:q} {input:q} > {log:q} 2>&1"


rule report:
    input:
        rules.report_build.output,
