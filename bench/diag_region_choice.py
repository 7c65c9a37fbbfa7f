"""Diagnostic (not a benchmark): where ``bald_region`` and its twin ``map_region`` click from the
same state, what their chosen regions hold, and what one click there gains.

Stage 8 compares the two rules by their whole click curves, each on its own trajectory. This
script holds the state fixed instead: on every image of a split it follows the ``random``
rule's clicks (seeded as stage 8 seeds them), and after each click it asks both rules for
their next cell. For each rule it records the chosen region (the :func:`~laplace_head
.interactive.clicks.error_regions` component that holds the cell: ``bald_region`` reads the
posterior predictive probability, ``map_region`` the MAP probability), how many of its cells
the head's mask gets wrong, whether the cell itself is wrong, and the head IoU after that one
click (labelled by the ground truth) minus the IoU before. It prints the means and, per image,
the paired differences ``bald_region - map_region`` with the stage-8 bootstrap CI
(:func:`~laplace_head.evaluation.active_prompting.paired_comparison`), over the states where the
two rules pick different cells. It needs a finished project (the split manifest and a fitted
posterior); nothing is asserted.

    .venv/bin/python bench/diag_region_choice.py --config config/config.yaml \\
        config/real_dev.yaml config/real_large.yaml \\
        --laplace-dir real_large_project/laplace/no_image/run_v1/variants/all_kron_fixed_t_tau \\
        [--split val] [--clicks 10] [--out states.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from laplace_head.config.loader import load_configs
from laplace_head.dataset.images import load_image_rgb, load_mask, resize_mask_nearest
from laplace_head.evaluation.active_prompting import paired_comparison
from laplace_head.interactive import clicks
from laplace_head.interactive.predictor import InteractivePredictor
from laplace_head.interactive.session import ClickSession
from laplace_head.interactive.simulate import mask_iou
from laplace_head.layout import ProjectLayout
from laplace_head.settings import GRID_SIZE

RULES = {  # rule -> (its cell, the probability its regions are cut from)
    "bald_region": (
        lambda state: clicks.bald_region_centres(state, 1),
        lambda state: state.predictive_probability,
    ),
    "map_region": (
        lambda state: clicks.map_region_centres(state, 1),
        lambda state: state.map_probability,
    ),
}


def rule_choice(predictor, prediction, state, rule: str, gt_256: np.ndarray, iou: float):
    """The rule's cell and region at ``state`` and what one click there does (None: no region)."""
    centre, probability = RULES[rule]
    cells = centre(state)
    if not cells:
        return None
    cell = cells[0]
    labels, _ = clicks.error_regions(state, probability(state))
    region = labels == labels[cell]
    wrong = (prediction.map_probability > 0.5) != gt_256
    x, y = clicks.grid_to_image(cell[0], cell[1], prediction.image_hw)
    after = predictor.predict(
        np.concatenate([prediction.points_xy, [[x, y]]]),
        np.concatenate([prediction.labels, [int(gt_256[cell])]]),
    )
    return {
        "cell": [int(cell[0]), int(cell[1])],
        "region_cells": int(region.sum()),
        "wrong_cells": int((region & wrong).sum()),
        "cell_wrong": bool(wrong[cell]),
        "gain": mask_iou(after.map_probability > 0.5, gt_256) - iou,
    }


def image_states(predictor, image, gt_256, sample_id: str, max_clicks: int, seed: int) -> list:
    """Both rules' choices after each of the random rule's clicks 1..max_clicks - 1."""
    session = ClickSession(predictor, image)
    cell, clicked, states = clicks.first_click(gt_256), set(), []
    for index in range(max_clicks):
        if index:
            prediction = session.predict()
            state = predictor.click_state(prediction, posterior=True)
            state.clicked = set(clicked)
            iou = mask_iou(prediction.map_probability > 0.5, gt_256)
            entry = {"sample_id": sample_id, "click": index, "iou": iou}
            for rule in RULES:
                entry[rule] = rule_choice(predictor, prediction, state, rule, gt_256, iou)
            states.append(entry)
            rng = clicks.click_rng(seed, sample_id, "random", index)
            cell = clicks.get_policy("random")(state, rng)
            if cell is None:
                break
        x, y = clicks.grid_to_image(cell[0], cell[1], image.shape[:2])
        session.add_click(x, y, int(gt_256[cell]))
        clicked.add(cell)
    return states


