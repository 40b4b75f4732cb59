# Evaluation: detectors trained on ground-truth episodes, metrics per model (and the oracle),
# and the combined table. The detector and metrics jobs ask for one GPU where training has GPUs
# (resources.train_gpus > 0) and run their networks on it; on CPU profiles they ask for none.

SWAP_HORIZON = min(HORIZONS)


rule detectors:
    input:
        train="data/lmdb/train.lmdb",
        val="data/lmdb/val.lmdb",
    output:
        bundle="results/detectors/detectors.pt",
        accuracy="results/detectors/accuracy.json",
    params:
        profile=PROFILE_FILE,
        eval=config["eval"],
    threads: 1
    resources:
        mem_mb=config["resources"]["eval_mem_mb"],
        runtime=config["resources"]["train_runtime_min"],
        gpu=min(config["resources"]["train_gpus"], 1),
    log:
        "logs/detectors.log",
    benchmark:
        "benchmarks/runs/detectors.tsv"
    shell:
        "actionparty train-detectors --profile {params.profile:q} --train-lmdb {input.train:q} --val-lmdb {input.val:q}"
        " --out {output.bundle:q} --accuracy {output.accuracy:q} --threads {threads} > {log:q} 2>&1"


rule metrics:
    input:
        test="data/lmdb/test.lmdb",
        detectors="results/detectors/detectors.pt",
        rollouts=lambda wc: rollout_files([wc.model]),
        swaps=f"results/rollouts/{{model}}/h{SWAP_HORIZON}_swap.npz",
    output:
        "results/metrics/{model}.json",
    params:
        profile=PROFILE_FILE,
        eval=config["eval"],
    threads: 1
    resources:
        mem_mb=config["resources"]["eval_mem_mb"],
        runtime=60,
        gpu=min(config["resources"]["train_gpus"], 1),
    log:
        "logs/metrics/{model}.log",
    benchmark:
        "benchmarks/runs/metrics/{model}.tsv"
    shell:
        "actionparty evaluate --profile {params.profile:q} --variant {wildcards.model:q} --test-lmdb {input.test:q}"
        " --detectors {input.detectors:q} --rollouts {input.rollouts:q} --swap-rollouts {input.swaps:q}"
        " --out {output:q} --threads {threads} > {log:q} 2>&1"


rule oracle_metrics:
    input:
        test="data/lmdb/test.lmdb",
        detectors="results/detectors/detectors.pt",
    output:
        "results/metrics/oracle.json",
    params:
        profile=PROFILE_FILE,
        eval=config["eval"],
    threads: 1
    resources:
        mem_mb=config["resources"]["eval_mem_mb"],
        runtime=60,
        gpu=min(config["resources"]["train_gpus"], 1),
    log:
        "logs/metrics/oracle.log",
    benchmark:
        "benchmarks/runs/metrics/oracle.tsv"
    shell:
        "actionparty evaluate-oracle --profile {params.profile:q} --test-lmdb {input.test:q}"
        " --detectors {input.detectors:q} --out {output:q} --threads {threads} > {log:q} 2>&1"


rule curve:
    """Learning curve of a finetune: MA_changing, BA, MA, SP of its EMA snapshots on val windows."""
    input:
        checkpoint="results/finetune/{variant}/checkpoint.pt",
        snapshots="results/finetune/{variant}/snapshots",
        val="data/lmdb/val.lmdb",
        detectors="results/detectors/detectors.pt",
        text=TEXT_CACHE,
    output:
        "results/finetune/{variant}/curve.json",
    params:
        profile=PROFILE_FILE,
        rollout=config["rollout"],
        eval=config["eval"],
    threads: config["resources"]["train_threads"]
    resources:
        mem_mb=config["resources"]["rollout_mem_mb"],
        runtime=config["resources"]["rollout_runtime_min"],
        gpu=min(config["resources"]["train_gpus"], 1),
    log:
        "logs/curve/{variant}.log",
    benchmark:
        "benchmarks/runs/curve/{variant}.tsv"
    shell:
        "actionparty curve --profile {params.profile:q} --variant {wildcards.variant:q} --checkpoint {input.checkpoint:q}"
        " --val-lmdb {input.val:q} --detectors {input.detectors:q} --out {output:q} --threads {threads} > {log:q} 2>&1"


# Learning curves of finetune.curve_variants (none when the profile keeps no snapshots).
CURVES = expand("results/finetune/{variant}/curve.json",
                variant=config["finetune"]["curve_variants"] if config["finetune"]["curve_every"] else [])


