"""gaussian_logit_uncertainty (BALD of a Gaussian logit by quadrature) against Monte Carlo."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.special import expit, log_expit, ndtri, xlogy

from laplace_head.bayes.predictive import (
    HERMITE_BANDS,
    QUADRATURE_WIDE_VARIANCE,
    gaussian_logit_uncertainty,
)

MEANS = (-8.0, -1.0, 0.0, 2.0, 10.0)
VARIANCES = (1e-6, 1e-3, 0.1, 1.0, 10.0, 100.0)
N_MC = 200_000


def _binary_entropy(z: np.ndarray) -> np.ndarray:
    """H(sigmoid(z)) in nats, float64, from log-sigmoids (no log(0))."""
    log_p, log_q = log_expit(z), log_expit(-z)
    return -(np.exp(log_p) * log_p + np.exp(log_q) * log_q)


@pytest.fixture(scope="module")
def monte_carlo() -> dict[str, np.ndarray]:
    """Float64 Monte Carlo estimates (and naive standard errors) on the MEANS x VARIANCES grid.

    The standard normal draws are stratified (one uniform draw in each of N_MC equal-probability
    strata, mapped through the normal quantile): still an unbiased Monte Carlo estimate, but
    plain sampling leaves a 3.5 % error on BALD at m = 10, v = 10 with 200k draws (the BALD
    there comes from the ~0.1 % of draws with z < 0); stratified, < 0.1 % everywhere. The naive
    standard errors overstate the stratified ones, so the checks built on them are conservative.
    """
    uniform = (np.arange(N_MC) + np.random.default_rng(12345).random(N_MC)) / N_MC
    noise = ndtri(uniform)
    grid_m, grid_v = np.meshgrid(MEANS, VARIANCES, indexing="ij")
    out: dict[str, list[float]] = {
        k: [] for k in ("m", "v", "p", "p_se", "total", "expected", "expected_se", "bald")
    }
    for m, v in zip(grid_m.ravel(), grid_v.ravel()):
        z = m + np.sqrt(v) * noise
        p, q = expit(z), expit(-z)
        p_bar, q_bar = p.mean(), q.mean()
        total = -(p_bar * np.log(p_bar) + q_bar * np.log(q_bar))
        entropy = _binary_entropy(z)
        out["m"].append(m)
        out["v"].append(v)
        out["p"].append(p_bar)
        out["p_se"].append(p.std() / np.sqrt(N_MC))
        out["total"].append(total)
        out["expected"].append(entropy.mean())
        out["expected_se"].append(entropy.std() / np.sqrt(N_MC))
        out["bald"].append(total - entropy.mean())
    return {k: np.asarray(v) for k, v in out.items()}


@pytest.mark.parametrize("n_nodes", [16, 20, 24])
def test_quadrature_matches_monte_carlo_across_variance_regimes(monte_carlo, n_nodes) -> None:
    mc = monte_carlo
    out = gaussian_logit_uncertainty(
        torch.from_numpy(mc["m"]), torch.from_numpy(mc["v"]), n_nodes=n_nodes
    )
    bald = out["bald"].numpy()
    big = mc["bald"] > 1e-6
    assert big.sum() >= 20  # most of the grid is checked relatively
    relative = np.abs(bald[big] - mc["bald"][big]) / mc["bald"][big]
    assert relative.max() <= 0.02, dict(zip(zip(mc["m"][big], mc["v"][big]), relative))
    np.testing.assert_allclose(bald[~big], mc["bald"][~big], rtol=0.02, atol=1e-9)
    # Probabilities and entropies within 5 Monte Carlo standard errors (plus round-off).
    assert np.all(np.abs(out["predictive_probability"].numpy() - mc["p"]) <= 5 * mc["p_se"] + 1e-12)
    expected = out["expected_entropy"].numpy()
    assert np.all(np.abs(expected - mc["expected"]) <= 5 * mc["expected_se"] + 1e-12)
    np.testing.assert_allclose(out["entropy"].numpy(), mc["total"], rtol=2e-3, atol=1e-9)
    # BALD is the difference of the two entropies.
    np.testing.assert_allclose(
        bald,
        np.maximum(out["entropy"].numpy() - expected, 0.0),
        rtol=0,
        atol=1e-15,
    )


@pytest.mark.parametrize("mean", MEANS)
def test_bald_vanishes_with_the_variance_without_a_floor(mean) -> None:
    # Second order in the variance: BALD ~ var(z) * sigmoid'(m) / 2, sigmoid' = p (1 - p).
    p = expit(mean)
    variances = torch.tensor([1e-4, 1e-6, 1e-8], dtype=torch.float64)
    out = gaussian_logit_uncertainty(torch.full_like(variances, mean), variances)
    bald = out["bald"].numpy()
    np.testing.assert_allclose(bald, variances.numpy() * p * (1 - p) / 2, rtol=0.01)
    assert np.all(np.diff(bald) < 0)  # strictly decreasing towards 0: no 2e-3 floor
    tiny = gaussian_logit_uncertainty(torch.tensor([mean]).double(), torch.tensor([1e-10]).double())
    # At v = 1e-10 the value sits near the float64 round-off of the two entropies (~1e-16).
    assert tiny["bald"].item() == pytest.approx(1e-10 * p * (1 - p) / 2, abs=1e-15)
    zero = gaussian_logit_uncertainty(torch.tensor([mean]), torch.tensor([0.0]))
    assert zero["bald"].item() <= 1e-7
    assert zero["predictive_probability"].item() == pytest.approx(p, rel=1e-6)


def test_the_two_rules_agree_at_the_switch() -> None:
    means = torch.tensor([-12.0, -3.0, 0.0, 1.0, 6.0, 15.0], dtype=torch.float64)
    below = gaussian_logit_uncertainty(
        means, torch.full_like(means, QUADRATURE_WIDE_VARIANCE * (1 - 1e-12))
    )
    above = gaussian_logit_uncertainty(
        means, torch.full_like(means, QUADRATURE_WIDE_VARIANCE * (1 + 1e-12))
    )
    for name in below:
        np.testing.assert_allclose(above[name].numpy(), below[name].numpy(), rtol=1e-3, atol=1e-12)


def test_shapes_dtypes_broadcasting_and_extremes() -> None:
    torch.manual_seed(0)
    mean = torch.randn(2, 3, 5) * 20
    variance = torch.rand(2, 3, 5) * 200
    out = gaussian_logit_uncertainty(mean, variance)
    assert set(out) == {
        "predictive_probability",
        "entropy",
        "expected_entropy",
        "bald",
    }
    for value in out.values():
        assert value.shape == (2, 3, 5) and value.dtype == torch.float32
        assert torch.isfinite(value).all()
    flat = gaussian_logit_uncertainty(mean.reshape(-1).double(), variance.reshape(-1).double())
    np.testing.assert_allclose(out["bald"].numpy().ravel(), flat["bald"].numpy(), rtol=1e-6)
    # A scalar variance broadcasts; negative round-off is treated as 0.
    scalar = gaussian_logit_uncertainty(mean, torch.tensor(-1e-9))
    assert scalar["bald"].shape == (2, 3, 5)
    assert float(scalar["bald"].max()) <= 1e-7
    # Extreme logits and variances stay finite and in range.
    extreme = gaussian_logit_uncertainty(
        torch.tensor([-1e4, 1e4, 0.0, 50.0]), torch.tensor([1e6, 1e-30, 1e8, 1e4])
    )
    p = extreme["predictive_probability"]
    assert torch.all((p >= 0) & (p <= 1))
    for value in extreme.values():
        assert torch.isfinite(value).all() and torch.all(value >= 0)
    assert float(extreme["entropy"].max()) <= np.log(2) + 1e-6


def _hermite_reference(mean: np.ndarray, variance: np.ndarray, n_nodes: int = 150):
    """(p_bar, BALD) by a 150-node Gauss-Hermite rule in NumPy: the reference for v <= 4."""
    from numpy.polynomial.hermite import hermgauss

    nodes, weights = hermgauss(n_nodes)
    weights = weights / np.sqrt(np.pi)
    z = mean[:, None] + np.sqrt(2.0 * variance)[:, None] * nodes
    log_p = log_expit(z)
    log_q = log_p - z
    p_bar, q_bar = np.exp(log_p) @ weights, np.exp(log_q) @ weights
    expected = -((np.exp(log_p) * log_p + np.exp(log_q) * log_q) @ weights)
    total = -(p_bar * np.log(p_bar) + q_bar * np.log(q_bar))
    return p_bar, np.maximum(total - expected, 0.0)


@pytest.mark.parametrize("band", range(len(HERMITE_BANDS) + 1))
def test_each_variance_band_keeps_the_documented_accuracy(band: int) -> None:
    """The fewer nodes of a narrow band (HERMITE_BANDS) are as accurate as the comment says:
    relative BALD error < 5e-5 where BALD > 1e-6, absolute < 1e-9 elsewhere, |p_bar error| <
    2e-6, for every |m| <= 60 across the band up to its upper edge (the worst case)."""
    edges = [0.0] + [edge for edge, _ in HERMITE_BANDS] + [QUADRATURE_WIDE_VARIANCE]
    low, high = edges[band], edges[band + 1]
    variances = np.linspace(low, high, 9)[1:] if low > 0 else np.geomspace(1e-8, high, 12)
    grid_m, grid_v = np.meshgrid(np.linspace(-60.0, 60.0, 1201), variances, indexing="ij")
    mean, variance = grid_m.ravel(), grid_v.ravel()
    out = gaussian_logit_uncertainty(torch.from_numpy(mean), torch.from_numpy(variance))
    ref_p, ref_bald = _hermite_reference(mean, variance)
    bald = out["bald"].numpy()
    big = ref_bald > 1e-6
    assert big.sum() >= 100
    relative = np.abs(bald[big] - ref_bald[big]) / ref_bald[big]
    limit = 5e-5 if band < len(HERMITE_BANDS) else 1e-4  # the last band: 20 nodes
    assert relative.max() < limit
    assert np.abs(bald[~big] - ref_bald[~big]).max(initial=0.0) < 1e-9
    assert np.abs(out["predictive_probability"].numpy() - ref_p).max() < (
        2e-6 if band < len(HERMITE_BANDS) else 1e-5
    )


def test_the_bands_use_fewer_nodes_than_n_nodes_and_never_more() -> None:
    """A narrow logit's moments are those of its band's node count, not of n_nodes; a cap of
    n_nodes below a band's count is honoured."""
    from laplace_head.bayes.predictive import _hermite_moments

    mean = torch.tensor([-3.0, 0.5, 2.0], dtype=torch.float64)
    for edge, nodes in HERMITE_BANDS:
        variance = torch.full_like(mean, edge)
        out = gaussian_logit_uncertainty(mean, variance)
        p_bar, _, _ = _hermite_moments(mean, variance, nodes)
        torch.testing.assert_close(out["predictive_probability"], p_bar, rtol=0, atol=1e-15)
        capped = gaussian_logit_uncertainty(mean, variance, n_nodes=3)
        p_cap, _, _ = _hermite_moments(mean, variance, min(nodes, 3))
        torch.testing.assert_close(capped["predictive_probability"], p_cap, rtol=0, atol=1e-15)


