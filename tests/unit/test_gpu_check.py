"""bench/gpu_check.py's one-call decode of all prompt sets (padded with SAM's label -1)."""

from __future__ import annotations

import numpy as np
import pytest
from helpers.tiny_sam import build_tiny_sam

from laplace_head.segmenters.sam import SamSegmenter


@pytest.fixture(scope="module")
def gpu_check(bench_script):
    return bench_script("gpu_check")


@pytest.fixture(scope="module")
def segmenter():
    sam = SamSegmenter(model=build_tiny_sam(seed=0), device="cpu")
    rng = np.random.default_rng(0)
    sam.set_image(rng.integers(0, 256, (90, 120, 3), dtype=np.uint8))
    return sam


def _prompt_set(rng, n_points, image_hw=(90, 120)):
    points = rng.uniform(0, 1, (n_points, 2)) * (image_hw[1] - 1, image_hw[0] - 1)
    labels = np.arange(n_points) % 2 == 0
    return points, labels.astype(np.int64)


def test_one_call_equals_predict_when_no_set_needs_padding(gpu_check, segmenter):
    rng = np.random.default_rng(1)
    sets = [_prompt_set(rng, 4) for _ in range(3)]
    batched = gpu_check.decode_padded(segmenter, sets)
    for (points, labels), (logits, branch, scores) in zip(sets, batched):
        ref_logits, ref_branch, ref_scores = segmenter.predict(points, labels)
        assert logits.shape == ref_logits.shape == (256, 256)
        np.testing.assert_allclose(logits, ref_logits, atol=1e-4)
        assert branch == ref_branch
        np.testing.assert_allclose(scores, ref_scores, atol=1e-5)


def test_sets_of_different_lengths_in_one_call(gpu_check, segmenter):
    rng = np.random.default_rng(2)
    sets = [_prompt_set(rng, 1), _prompt_set(rng, 5), _prompt_set(rng, 3)]
    batched = gpu_check.decode_padded(segmenter, sets)
    assert [logits.shape for logits, _, _ in batched] == [(256, 256)] * 3
    assert all(np.isfinite(logits).all() and len(scores) == 3 for logits, _, scores in batched)
    # the longest set needs no padding token: the shorter sets' padding leaves it exact
    logits, branch, _ = segmenter.predict(*sets[1])
    np.testing.assert_allclose(batched[1][0], logits, atol=1e-4)
    assert batched[1][1] == branch
