"""InteractivePredictor, ClickSession and simulate_clicks on random_walker and a tiny SAM, with a
fitted head.

The posterior comes from ``make_fitted_run`` (a head trained on 32 x 32 synthetic maps): the
head is fully convolutional, so it runs unchanged on the 256 grid of live predictions.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers.laplace_fixtures import make_fitted_run
from helpers.tiny_sam import CountingSam

from laplace_head.bayes.posterior import PosteriorLoadError, load_posterior
from laplace_head.bayes.predictive import UncertaintyInputError
from laplace_head.cache.promptset_format import (
    read_promptset_outputs,
    stored_logits,
    write_promptset,
)
from laplace_head.cache.split_h5 import assemble_inputs
from laplace_head.dataset.images import resize_image_grid
from laplace_head.interactive.clicks import (
    POLICIES,
    POSTERIOR_FREE_POLICIES,
    ClickState,
    grid_to_image,
    image_to_grid,
)
from laplace_head.interactive.predictor import (
    InteractivePrediction,
    InteractivePredictor,
    prompt_maps,
    suggest_for_inputs,
)
from laplace_head.interactive.session import ClickSession
from laplace_head.interactive.simulate import simulate_clicks
from laplace_head.prompts.sampling import PromptSet
from laplace_head.segmenters.random_walker import RandomWalkerSegmenter

SIGMA = 8.0
HEIGHT, WIDTH = 48, 64


def _image_and_mask(seed: int = 0, height: int = HEIGHT, width: int = WIDTH):
    """A bright ellipse on a dark noisy background, and its mask."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[:height, :width]
    cy, cx = rng.uniform(0.4, 0.6, 2) * (height, width)
    mask = ((rows - cy) / (0.25 * height)) ** 2 + ((cols - cx) / (0.22 * width)) ** 2 <= 1
    colour = np.where(mask[..., None], 200.0, 40.0) + rng.normal(0, 12, (height, width, 3))
    return np.clip(colour, 0, 255).astype(np.uint8), mask


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    return make_fitted_run(tmp_path_factory.mktemp("fitted"))


@pytest.fixture(scope="module")
def posterior(fitted):
    return load_posterior(fitted.laplace_dir)


@pytest.fixture
def walker_predictor(posterior) -> InteractivePredictor:
    return InteractivePredictor(RandomWalkerSegmenter(), posterior, SIGMA)


def _check_maps(prediction: InteractivePrediction) -> None:
    assert prediction.masks.shape == (1, *prediction.image_hw) and prediction.masks.dtype == bool
    for name in InteractivePrediction.GRID_FIELDS:
        value = getattr(prediction, name)
        assert value.shape == (256, 256) and value.dtype == np.float32, name
        assert np.isfinite(value).all(), name
    for name in ("map_probability", "predictive_probability"):
        value = getattr(prediction, name)
        assert value.min() >= 0 and value.max() <= 1
    assert prediction.bald.min() >= 0 and prediction.logit_variance.min() >= 0
    assert prediction.entropy.max() <= np.log(2) + 1e-6
    assert np.all(prediction.bald <= prediction.entropy + 1e-6)


def test_predict_shapes_finiteness_and_to_image(walker_predictor) -> None:
    image, _ = _image_and_mask()
    walker_predictor.set_image(image)
    prediction = walker_predictor.predict([[32, 24], [30, 20], [2, 2]], [1, 1, 0])
    _check_maps(prediction)
    assert prediction.image_hw == (HEIGHT, WIDTH) and prediction.uncertainty == "quadrature"
    assert set(prediction.timings_s) == {"decode", "prompt_maps", "head", "uncertainty"}
    assert prediction.bald.max() > 0  # the fitted posterior is not degenerate
    for name in ("map_probability", "bald", "base_logits"):
        full = prediction.to_image(name)
        assert full.shape == (HEIGHT, WIDTH) and full.dtype == np.float32
        assert np.isfinite(full).all()
    probability = prediction.to_image("map_probability")
    assert probability.min() >= 0 and probability.max() <= 1
    with pytest.raises(ValueError, match="unknown field"):
        prediction.to_image("points_xy")
    # The mask at image size: the calibrated (predictive) probability above 0.5.
    expected = prediction.to_image("predictive_probability") > 0.5
    np.testing.assert_array_equal(prediction.masks[0], expected)
    assert prediction.low_res_logits is None  # random_walker has no low-resolution logits


