"""`snakemake ablation` on a tiny demo project: every variant fits on the one trained head, is
evaluated by stages 7 and 8 on val and test, and the summary chooses on val."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from laplace_head.dataset.demo import write_demo_dataset
from laplace_head.layout import ProjectLayout

REPO_ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.workflow
VARIANTS = {
    "last_diag": {"target_layer": "final_conv", "approx": "diagonal", "tuning": "val_nll"},
    "all_kron_fixed": {
        "target_layer": "all",
        "approx": "kron",
        "tuning": "fixed_temperature",
        "max_pixels_fit": 20000,
        "max_pixels_tune": 20000,
    },
}


def test_snakemake_ablation_fits_evaluates_and_chooses_on_val(
    tmp_path, snakemake_runner, config_writer
):
    images_root, masks_root = write_demo_dataset(tmp_path / "data", per_class=3)
    project = tmp_path / "project"
    override = config_writer(
        tmp_path / "override.yaml",
        images_root,
        masks_root,
        project,
        data={"shard_size": 8},
        prompt_generation={
            "num_promptsets_train": 1,
            "num_promptsets_val": 1,
            "num_promptsets_test": 1,
        },
        training={"num_epochs": 1, "num_workers": 0, "device": "cpu"},
        laplace={
            "prior_precision_grid": [0.01, 1.0, 100.0],
            "temperature_grid": [1.0, 100.0],
            "max_pixels_fit": 50000,
        },
        ablation={
            "variants": VARIANTS,  # merged into the defaults' map; run picks these
            "run": list(VARIANTS),
            "policies": ["oracle", "random", "bald", "bald_region"],
            "max_clicks": 3,
        },
    )
    args = ["--workflow-profile", "none", "--cores", "2"]
    configs = ["--configfile", str(REPO_ROOT / "config" / "demo.yaml"), str(override)]
    snakemake_runner(["ablation", *args, *configs])

    run = ProjectLayout(project, "v1")
    summary = json.loads(run.ablation_file("metrics").read_text())
    assert [row["variant"] for row in summary["variants"]] == list(VARIANTS)
    for row in summary["variants"]:
        variant = run.for_posterior(row["variant"])
        meta = json.loads(variant.laplace_file("meta").read_text())
        assert meta["val_bald_error_auroc"] == row["val_bald_auroc"]
        assert 0.0 <= row["test_bald_auroc"] <= 1.0
        for split in ("val", "test"):
            clicks = row["clicks"][split]
            assert set(clicks) == {"oracle", "random", "bald", "bald_region"}
            assert len(clicks["bald"]["miou"]) == 3
    diag = json.loads(run.for_posterior("last_diag").laplace_file("meta").read_text())
    assert (diag["posterior"]["approx"], diag["posterior"]["tuning"]) == ("diagonal", "val_nll")
    kron = json.loads(run.for_posterior("all_kron_fixed").laplace_file("meta").read_text())
    assert kron["posterior"]["subset"] == "all_layers"
    assert kron["temperature"] == kron["pixels_per_row"]
    # one trained head for all variants; the run's own posterior was not needed
    assert len(list((project / "checkpoints" / "no_image").iterdir())) == 1
    assert not run.laplace_file("meta").exists()
    # the choice is the BALD rule with the best val gain over random
    choice = summary["choice"]
    gains = {
        (row["variant"], policy): entry["vs_random"]
        for row in summary["variants"]
        for policy, entry in row["clicks"]["val"].items()
        if "bald" in policy
    }
    assert gains[(choice["variant"], choice["policy"])] == max(gains.values())
    table = pd.read_csv(run.ablation_file("table"))
    assert set(table["split"]) == {"val", "test"} and set(table["variant"]) == set(VARIANTS)
    assert "Chosen on val" in run.ablation_file("markdown").read_text()
    assert run.ablation_file("figure").stat().st_size > 10_000
    # nothing to do on a second call
    again = snakemake_runner(["ablation", "-n", *args, *configs])
    assert "Nothing to be done" in again.stdout + again.stderr