def _laguerre_reference(m: np.ndarray, v: np.ndarray, n_nodes: int) -> tuple[np.ndarray, ...]:
    """The wide-variance rule written out node by node in NumPy: the Gaussian densities at
    ``+-t`` from ``(t -+ m)^2`` directly (no expansion, no clamping), then the sums."""
    from numpy.polynomial.laguerre import laggauss
    from scipy.special import ndtr

    t, w = laggauss(n_nodes)
    s = np.sqrt(v)[:, None]
    pos = np.exp(-((t - m[:, None]) ** 2) / (2 * s**2)) / (s * np.sqrt(2 * np.pi))
    neg = np.exp(-((t + m[:, None]) ** 2) / (2 * s**2)) / (s * np.sqrt(2 * np.pi))
    scaled_entropy = expit(t) * (t + np.log1p(np.exp(-t)) + np.log1p(np.exp(-t)) / np.exp(-t))
    correction = ((neg - pos) * expit(t)) @ w
    expected = ((pos + neg) * scaled_entropy) @ w
    return ndtr(m / s[:, 0]) + correction, ndtr(-m / s[:, 0]) - correction, expected


def test_the_wide_rule_equals_its_node_by_node_form() -> None:
    """The wide rule gets every node's density from one matrix product of the expanded
    exponent and clamps exponents below -700: the same p_bar, 1 - p_bar and expected entropy as
    the densities written out node by node, to 1e-11 relative or 4e-15 absolute (p_bar = Phi +
    correction cancels in both forms where it is tiny), for logits up to |m| = 1000 and
    variances from the switch to 1e5."""
    rng = np.random.default_rng(11)
    m = np.concatenate([rng.uniform(-60, 60, 4000), rng.uniform(-1000, 1000, 1000)])
    v = QUADRATURE_WIDE_VARIANCE * 10 ** rng.uniform(1e-9, np.log10(1e5 / 4), m.size)
    out = gaussian_logit_uncertainty(torch.from_numpy(m), torch.from_numpy(v))
    p_bar, q_bar, expected = _laguerre_reference(m, v, 20)
    for name, reference in (
        ("predictive_probability", p_bar),
        ("entropy", -(xlogy(p_bar, p_bar) + xlogy(q_bar, q_bar))),  # 1 - p_bar enters here
        ("expected_entropy", expected),
    ):
        np.testing.assert_allclose(out[name].numpy(), reference, rtol=1e-11, atol=4e-15)


