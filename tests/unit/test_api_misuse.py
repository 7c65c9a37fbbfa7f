"""Misuse of the interactive API and the base segmenters: what cannot be honoured is refused.

Each case is refused with a ValueError (TypeError for an object of the wrong kind) whose message
names the value or the argument and what is accepted, never answered with a finite map. The
click rule: a click ``(x, y)`` is on an (H, W) image when ``-0.5 <= x < W - 0.5`` and
``-0.5 <= y < H - 0.5`` (pixel ``i`` covers ``[i - 0.5, i + 0.5)``, the convention of
``rescale_points`` and of the grid cells), so ``x = W - 0.5`` and ``x = W`` are off the image
and ``x = -0.5`` is on it.
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers.laplace_fixtures import make_fitted_run
from helpers.tiny_sam import build_tiny_sam

from laplace_head.bayes.posterior import load_posterior
from laplace_head.interactive.clicks import MAX_SUGGESTIONS
from laplace_head.interactive.predictor import (
    InteractivePrediction,
    InteractivePredictor,
    suggest_for_inputs,
)
from laplace_head.interactive.session import ClickSession
from laplace_head.segmenters.random_walker import RandomWalkerSegmenter
from laplace_head.segmenters.sam import SamSegmenter

SIGMA = 8.0
HEIGHT, WIDTH = 120, 160
GOOD_POINTS, GOOD_LABELS = [[80.0, 60.0], [5.0, 5.0]], [1, 0]


def _image(seed: int = 0, height: int = HEIGHT, width: int = WIDTH) -> np.ndarray:
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[:height, :width]
    inside = ((rows - height / 2) / (0.3 * height)) ** 2 + ((cols - width / 2) / (0.3 * width)) ** 2
    colour = np.where((inside <= 1)[..., None], 200.0, 40.0) + rng.normal(0, 10, (height, width, 3))
    return np.clip(colour, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def posterior(tmp_path_factory):
    return load_posterior(make_fitted_run(tmp_path_factory.mktemp("fitted")).laplace_dir)


@pytest.fixture(scope="module")
def tiny_sam_segmenter():
    return SamSegmenter(model=build_tiny_sam(seed=0), device="cpu")


@pytest.fixture(params=["random_walker", "sam"])
def predictor(request, posterior, tiny_sam_segmenter) -> InteractivePredictor:
    if request.param == "random_walker":
        segmenter = RandomWalkerSegmenter(max_side=40)
    else:
        segmenter = tiny_sam_segmenter
    predictor = InteractivePredictor(segmenter, posterior, SIGMA)
    predictor.set_image(_image())
    return predictor


@pytest.fixture
def walker(posterior) -> InteractivePredictor:
    predictor = InteractivePredictor(RandomWalkerSegmenter(max_side=40), posterior, SIGMA)
    predictor.set_image(_image())
    return predictor


# --- item 2: clicks ---------------------------------------------------------------------------

BAD_CLICKS = [
    pytest.param([[-1e6, 1e6]], [1], "outside the 120x160", id="far-outside"),
    pytest.param([[200.0, -30.0]], [1], "outside", id="right-and-above"),
    pytest.param([[80.0, 60.0], [160.0, 5.0]], [1, 0], r"point_coords\[1\].*outside", id="x=W"),
    pytest.param([[159.5, 5.0]], [1], r"x must be in \[-0.5, 159.5\)", id="x=W-0.5"),
    pytest.param([[5.0, 119.5]], [1], r"y in \[-0.5, 119.5\)", id="y=H-0.5"),
    pytest.param([[-0.51, 5.0]], [1], "outside", id="x<-0.5"),
    pytest.param([[np.inf, 5.0]], [1], "not finite", id="inf"),
    pytest.param([[5.0, -np.inf]], [1], "not finite", id="-inf"),
    pytest.param([[np.nan, 5.0]], [1], "not finite", id="nan"),
    pytest.param([[5.0, 5.0]], [0.9], r"exactly.*0\.9", id="label-0.9"),
    pytest.param([[5.0, 5.0]], [0.5], r"0\.5", id="label-0.5"),
    pytest.param([[5.0, 5.0]], [True], "real numbers.*bool", id="label-bool"),
    pytest.param([[5.0, 5.0]], ["1"], "real numbers", id="label-str"),
    pytest.param([[5.0, 5.0]], [2], "labels must be 1", id="label-2"),
    pytest.param([[5.0, 5.0]], [-1], "labels must be 1", id="label--1"),
    pytest.param([[5.0, 5.0]], [[1]], r"shape \(1,\)", id="labels-2d"),
    pytest.param([[5.0, 5.0]], 1, r"shape \(1,\)", id="label-scalar"),
    pytest.param(np.ones((2, 3)), [1, 0], r"shape \(N, 2\).*\(2, 3\)", id="points-2x3"),
    pytest.param(np.ones(4), [1, 0], r"shape \(N, 2\).*\(4,\)", id="points-flat"),
    pytest.param(np.ones((1, 2, 2)), [1, 0], r"\(1, 2, 2\)", id="points-3d"),
    pytest.param([[5.0, 5.0], [6.0, 6.0]], [1], r"\(2,\), one per point", id="fewer-labels"),
    pytest.param(np.empty((0, 2)), [], "N >= 1", id="no-points"),
    pytest.param([["5", "5"]], [1], "real numbers", id="points-str"),
    pytest.param([[True, False]], [1], "real numbers", id="points-bool"),
    pytest.param([[5 + 1j, 5.0]], [1], "real numbers", id="points-complex"),
    pytest.param([[5.0, 5.0], [6.0]], [1, 0], "array of numbers", id="points-ragged"),
]


@pytest.mark.parametrize(("points", "labels", "message"), BAD_CLICKS)
def test_predict_refuses_bad_clicks(predictor, points, labels, message) -> None:
    with pytest.raises(ValueError, match=message):
        predictor.predict(points, labels)


@pytest.mark.parametrize(("points", "labels", "message"), BAD_CLICKS)
def test_segmenter_predict_refuses_bad_clicks(predictor, points, labels, message) -> None:
    """The base segmenter applies the same rule (its own argument names)."""
    message = message.replace("point_coords", "points_xy")
    with pytest.raises(ValueError, match=message):
        predictor.segmenter.predict(points, labels)
    with pytest.raises(ValueError, match=message):
        predictor.segmenter.predict_batch([(GOOD_POINTS, GOOD_LABELS), (points, labels)])


@pytest.mark.parametrize(
    ("x", "y", "label", "message"),
    [
        (-1e6, 1e6, 1, "outside"),
        (200, -30, 1, "outside"),
        (WIDTH, 5, 1, "outside"),
        (WIDTH - 0.5, 5, 1, "outside"),
        (np.inf, 5, 1, "not finite"),
        (5, np.nan, 0, "not finite"),
        (5, 5, 0.9, "exactly"),
        (5, 5, True, "bool"),
        (5, 5, "1", "real numbers"),
        (5, 5, 2, "labels must be 1"),
        ("5", 5, 1, "real numbers"),
        ([5, 6], 5, 1, "one click"),
    ],
)
def test_session_add_click_refuses_bad_clicks(walker, x, y, label, message) -> None:
    session = ClickSession(walker, _image())
    with pytest.raises(ValueError, match=message):
        session.add_click(x, y, label)
    assert session.clicks == ()


@pytest.mark.parametrize(
    ("points", "labels"),
    [
        ([[-0.5, -0.5]], [1]),  # the top-left corner of the first pixel is on the image
        ([[WIDTH - 0.51, HEIGHT - 0.51]], [1.0]),  # float labels exactly 0/1 are accepted
        (np.array([[3, 4], [100, 90]], dtype=np.int32), np.array([1, 0], dtype=np.uint8)),
    ],
)
def test_clicks_on_the_image_are_accepted(predictor, points, labels) -> None:
    prediction = predictor.predict(points, labels)
    assert np.isfinite(prediction.predictive_probability).all()
    assert prediction.labels.dtype == np.int64


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ([((256, 0), 1)], r"must be ints in \[0, 256\)"),
        ([((-1, 0), 1)], r"\[0, 256\)"),
        ([((0.5, 3), 1)], r"\[0, 256\)"),
        ([((True, 3), 1)], r"\[0, 256\)"),
        ([((3, 3), 0.9)], "exactly"),
        ([((3, 3), 2)], "labels must be 1"),
        ([(3, 1)], r"must be \(\(row, col\), label\)"),
        ([((3, 3), 1, 0)], r"must be \(\(row, col\), label\)"),
        ("ab", "sequence"),
    ],
)
def test_predict_extended_and_lookahead_refuse_bad_extra_clicks(walker, extra, message) -> None:
    prediction = walker.predict(GOOD_POINTS, GOOD_LABELS)
    with pytest.raises(ValueError, match=message):
        walker.predict_extended(GOOD_POINTS, GOOD_LABELS, extra)
    if isinstance(extra, list):
        with pytest.raises(ValueError, match=message):
            walker.lookahead(prediction)(extra)
    with pytest.raises(ValueError, match="outside"):
        walker.predict_extended([[WIDTH, 5.0]], [1], [((3, 3), 1)])


class _NanSegmenter(RandomWalkerSegmenter):
    """A segmenter whose logits are not finite (as SAM gives for some inputs)."""

    def _predict(self, points_xy, labels):
        logits, branch, scores = super()._predict(points_xy, labels)
        logits = logits.copy()
        logits[10:20, 10:20] = np.nan
        logits[0, 0] = np.inf
        return logits, branch, scores


def test_non_finite_base_logits_are_refused_not_zeroed(posterior) -> None:
    predictor = InteractivePredictor(_NanSegmenter(max_side=40), posterior, SIGMA)
    predictor.set_image(_image())
    with pytest.raises(ValueError, match="non-finite.*101 non-finite"):
        predictor.predict(GOOD_POINTS, GOOD_LABELS)
    with pytest.raises(ValueError, match="non-finite"):
        predictor.predict_extended(GOOD_POINTS, GOOD_LABELS, [((3, 3), 1)])


# --- item 8: images ---------------------------------------------------------------------------

BAD_IMAGES = [
    pytest.param(np.zeros((0, 0, 3), np.uint8), r"empty image of shape \(0, 0, 3\)", id="0x0"),
    pytest.param(np.zeros((0, 10, 3), np.uint8), r"empty.*>= 1", id="0x10"),
    pytest.param(np.zeros((10, 0, 3), np.uint8), "empty", id="10x0"),
    pytest.param(np.zeros((8, 8, 3), np.float32), r"uint8.*float32.*\* 255", id="float32"),
    pytest.param(np.full((8, 8, 3), np.nan), "dtype float64", id="nan-float"),
    pytest.param(np.zeros((8, 8, 3), np.uint16), "dtype uint16", id="uint16"),
    pytest.param(np.zeros((8, 8, 3), np.int64), "dtype int64", id="int64"),
    pytest.param(np.zeros((8, 8, 3), bool), "dtype bool", id="bool"),
    pytest.param(np.zeros((8, 8), np.uint8), r"shape \(8, 8\).*greyscale", id="2d"),
    pytest.param(np.zeros((8, 8, 4), np.uint8), r"\(8, 8, 4\).*alpha", id="rgba"),
    pytest.param(np.zeros((8, 8, 1), np.uint8), r"\(8, 8, 1\)", id="1-channel"),
    pytest.param(np.zeros((2, 8, 8, 3), np.uint8), r"\(2, 8, 8, 3\)", id="batch"),
    pytest.param("image.png", r"\(H, W, 3\) uint8", id="str"),
    pytest.param(None, r"\(H, W, 3\) uint8", id="none"),
    pytest.param([[[1, 2, 3]], [[1, 2]]], r"\(H, W, 3\) uint8", id="ragged"),
]


@pytest.mark.parametrize(("image", "message"), BAD_IMAGES)
def test_set_image_refuses_bad_images(predictor, image, message) -> None:
    with pytest.raises(ValueError, match=message):
        predictor.segmenter.set_image(image)
    with pytest.raises(ValueError, match=message):
        predictor.set_image(image)
    # A refused image unsets the current one: nothing is predicted on the image before it.
    with pytest.raises(RuntimeError, match="set_image"):
        predictor.predict(GOOD_POINTS, GOOD_LABELS)
    session = ClickSession(predictor)
    with pytest.raises(ValueError, match=message):
        session.set_image(image)
    with pytest.raises(RuntimeError, match="set_image"):
        session.add_click(5.0, 5.0, 1)


def test_sam_refuses_an_image_its_resize_makes_empty(tiny_sam_segmenter) -> None:
    """SAM resizes the longer side to its input size (64 for the tiny SAM, 1024 for the official
    models), rounding; a shorter side below longer / (2 * size) becomes 0 pixels."""
    with pytest.raises(ValueError, match=r"1x3000.*rounds to 0.*at least 24 pixels"):
        tiny_sam_segmenter.set_image(np.zeros((1, 3000, 3), np.uint8))
    with pytest.raises(ValueError, match=r"too thin for SAM"):
        tiny_sam_segmenter.set_image(np.zeros((3000, 23, 3), np.uint8))
    tiny_sam_segmenter.set_image(np.zeros((3000, 24, 3), np.uint8))  # the thinnest accepted
    assert tiny_sam_segmenter.image_hw == (3000, 24)


def test_random_walker_takes_thin_and_single_pixel_images() -> None:
    segmenter = RandomWalkerSegmenter(max_side=40)
    for shape in [(1, 3000, 3), (1, 1, 3), (2, 1, 3)]:
        segmenter.set_image(np.full(shape, 90, np.uint8))
        logits, _, _ = segmenter.predict([[0.0, 0.0]], [1])
        assert logits.shape == (256, 256) and np.isfinite(logits).all()


# --- item 12: argument bounds -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"prompt_sigma": np.inf}, r"prompt_sigma.*\(0, 256\].*inf"),
        ({"prompt_sigma": np.nan}, "prompt_sigma"),
        ({"prompt_sigma": 0.0}, "prompt_sigma"),
        ({"prompt_sigma": -1.0}, "prompt_sigma"),
        ({"prompt_sigma": 257.0}, r"\(0, 256\]"),
        ({"prompt_sigma": "8"}, "prompt_sigma"),
        ({"prompt_sigma": True}, "prompt_sigma"),
        ({"n_nodes": 10**7}, r"n_nodes.*\[2, 64\].*10000000"),
        ({"n_nodes": 1}, r"n_nodes.*\[2, 64\]"),
        ({"n_nodes": 65}, "n_nodes"),
        ({"n_nodes": 20.5}, "n_nodes"),
        ({"n_nodes": True}, "n_nodes"),
        ({"n_samples": 0}, r"n_samples.*\[2, 1024\]"),
        ({"n_samples": 10**9, "uncertainty": "samples"}, "n_samples"),
        ({"n_samples": 4.0}, "n_samples"),
        ({"seed": 1.5}, "seed must be an int"),
        ({"seed": "0"}, "seed"),
        ({"seed": True}, "seed"),
        ({"uncertainty": "mc"}, "uncertainty.*quadrature, samples"),
        ({"uncertainty": ["samples"]}, "uncertainty"),
        ({"sam_mask_input": "yes"}, "sam_mask_input must be a bool"),
        ({"suggest_policy": 5}, "suggest_policy"),
        ({"suggest_policy": ["bald"]}, "suggest_policy"),
        ({"suggest_policy": "nope"}, "suggest_policy"),
    ],
)
def test_constructor_bounds_every_argument(posterior, kwargs, message) -> None:
    kwargs = {"prompt_sigma": SIGMA, **kwargs}
    with pytest.raises(ValueError, match=message):
        InteractivePredictor(RandomWalkerSegmenter(), posterior, **kwargs)


def test_constructor_refuses_objects_of_the_wrong_kind(posterior) -> None:
    with pytest.raises(TypeError, match="segmenter must be a BaseSegmenter"):
        InteractivePredictor("sam", posterior, SIGMA)
    with pytest.raises(TypeError, match="posterior must be a Posterior"):
        InteractivePredictor(RandomWalkerSegmenter(), "laplace/run_v1", SIGMA)
    with pytest.raises(TypeError, match="predictor must be an InteractivePredictor"):
        ClickSession(RandomWalkerSegmenter())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_side": 16.5}, "max_side must be an int >= 16"),
        ({"max_side": True}, "max_side"),
        ({"max_side": "160"}, "max_side"),
        ({"beta": np.inf}, "beta must be a finite number > 0"),
        ({"beta": np.nan}, "beta"),
        ({"beta": "2000"}, "beta"),
        ({"mode": ["bf"]}, "mode"),
    ],
)
def test_random_walker_bounds_its_arguments(kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        RandomWalkerSegmenter(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"k": 10**6},
            rf"k \(suggestions\) must be an int in \[1, {MAX_SUGGESTIONS}\]; got 1000000",
        ),
        ({"k": 10**6, "policy": "bald_lookahead"}, "k"),
        ({"k": 0}, r"\[1, 64\]"),
        ({"k": -1}, r"\[1, 64\]"),
        ({"k": 1.5}, "k"),
        ({"k": True}, "k"),
        ({"k": "2"}, "k"),
        ({"k": None}, "k"),
        ({"policy": "nope"}, "unknown click policy 'nope'"),
        ({"policy": 5}, "unknown click policy 5"),
        ({"policy": ["bald"]}, "unknown click policy"),
        ({"policy": "oracle"}, "ground truth"),
        ({"seed": 1.5}, "seed must be an int"),
        ({"seed": "0"}, "seed"),
        ({"seed": None}, "seed"),
        ({"min_distance": -1.0}, r"min_distance.*>= 0; got -1\.0"),
        ({"min_distance": np.nan}, "min_distance"),
        ({"min_distance": np.inf}, "min_distance"),
        ({"min_distance": "2"}, "min_distance"),
        ({"min_distance": True}, "min_distance"),
    ],
)
def test_suggest_bounds_every_argument(walker, kwargs, message) -> None:
    session = ClickSession(walker, _image())
    session.add_click(80.0, 60.0, 1)
    prediction = session.predict()
    with pytest.raises(ValueError, match=message):
        walker.suggest(prediction, **kwargs)
    with pytest.raises(ValueError, match=message):
        session.suggest(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"k": 10**6}, "k"),
        ({"k": 0}, "k"),
        ({"policy": 3}, "unknown click policy"),
        ({"min_distance": np.nan}, "min_distance"),
        ({"prompt_sigma": np.inf}, "prompt_sigma"),
        ({"prompt_sigma": 0}, "prompt_sigma"),
    ],
)
def test_suggest_for_inputs_bounds_its_arguments(posterior, kwargs, message) -> None:
    inputs = np.zeros((3, 32, 32), np.float32)
    with pytest.raises(ValueError, match=message):
        suggest_for_inputs(posterior, inputs, **kwargs)


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_suggest_for_inputs_refuses_non_finite_base_logits(posterior, value) -> None:
    inputs = np.zeros((3, 32, 32), np.float32)
    inputs[0, 3, 4] = value
    with pytest.raises(ValueError, match=r"base logits \(channel 0 of inputs\).*NaN or infinite"):
        suggest_for_inputs(posterior, inputs)
    with pytest.raises(TypeError, match="posterior must be a Posterior"):
        suggest_for_inputs("laplace/run_v1", inputs)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"multimask_output": 1}, "multimask_output must be a bool"),
        ({"multimask_output": "False"}, "multimask_output must be a bool"),
        ({"multimask_output": None}, "multimask_output must be a bool"),
        ({"box": []}, "box prompts are not supported"),
        ({"box": np.array([0, 0, 10, 10])}, "box prompts"),
    ],
)
def test_predict_refuses_unsupported_options(walker, kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        walker.predict(GOOD_POINTS, GOOD_LABELS, **kwargs)
    assert walker.predict(GOOD_POINTS, GOOD_LABELS, multimask_output=np.False_) is not None


@pytest.mark.parametrize(
    ("mask_input", "message"),
    [
        (np.zeros((1, 8, 8), np.float32), r"shape \(1, 8, 8\)"),
        (np.zeros((1, 32, 32), bool), "dtype bool"),
        (np.zeros((1, 32, 32), complex), "dtype complex128"),
        (np.full((1, 32, 32), np.nan, np.float32), "non-finite"),
        ("low_res", "a str"),
        ([[[0.0] * 32] * 32], "a list"),
    ],
)
def test_sam_mask_input_must_be_finite_float_logits(
    posterior, tiny_sam_segmenter, mask_input, message
) -> None:
    predictor = InteractivePredictor(tiny_sam_segmenter, posterior, SIGMA)
    predictor.set_image(_image())
    assert predictor.segmenter.mask_input_hw == (32, 32)
    with pytest.raises(ValueError, match=f"mask_input must be finite.*{message}"):
        predictor.predict(GOOD_POINTS, GOOD_LABELS, mask_input=mask_input)


# --- item 13: predictions passed back ---------------------------------------------------------

NOT_PREDICTIONS = [
    pytest.param("x", id="str"),
    pytest.param({}, id="dict"),
    pytest.param(None, id="none"),
    pytest.param(3, id="int"),
]
PREDICTION_METHODS = ["suggest", "lookahead", "click_state", "next_mask_input"]


@pytest.mark.parametrize("method", PREDICTION_METHODS)
@pytest.mark.parametrize("value", NOT_PREDICTIONS)
def test_methods_refuse_what_is_not_a_prediction(walker, method, value) -> None:
    with pytest.raises(TypeError, match="must be an InteractivePrediction"):
        getattr(walker, method)(value)


@pytest.mark.parametrize("method", PREDICTION_METHODS)
def test_methods_refuse_a_prediction_of_another_image(predictor, method) -> None:
    first = predictor.predict(GOOD_POINTS, GOOD_LABELS)
    assert isinstance(first, InteractivePrediction)
    lookahead = predictor.lookahead(first)
    predictor.set_image(_image(seed=1))  # the same size, other pixels
    with pytest.raises(ValueError, match="made on another image"):
        getattr(predictor, method)(first)
    with pytest.raises(ValueError, match="made on another image"):
        lookahead([((3, 3), 1)])  # a look-ahead made before the image changed
    predictor.set_image(_image(seed=0))  # back to the prediction's image: accepted again
    getattr(predictor, method)(first)


def test_a_session_refuses_to_continue_on_another_image(walker) -> None:
    session = ClickSession(walker, _image(seed=0))
    session.add_click(80.0, 60.0, 1)
    before = session.predict()
    session.add_click(5.0, 5.0, 0)  # not decoded yet
    walker.set_image(_image(seed=1))  # behind the session's back
    for call in (session.predict, session.suggest, lambda: session.add_click(9.0, 9.0, 0)):
        with pytest.raises(RuntimeError, match="image changed"):
            call()
    session.undo()
    assert session.predict() is before  # made on the session's image: still its prediction
    session.set_image(_image(seed=0))
    session.add_click(80.0, 60.0, 1)
    assert np.array_equal(session.predict().map_logits, before.map_logits)
