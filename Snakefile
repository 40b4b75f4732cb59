# ActionParty reproduction pipeline. Rules only wire `actionparty` CLI commands together;
# every parameter comes from the profile chosen with --configfile params/<profile>.yaml.
import os
import sys

from snakemake.utils import min_version, validate

from actionparty.config import snakemake_config
from actionparty.errors import ProfileError

min_version("8.0")

DEFAULT_PROFILE = "params/tiny.yaml"


def profile_file():
    """The profile chosen with --configfile (DEFAULT_PROFILE when none is); refuses --config."""
    files = [os.path.relpath(f) for f in workflow.overwrite_configfiles]
    chosen = files[-1] if files else DEFAULT_PROFILE
    if len(files) > 1:
        raise ProfileError(f"--configfile {' '.join(files)}: choose one profile (params/<profile>.yaml)")
    if workflow.config_settings.config:
        raise ProfileError(f"the Snakemake config differs from {chosen} (--config "
                           f"{', '.join(workflow.config_settings.config)}): edit the file instead of overriding")
    return chosen


# Snakemake reads the --configfile as it is, but a profile file holds only its differences from
# its base (`defaults: params/base.yaml`): `config` becomes the merged profile, validated by the
# package's models first, so that a bad key is one line naming the file and the key (exit 2).
try:
    PROFILE_FILE = profile_file()
    _merged = snakemake_config(PROFILE_FILE)
except ProfileError as err:
    print(err, file=sys.stderr)
    sys.exit(2)
config.clear()
config.update(_merged)
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
        rules.protocols.input,
        rules.report.input,
        rules.summary_metrics.output,