def summarise(states: list, n_bootstrap: int, seed: int) -> None:
    """Print the means and the per-image paired differences (``bald_region - map_region``)."""
    both = [s for s in states if s["bald_region"] and s["map_region"]]
    differ = [s for s in both if s["bald_region"]["cell"] != s["map_region"]["cell"]]
    print(
        f"{len(states)} states, {len(both)} with a region for both rules, {len(differ)} where "
        f"they click different cells"
    )
    if not differ:
        return
    print(
        f"\n{'rule':<12} {'region cells':>12} {'wrong cells':>11} {'wrong fraction':>14} "
        f"{'cell wrong':>10} {'1-click IoU gain':>16}"
    )
    for rule in RULES:
        cells = np.array([s[rule]["region_cells"] for s in differ])
        wrong = np.array([s[rule]["wrong_cells"] for s in differ])
        hit = np.mean([s[rule]["cell_wrong"] for s in differ])
        gain = np.mean([s[rule]["gain"] for s in differ])
        print(
            f"{rule:<12} {cells.mean():>12.0f} {wrong.mean():>11.0f} "
            f"{np.mean(wrong / np.maximum(cells, 1)):>14.3f} {hit:>10.2f} {gain:>+16.4f}"
        )
    measures = {  # name -> (measure of one choice, digits)
        "1-click IoU gain": (lambda c: c["gain"], 4),
        "wrong fraction of the region": (
            lambda c: c["wrong_cells"] / max(c["region_cells"], 1),
            4,
        ),
        "wrong cells in the region": (lambda c: c["wrong_cells"], 0),
        "region cells": (lambda c: c["region_cells"], 0),
    }
    print("\nbald_region - map_region, per image (mean over its states), 95% bootstrap CI:")
    for name, (measure, digits) in measures.items():
        per_image: dict[str, list[float]] = {}
        for s in differ:
            per_image.setdefault(s["sample_id"], []).append(
                measure(s["bald_region"]) - measure(s["map_region"])
            )
        diff = np.array([np.mean(v) for v in per_image.values()])
        result = paired_comparison(diff, n_bootstrap, seed, "diag_region_choice")
        low, high = result["ci95"]
        print(
            f"  {name:<30} {result['mean_difference']:+.{digits}f} [{low:+.{digits}f}, "
            f"{high:+.{digits}f}] "
            f"({result['n']} images, {result['n_better']} up / {result['n_worse']} down)"
        )


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", nargs="+", required=True, metavar="FILE")
    parser.add_argument("--laplace-dir", required=True, help="the fitted posterior to click with")
    parser.add_argument("--split", default="val", choices=["train", "val", "test"])
    parser.add_argument("--clicks", type=int, default=10, help="clicks per image (stage 8's)")
    parser.add_argument("--out", help="write every state's record to this JSON file")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    config = load_configs(args.config, check_paths=False)
    settings = config["active_prompting"]
    predictor = InteractivePredictor.from_config(config, args.laplace_dir, device="cpu")
    manifest = ProjectLayout(config["data"]["project_root"]).manifest(args.split)
    states = []
    for row in tqdm(pd.read_csv(manifest).itertuples(), desc="images", unit="image"):
        image = load_image_rgb(row.image_path)
        gt = load_mask(row.mask_path).astype(bool)
        if gt.shape != image.shape[:2]:  # as stage 8 reads a mask of another size
            gt = resize_mask_nearest(gt, *image.shape[:2])
        gt_256 = resize_mask_nearest(gt, GRID_SIZE, GRID_SIZE)
        predictor.set_image(image)
        states += image_states(
            predictor, image, gt_256, row.sample_id, args.clicks, int(settings["seed"])
        )
    if args.out:
        Path(args.out).write_text(json.dumps(states))
    summarise(states, int(settings["n_bootstrap"]), int(settings["seed"]))


if __name__ == "__main__":
    sys.exit(main())
