"""Two heads in one workflow (``heads: [no_image, image]``): stages 1-4 once, stages 4.5-8 per
head, the no_image head's outputs at the seed's paths and the image head's under its name."""

from __future__ import annotations

import json
import re
from pathlib import Path

import h5py
import pytest
import torch
import yaml

from laplace_head.cache.split_h5 import IMAGE_ARRAY, IMAGE_ROW
from laplace_head.dataset.demo import write_demo_dataset
from laplace_head.dataset.manifests import read_split_manifest
from laplace_head.layout import SPLITS, ProjectLayout

REPO_ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.workflow


def test_both_heads_run_stages_1_to_8_on_shared_stages_1_to_4(
    tmp_path, snakemake_runner, config_writer
):
    images_root, masks_root = write_demo_dataset(tmp_path / "data", per_class=3)
    project = tmp_path / "project"
    promptsets = {"num_promptsets_train": 2, "num_promptsets_val": 1, "num_promptsets_test": 1}
    override = config_writer(
        tmp_path / "override.yaml",
        images_root,
        masks_root,
        project,
        data={"shard_size": 8},
        prompt_generation=promptsets,
        training={"num_epochs": 1, "num_workers": 0, "device": "cpu"},
        laplace={"prior_precision_grid": [0.01, 1.0, 100.0], "max_pixels_fit": 50000},
        active_prompting={"policies": ["oracle", "random"], "max_clicks": 2},
        heads=["no_image", "image"],
    )
    args = ["--workflow-profile", "none", "--cores", "2"]
    configs = ["--configfile", str(REPO_ROOT / "config" / "demo.yaml"), str(override)]
    snakemake_runner([*args, *configs])

    seed, image = ProjectLayout(project, "v1"), ProjectLayout(project, "v1", "image")
    # the seed head's paths are the seed's; the image head's carry its name
    assert seed.eval_file("metrics") == project / "reports/eval/run_v1/metrics.json"
    assert image.eval_file("metrics") == project / "reports/eval/image/run_v1/metrics.json"
    for layout in (seed, image):
        assert layout.training_summary.is_file() and layout.training_curves.is_file()
        metrics = json.loads(layout.eval_file("metrics").read_text())
        assert 0.0 <= metrics["overall"]["laplace"]["iou"] <= 1.0
        # one IoU per test image for the head and the base, paired image by image
        per_image, paired = metrics["per_image_iou"], metrics["paired"]["head_vs_base_iou"]
        assert paired["n"] == len(per_image["sample_id"]) == len(set(per_image["sample_id"])) > 1
        clicks = json.loads(layout.active_prompting_report("test")["metrics"].read_text())
        assert {"oracle", "random"} <= set(clicks["policies"])
        assert layout.log("train_head").is_file()
    assert image.log("train_head") == project / "logs/train_head/image/run_v1.log"

    # stage 4 is shared: the image head's folder holds only its split files
    assert sorted(p.name for p in image.training_data_dir.iterdir()) == [
        f"{split}.h5" for split in sorted(SPLITS)
    ]
    for split in SPLITS:
        samples = read_split_manifest(seed.manifest(split))
        with h5py.File(image.split_h5(split), "r") as handle:
            assert isinstance(handle.get("logits_256", getlink=True), h5py.ExternalLink)
            assert handle[IMAGE_ARRAY].shape == (len(samples), 3, 256, 256)
            assert handle[IMAGE_ROW].shape == (handle["logits_256"].shape[0],)
            per_sample = promptsets[f"num_promptsets_{split}"]
            assert handle["logits_256"].shape[0] == per_sample * len(samples)

    # each posterior records its head; the image head was trained on 6 input channels
    for layout, head, channels in ((seed, "no_image", 3), (image, "image", 6)):
        meta = json.loads(layout.laplace_file("meta").read_text())
        assert meta["head"] == head
        best = torch.load(layout.best_checkpoint, weights_only=False)
        assert best["model_args"]["channels_in"] == channels

    # the ablation runs every posterior variant on both heads (planned here, run in
    # test_ablation.py for the seed head)
    dry = snakemake_runner(["ablation", "-n", *args, *configs]).stdout
    for rule in ("fit_laplace_variant", "evaluate_variant", "active_prompting_report_variant"):
        assert re.search(rf"^{rule}\s+\d+$", dry, re.MULTILINE), rule
        assert re.search(rf"^{rule}_for_head\s+\d+$", dry, re.MULTILINE), rule
    assert "laplace/image/run_v1/variants/" in dry

    # done: nothing left, and the default heads (no_image) find the seed head's outputs current
    again = snakemake_runner(["-n", *args, *configs])
    assert "Nothing to be done" in again.stdout + again.stderr
    settings = yaml.safe_load(override.read_text())
    settings.pop("heads")
    override.write_text(yaml.safe_dump(settings))
    again = snakemake_runner(["-n", *args, *configs])
    assert "Nothing to be done" in again.stdout + again.stderr