def test_posterior_maps_are_computed_on_first_use(walker_predictor, posterior, monkeypatch):
    """A caller that reads only the MAP maps pays for no GLM variance; the first posterior
    field read computes all of them once, from moments whose MAP logits are the MAP maps'."""
    moments = []
    logit_moments = posterior.logit_moments

    def spy(inputs):
        moments.append(logit_moments(inputs))
        return moments[-1]

    monkeypatch.setattr(posterior, "logit_moments", spy)
    image, _ = _image_and_mask()
    walker_predictor.set_image(image)
    prediction = walker_predictor.predict([[32, 24], [2, 2]], [1, 0])
    assert prediction.map_probability.shape == (256, 256) and moments == []
    assert prediction.masks.shape == (1, HEIGHT, WIDTH)  # the predictive probability's
    assert len(moments) == 1
    walker_predictor.set_image(_image_and_mask(seed=1)[0])  # a new image: a new memo
    walker_predictor.set_image(image)
    fresh = walker_predictor.predict([[32, 24], [2, 2]], [1, 0])
    assert fresh is not prediction
    moments.clear()
    np.testing.assert_array_equal(fresh.map_probability, prediction.map_probability)
    assert moments == [] and set(fresh.timings_s) == {"decode", "prompt_maps", "head"}
    bald = fresh.bald
    assert len(moments) == 1 and "uncertainty" in fresh.timings_s
    for name in InteractivePrediction.POSTERIOR_FIELDS:
        getattr(fresh, name)
    assert len(moments) == 1
    np.testing.assert_array_equal(fresh.map_logits, moments[0][0][0].numpy())
    np.testing.assert_array_equal(fresh.logit_variance, moments[0][1][0].numpy())
    np.testing.assert_array_equal(bald, prediction.bald)


def test_a_click_set_predicted_again_comes_from_the_memo(walker_predictor, monkeypatch):
    """Without a mask input a prediction is a function of the click set: predict and
    predict_extended (random_walker decodes one set at a time) share it on one image."""
    image, _ = _image_and_mask()
    walker_predictor.set_image(image)
    first = walker_predictor.predict([[32, 24]], [1])
    decodes = []
    decode = walker_predictor.segmenter.predict_batch
    monkeypatch.setattr(
        walker_predictor.segmenter,
        "predict_batch",
        lambda sets, mask_input=None: decodes.append(len(sets)) or decode(sets, mask_input),
    )
    assert walker_predictor.predict(np.array([[32.0, 24.0]]), np.array([1])) is first
    extended = walker_predictor.predict_extended(
        first.points_xy, first.labels, [((10, 20), 1), ((200, 40), 0)]
    )
    again = walker_predictor.predict_extended(
        first.points_xy, first.labels, [((200, 40), 0), ((60, 60), 1)]
    )
    assert decodes == [2, 1] and again[0] is extended[1]
    x, y = grid_to_image(10, 20, (HEIGHT, WIDTH))
    assert walker_predictor.predict([[32, 24], [x, y]], [1, 1]) is extended[0]
    assert decodes == [2, 1]
    other = walker_predictor.predict([[32, 24], [x, y]], [1, 0])  # another label: decoded
    assert other is not extended[0] and decodes == [2, 1, 1]
    walker_predictor.set_image(_image_and_mask(seed=1)[0])
    assert walker_predictor.predict([[32, 24]], [1]) is not first


def test_with_segmenter_keeps_the_settings_and_its_own_image(walker_predictor, posterior):
    """A predictor per image (the annotator's): the same posterior, settings and click-rule
    settings on another segmenter instance, with its own image and memo."""
    image, _ = _image_and_mask()
    walker_predictor.set_image(image)
    first = walker_predictor.predict([[32, 24], [2, 2]], [1, 0])
    other = walker_predictor.with_segmenter(RandomWalkerSegmenter())
    assert (
        other.posterior is posterior and other.policy_settings == walker_predictor.policy_settings
    )
    assert (other.prompt_sigma, other.suggest_policy) == (SIGMA, walker_predictor.suggest_policy)
    with pytest.raises(RuntimeError):
        _ = other.image_hw  # no image set on the new instance
    other.set_image(_image_and_mask(seed=1)[0])
    assert walker_predictor.predict([[32, 24], [2, 2]], [1, 0]) is first  # its memo kept
    again = other.with_segmenter(RandomWalkerSegmenter())
    again.set_image(image)
    np.testing.assert_array_equal(
        again.predict([[32, 24], [2, 2]], [1, 0]).map_probability, first.map_probability
    )
    with pytest.raises(TypeError, match="RandomWalkerSegmenter"):
        walker_predictor.with_segmenter(CountingSam())


