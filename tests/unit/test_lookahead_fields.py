"""InteractivePredictor.lookahead serves every grid field from one cache, and the click rules'
settings reach ClickState from the config (random_walker and a tiny fitted head)."""

from __future__ import annotations

import numpy as np
import pytest
from helpers.laplace_fixtures import make_fitted_run

from laplace_head.bayes.posterior import load_posterior
from laplace_head.interactive.clicks import PolicySettings, grid_to_image
from laplace_head.interactive.predictor import InteractivePrediction, InteractivePredictor
from laplace_head.segmenters.random_walker import RandomWalkerSegmenter

SIGMA = 8.0
HEIGHT, WIDTH = 48, 64


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    return make_fitted_run(tmp_path_factory.mktemp("fitted"))


@pytest.fixture(scope="module")
def posterior(fitted):
    return load_posterior(fitted.laplace_dir)


def _image() -> np.ndarray:
    rng = np.random.default_rng(0)
    rows, cols = np.mgrid[:HEIGHT, :WIDTH]
    mask = ((rows - 24) / 12) ** 2 + ((cols - 32) / 14) ** 2 <= 1
    colour = np.where(mask[..., None], 200.0, 40.0) + rng.normal(0, 12, (HEIGHT, WIDTH, 3))
    return np.clip(colour, 0, 255).astype(np.uint8)


def test_lookahead_fields_are_the_predictions_and_cached(posterior, monkeypatch) -> None:
    predictor = InteractivePredictor(RandomWalkerSegmenter(), posterior, SIGMA)
    predictor.set_image(_image())
    points, labels = [[32, 24], [2, 2]], [1, 0]
    prediction = predictor.predict(points, labels)
    lookahead = predictor.lookahead(prediction)
    requests = [((128, 128), 1), ((10, 200), 0)]
    decodes = []
    extended = predictor.predict_extended
    monkeypatch.setattr(
        predictor,
        "predict_extended",
        lambda *args: decodes.append(len(args[2])) or extended(*args),
    )
    predictive = lookahead(requests)
    for field in ("map_probability", "map_logits", "logit_variance", "predictive_probability"):
        maps = lookahead(requests, field)
        for (cell, label), got in zip(requests, maps):
            x, y = grid_to_image(*cell, (HEIGHT, WIDTH))
            expected = predictor.predict([*points, [x, y]], [*labels, label])
            np.testing.assert_array_equal(got, getattr(expected, field))
    assert decodes == [2]  # every field of both requests from the first call
    np.testing.assert_array_equal(predictive[0], lookahead(requests, "predictive_probability")[0])
    with pytest.raises(ValueError, match="unknown look-ahead field 'nope'.*map_logits"):
        lookahead(requests, "nope")
    state = predictor.click_state(prediction)
    assert state.lookahead_fields is state.lookahead
    assert set(InteractivePrediction.GRID_FIELDS) >= {"map_logits", "logit_variance"}


def test_policy_settings_reach_the_click_state_from_the_config(fitted, posterior) -> None:
    from laplace_head.config.loader import validate_config
    from laplace_head.settings import stage_params

    config = validate_config(
        {
            "sam": {"backend": "random_walker", "device": "cpu"},
            "active_prompting": {
                "region_error_level": 0.4,
                "lookahead_candidates": 5,
                "coverage_radius": 30,
            },
        },
        check_paths=False,
    )
    settings = stage_params(config)["active_prompting"]
    assert settings["policy_settings"] == {
        "region_error_level": 0.4,
        "lookahead_candidates": 5,
        "coverage_radius": 30,
    }
    predictor = InteractivePredictor.from_settings(settings, fitted.laplace_dir, "cpu")
    predictor.set_image(_image())
    state = predictor.click_state(predictor.predict([[32, 24]], [1]))
    assert state.settings == PolicySettings(0.4, 5, 30)
    default = InteractivePredictor(RandomWalkerSegmenter(), posterior, SIGMA)
    assert default.policy_settings == PolicySettings()
