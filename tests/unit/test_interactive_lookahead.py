"""The batched look-ahead against the per-candidate reference.

:meth:`InteractivePredictor.predict_extended` (behind :meth:`InteractivePredictor.lookahead`)
decodes all candidates of ``bald_lookahead`` together (SAM: one prompt-encoder + mask-decoder
call) and runs one head and uncertainty pass on them. The reference is one full
:meth:`InteractivePredictor.predict` per (cell, label). On a fixture set of images and click
states, for random_walker, a tiny random SAM and the same SAM fed its previous logits, the
predictions agree (random_walker exactly, SAM to float rounding), the prompt maps are
bit-identical, and every registry policy picks the same cells with either look-ahead.
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers.laplace_fixtures import make_fitted_run
from helpers.tiny_sam import CountingSam

from laplace_head.bayes.posterior import load_posterior
from laplace_head.cache.promptset_format import stored_logits
from laplace_head.dataset.images import resize_mask_nearest
from laplace_head.interactive.clicks import (
    GROUND_TRUTH_POLICIES,
    LOOKAHEAD_CANDIDATES,
    POLICIES,
    bald_region_centres,
    click_rng,
    first_click,
    grid_to_image,
    suggest_cells,
)
from laplace_head.interactive.predictor import InteractivePrediction, InteractivePredictor
from laplace_head.segmenters.random_walker import RandomWalkerSegmenter

SIGMA = 8.0
KINDS = ("random_walker", "sam", "sam_mask_input")
# (seed, height, width) of the fixture images.
IMAGES = ((0, 48, 64), (1, 64, 48), (2, 40, 40))


def _image_and_mask(seed: int, height: int, width: int):
    """An ellipse (bright) on a noisy background with a dark square, and the ellipse's mask."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[:height, :width]
    cy, cx = rng.uniform(0.35, 0.65, 2) * (height, width)
    mask = ((rows - cy) / (0.28 * height)) ** 2 + ((cols - cx) / (0.2 * width)) ** 2 <= 1
    colour = np.where(mask[..., None], 190.0, 60.0) + rng.normal(0, 25, (height, width, 3))
    colour[: height // 4, : width // 4] = 10.0
    return np.clip(colour, 0, 255).astype(np.uint8), mask


@pytest.fixture(scope="module")
def posterior(tmp_path_factory):
    return load_posterior(make_fitted_run(tmp_path_factory.mktemp("fitted")).laplace_dir)


def _predictor(kind: str, posterior) -> InteractivePredictor:
    if kind == "random_walker":
        return InteractivePredictor(RandomWalkerSegmenter(), posterior, SIGMA)
    return InteractivePredictor(
        CountingSam(), posterior, SIGMA, sam_mask_input=kind == "sam_mask_input"
    )


def _click_states(predictor: InteractivePredictor):
    """Per fixture image: (ground truth on the grid, predictions after 1, 2 and 3 clicks: the
    first click, then a negative in the dark corner, then a positive off-centre)."""
    for seed, height, width in IMAGES:
        image, mask = _image_and_mask(seed, height, width)
        gt_256 = resize_mask_nearest(mask, 256, 256)
        predictor.set_image(image)
        cells = [(first_click(gt_256), 1), ((10, 12), 0), ((150, 120), int(gt_256[150, 120]))]
        points, labels, mask_input = [], [], None
        for cell, label in cells:
            points.append(grid_to_image(*cell, (height, width)))
            labels.append(label)
            prediction = predictor.predict(points, labels, mask_input=mask_input)
            mask_input = predictor.next_mask_input(prediction)
            yield gt_256, prediction


def _reference_lookahead(predictor: InteractivePredictor, prediction: InteractivePrediction):
    """The per-candidate look-ahead: one full predict per (cell, label), cached."""
    cache = {}

    def lookahead(requests):
        for (row, col), label in requests:
            if ((row, col), label) not in cache:
                x, y = grid_to_image(row, col, prediction.image_hw)
                predictor._memo.clear()  # decode it: not the look-ahead's own prediction
                extended = predictor.predict(
                    np.vstack([prediction.points_xy, [[x, y]]]),
                    np.append(prediction.labels, label),
                    mask_input=predictor.next_mask_input(prediction),
                )
                cache[(row, col), label] = extended.predictive_probability
        return [cache[request] for request in requests]

    return lookahead


def _candidates(predictor, prediction) -> list[tuple[tuple[int, int], int]]:
    state = predictor.click_state(prediction)
    cells = bald_region_centres(state, LOOKAHEAD_CANDIDATES) or [(128, 128), (30, 200)]
    return [(cell, label) for cell in cells for label in (1, 0)]


@pytest.mark.parametrize("kind", KINDS)
def test_predict_extended_equals_one_predict_per_candidate(kind, posterior, monkeypatch) -> None:
    predictor = _predictor(kind, posterior)
    head_inputs = []
    head_pass = posterior.head_pass

    def spy(inputs):
        head_inputs.append(np.asarray(inputs).copy())
        return head_pass(inputs)

    monkeypatch.setattr(posterior, "head_pass", spy)
    exact = kind == "random_walker"  # decoded one set at a time; the head runs image by image
    for _, prediction in _click_states(predictor):
        requests = _candidates(predictor, prediction)
        mask_input = predictor.next_mask_input(prediction)
        head_inputs.clear()
        batch = predictor.predict_extended(
            prediction.points_xy, prediction.labels, requests, mask_input
        )
        # the head's MAP pass runs image by image (the posterior maps follow on first use)
        assert [inputs.shape for inputs in head_inputs] == [(1, 3, 256, 256)] * len(requests)
        batched_maps = np.concatenate(head_inputs)[:, 1:]
        for index, ((row, col), label) in enumerate(requests):
            x, y = grid_to_image(row, col, prediction.image_hw)
            head_inputs.clear()
            predictor._memo.clear()  # decode it: not the batch's prediction from the memo
            single = predictor.predict(
                np.vstack([prediction.points_xy, [[x, y]]]),
                np.append(prediction.labels, label),
                mask_input=mask_input,
            )
            # The prompt maps are the same float16 values (here as float32 head inputs).
            np.testing.assert_array_equal(batched_maps[index], head_inputs[0][0, 1:])
            result = batch[index]
            np.testing.assert_array_equal(result.points_xy, single.points_xy)
            np.testing.assert_array_equal(result.labels, single.labels)
            assert result.branch_index == single.branch_index
            np.testing.assert_allclose(result.scores, single.scores, rtol=0, atol=1e-6)
            if exact:
                for name in InteractivePrediction.GRID_FIELDS:
                    np.testing.assert_array_equal(getattr(result, name), getattr(single, name))
                continue
            # SAM: the batch's logits differ by float rounding; their float16 head input then
            # differs by at most one float16 step (2**-11 relative), and so does the head.
            np.testing.assert_allclose(result.base_logits, single.base_logits, atol=1e-5)
            step = np.spacing(np.abs(single.base_logits).astype(np.float16)).astype(np.float32)
            assert (
                np.abs(stored_logits(result.base_logits) - stored_logits(single.base_logits))
                <= step
            ).all()
            for name in InteractivePrediction.GRID_FIELDS[1:]:
                np.testing.assert_allclose(
                    getattr(result, name), getattr(single, name), rtol=0, atol=1e-3
                )


@pytest.mark.parametrize("kind", KINDS)
def test_every_policy_picks_the_reference_cells(kind, posterior) -> None:
    predictor = _predictor(kind, posterior)
    n_states = 0
    for gt_256, prediction in _click_states(predictor):
        n_states += 1
        for policy in POLICIES:
            picks = []
            for lookahead in (
                predictor.lookahead(prediction),
                _reference_lookahead(predictor, prediction),
            ):
                state = predictor.click_state(prediction)
                state.lookahead = lookahead
                if policy in GROUND_TRUTH_POLICIES:
                    state.gt = gt_256
                    picks.append(POLICIES[policy](state, click_rng(0, "s", policy, 1)))
                else:
                    picks.append(suggest_cells(state, policy, 2, 2 * SIGMA, seed=3))
            assert picks[0] == picks[1], (policy, prediction.labels.tolist())
    assert n_states == 3 * len(IMAGES)


def test_sam_lookahead_is_one_decoder_call(posterior) -> None:
    predictor = _predictor("sam", posterior)
    calls = []
    decoder = predictor.segmenter.model.mask_decoder
    forward = decoder.forward

    def counted(*args, **kwargs):
        calls.append(kwargs["sparse_prompt_embeddings"].shape[0])
        return forward(*args, **kwargs)

    decoder.forward = counted
    _, prediction = next(_click_states(predictor))
    calls.clear()
    [suggestion] = predictor.suggest(prediction, k=1, policy="bald_lookahead")
    assert calls == [2 * LOOKAHEAD_CANDIDATES]  # every candidate and label in one call
    # A second suggestion from the same state reuses the cached look-ahead where it can.
    calls.clear()
    predictor.suggest(prediction, k=2, policy="bald_lookahead")
    assert len(calls) <= 2 and all(n <= 2 * LOOKAHEAD_CANDIDATES for n in calls)


def test_lookahead_caches_and_rejects_bad_labels(posterior) -> None:
    predictor = _predictor("random_walker", posterior)
    _, prediction = next(_click_states(predictor))
    lookahead = predictor.lookahead(prediction)
    first = lookahead([((100, 100), 1), ((100, 100), 0)])
    again = lookahead([((100, 100), 0), ((100, 100), 1), ((100, 100), 0)])
    assert again[0] is first[1] and again[1] is first[0] and again[2] is first[1]
    assert predictor.predict_extended(prediction.points_xy, prediction.labels, []) == []
    with pytest.raises(ValueError, match="labels must be 1"):
        lookahead([((5, 5), 2)])