def test_predict_takes_sam_predictor_arguments(walker_predictor) -> None:
    image, _ = _image_and_mask()
    walker_predictor.set_image(image)
    points, labels = np.array([[32.0, 24.0], [2.0, 2.0]]), np.array([1, 0])
    positional = walker_predictor.predict(points, labels)
    named = walker_predictor.predict(point_coords=points, point_labels=labels)
    np.testing.assert_array_equal(positional.map_logits, named.map_logits)
    with pytest.raises(ValueError, match="box prompts are not supported"):
        walker_predictor.predict(points, labels, box=np.array([0, 0, 10, 10]))
    with pytest.raises(ValueError, match="multimask_output=True is not supported"):
        walker_predictor.predict(points, labels, multimask_output=True)
    with pytest.raises(ValueError, match="point_coords"):
        walker_predictor.predict(box=None)
    with pytest.raises(ValueError, match="random_walker base segmenter takes no mask input"):
        walker_predictor.predict(points, labels, mask_input=np.zeros((1, 256, 256)))


def test_decode_protocol_matches_stage_3(walker_predictor, posterior, tmp_path) -> None:
    """The head sees exactly the inputs the stage-3 cache would hold for the same prompts."""
    image, _ = _image_and_mask()
    walker_predictor.set_image(image)
    pos, neg = [(32, 24), (28, 22)], [(3, 40), (60, 5)]
    prediction = walker_predictor.predict(pos + neg, [1, 1, 0, 0])

    segmenter = RandomWalkerSegmenter()
    segmenter.set_image(image)
    record = {"sample_id": "c/a", "safe_id": "c__a", "image_h": HEIGHT, "image_w": WIDTH}
    stage3 = segmenter.predict(np.array(pos + neg, dtype=float), np.array([1, 1, 0, 0]))
    write_promptset(tmp_path, record, PromptSet(0, pos, neg), stage3, SIGMA, segmenter.info)
    stored = read_promptset_outputs(tmp_path)
    inputs = assemble_inputs(
        stored["logits_256"][None],
        stored["pos_map"][None],
        stored["neg_map"][None],
        posterior.logit_clip,
    )
    map_logits, variance = posterior.logit_moments(inputs)
    np.testing.assert_array_equal(prediction.map_logits, map_logits[0].numpy())
    np.testing.assert_array_equal(prediction.logit_variance, variance[0].numpy())
    np.testing.assert_array_equal(prediction.base_logits, stage3[0])


@pytest.mark.parametrize("labels", [[1], [1, 1], [0], [0, 0]])
def test_positive_only_or_negative_only_clicks_stay_finite(walker_predictor, labels) -> None:
    image, _ = _image_and_mask()
    walker_predictor.set_image(image)
    points = [[32, 24], [10, 40]][: len(labels)]
    prediction = walker_predictor.predict(points, labels)
    _check_maps(prediction)
    # random_walker with one kind of seed: p = 1 (or 0) everywhere, clipped to finite logits.
    expected_sign = 1.0 if labels[0] == 1 else -1.0
    assert np.all(np.sign(prediction.base_logits) == expected_sign)


def _two_click_session(predictor: InteractivePredictor):
    """A session on the test image with a positive and a negative click, and its prediction."""
    session = ClickSession(predictor, _image_and_mask()[0])
    session.add_click(32, 24, 1)
    session.add_click(2, 2, 0)
    return session, session.predict()


def test_predict_before_set_image_raises(posterior) -> None:
    predictor = InteractivePredictor(RandomWalkerSegmenter(), posterior, SIGMA)
    with pytest.raises(RuntimeError, match="set_image"):
        predictor.predict([[1, 1]], [1])
    with pytest.raises(RuntimeError, match="set_image"):
        ClickSession(predictor).add_click(1, 1, 1)
    with pytest.raises(ValueError, match="prompt_sigma"):
        InteractivePredictor(RandomWalkerSegmenter(), posterior, 0.0)