rule combined_metrics:
    input:
        expand("results/metrics/{model}.json", model=MODELS),
        "results/metrics/oracle.json",
    output:
        json="results/metrics/combined.json",
        csv="results/metrics/combined.csv",
    log:
        "logs/metrics/combined.log",
    benchmark:
        "benchmarks/runs/metrics/combined.tsv"
    shell:
        "actionparty combine-metrics --out-json {output.json:q} --out-csv {output.csv:q} {input:q} > {log:q} 2>&1"


rule evaluate:
    input:
        rules.combined_metrics.output,
        "results/detectors/accuracy.json",


# Extra evaluation protocols (protocols.names): the models of protocols.models rolled out at the
# shortest horizon on the protocol's test episodes (the recorded actions, the same windows as the
# test split's), scored against what the game recorded; the oracle bounds each protocol's numbers.
PROTOCOL_HORIZON = min(HORIZONS)
PROTOCOL_METRICS = expand("results/metrics/{protocol}/{model}.json", protocol=PROTOCOL_NAMES,
                          model=PROTOCOL_MODELS + ["oracle"])


rule protocol_rollout:
    input:
        checkpoint=model_checkpoint,
        test="data/lmdb/test_{protocol}.lmdb",
        text=TEXT_CACHE,
    output:
        rollout="results/rollouts/{protocol}/{model}/h{horizon}.npz",
        meta="results/rollouts/{protocol}/{model}/h{horizon}.json",
    params:
        profile=PROFILE_FILE,
        rollout=config["rollout"],
        checkpoint=lambda wc, input: f"--checkpoint {shlex.quote(str(input.checkpoint[0]))}" if input.checkpoint else "",
    threads: config["resources"]["train_threads"]
    resources:
        mem_mb=config["resources"]["rollout_mem_mb"],
        runtime=config["resources"]["rollout_runtime_min"],
        gpu=min(config["resources"]["train_gpus"], 1),
    log:
        "logs/rollout/{protocol}/{model}/h{horizon}.log",
    benchmark:
        "benchmarks/runs/rollout/{protocol}/{model}/h{horizon}.tsv"
    shell:
        "actionparty rollout --profile {params.profile:q} --model {wildcards.model:q} {params.checkpoint}"
        " --lmdb {input.test:q} --horizon {wildcards.horizon:q} --out {output.rollout:q} > {log:q} 2>&1"


rule protocol_metrics:
    input:
        test="data/lmdb/test_{protocol}.lmdb",
        detectors="results/detectors/detectors.pt",
        rollouts=f"results/rollouts/{{protocol}}/{{model}}/h{PROTOCOL_HORIZON}.npz",
    output:
        "results/metrics/{protocol}/{model}.json",
    params:
        profile=PROFILE_FILE,
        eval=config["eval"],
    threads: 1
    resources:
        mem_mb=config["resources"]["eval_mem_mb"],
        runtime=60,
        gpu=min(config["resources"]["train_gpus"], 1),
    log:
        "logs/metrics/{protocol}/{model}.log",
    benchmark:
        "benchmarks/runs/metrics/{protocol}/{model}.tsv"
    shell:
        "actionparty evaluate --profile {params.profile:q} --variant {wildcards.model:q} --protocol {wildcards.protocol:q}"
        " --test-lmdb {input.test:q} --detectors {input.detectors:q} --rollouts {input.rollouts:q}"
        " --out {output:q} --threads {threads} > {log:q} 2>&1"


rule protocol_oracle_metrics:
    input:
        test="data/lmdb/test_{protocol}.lmdb",
        detectors="results/detectors/detectors.pt",
    output:
        "results/metrics/{protocol}/oracle.json",
    params:
        profile=PROFILE_FILE,
        eval=config["eval"],
    threads: 1
    resources:
        mem_mb=config["resources"]["eval_mem_mb"],
        runtime=60,
        gpu=min(config["resources"]["train_gpus"], 1),
    log:
        "logs/metrics/{protocol}/oracle.log",
    benchmark:
        "benchmarks/runs/metrics/{protocol}/oracle.tsv"
    shell:
        "actionparty evaluate-oracle --profile {params.profile:q} --protocol {wildcards.protocol:q}"
        " --test-lmdb {input.test:q} --detectors {input.detectors:q} --out {output:q} --threads {threads} > {log:q} 2>&1"


rule protocols:
    input:
        PROTOCOL_METRICS,
