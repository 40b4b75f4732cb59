# Training: video-only pretraining (exp-138) and its sample rollouts.


def train_launcher():
    """`actionparty`, or torchrun with one process per GPU when the profile asks for several."""
    gpus = config["resources"]["train_gpus"]
    if gpus > 1:
        return f"torchrun --standalone --nproc_per_node {gpus} -m actionparty"
    return "actionparty"


if TEXT_CACHE:

    rule text_embeddings:
        """The umT5 (or tiny) embeddings of the games' descriptions, once, on one GPU."""
        output:
            TEXT_CACHE[0],
        params:
            profile=PROFILE_FILE,
        threads: 1
        resources:
            mem_mb=config["resources"]["rollout_mem_mb"],
            runtime=config["resources"]["rollout_runtime_min"],
            gpu=min(config["resources"]["train_gpus"], 1),
        log:
            "logs/text_embeddings.log",
        benchmark:
            "benchmarks/runs/text_embeddings.tsv"
        shell:
            "actionparty embed-text --profile {params.profile:q} --out {output:q} > {log:q} 2>&1"


if LATENT_SHARDS:

    rule latents:
        """One shard of the training clips' latents, encoded once on one GPU."""
        input:
            train="data/lmdb/train.lmdb",
            variants=sorted({f"params/variants/{split_run(run)[0]}.yaml"
                             for run in config["variants"] + config["seed_runs"]}),
        output:
            directory(os.path.join(PROFILE.model.latent_cache, "shard-{shard}-of-" + str(len(LATENT_SHARDS)) + ".lmdb")),
        params:
            profile=PROFILE_FILE,
            out=PROFILE.model.latent_cache,
            # The clips drawn follow from the runs' settings: a change re-encodes.
            model=config["model"],
            pretrain=config["pretrain"],
            finetune=config["finetune"],
            runs=config["variants"] + config["seed_runs"],
        wildcard_constraints:
            shard=r"\d+",
        threads: 1
        resources:
            mem_mb=config["resources"]["mem_mb"],
            runtime=config["resources"]["train_runtime_min"],
            gpu=min(config["resources"]["train_gpus"], 1),
        log:
            "logs/latents/shard-{shard}.log",
        benchmark:
            "benchmarks/runs/latents/shard-{shard}.tsv"
        shell:
            "actionparty encode-latents --profile {params.profile:q} --train-lmdb {input.train:q} --out {params.out:q}"
            " --shard {wildcards.shard} > {log:q} 2>&1"


rule exp138_train:
    input:
        train="data/lmdb/train.lmdb",
        text=TEXT_CACHE,
        latents=LATENT_SHARDS,
    output:
        checkpoint="results/exp-138/checkpoint.pt",
        log="results/exp-138/train_log.jsonl",
    params:
        profile=PROFILE_FILE,
        launcher=train_launcher(),
        model=config["model"],
        train=config["pretrain"],
        out=lambda wc, output: os.path.dirname(output.checkpoint),
    threads: config["resources"]["train_threads"]
    resources:
        mem_mb=config["resources"]["train_mem_mb"],
        runtime=config["resources"]["train_runtime_min"],
        gpu=config["resources"]["train_gpus"],
        cpus_per_task=train_cpus(config["pretrain"]["num_workers"]),
    log:
        "logs/pretrain.log",
    benchmark:
        "benchmarks/runs/pretrain.tsv"
    shell:
        "{params.launcher} pretrain --profile {params.profile:q} --train-lmdb {input.train:q} --out {params.out:q}"
        " > {log:q} 2>&1"


rule exp138_samples:
    input:
        checkpoint="results/exp-138/checkpoint.pt",
        test="data/lmdb/test.lmdb",
        text=TEXT_CACHE,
    output:
        report(
            directory("reports/figures/samples/exp-138"),
            patterns=["{name}.gif"],
            caption="../report/pretrain_samples.rst",
            category="Pretraining (exp-138)",
        ),
    params:
        profile=PROFILE_FILE,
        rollout=config["rollout"],
        steps=max(config["rollout"]["horizons"]),
    threads: config["resources"]["train_threads"]
    resources:
        mem_mb=config["resources"]["rollout_mem_mb"],
        runtime=60,
        gpu=min(config["resources"]["train_gpus"], 1),
    log:
        "logs/pretrain_samples.log",
    benchmark:
        "benchmarks/runs/pretrain_samples.tsv"
    shell:
        "actionparty sample --profile {params.profile:q} --checkpoint {input.checkpoint:q} --lmdb {input.test:q}"
        " --steps {params.steps} --out {output:q} > {log:q} 2>&1"


rule pretrain:
    input:
        rules.exp138_train.output,
        rules.exp138_samples.output,
