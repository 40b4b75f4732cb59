# ActionParty reproduction pipeline. Rules only wire `actionparty` CLI commands together;
# every parameter comes from the profile chosen with --configfile params/<profile>.yaml.
from snakemake.utils import min_version, validate

min_version("8.0")


configfile: "params/tiny.yaml"


validate(config, "workflow/schemas/config.schema.json")


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/finetune.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"


rule all:
    default_target: True
    input:
        rules.data.input,
        "reports/figures/games.png",
        rules.pretrain.input,
        rules.finetune.input,
        rules.rollouts.input,
        rules.evaluate.input,
        rules.report.input,
