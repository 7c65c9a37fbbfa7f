"""The whole workflow (stages 1-7) through the real ``sam`` backend code path, on CPU.

The SAM is a tiny model built from segment_anything's own classes (random weights,
``tests/helpers/tiny_sam.py``): a ``sitecustomize`` on the jobs' PYTHONPATH (which also carries
``tests/``, so the jobs import ``helpers.tiny_sam``) swaps
``segment_anything.sam_model_registry["vit_b"]`` for a builder of that architecture, so
everything else is the production path - the registry lookup, ``torch.load`` of a checkpoint
file, ``SamPredictor``, multimask decoding, the precompute shards, training, the Laplace fit and
the evaluation.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import pandas as pd
import pytest
import torch
from helpers.tiny_sam import build_tiny_sam

from laplace_head.cache.split_h5 import read_segmenter_fingerprint
from laplace_head.dataset.demo import write_demo_dataset

REPO_ROOT = Path(__file__).resolve().parents[2]
TESTS_DIR = REPO_ROOT / "tests"
SITECUSTOMIZE = """
import segment_anything
from helpers.tiny_sam import build_tiny_sam

segment_anything.sam_model_registry["vit_b"] = lambda checkpoint=None: build_tiny_sam(seed=0)
"""

pytestmark = pytest.mark.workflow


def test_stages_1_to_8_with_the_sam_backend(tmp_path: Path, config_writer) -> None:
    images_root, masks_root = write_demo_dataset(tmp_path / "data", per_class=3)
    checkpoint = tmp_path / "tiny_sam_vit_b_shape.pth"
    torch.save(build_tiny_sam(seed=0).state_dict(), checkpoint)
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    project = tmp_path / "project"
    override = config_writer(
        tmp_path / "sam.yaml",
        images_root,
        masks_root,
        project,
        sam={"backend": "sam", "checkpoint": str(checkpoint), "model_type": "vit_b",
             "device": "cpu"},
        prompt_generation={"num_promptsets_train": 2, "num_promptsets_val": 2,
                           "num_promptsets_test": 2},
        training={"num_epochs": 1, "batch_size": 4},
        laplace={"prior_precision_grid": [0.01, 1.0], "temperature_grid": [1.0, 100.0],
                 "max_pixels_fit": 20000, "n_posterior_samples": 4},
        active_prompting={"policies": ["oracle", "random", "bald"], "max_clicks": 3,
                          "n_bootstrap": 100, "suggest_policy": "bald_lookahead"},
    )  # fmt: skip
    command = [
        str(Path(sys.executable).parent / "snakemake"),
        *("--workflow-profile", "none", "--cores", "2"),
        "--configfile",
        *(str(REPO_ROOT / "config" / name) for name in ("config.yaml", "demo.yaml")),
        str(override),
    ]
    # The jobs import sitecustomize from ``site`` and helpers.tiny_sam from ``tests/``.
    python_path = [str(site), str(TESTS_DIR), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONPATH": os.pathsep.join(python_path)}
    result = subprocess.run(
        command, cwd=REPO_ROOT, capture_output=True, text=True, env=env, timeout=900
    )
    assert result.returncode == 0, result.stderr[-6000:]

    metas = sorted((project / "sam_precompute").glob("*/*/promptset_*/meta.json"))
    assert metas, "no prompt set was precomputed"
    for path in metas:
        meta = json.loads(path.read_text())
        assert meta["segmenter"] == "sam" and meta["model_type"] == "vit_b"
        assert meta["checkpoint_md5"] and len(meta["scores"]) == 3
        assert meta["scores"][meta["branch_index"]] == max(meta["scores"])
    summaries = [
        json.loads(p.read_text()) for p in (project / "sam_precompute").glob("*/_shards/*.json")
    ]
    images = {p.parent.parent.name for p in metas}
    # One encoder pass per image: every image of a shard is encoded exactly once.
    assert sum(s["n_images_encoded"] for s in summaries) == len(images)
    assert sum(s["failed"] for s in summaries) == 0
    metrics = json.loads((project / "reports" / "eval" / "run_v1" / "metrics.json").read_text())
    assert set(metrics["overall"]) >= {"base", "map", "map_temperature_scaled", "laplace"}
    posterior = json.loads(
        (project / "laplace" / "no_image" / "run_v1" / "posterior_meta.json").read_text()
    )
    assert posterior["n_params"] == 17
    # The segmenter fingerprint: recorded by pack_hdf5, copied by the fit; stage 8 below builds
    # its predictor from the run's own settings, so it passes the check.
    fingerprint = posterior["segmenter_fingerprint"]
    assert fingerprint["backend"] == "sam" and fingerprint["model_type"] == "vit_b"
    assert fingerprint["checkpoint_bytes"] == checkpoint.stat().st_size
    assert "checkpoint" not in fingerprint and fingerprint["prompt_sigma"] > 0
    for split in ("train", "val", "test"):
        with h5py.File(project / "training_data" / "no_image" / f"{split}.h5", "r") as handle:
            assert read_segmenter_fingerprint(handle) == fingerprint
    # Stage 8: every test image x every policy and the shipped rule (suggest_policy, added to
    # the configured ones), clicks decoded by the tiny SAM.
    report_dir = project / "reports" / "active_prompting" / "run_v1"
    records = [
        json.loads(line)
        for shard in sorted((report_dir / "shards" / "test").glob("shard_*.jsonl"))
        for line in shard.read_text().splitlines()
    ]
    test_ids = set(pd.read_csv(project / "manifests" / "test.csv", dtype=str)["sample_id"])
    assert {(r["sample_id"], r["policy"]) for r in records} == {
        (s, p) for s in test_ids for p in ("oracle", "random", "bald", "bald_lookahead")
    }
    assert all(1 <= len(r["iou_head"]) <= 3 and r["clicks"][0]["label"] == 1 for r in records)
    active = json.loads((report_dir / "metrics.json").read_text())
    assert active["overall"]["oracle"]["head"]["n_images"] == len(test_ids)
    assert "oracle_vs_random" in active["paired"] and "head_vs_base_oracle" in active["paired"]
    assert (report_dir / "curves.png").read_bytes()[:4] == b"\x89PNG"

    again = subprocess.run(
        command, cwd=REPO_ROOT, capture_output=True, text=True, env=env, timeout=300
    )
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr
