"""profiles/default and profiles/slurm: parsed the way Snakemake parses them, checked key by key.

Fast and always on; the run on a real SLURM cluster is test_slurm.py (opt-in).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from snakemake.cli import parse_set_resources
from snakemake.profiles import ProfileConfigFileParser

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_PROFILE = REPO_ROOT / "profiles" / "default" / "config.yaml"
SLURM_PROFILE = REPO_ROOT / "profiles" / "slurm" / "config.yaml"
GPU_RULES = {
    "precompute_sam",
    "train_head",
    "sanity_check_head",
    "active_prompting",
    "active_prompting_variant",  # `snakemake ablation`'s copy of active_prompting
    # a `heads:` list's copies of stages 4 and 8 for each extra head variant
    "train_head_for_head",
    "sanity_check_head_for_head",
    "active_prompting_for_head",
    "active_prompting_variant_for_head",
}
CPU_RULES = {
    "build_manifests",
    "generate_promptsets",
    "build_training_index",
    "pack_hdf5",
    "fit_laplace",  # the Laplace fit and its grid search run on the CPU (laplace_head.bayes)
    "evaluate",
    "visualize_sanity",
    "plot_training_curves",
    "active_prompting_report",
    # `snakemake ablation` (rules/ablation.smk): copies of stages 6-8 per posterior variant
    "fit_laplace_variant",
    "evaluate_variant",
    "active_prompting_report_variant",
    "ablation_report",
    # a `heads:` list's copies of stages 3-8 for each extra head variant
    "pack_hdf5_for_head",
    "fit_laplace_for_head",
    "evaluate_for_head",
    "plot_training_curves_for_head",
    "active_prompting_report_for_head",
    "fit_laplace_variant_for_head",
    "evaluate_variant_for_head",
    "active_prompting_report_variant_for_head",
}


def snakemake_args(path: Path) -> dict:
    """The profile as Snakemake turns it into command-line defaults."""
    with path.open(encoding="utf-8") as stream:
        return dict(ProfileConfigFileParser().parse(stream))


def rule_blocks() -> dict[str, tuple[str | None, str]]:
    """Each rule of the Snakefile and rules/*.smk: its name -> (the rule it copies with
    `use rule`, or None; its text)."""
    blocks: dict[str, tuple[str | None, str]] = {}
    for source in [REPO_ROOT / "Snakefile", *sorted((REPO_ROOT / "rules").glob("*.smk"))]:
        text = source.read_text(encoding="utf-8")
        pattern = r"^(?=(?:use rule|rule|checkpoint) )"
        for block in re.split(pattern, text, flags=re.MULTILINE):
            if match := re.match(r"(?:rule|checkpoint) (\w+):", block):
                blocks[match.group(1)] = (None, block)
            elif match := re.match(r"use rule (\w+) as (\w+)", block):
                blocks[match.group(2)] = (match.group(1), block)
    return blocks


def workflow_rules() -> set[str]:
    return set(rule_blocks())


def _rules_where(has: str) -> set[str]:
    """Rules whose own text matches `has`, or that copy (`use rule`) such a rule without
    overriding that part."""
    blocks = rule_blocks()

    def matches(name: str) -> bool:
        parent, block = blocks[name]
        if re.search(has, block, flags=re.MULTILINE):
            return True
        return parent is not None and matches(parent)

    return {name for name in blocks if matches(name)}


def declared_gpu_rules() -> set[str]:
    """Rules whose ``resources:`` declare ``gpu=N`` (the local GPU pool): a literal N >= 1, or
    a named count such as ``SAM_DEVICE_GPU_SLOTS`` (1 unless ``sam.device`` is cpu)."""
    return _rules_where(r"^\s+gpu=(?:[1-9]|[A-Z][A-Z0-9_]*\b)")


def job_rules() -> set[str]:
    """Rules that run something (script:, shell:, run:), as opposed to target-only rules."""
    return _rules_where(r"^\s+(?:script|shell|run):")


def copied_rules() -> dict[str, str]:
    """`use rule PARENT as NAME` in the workflow: NAME -> PARENT."""
    return {name: parent for name, (parent, _) in rule_blocks().items() if parent is not None}


def test_default_profile_keys() -> None:
    args = snakemake_args(DEFAULT_PROFILE)
    assert args["cores"] == "all"
    assert args["resources"] == ["gpu=1"]
    for flag in ("rerun-incomplete", "printshellcmds", "show-failed-logs"):
        assert str(args[flag]).lower() == "true", flag
    assert int(args["latency-wait"]) >= 0
    assert "executor" not in args  # local execution


def test_default_profile_explains_every_key() -> None:
    """Each key is preceded by a comment line saying what it does."""
    lines = DEFAULT_PROFILE.read_text(encoding="utf-8").splitlines()
    keys = [i for i, line in enumerate(lines) if re.match(r"^[a-z-]+:", line)]
    assert len(keys) == len(yaml.safe_load("\n".join(lines)))
    for index in keys:
        assert lines[index - 1].startswith("#"), f"no comment above '{lines[index]}'"
    assert "CUDA_VISIBLE_DEVICES" in "\n".join(lines)


def test_slurm_profile_uses_the_slurm_executor_without_forcing_squeue() -> None:
    args = snakemake_args(SLURM_PROFILE)
    assert args["executor"] == "slurm"
    assert int(args["jobs"]) >= 1
    assert int(args["retries"]) >= 1
    # Real clusters report job states through sacct; the squeue fallback is a test-only flag.
    assert not any(key.startswith("slurm-") for key in args)


def test_slurm_default_resources_are_editable_placeholders() -> None:
    profile = yaml.safe_load(SLURM_PROFILE.read_text(encoding="utf-8"))
    defaults = profile["default-resources"]
    assert set(defaults) >= {"slurm_partition", "slurm_account", "mem_mb", "runtime"}
    assert defaults["slurm_partition"] == "" and defaults["slurm_account"] == ""
    assert defaults["cpus_per_task"] == "threads"


def test_slurm_gpu_rules_get_one_gpu_and_cpu_rules_none() -> None:
    args = snakemake_args(SLURM_PROFILE)
    per_rule = parse_set_resources(args["set-resources"])  # raises on a malformed entry
    profile = yaml.safe_load(SLURM_PROFILE.read_text(encoding="utf-8"))
    set_resources = profile["set-resources"]
    for rule in GPU_RULES:
        assert set_resources[rule]["gpu"] == 1, rule
    for rule in CPU_RULES:
        assert "gpu" not in set_resources.get(rule, {}), rule
        assert "gres" not in set_resources.get(rule, {}), rule
    assert set(per_rule) == set(set_resources)
    # The profile requests a GPU for exactly the rules that draw on the local GPU pool.
    from_profile = {rule for rule, res in set_resources.items() if int(res.get("gpu", 0)) > 0}
    assert from_profile == GPU_RULES
    assert declared_gpu_rules() == GPU_RULES
    assert not GPU_RULES & CPU_RULES
    unclassified = job_rules() - GPU_RULES - CPU_RULES
    assert not unclassified, f"add {sorted(unclassified)} to GPU_RULES or CPU_RULES"


def test_slurm_rule_copies_get_their_parents_resources() -> None:
    """SLURM resources are looked up by rule name: a `use rule X as Y` copy that runs the same
    work must request what X requests, or the ablation's stage 8 would run without a GPU."""
    profile = yaml.safe_load(SLURM_PROFILE.read_text(encoding="utf-8"))
    set_resources = profile["set-resources"]
    copies = copied_rules()
    assert copies  # rules/ablation.smk copies stages 6-8
    for name, parent in copies.items():
        assert set_resources.get(name) == set_resources.get(parent), (name, parent)


@pytest.mark.parametrize("attempt", [1, 2, 3])
def test_slurm_memory_and_runtime_grow_with_attempt(attempt: int) -> None:
    profile = yaml.safe_load(SLURM_PROFILE.read_text(encoding="utf-8"))
    entries = [profile["default-resources"], *profile["set-resources"].values()]
    for resources in entries:
        for name in ("mem_mb", "runtime"):
            if name in resources:
                expression = str(resources[name])
                first = eval(expression, {"attempt": 1})  # the profile's own text
                value = eval(expression, {"attempt": attempt})
                assert value == first * attempt, f"{name}: {expression}"


def test_slurm_profile_names_only_rules_of_the_workflow() -> None:
    profile = yaml.safe_load(SLURM_PROFILE.read_text(encoding="utf-8"))
    named = set(profile["set-resources"]) | set(profile["groups"])
    missing = named - workflow_rules()
    assert not missing, f"profiles/slurm names rules the workflow does not have: {missing}"


def test_slurm_profile_groups_the_small_cpu_jobs() -> None:
    args = snakemake_args(SLURM_PROFILE)
    groups = dict(entry.split("=") for entry in args["groups"])
    components = dict(entry.split("=") for entry in args["group-components"])
    assert groups["generate_promptsets"] in components
    assert int(components[groups["generate_promptsets"]]) > 1
    assert not set(groups) & GPU_RULES