@pytest.mark.parametrize("n_nodes", [4, 9, 14, 20])
def test_the_hermite_rule_equals_its_log_sigmoid_form(n_nodes: int, monkeypatch) -> None:
    """_hermite_moments (one exp and one log per node, from e^-|z|) equals the same rule written
    with log-sigmoids node by node, to float64 rounding: p_bar and 1 - p_bar relatively (each
    keeps its digits when tiny, from 1e-26 up; 2e-16 absolute where the nodes straddle 0), H_exp
    to 2e-16 absolute or 1e-12 relative. In chunks of 1000 pixels, the last one partial."""
    from numpy.polynomial.hermite import hermgauss

    from laplace_head.bayes import predictive
    from laplace_head.bayes.predictive import _hermite_moments

    monkeypatch.setattr(predictive, "_NODE_CHUNK", 1000)

    grid_m, grid_v = np.meshgrid(
        np.linspace(-60.0, 60.0, 481), [1e-10, 1e-3, 0.3, 1.0, 2.0, 4.0], indexing="ij"
    )
    mean, variance = grid_m.ravel(), grid_v.ravel()
    nodes, weights = hermgauss(n_nodes)
    weights = weights / np.sqrt(np.pi)
    z = mean[:, None] + np.sqrt(2.0 * variance)[:, None] * nodes
    log_p, log_q = log_expit(z), log_expit(-z)
    p, q = np.exp(log_p), np.exp(log_q)
    reference = (p @ weights, q @ weights, -((p * log_p + q * log_q) @ weights))
    out = _hermite_moments(torch.from_numpy(mean), torch.from_numpy(variance), n_nodes)
    p_bar, q_bar, expected = (value.numpy() for value in out)
    assert min(reference[0].min(), reference[1].min()) < 1e-20  # tiny probabilities are checked
    for value, wanted in ((p_bar, reference[0]), (q_bar, reference[1])):
        # where the nodes straddle z = 0 the sums E[d] +- E[sign(z) d] round to ~1e-16
        np.testing.assert_allclose(value, wanted, rtol=1e-12, atol=2e-16)
        tiny = wanted < 1e-14  # every node on one side: the two sums cancel exactly
        np.testing.assert_allclose(value[tiny], wanted[tiny], rtol=1e-12, atol=0)
    np.testing.assert_allclose(expected, reference[2], rtol=1e-12, atol=2e-16)