def test_click_session_undo_restores_the_previous_prediction(walker_predictor) -> None:
    image, _ = _image_and_mask()
    session = ClickSession(walker_predictor, image)
    with pytest.raises(ValueError, match="no clicks"):
        session.predict()
    with pytest.raises(IndexError):
        session.undo()
    session.add_click(32, 24, 1)
    first = session.predict()
    assert session.predict() is first  # cached
    session.add_click(3, 3, 0)
    second = session.predict()
    assert not np.array_equal(first.map_logits, second.map_logits)
    assert [c.label for c in session.clicks] == [1, 0]
    undone = session.undo()
    assert (undone.x, undone.y, undone.label) == (3.0, 3.0, 0)
    assert session.predict() is first
    fresh = walker_predictor.predict([[32, 24]], [1])
    for name in InteractivePrediction.GRID_FIELDS:
        np.testing.assert_array_equal(getattr(fresh, name), getattr(first, name))
    with pytest.raises(ValueError, match="label"):
        session.add_click(1, 1, 2)
    # A new image clears the history.
    session.set_image(_image_and_mask(seed=1)[0])
    assert session.clicks == ()


def test_one_image_encoder_call_per_image_with_tiny_sam(posterior) -> None:
    segmenter = CountingSam()
    predictor = InteractivePredictor(segmenter, posterior, SIGMA)
    image, _ = _image_and_mask()
    session = ClickSession(predictor, image)
    assert segmenter.encoder_calls == 1
    session.add_click(32, 24, 1)
    session.predict()
    session.add_click(5, 5, 0)
    session.predict()
    session.suggest(k=3, policy="bald")
    session.undo()
    session.predict()
    session.add_click(40, 30, 1)
    _check_maps(session.predict())
    assert session.predict().low_res_logits.shape == (1, *segmenter.mask_input_hw)
    _check_maps(predictor.predict([[32, 24]], [1]))  # positive-only on SAM
    _check_maps(predictor.predict([[2, 2]], [0]))  # negative-only on SAM
    session.set_image(image.copy())  # the same pixels: history cleared, no second encoding
    assert session.clicks == ()
    assert segmenter.encoder_calls == 1
    session.set_image(_image_and_mask(seed=1)[0])
    assert segmenter.encoder_calls == 2


def test_sam_mask_input_feeds_the_previous_low_res_logits(posterior) -> None:
    """The RITM protocol on the tiny SAM: off by default (each click set decoded alone, as in
    stage 3); on, every click after the first is decoded with the previous low-res logits."""
    image, mask = _image_and_mask()
    clicks = [(32, 24, 1), (5, 5, 0), (40, 30, 1)]
    plain = InteractivePredictor(CountingSam(), posterior, SIGMA)
    fed = InteractivePredictor(CountingSam(), posterior, SIGMA, sam_mask_input=True)
    sessions = {name: ClickSession(p, image) for name, p in (("plain", plain), ("fed", fed))}
    for x, y, label in clicks:
        for session in sessions.values():
            session.add_click(x, y, label)
    final_fed = sessions["fed"].predict()  # decodes the earlier clicks in order first
    points = [c[:2] for c in clicks]
    labels = [c[2] for c in clicks]
    # Without the switch: the click set alone (= predict without mask_input).
    np.testing.assert_array_equal(
        sessions["plain"].predict().base_logits, plain.predict(points, labels).base_logits
    )
    # With it: the chain of mask inputs, reproduced by hand.
    fed.set_image(image)
    one = fed.predict(points[:1], labels[:1])
    two = fed.predict(points[:2], labels[:2], mask_input=one.low_res_logits)
    three = fed.predict(points, labels, mask_input=two.low_res_logits)
    np.testing.assert_array_equal(final_fed.base_logits, three.base_logits)
    assert not np.array_equal(three.base_logits, plain.predict(points, labels).base_logits)
    _check_maps(final_fed)
    # The look-ahead of a fed session feeds the prediction's low-res logits too.
    cell = (128, 128)
    x, y = grid_to_image(*cell, (HEIGHT, WIDTH))
    expected = fed.predict(
        [*points, (x, y)], [*labels, 1], mask_input=final_fed.low_res_logits
    ).predictive_probability
    np.testing.assert_array_equal(fed.lookahead(final_fed)([(cell, 1)])[0], expected)
    # The segmenter checks the mask's shape; random_walker refuses the switch.
    with pytest.raises(ValueError, match="mask_input must be"):
        fed.predict(points, labels, mask_input=np.zeros((1, 5, 5)))
    with pytest.raises(ValueError, match="random_walker base segmenter takes no mask input"):
        InteractivePredictor(RandomWalkerSegmenter(), posterior, SIGMA, sam_mask_input=True)
    result = simulate_clicks(fed, image, mask, "bald", 3, seed=0, sample_id="c/a")
    assert result["n_clicks"] == 3


