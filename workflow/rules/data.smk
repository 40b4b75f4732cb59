# Data: episodes per game x split, one LMDB per split, the test split's seeds again under each
# extra evaluation protocol (protocols.names), and the games contact sheet.


rule episodes:
    output:
        directory("data/episodes/{split}/{game}"),
    params:
        profile=PROFILE_FILE,
        game=game_entry,
        episodes=config["episodes"],
        canvas_cells=config["canvas_cells"],
    threads: config["resources"]["episode_workers"]
    resources:
        mem_mb=config["resources"]["mem_mb"],
        runtime=60,
    log:
        "logs/episodes/{split}/{game}.log",
    benchmark:
        "benchmarks/runs/episodes/{split}/{game}.tsv"
    shell:
        "actionparty episodes --profile {params.profile:q} --game {wildcards.game:q} --split {wildcards.split:q}"
        " --out {output:q} --workers {threads} > {log:q} 2>&1"


rule lmdb:
    input:
        lambda wc: expand("data/episodes/{split}/{game}", split=wc.split, game=GAMES),
    output:
        directory("data/lmdb/{split}.lmdb"),
    params:
        profile=PROFILE_FILE,
        lmdb=config["lmdb"],
    resources:
        mem_mb=config["resources"]["mem_mb"],
        runtime=60,
    log:
        "logs/lmdb/{split}.log",
    benchmark:
        "benchmarks/runs/lmdb/{split}.tsv"
    shell:
        "actionparty lmdb --profile {params.profile:q} --split {wildcards.split:q} --out {output:q} {input:q} > {log:q} 2>&1"


# An extra protocol's test episodes: the test split's seeds (the same engine starts) played by the
# protocol's policy, data/episodes/test_<protocol>/<game> -> data/lmdb/test_<protocol>.lmdb (split test).
rule protocol_episodes:
    output:
        directory("data/episodes/test_{protocol}/{game}"),
    params:
        profile=PROFILE_FILE,
        game=game_entry,
        episodes=config["episodes"],
        canvas_cells=config["canvas_cells"],
    threads: config["resources"]["episode_workers"]
    resources:
        mem_mb=config["resources"]["mem_mb"],
        runtime=60,
    log:
        "logs/episodes/test_{protocol}/{game}.log",
    benchmark:
        "benchmarks/runs/episodes/test_{protocol}/{game}.tsv"
    shell:
        "actionparty episodes --profile {params.profile:q} --game {wildcards.game:q} --split test"
        " --protocol {wildcards.protocol:q} --out {output:q} --workers {threads} > {log:q} 2>&1"


rule protocol_lmdb:
    input:
        lambda wc: expand("data/episodes/test_{protocol}/{game}", protocol=wc.protocol, game=GAMES),
    output:
        directory("data/lmdb/test_{protocol}.lmdb"),
    params:
        profile=PROFILE_FILE,
        lmdb=config["lmdb"],
    resources:
        mem_mb=config["resources"]["mem_mb"],
        runtime=60,
    log:
        "logs/lmdb/test_{protocol}.log",
    benchmark:
        "benchmarks/runs/lmdb/test_{protocol}.tsv"
    shell:
        "actionparty lmdb --profile {params.profile:q} --split test --out {output:q} {input:q} > {log:q} 2>&1"


rule games_contact_sheet:
    input:
        config["catalogue"],
    output:
        report("reports/figures/games.png", caption="../report/games.rst", category="Data"),
    threads: 2
    resources:
        mem_mb=4000,
        runtime=30,
    log:
        "logs/games_contact_sheet.log",
    benchmark:
        "benchmarks/runs/games_contact_sheet.tsv"
    shell:
        "actionparty contact-sheet --catalogue {input:q} --out {output:q} --workers {threads} > {log:q} 2>&1"


rule data:
    input:
        expand("data/lmdb/{split}.lmdb", split=SPLITS),
        expand("data/lmdb/test_{protocol}.lmdb", protocol=PROTOCOL_NAMES),
