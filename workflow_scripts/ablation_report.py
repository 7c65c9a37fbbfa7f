"""Rule ablation_report (`snakemake ablation`): one table and figure over the posterior variants."""

from laplace_head import stages
from laplace_head.layout import ABLATION_FILES
from laplace_head.util.console import run_rule

inputs, output, settings = snakemake.input, snakemake.output, snakemake.params.settings
variants = {
    name: {
        "meta": inputs[f"{name}.meta"],
        "eval": inputs[f"{name}.eval"],
        "clicks": {split: inputs[f"{name}.clicks.{split}"] for split in settings["splits"]},
    }
    for name in settings["variants"]
}
run_rule(
    snakemake,
    lambda: stages.ablation_report(
        variants, {name: output[name] for name in ABLATION_FILES}, settings
    ),
)