def test_sam_predict_with_mask_without_a_mask_is_the_stage_3_decode() -> None:
    segmenter = CountingSam()
    segmenter.set_image(_image_and_mask()[0])
    points, labels = np.array([[32.0, 24.0], [5.0, 5.0]]), np.array([1, 0])
    (logits, branch, scores), low_res = segmenter.predict_with_mask(points, labels)
    reference = segmenter.predict(points, labels)
    np.testing.assert_array_equal(logits, reference[0])
    assert (branch, scores) == (reference[1], reference[2])
    assert low_res.shape == (1, *segmenter.mask_input_hw) and low_res.dtype == np.float32


def test_suggest_returns_distinct_unclicked_cells_with_likely_labels(walker_predictor) -> None:
    session, prediction = _two_click_session(walker_predictor)
    clicked = prediction.clicked_cells()
    for policy in ("bald", "entropy", "map_margin", "random", "bald_raw", "bald_region"):
        suggestions = session.suggest(k=4, policy=policy, seed=3)
        assert len(suggestions) == 4
        assert suggestions == walker_predictor.suggest(prediction, k=4, policy=policy, seed=3)
        cells = [image_to_grid(s.x, s.y, (HEIGHT, WIDTH)) for s in suggestions]
        assert cells == [(s.row, s.col) for s in suggestions]
        assert not set(cells) & clicked
        for (row, col), suggestion in zip(cells, suggestions):
            assert suggestion.label == int(prediction.predictive_probability[row, col] > 0.5)
        for a, b in zip(cells, cells[1:]):  # min_distance = 2 * sigma between suggestions
            assert np.hypot(a[0] - b[0], a[1] - b[1]) >= 2 * SIGMA
    with pytest.raises(ValueError, match="ground truth"):
        session.suggest(policy="oracle")  # the oracle lives in the simulation
    with pytest.raises(ValueError, match="unknown click policy"):
        session.suggest(policy="nope")


def test_suggest_for_inputs_uses_the_registry_off_the_given_clicks(posterior) -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, (64, 64)).astype(np.float32)
    pos, neg = np.zeros((2, 64, 64), np.float32)
    pos[20:24, 20:24], neg[40:44, 50:54] = 1.0, 1.0
    inputs = np.stack([logits, pos, neg])
    suggestions, maps = suggest_for_inputs(posterior, inputs, k=3, min_distance=6.0)
    assert 1 <= len(suggestions) <= 3
    expected = posterior.uncertainty_maps(inputs)
    np.testing.assert_array_equal(maps["bald"], expected["bald"][0].numpy())
    for s in suggestions:
        assert (s.x, s.y) == (s.col, s.row)  # coordinates of the input grid
        assert pos[s.row, s.col] <= 0.5 and neg[s.row, s.col] <= 0.5
        assert s.label == int(maps["predictive_probability"][s.row, s.col] > 0.5)
    with pytest.raises(ValueError, match="look-ahead"):
        suggest_for_inputs(posterior, inputs, policy="bald_lookahead")
    with pytest.raises(ValueError, match="one prompt set"):
        suggest_for_inputs(posterior, np.stack([inputs, inputs]))


def test_lookahead_predicts_one_click_ahead_without_touching_the_history(walker_predictor) -> None:
    session, prediction = _two_click_session(walker_predictor)
    history = session.clicks
    lookahead = walker_predictor.lookahead(prediction)
    for cell, label in (((10, 200), 0), ((128, 128), 1)):
        x, y = grid_to_image(cell[0], cell[1], (HEIGHT, WIDTH))
        expected = walker_predictor.predict([[32, 24], [2, 2], [x, y]], [1, 0, label])
        [result] = lookahead([(cell, label)])
        np.testing.assert_array_equal(result, expected.predictive_probability)
    assert not np.array_equal(*lookahead([((10, 200), 0), ((10, 200), 1)]))
    assert session.clicks == history
    assert session.predict() is prediction


