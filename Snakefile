# Laplace Head: a calibrated, prompt-aware Bayesian refinement head on a frozen SAM.
# Stages and outputs: see README.md. Logic lives in the laplace_head package; rules only wire it.
from snakemake.utils import min_version

min_version("8.0")


configfile: "config/config.yaml"


include: "rules/common.smk"
include: "rules/manifests.smk"
include: "rules/prompts.smk"
include: "rules/precompute.smk"
include: "rules/training_data.smk"
include: "rules/visualize.smk"
include: "rules/train.smk"
include: "rules/laplace.smk"
include: "rules/evaluate.smk"
include: "rules/active_prompting.smk"
include: "rules/ablation.smk"
include: "rules/targets.smk"


rule all:
    default_target: True
    input:
        get_final_targets(),
