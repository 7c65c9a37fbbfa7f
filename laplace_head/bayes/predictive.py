"""The predictive maths of the last-layer diagonal Laplace head, each formula once.

The posterior is a diagonal Gaussian over the final 1x1 conv's parameters
``theta = [w_0..w_{C-1}, b]`` (weights first, bias last; C = 16 for the default head). A pixel
with trunk features ``phi`` (C,) has the refined logit ``z = phi . w + b``, which is linear in
``theta``, so under the posterior ``z`` is Gaussian with

* mean ``z_map = phi . w_map + b_map`` (:func:`linear_logits`),
* variance ``var(z) = sum_i phi_i^2 s_i^2 + s_b^2`` (:func:`logit_variance`), where the
  marginal variances are ``s^2 = 1 / (H / T + prior_precision)`` with ``H`` the GGN diagonal
  and ``T`` the likelihood temperature (:func:`diagonal_posterior_variance`).

The predictive probability ``E[sigmoid(z)]`` is approximated in closed form by the probit
(MacKay) approximation ``sigmoid(z_map / sqrt(1 + pi var(z) / 8))`` (:func:`probit_logits`).
Sample-based uncertainties (predictive entropy, expected entropy and their difference, the
mutual information / BALD) come from :func:`uncertainty_from_samples`. Entropies are in nats.

Used by :mod:`laplace_head.bayes.posterior` (the Posterior API) and
:mod:`laplace_head.bayes.tuning` (the grid search on validation NLL).
"""

from __future__ import annotations

import math
import string

import torch
import torch.nn.functional as F

PROBIT_SCALE = math.pi / 8.0


def diagonal_posterior_variance(
    ggn_diagonal: torch.Tensor,
    prior_precision: torch.Tensor | float,
    temperature: torch.Tensor | float,
) -> torch.Tensor:
    """Marginal variances of the tempered diagonal Laplace posterior, ``1 / (H / T + prior)``.

    Parameters
    ----------
    ggn_diagonal
        GGN (curvature) diagonal ``H`` of the negative log-likelihood, (n_params,) or any shape
        that broadcasts against the other two arguments; units of 1 / parameter^2.
    prior_precision
        Precision of the isotropic Gaussian prior (scalar, or a tensor broadcasting with
        ``ggn_diagonal``, e.g. (P, 1, 1) for a grid).
    temperature
        Likelihood temperature ``T > 0`` (scalar or broadcasting tensor): the data term of the
        log-likelihood, and so ``H``, is divided by ``T``.

    Returns
    -------
    torch.Tensor
        The broadcast shape of the three inputs, dtype of ``ggn_diagonal / temperature +
        prior_precision``; parameter^2 (variances of the weights and the bias).
    """
    return 1.0 / (ggn_diagonal / temperature + prior_precision)


def _affine(features: torch.Tensor, params: torch.Tensor, feature_dim: int) -> torch.Tensor:
    """``sum_c features_c * params[..., c] + params[..., C]`` (see :func:`linear_logits`)."""
    dim = feature_dim % features.ndim
    n_features = features.shape[dim]
    if params.ndim < 1 or params.shape[-1] != n_features + 1:
        raise ValueError(
            f"params must have C + 1 = {n_features + 1} entries along their last axis (weights, "
            f"then bias); got shape {tuple(params.shape)} for features of shape "
            f"{tuple(features.shape)} with C on axis {dim}"
        )
    letters = string.ascii_letters
    feat = letters[: features.ndim]
    grid = letters[features.ndim : features.ndim + params.ndim - 1]
    channel = feat[dim]
    out = grid + feat.replace(channel, "")
    z = torch.einsum(f"{feat},{grid}{channel}->{out}", features, params[..., :n_features])
    bias = params[..., n_features]
    return z + bias.reshape(bias.shape + (1,) * (features.ndim - 1))


def linear_logits(
    features: torch.Tensor, params: torch.Tensor, feature_dim: int = -1
) -> torch.Tensor:
    """Logits of the last layer, ``z = phi . w + b``, for every feature vector.

    Parameters
    ----------
    features
        Per-pixel trunk features with the C channels on axis ``feature_dim``: (..., C) by
        default, e.g. (n_pixels, C); a (B, C, H, W) map with ``feature_dim=1``.
    params
        (*G, C + 1) parameter vectors ``[w_0..w_{C-1}, b]`` along the LAST axis (bias last);
        leading axes ``G`` hold several vectors, e.g. (S, C + 1) posterior samples. Same dtype
        as ``features``.
    feature_dim
        The channel axis of ``features``.

    Returns
    -------
    torch.Tensor
        (*G, *rest) logits (log-odds), ``rest`` being ``features.shape`` without the channel
        axis: (B, H, W) for one vector and a (B, C, H, W) map, (S, B, H, W) for S samples.
    """
    return _affine(features, params, feature_dim)