def test_suggest_bald_lookahead_leaves_the_history_unchanged(walker_predictor) -> None:
    session, prediction = _two_click_session(walker_predictor)
    history = session.clicks
    suggestions = session.suggest(k=2, policy="bald_lookahead")
    assert len(suggestions) == 2
    assert suggestions == session.suggest(k=2, policy="bald_lookahead")
    assert session.clicks == history
    assert session.predict() is prediction
    # The first suggestion is the policy's choice with a look-ahead built by hand.
    calls = []

    def lookahead(cell, label):
        calls.append((cell, label))
        x, y = grid_to_image(cell[0], cell[1], (HEIGHT, WIDTH))
        extended = walker_predictor.predict([[32, 24], [2, 2], [x, y]], [1, 0, label])
        return extended.predictive_probability

    state = ClickState(
        prediction.map_probability,
        prediction.entropy,
        prediction.bald,
        clicked=prediction.clicked_cells(),
        predictive_probability=prediction.predictive_probability,
        lookahead=lambda requests: [lookahead(cell, label) for cell, label in requests],
    )
    cell = POLICIES["bald_lookahead"](state, np.random.default_rng(0))
    assert len(calls) == 6  # three candidates, both labels
    first = suggestions[0]
    assert image_to_grid(first.x, first.y, (HEIGHT, WIDTH)) == cell
    assert first.label == int(prediction.predictive_probability[cell] > 0.5)


def test_sampling_option_is_seeded_and_agrees_with_the_quadrature(posterior) -> None:
    image, _ = _image_and_mask()
    clicks = ([[32, 24], [2, 2]], [1, 0])
    outputs = []
    for _ in range(2):
        predictor = InteractivePredictor(
            RandomWalkerSegmenter(), posterior, SIGMA, uncertainty="samples", n_samples=256, seed=1
        )
        predictor.set_image(image)
        outputs.append(predictor.predict(*clicks))
    _check_maps(outputs[0])
    assert outputs[0].uncertainty == "samples"
    np.testing.assert_array_equal(outputs[0].bald, outputs[1].bald)
    quadrature = InteractivePredictor(RandomWalkerSegmenter(), posterior, SIGMA)
    quadrature.set_image(image)
    exact = quadrature.predict(*clicks)
    np.testing.assert_array_equal(exact.map_logits, outputs[0].map_logits)
    # The same weight draws serve every pixel, so the sample maps' errors are correlated;
    # with 256 draws they are ~0.015 nats / 0.02 in probability (2048 draws: half that).
    assert np.abs(exact.bald - outputs[0].bald).mean() < 0.03
    assert np.abs(exact.entropy - outputs[0].entropy).mean() < 0.03
    assert np.abs(exact.predictive_probability - outputs[0].predictive_probability).max() < 0.05
    with pytest.raises(ValueError, match="uncertainty"):
        InteractivePredictor(RandomWalkerSegmenter(), posterior, SIGMA, uncertainty="mc")


def test_from_settings_builds_the_configured_segmenter(fitted) -> None:
    settings = {
        "segmenter": {
            "backend": "random_walker",
            "random_walker_max_side": 32,
            "random_walker_beta": 500.0,
        },
        "prompt_sigma": 6.0,
        "sam_mask_input": False,
        "suggest_policy": "map_margin",
    }
    predictor = InteractivePredictor.from_settings(settings, fitted.laplace_dir)
    assert isinstance(predictor.segmenter, RandomWalkerSegmenter)
    assert predictor.segmenter.max_side == 32 and predictor.posterior.device == torch.device("cpu")
    assert predictor.prompt_sigma == 6.0 and not predictor.sam_mask_input
    assert predictor.suggest_policy == "map_margin"
    predictor.set_image(_image_and_mask()[0])
    _check_maps(predictor.predict([[32, 24]], [1]))
    with pytest.raises(ValueError, match="sam_mask_input"):
        InteractivePredictor.from_settings({**settings, "sam_mask_input": True}, fitted.laplace_dir)


def test_from_config_takes_a_resolved_config(fitted) -> None:
    from laplace_head.config.loader import validate_config

    config = validate_config(
        {
            "sam": {"backend": "random_walker", "random_walker_max_side": 40},
            "prompt_generation": {"gaussian_sigma": 5.0},
        },
        check_paths=False,
    )
    predictor = InteractivePredictor.from_config(config, fitted.laplace_dir, device="cpu")
    assert predictor.segmenter.max_side == 40 and predictor.prompt_sigma == 5.0


