"""Streaming calibration statistics, histogram AUROC and temperature scaling."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers.laplace_fixtures import last_layer_posterior
from helpers.synthetic_h5 import make_synthetic_h5

from laplace_head.bayes.posterior import Posterior, binary_entropy_from_logits
from laplace_head.evaluation.calibration import (
    CalibrationAccumulator,
    batch_statistics,
    fit_temperature_scaling,
    histogram_auroc,
    log_uncertainty,
)
from laplace_head.model.head import NoImageHead


def _posterior(scale: float) -> Posterior:
    """A head whose refined logit is ``scale`` x the (clipped) base logit: informative, and
    overconfident for scale > 1."""
    head = NoImageHead().eval().requires_grad_(False)
    with torch.no_grad():
        for conv in (head.trunk[0], head.trunk[2], head.final_conv):
            conv.weight.zero_()
            conv.bias.zero_()
        head.trunk[0].weight[0, 0, 1, 1], head.trunk[0].weight[1, 0, 1, 1] = 1.0, -1.0
        head.trunk[2].weight[0, 0, 1, 1], head.trunk[2].weight[1, 1, 1, 1] = 1.0, 1.0
        head.final_conv.weight[0, 0], head.final_conv.weight[0, 1] = scale, -scale
    variance = torch.full((head.final_conv.in_channels + 1,), 1e-6)
    return last_layer_posterior(head, variance, logit_clip=20.0)


def test_histogram_auroc():
    assert histogram_auroc(np.array([0, 0, 5]), np.array([5, 0, 0])) == 1.0
    assert histogram_auroc(np.array([5, 0, 0]), np.array([0, 0, 5])) == 0.0
    assert histogram_auroc(np.array([0, 3, 0]), np.array([0, 7, 0])) == 0.5
    assert histogram_auroc(np.array([1, 1, 0]), np.array([0, 1, 1])) == pytest.approx(0.125)
    assert histogram_auroc(np.zeros(3), np.array([1, 2, 3])) is None


def test_accumulator_merges_batches_like_one_big_batch():
    rng = np.random.default_rng(0)
    logits = torch.from_numpy(rng.normal(0, 3, size=(4, 8, 8)))
    target = torch.from_numpy((rng.uniform(size=(4, 8, 8)) < 0.4).astype(np.uint8))
    whole, parts = CalibrationAccumulator(10), CalibrationAccumulator(10)
    whole.add(batch_statistics(logits, target, {"entropy": log_uncertainty(logits)}, 10))
    for rows in ([0, 1], [2], [3]):
        sub = logits[rows]
        parts.add(batch_statistics(sub, target[rows], {"entropy": log_uncertainty(sub)}, 10))
    assert parts.result() == pytest.approx(whole.result())
    p = torch.sigmoid(logits).numpy().ravel()
    assert whole.result()["brier"] == pytest.approx(np.mean((p - target.numpy().ravel()) ** 2))
    assert sum(whole.reliability()["count"]) == 4 * 64


def test_log_uncertainty_ranks_like_entropy_without_underflow():
    logits = torch.tensor([-80.0, -5.0, 0.0, 0.5, 40.0])
    score = log_uncertainty(logits)
    entropy = binary_entropy_from_logits(logits)
    assert torch.all(entropy > 0)
    assert torch.equal(torch.argsort(score), torch.argsort(entropy))
    assert torch.isfinite(score).all() and score[0] == pytest.approx(-80.0)


@pytest.mark.parametrize("max_pixels", [None, 500])
def test_temperature_scaling_finds_the_nll_minimum(tmp_path, max_pixels):
    val_h5 = make_synthetic_h5(tmp_path / "val.h5", 3, seed=1, size=24, split="val")
    posterior = _posterior(scale=3.0)
    result = fit_temperature_scaling(posterior, val_h5, max_pixels=max_pixels)
    tau = result["temperature"]
    assert tau > 1.5  # the head triples logits that were already sharp enough
    assert result["val_nll_after"] <= result["val_nll_before"]
    assert result["n_pixels"] == (3 * 24 * 24 if max_pixels is None else 3 * (500 // 3))
    if max_pixels is None:
        import h5py

        with h5py.File(val_h5, "r") as handle:
            inputs = np.stack([handle[k][:] for k in ("logits_256", "pos_map", "neg_map")], 1)
            y = handle["gt_mask_256"][:].astype(np.float64)
        z = posterior.map_logits(inputs).double().numpy()

        def nll(t):
            return np.mean(np.logaddexp(0, z / t) - y * z / t)

        assert nll(tau) == pytest.approx(result["val_nll_after"], rel=1e-6)
        assert nll(tau) <= min(nll(tau * 0.98), nll(tau * 1.02))


def test_temperature_scaling_stays_bounded_for_anti_informative_logits(tmp_path):
    val_h5 = make_synthetic_h5(tmp_path / "val.h5", 2, seed=1, size=24, split="val")
    result = fit_temperature_scaling(_posterior(scale=-3.0), val_h5)
    assert result["at_bound"] and result["temperature"] == pytest.approx(1e3)
    assert result["val_nll_after"] < result["val_nll_before"]


def test_temperature_scaling_on_empty_validation(tmp_path):
    val_h5 = make_synthetic_h5(tmp_path / "val.h5", 0, size=24, split="val")
    assert fit_temperature_scaling(_posterior(1.0), val_h5)["temperature"] == 1.0


def test_temperature_scaling_memory_is_bounded_without_max_pixels(tmp_path, monkeypatch):
    """max_pixels=None (laplace.max_pixels_fit: null) must not hold every validation pixel."""
    import laplace_head.evaluation.calibration as calibration

    monkeypatch.setattr(calibration, "TS_MAX_PIXELS", 600)
    val_h5 = make_synthetic_h5(tmp_path / "val.h5", 3, seed=1, size=24, split="val")
    result = fit_temperature_scaling(_posterior(scale=3.0), val_h5, max_pixels=None)
    assert result["n_pixels"] == 3 * (600 // 3)
    assert result["temperature"] > 1.5
