# Action finetuning from exp-138 (exp-139 = `full`, its ablations and baselines: one wildcard
# value each) and the rollouts of every model from test-split context frames.

import shlex

VARIANTS = list(config["variants"])
SEED_RUNS = list(config["seed_runs"])  # <variant>-s<k>: the same variant with seed + k
RUNS = VARIANTS + SEED_RUNS
MODELS = RUNS + list(untrained_models())  # + the exp-138 model and the copy floor (params/variants/)
HORIZONS = [int(h) for h in config["rollout"]["horizons"]]


def rollout_files(models):
    """The rollouts of ``models``, each at its horizons (profile key rollout.long_horizon_models)."""
    return [f"results/rollouts/{m}/h{h}.npz" for m in models for h in PROFILE.horizons_of(m)]


wildcard_constraints:
    variant="|".join(RUNS),
    model="|".join(MODELS),
    horizon=r"\d+",
    swap="|_swap",


rule finetune_variant:
    input:
        init="results/exp-138/checkpoint.pt",
        train="data/lmdb/train.lmdb",
        variant=lambda wc: f"params/variants/{split_run(wc.variant)[0]}.yaml",
        text=TEXT_CACHE,
        latents=LATENT_SHARDS,
    output:
        checkpoint="results/finetune/{variant}/checkpoint.pt",
        log="results/finetune/{variant}/train_log.jsonl",
        snapshots=directory("results/finetune/{variant}/snapshots"),
    params:
        profile=PROFILE_FILE,
        launcher=train_launcher(),
        model=config["model"],
        train=config["finetune"],
        out=lambda wc, output: os.path.dirname(output.checkpoint),
    threads: config["resources"]["train_threads"]
    resources:
        mem_mb=config["resources"]["train_mem_mb"],
        runtime=config["resources"]["train_runtime_min"],
        gpu=config["resources"]["train_gpus"],
        cpus_per_task=train_cpus(config["finetune"]["num_workers"]),
    log:
        "logs/finetune/{variant}.log",
    benchmark:
        "benchmarks/runs/finetune/{variant}.tsv"
    shell:
        "{params.launcher} finetune --profile {params.profile:q} --variant {wildcards.variant:q} --init {input.init:q}"
        " --train-lmdb {input.train:q} --out {params.out:q} > {log:q} 2>&1"


def model_checkpoint(wildcards):
    """The checkpoint a model is rolled out from: its finetune, exp-138 (source pretrain), or
    none (source copy)."""
    if wildcards.model in models_from("copy"):
        return []
    if wildcards.model in models_from("pretrain"):
        return ["results/exp-138/checkpoint.pt"]
    return [f"results/finetune/{wildcards.model}/checkpoint.pt"]


rule rollout:
    input:
        checkpoint=model_checkpoint,
        test="data/lmdb/test.lmdb",
        text=TEXT_CACHE,
    output:
        rollout="results/rollouts/{model}/h{horizon}{swap}.npz",
        meta="results/rollouts/{model}/h{horizon}{swap}.json",
    params:
        profile=PROFILE_FILE,
        rollout=config["rollout"],
        checkpoint=lambda wc, input: f"--checkpoint {shlex.quote(str(input.checkpoint[0]))}" if input.checkpoint else "",
        swap=lambda wc: "--swap" if wc.swap else "",
    threads: config["resources"]["train_threads"]
    resources:
        mem_mb=config["resources"]["rollout_mem_mb"],
        runtime=config["resources"]["rollout_runtime_min"],
        gpu=min(config["resources"]["train_gpus"], 1),
    log:
        "logs/rollout/{model}/h{horizon}{swap}.log",
    benchmark:
        "benchmarks/runs/rollout/{model}/h{horizon}{swap}.tsv"
    shell:
        "actionparty rollout --profile {params.profile:q} --model {wildcards.model:q} {params.checkpoint}"
        " --lmdb {input.test:q} --horizon {wildcards.horizon:q} {params.swap} --out {output.rollout:q} > {log:q} 2>&1"


rule finetune:
    input:
        expand("results/finetune/{variant}/checkpoint.pt", variant=RUNS),


rule rollouts:
    input:
        rollout_files(MODELS),
        expand("results/rollouts/{model}/h{horizon}_swap.npz", model=MODELS, horizon=min(HORIZONS)),