# --- simulate_clicks --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "policy",
    [
        "oracle",
        "random",
        "entropy",
        "bald",
        "map_margin",
        "bald_raw",
        "bald_region",
        "bald_lookahead",
    ],
)
def test_simulate_clicks_is_deterministic_and_json_able(walker_predictor, policy) -> None:
    image, mask = _image_and_mask()
    result = simulate_clicks(walker_predictor, image, mask, policy, 4, seed=5, sample_id="c/a")
    again = simulate_clicks(walker_predictor, image, mask, policy, 4, seed=5, sample_id="c/a")
    assert result == again
    assert json.loads(json.dumps(result)) == result
    n = result["n_clicks"]
    assert len(result["iou_base"]) == len(result["iou_head"]) == len(result["no_error"]) == n
    assert len(result["clicks"]) == n
    if result["stop_reason"] is None:
        assert n == 4
    else:
        assert policy == "oracle" and result["stop_reason"] == "no_error"
    assert all(0.0 <= v <= 1.0 for v in result["iou_base"] + result["iou_head"])
    cells = [(c["row"], c["col"]) for c in result["clicks"]]
    assert len(set(cells)) == len(cells)
    assert result["clicks"][0]["label"] == 1  # the first click is inside the object
    for click in result["clicks"]:
        assert image_to_grid(click["x"], click["y"], (HEIGHT, WIDTH)) == (
            click["row"],
            click["col"],
        )
    assert result["image_hw"] == [HEIGHT, WIDTH] and result["policy"] == policy


@pytest.mark.parametrize("policy", sorted(POSTERIOR_FREE_POLICIES))
def test_posterior_free_rules_compute_no_posterior_maps_and_click_the_same(
    posterior, policy, monkeypatch
) -> None:
    """Stage 8 gives a posterior-free rule a state without the posterior maps, so they are
    never computed for it (nor for its look-ahead candidates), and its clicks are the ones it
    makes with the posterior maps in its state."""
    import laplace_head.interactive.simulate as simulate

    image, mask = _image_and_mask()
    moments = []
    logit_moments = posterior.logit_moments

    def spy(inputs):
        moments.append(1)
        return logit_moments(inputs)

    monkeypatch.setattr(posterior, "logit_moments", spy)
    lean = simulate_clicks(
        InteractivePredictor(RandomWalkerSegmenter(), posterior, SIGMA),
        image,
        mask,
        policy,
        4,
        5,
        "c/a",
    )
    assert moments == []
    monkeypatch.setattr(simulate, "reads_posterior", lambda policy: True)
    full = simulate_clicks(
        InteractivePredictor(RandomWalkerSegmenter(), posterior, SIGMA),
        image,
        mask,
        policy,
        4,
        5,
        "c/a",
    )
    assert moments and full == lean


def test_simulate_clicks_seeding_and_shared_first_click(walker_predictor) -> None:
    image, mask = _image_and_mask()
    runs = {
        key: simulate_clicks(walker_predictor, image, mask, "random", 4, 5, key)
        for key in ("c/a", "c/b")
    }
    assert runs["c/a"]["clicks"][0] == runs["c/b"]["clicks"][0]  # the RITM first click
    assert runs["c/a"]["clicks"][1:] != runs["c/b"]["clicks"][1:]
    bald = simulate_clicks(walker_predictor, image, mask, "bald", 4, 5, "c/a")
    assert bald["clicks"][0] == runs["c/a"]["clicks"][0]
    assert bald["iou_head"][0] == runs["c/a"]["iou_head"][0]


def test_simulate_clicks_passes_the_predictive_probability_and_a_pure_lookahead(
    walker_predictor, monkeypatch
) -> None:
    seen = []

    def spy(state, rng):
        seen.append(state.predictive_probability)
        return POLICIES["bald_lookahead"](state, rng)

    monkeypatch.setitem(POLICIES, "spy", spy)
    image, mask = _image_and_mask()
    result = simulate_clicks(walker_predictor, image, mask, "spy", 3, 5, "c/a")
    reference = simulate_clicks(walker_predictor, image, mask, "bald_lookahead", 3, 5, "c/a")
    assert result["clicks"] == reference["clicks"] and result["n_clicks"] == 3
    assert len(seen) == 2
    # The first policy call saw the predictive probability of the first click alone.
    first = result["clicks"][0]
    expected = walker_predictor.predict([[first["x"], first["y"]]], [1])
    np.testing.assert_array_equal(seen[0], expected.predictive_probability)


def test_simulate_clicks_stops_when_the_policy_has_nothing_to_click(
    walker_predictor, monkeypatch
) -> None:
    seen = []

    def never(state, rng):
        seen.append(state.gt)
        return None

    monkeypatch.setitem(POLICIES, "never", never)
    image, mask = _image_and_mask()
    result = simulate_clicks(walker_predictor, image, mask, "never", 5, 0, "c/a")
    assert result["n_clicks"] == 1 and result["stop_reason"] in {"no_error", "no_clickable_cell"}
    assert seen == [None]  # a policy outside GROUND_TRUTH_POLICIES never sees the ground truth