def logit_variance(
    features: torch.Tensor, variance: torch.Tensor, feature_dim: int = -1
) -> torch.Tensor:
    """Posterior variance of the logit ``z = phi . w + b`` under a diagonal Gaussian posterior.

    ``var(z) = sum_i phi_i^2 s_i^2 + s_b^2``, exact for a diagonal posterior over a linear last
    layer (the bias multiplies a constant feature 1).

    Parameters
    ----------
    features
        Per-pixel trunk features with the C channels on axis ``feature_dim`` ((..., C) by
        default; (B, C, H, W) with ``feature_dim=1``).
    variance
        (*G, C + 1) marginal posterior variances ``[s_0^2..s_{C-1}^2, s_b^2]`` along the LAST
        axis (bias last); leading axes ``G`` hold several posteriors, e.g. a
        (prior precision x temperature) grid of shape (P, T, C + 1). Same dtype as
        ``features``.
    feature_dim
        The channel axis of ``features``.

    Returns
    -------
    torch.Tensor
        (*G, *rest) logit variances (squared log-odds, >= 0), ``rest`` being ``features.shape``
        without the channel axis.
    """
    return _affine(features.square(), variance, feature_dim)


def probit_logits(map_logits: torch.Tensor, logit_variance: torch.Tensor) -> torch.Tensor:
    """Effective logits of the probit predictive, ``z_map / sqrt(1 + pi * var(z) / 8)``.

    ``sigmoid`` of the result approximates ``E[sigmoid(z)]`` for ``z ~ N(z_map, var(z))``
    (MacKay's probit approximation; exact in the limits var -> 0 and z_map = 0).

    Parameters
    ----------
    map_logits
        MAP logits ``z_map``, any shape.
    logit_variance
        ``var(z)`` (squared log-odds, >= 0), broadcasting against ``map_logits``.

    Returns
    -------
    torch.Tensor
        The broadcast shape; log-odds whose sigmoid is the predictive probability.
    """
    return map_logits / torch.sqrt(1.0 + PROBIT_SCALE * logit_variance)


def binary_entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of Bernoulli(sigmoid(logits)), computed stably in float64.

    Parameters
    ----------
    logits
        Log-odds, any shape and float dtype.

    Returns
    -------
    torch.Tensor
        Same shape, float64; nats in [0, ln 2] (ln 2 at logit 0).
    """
    logits = logits.double()
    log_p, log_q = F.logsigmoid(logits), F.logsigmoid(-logits)
    return -(log_p.exp() * log_p + log_q.exp() * log_q)


def uncertainty_from_samples(logit_samples: torch.Tensor) -> dict[str, torch.Tensor]:
    """Predictive entropy, expected entropy, BALD and mean probability from logit samples.

    With ``p_s = sigmoid(z_s)`` for S posterior samples: the predictive (total) entropy is
    ``H[mean_s p_s]``, the expected (aleatoric) entropy ``mean_s H[p_s]``, and their difference
    the mutual information between the label and the weights, BALD (epistemic).

    Parameters
    ----------
    logit_samples
        (S, ...) sampled logits (any trailing shape, e.g. (S, B, H, W)).

    Returns
    -------
    dict
        ``mean_probability``, ``predictive_entropy``, ``expected_entropy``,
        ``mutual_information`` (= BALD, clamped at 0), each of the trailing shape, float32;
        entropies in nats (max ln 2).
    """
    samples = logit_samples.double()
    p_mean = torch.sigmoid(samples).mean(0)
    q_mean = torch.sigmoid(-samples).mean(0)  # 1 - p_mean without cancellation
    total = -(p_mean * torch.log(p_mean.clamp_min(1e-300)))
    total = total - q_mean * torch.log(q_mean.clamp_min(1e-300))
    expected = binary_entropy_from_logits(samples).mean(0)
    bald = (total - expected).clamp_min(0.0)
    return {
        "mean_probability": p_mean.float(),
        "predictive_entropy": total.float(),
        "expected_entropy": expected.float(),
        "mutual_information": bald.float(),
    }
