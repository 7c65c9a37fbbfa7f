"""laplace_head.bayes.predictive: each formula against an independent computation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from laplace_head.bayes import posterior, predictive
from laplace_head.bayes.predictive import (
    binary_entropy_from_logits,
    linear_logits,
    probit_logits,
    uncertainty_from_samples,
)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def test_linear_logits_match_explicit_loops() -> None:
    gen = torch.Generator().manual_seed(0)
    n_features = 5
    feats = torch.randn(2, 3, 4, n_features, generator=gen, dtype=torch.float64)
    params = torch.randn(n_features + 1, generator=gen, dtype=torch.float64)
    z = linear_logits(feats, params)
    assert z.shape == (2, 3, 4)
    for index in np.ndindex(2, 3, 4):
        phi = feats[index].tolist()
        expected_z = sum(p * w for p, w in zip(phi, params.tolist())) + float(params[-1])
        assert float(z[index]) == pytest.approx(expected_z, rel=1e-12, abs=1e-12)


def test_leading_parameter_axes_give_one_result_per_vector() -> None:
    """(*G, C + 1) parameters (a grid, samples) equal one call per vector, stacked first."""
    gen = torch.Generator().manual_seed(1)
    feats = torch.randn(7, 3, generator=gen, dtype=torch.float64)
    grid = torch.rand(2, 5, 4, generator=gen, dtype=torch.float64)  # (P, T, C + 1)
    logits = linear_logits(feats, grid)
    assert logits.shape == (2, 5, 7)
    for p in range(2):
        for t in range(5):
            torch.testing.assert_close(logits[p, t], linear_logits(feats, grid[p, t]))


def test_channel_first_maps_equal_channel_last_features() -> None:
    """feature_dim=1 on a (B, C, H, W) map gives what channel-last features give."""
    gen = torch.Generator().manual_seed(5)
    maps = torch.randn(2, 4, 3, 6, generator=gen)
    samples = torch.randn(9, 5, generator=gen)  # (S, C + 1)
    channel_last = maps.movedim(1, -1)
    z = linear_logits(maps, samples, feature_dim=1)
    assert z.shape == (9, 2, 3, 6)
    torch.testing.assert_close(z, linear_logits(channel_last, samples))


def test_parameter_count_must_match_the_features() -> None:
    with pytest.raises(ValueError, match="C \\+ 1 = 4"):
        linear_logits(torch.zeros(2, 3), torch.zeros(3))
    with pytest.raises(ValueError, match="C \\+ 1 = 3"):
        linear_logits(torch.zeros(2, 2, 5, 5), torch.zeros(4), feature_dim=1)


@pytest.mark.parametrize("z_map", [-6.0, -2.0, -0.5, 0.0, 0.7, 3.0, 8.0])
@pytest.mark.parametrize("var", [0.0, 0.1, 1.0, 4.0, 25.0])
def test_probit_approximates_the_gaussian_average_of_the_sigmoid(z_map: float, var: float) -> None:
    """sigmoid(probit_logits) ~ E[sigmoid(z)], z ~ N(z_map, var), by Gauss-Hermite quadrature.

    MacKay's approximation is exact at var = 0 and at z_map = 0 and within 0.02 elsewhere.
    """
    nodes, weights = np.polynomial.hermite_e.hermegauss(200)  # probabilists' Hermite
    expected = float((weights * _sigmoid(z_map + math.sqrt(var) * nodes)).sum() / weights.sum())
    z, v = torch.tensor(z_map, dtype=torch.float64), torch.tensor(var, dtype=torch.float64)
    got = float(torch.sigmoid(probit_logits(z, v)))
    if var == 0.0 or z_map == 0.0:
        assert got == pytest.approx(expected, abs=1e-12)
    else:
        assert got == pytest.approx(expected, abs=0.02)


def test_probit_against_monte_carlo_and_broadcasting() -> None:
    gen = torch.Generator().manual_seed(3)
    z_map = torch.tensor([[-3.0], [1.5]], dtype=torch.float64)  # (2, 1)
    var = torch.tensor([0.5, 2.0, 9.0], dtype=torch.float64)  # (3,)
    probability = torch.sigmoid(probit_logits(z_map, var))
    assert probability.shape == (2, 3)
    draws = torch.randn(400_000, 1, 1, generator=gen, dtype=torch.float64)
    monte_carlo = torch.sigmoid(z_map + draws * var.sqrt()).mean(0)
    torch.testing.assert_close(probability, monte_carlo, rtol=0, atol=0.02)
    # the spread pulls the probability towards 1/2 but never across it
    assert torch.all((probability - 0.5).abs() <= (torch.sigmoid(z_map) - 0.5).abs())


def test_binary_entropy_matches_the_definition_and_stays_finite() -> None:
    logits = torch.tensor([-30.0, -4.0, -0.3, 0.0, 0.3, 4.0, 30.0], dtype=torch.float32)
    entropy = binary_entropy_from_logits(logits)
    assert entropy.dtype == torch.float64
    p = _sigmoid(logits.double().numpy())
    expected = -(p * np.log(p) + (1 - p) * np.log1p(-p))
    np.testing.assert_allclose(entropy.numpy()[1:-1], expected[1:-1], rtol=1e-12)
    assert float(entropy[3]) == pytest.approx(math.log(2))
    extreme = binary_entropy_from_logits(torch.tensor([-800.0, 800.0]))
    assert torch.isfinite(extreme).all() and float(extreme.max()) < 1e-300
    assert float(entropy[0]) == pytest.approx(31.0 * math.exp(-30.0), rel=1e-3)


def test_uncertainty_from_samples_matches_numpy() -> None:
    gen = torch.Generator().manual_seed(4)
    samples = 3.0 * torch.randn(16, 2, 5, generator=gen)
    maps = uncertainty_from_samples(samples)
    p = _sigmoid(samples.double().numpy())
    p_mean = p.mean(0)

    def entropy(q: np.ndarray) -> np.ndarray:
        return -(q * np.log(q) + (1 - q) * np.log(1 - q))

    np.testing.assert_allclose(maps["predictive_probability"].numpy(), p_mean, rtol=1e-6)
    np.testing.assert_allclose(maps["entropy"].numpy(), entropy(p_mean), rtol=1e-5)
    np.testing.assert_allclose(maps["expected_entropy"].numpy(), entropy(p).mean(0), rtol=1e-5)
    np.testing.assert_allclose(
        maps["bald"].numpy(),
        entropy(p_mean) - entropy(p).mean(0),
        rtol=1e-4,
        atol=1e-7,
    )
    for name in maps:
        assert maps[name].shape == (2, 5) and maps[name].dtype == torch.float32
    assert float(maps["bald"].min()) >= 0.0


def test_identical_samples_carry_no_mutual_information() -> None:
    maps = uncertainty_from_samples(torch.full((8, 3), 1.2))
    torch.testing.assert_close(maps["bald"], torch.zeros(3))
    torch.testing.assert_close(maps["entropy"], maps["expected_entropy"])


def test_posterior_re_exports_the_shared_functions() -> None:
    for name in ("probit_logits", "binary_entropy_from_logits", "uncertainty_from_samples"):
        assert getattr(posterior, name) is getattr(predictive, name), name