def test_simulate_clicks_rejects_bad_inputs(walker_predictor) -> None:
    image, mask = _image_and_mask()
    with pytest.raises(ValueError, match="unknown click policy"):
        simulate_clicks(walker_predictor, image, mask, "nope", 3, 0, "c/a")
    with pytest.raises(ValueError, match="max_clicks"):
        simulate_clicks(walker_predictor, image, mask, "random", 0, 0, "c/a")
    with pytest.raises(ValueError, match="no foreground"):
        simulate_clicks(walker_predictor, image, np.zeros_like(mask), "random", 3, 0, "c/a")
    with pytest.raises(ValueError, match="does not match"):
        simulate_clicks(walker_predictor, image, mask[:-1], "random", 3, 0, "c/a")


# --- the image head ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def image_fitted(tmp_path_factory):
    return make_fitted_run(tmp_path_factory.mktemp("image_fitted"), head="image")


def test_an_image_head_posterior_records_its_head(image_fitted, posterior) -> None:
    image_posterior = load_posterior(image_fitted.laplace_dir)
    assert image_fitted.laplace_dir.parts[-3:] == ("laplace", "image", "run_t1")
    assert image_fitted.meta["head"] == "image"
    assert image_posterior.head_variant.value == "image" and image_posterior.head.channels_in == 6
    assert posterior.head_variant.value == "no_image" and posterior.meta["head"] == "no_image"
    by_run = load_posterior(image_fitted.root, run_id="t1", head="image")
    assert by_run.head_variant.value == "image"
    with pytest.raises(ValueError, match="head = 'rgb' is not one of"):
        load_posterior(image_fitted.root, run_id="t1", head="rgb")
    with pytest.raises(UncertaintyInputError, match=r"\(B, 6, H, W\).*image R, G, B"):
        image_posterior.logit_moments(np.zeros((1, 3, 8, 8), np.float32))


def test_a_posterior_whose_meta_names_another_head_is_refused(image_fitted, tmp_path) -> None:
    import shutil

    folder = tmp_path / "copied"
    shutil.copytree(image_fitted.laplace_dir, folder)
    meta = json.loads((folder / "posterior_meta.json").read_text())
    meta["head"] = "no_image"
    (folder / "posterior_meta.json").write_text(json.dumps(meta))
    with pytest.raises(PosteriorLoadError, match="records the 'no_image' head.*6 input channels"):
        load_posterior(folder)


def test_the_predictor_feeds_an_image_head_the_image_at_the_grid(image_fitted) -> None:
    image_posterior = load_posterior(image_fitted.laplace_dir)
    predictor = InteractivePredictor(RandomWalkerSegmenter(), image_posterior, SIGMA)
    image, _ = _image_and_mask(3)
    predictor.set_image(image)
    points, labels = np.array([[32.0, 24.0], [2.0, 2.0]]), np.array([1, 0])
    prediction = predictor.predict(points, labels)
    _check_maps(prediction)
    pos_map, neg_map = prompt_maps(points, labels, (HEIGHT, WIDTH), SIGMA)

    def head_logits(image_256: np.ndarray) -> np.ndarray:
        inputs = assemble_inputs(
            stored_logits(prediction.base_logits)[None],
            pos_map[None],
            neg_map[None],
            image_posterior.logit_clip,
            image_256[None],
        )
        return image_posterior.map_logits(inputs)[0].numpy()

    expected = head_logits(resize_image_grid(image, 256))
    np.testing.assert_allclose(prediction.map_logits, expected, rtol=0, atol=1e-5)
    # the image matters: the same clicks and base logits with another image give other logits
    other = head_logits(np.zeros((3, 256, 256), np.uint8))
    assert np.abs(other - prediction.map_logits).max() > 1e-2
    # suggestions, look-ahead and undo all run on the same inputs
    session = ClickSession(predictor)
    session.set_image(image)
    session.add_click(32.0, 24.0, 1)
    session.add_click(2.0, 2.0, 0)
    np.testing.assert_array_equal(session.predict().map_logits, prediction.map_logits)
    assert len(predictor.suggest(prediction, k=2)) == 2
    # another predictor on the same posterior keeps no image of its own until set_image
    fresh = predictor.with_segmenter(RandomWalkerSegmenter())
    with pytest.raises(RuntimeError, match="set_image"):
        fresh.predict(points, labels)
