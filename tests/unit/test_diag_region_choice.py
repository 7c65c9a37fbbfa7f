"""bench/diag_region_choice.py: both region rules asked at the same states of a random
trajectory, each choice checked against the rule itself and against a prediction made here."""

from __future__ import annotations

import numpy as np
import pytest
from helpers.laplace_fixtures import make_fitted_run

from laplace_head.bayes.posterior import load_posterior
from laplace_head.dataset.images import resize_mask_nearest
from laplace_head.interactive.clicks import (
    POLICIES,
    click_rng,
    error_regions,
    first_click,
    grid_to_image,
)
from laplace_head.interactive.predictor import InteractivePredictor
from laplace_head.interactive.session import ClickSession
from laplace_head.interactive.simulate import mask_iou
from laplace_head.segmenters.random_walker import RandomWalkerSegmenter
from laplace_head.settings import GRID_SIZE


@pytest.fixture(scope="module")
def bench_modules(bench_script):
    return bench_script("diag_region_choice"), bench_script("bench_precompute")


def test_states_hold_each_rules_own_choice_and_its_one_click_gain(
    bench_modules, tmp_path, capsys
) -> None:
    diag, bench_precompute = bench_modules
    [(image, mask)] = bench_precompute.make_images(1, 60, 80)
    gt_256 = resize_mask_nearest(mask, GRID_SIZE, GRID_SIZE)
    posterior = load_posterior(make_fitted_run(tmp_path).laplace_dir)
    predictor = InteractivePredictor(RandomWalkerSegmenter(), posterior, 8.0)
    predictor.set_image(image)
    states = diag.image_states(predictor, image, gt_256, "synthetic/a", 5, seed=0)
    assert [s["click"] for s in states] == [1, 2, 3, 4]

    # Replay the random trajectory: at each state both rules' records are what the rules give.
    session = ClickSession(predictor, image)
    cell, clicked = first_click(gt_256), set()
    for entry in states:
        x, y = grid_to_image(cell[0], cell[1], image.shape[:2])
        session.add_click(x, y, int(gt_256[cell]))
        clicked.add(cell)
        prediction = session.predict()
        state = predictor.click_state(prediction, posterior=True)
        state.clicked = set(clicked)
        iou = mask_iou(prediction.map_probability > 0.5, gt_256)
        assert entry["iou"] == pytest.approx(iou)
        for rule, probability in (
            ("bald_region", state.predictive_probability),
            ("map_region", state.map_probability),
        ):
            choice = entry[rule]
            labels, count = error_regions(state, probability)
            if choice is None:  # e.g. after a positive first click random_walker's p is 1
                assert count == 0
                continue
            chosen = tuple(choice["cell"])
            assert chosen == POLICIES[rule](state, np.random.default_rng(0))
            region = labels == labels[chosen]
            wrong = (prediction.map_probability > 0.5) != gt_256
            assert labels[chosen] != 0
            assert choice["region_cells"] == region.sum()
            assert choice["wrong_cells"] == (region & wrong).sum()
            assert choice["cell_wrong"] == wrong[chosen]
            cx, cy = grid_to_image(chosen[0], chosen[1], image.shape[:2])
            after = predictor.predict(
                np.concatenate([prediction.points_xy, [[cx, cy]]]),
                np.concatenate([prediction.labels, [int(gt_256[chosen])]]),
            )
            gain = mask_iou(after.map_probability > 0.5, gt_256) - iou
            assert choice["gain"] == pytest.approx(gain)
        cell = POLICIES["random"](state, click_rng(0, "synthetic/a", "random", entry["click"]))
    diag.summarise(states, n_bootstrap=200, seed=0)
    out = capsys.readouterr().out
    both = [s for s in states if s["bald_region"] and s["map_region"]]
    differ = sum(s["bald_region"]["cell"] != s["map_region"]["cell"] for s in both)
    assert both, "the fixture should give both rules a region at some state"
    assert out.startswith(
        f"4 states, {len(both)} with a region for both rules, {differ} where they click "
        "different cells"
    )
    assert ("1-click IoU gain" in out) == (differ > 0)
