"""The predictive maths of the Laplace head, each formula once.

Under the linearised (GLM) posterior a pixel's refined logit ``z`` is Gaussian with mean
``z_map`` and a variance ``var(z) = J Sigma J^T`` computed for every posterior variant by
:mod:`laplace_head.bayes.curvature`. The last layer is linear in its parameters
``theta = [w_0..w_{C-1}, b]`` (weights first, bias last; C = 16 for the default head): a pixel
with trunk features ``phi`` has ``z = phi . w + b`` (:func:`linear_logits`).

The predictive probability ``E[sigmoid(z)]`` is approximated in closed form by the probit
(MacKay) approximation ``sigmoid(z_map / sqrt(1 + pi var(z) / 8))`` (:func:`probit_logits`).
The uncertainty of a pixel - its predictive probability, predictive entropy, expected entropy
and BALD (their difference, the mutual information between label and weights) - comes by
quadrature from the logit's Gaussian (:func:`gaussian_logit_uncertainty`, the route every
stage and the predictor take) or, on explicit request, from logit samples
(:func:`uncertainty_from_samples`). Both return the names of :data:`UNCERTAINTY_FIELDS`.
Entropies are in nats.

Used by :mod:`laplace_head.bayes.posterior` (the Posterior API) and
:mod:`laplace_head.bayes.tuning` (the hyperparameter search).
"""

from __future__ import annotations

import math
import string

import torch
import torch.nn.functional as F

from laplace_head.errors import LaplaceHeadError
from laplace_head.util.values import is_int

PROBIT_SCALE = math.pi / 8.0

#: The names of a pixel's uncertainty, one per quantity: the predictive probability
#: ``E[sigmoid(z)]``, the predictive (total) entropy ``H(E[sigmoid(z)])``, the expected
#: (aleatoric) entropy ``E[H(sigmoid(z))]`` and BALD, their difference (epistemic).
UNCERTAINTY_FIELDS = ("predictive_probability", "entropy", "expected_entropy", "bald")


class UncertaintyInputError(LaplaceHeadError, ValueError):
    """Inputs given to the uncertainty API have the wrong shape, dtype or range."""


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


def tempered_moments(map_logits, logit_variance, output_temperature: float = 1.0):
    """The Gaussian logit of a posterior with an output temperature ``tau``: ``z / tau`` has
    mean ``z_map / tau`` and variance ``var(z) / tau^2``.

    ``laplace.output_temperature`` fits ``tau`` on validation NLL after the Laplace fit (a
    temperature on top of the Laplace predictive); every predictive quantity (probit
    probability, entropies, BALD, samples, expected IoU) is taken of ``z / tau``. ``tau = 1``
    returns the inputs unchanged. Works on tensors and arrays alike; ``output_temperature``
    may be a tensor of several (broadcasting against the moments).
    """
    if isinstance(output_temperature, (int, float)) and output_temperature == 1.0:
        return map_logits, logit_variance
    return map_logits / output_temperature, logit_variance / output_temperature**2


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
        :data:`UNCERTAINTY_FIELDS`: ``predictive_probability`` (the sample mean of
        ``sigmoid(z)``), ``entropy``, ``expected_entropy`` and ``bald`` (clamped at 0), each of
        the trailing shape, float32; entropies in nats (max ln 2).
    """
    samples = logit_samples.double()
    p_mean = torch.sigmoid(samples).mean(0)
    q_mean = torch.sigmoid(-samples).mean(0)  # 1 - p_mean without cancellation
    expected = binary_entropy_from_logits(samples).mean(0)
    fields = _uncertainty_fields(p_mean, q_mean, expected)
    return {name: value.float() for name, value in zip(UNCERTAINTY_FIELDS, fields)}


_TINY = torch.finfo(torch.float64).tiny  # log's argument floor: 0 log 0 = 0 log tiny = 0


def _uncertainty_fields(
    p_bar: torch.Tensor, q_bar: torch.Tensor, expected: torch.Tensor
) -> tuple[torch.Tensor, ...]:
    """The :data:`UNCERTAINTY_FIELDS` from the predictive probability, its complement (given
    apart, so a tiny one keeps its digits) and the expected entropy: ``(p_bar, H(p_bar),
    expected, BALD)``, with ``0 log 0 = 0`` (as ``xlogy``, at half its cost) and BALD clamped
    at 0."""
    total = p_bar * torch.log(p_bar.clamp_min(_TINY))
    total.addcmul_(q_bar, torch.log(q_bar.clamp_min(_TINY))).neg_()
    return p_bar, total, expected, (total - expected).clamp_min(0.0)


# --- Predictive probability, entropies and BALD of a Gaussian logit, by quadrature -------------
#
# For a pixel whose logit is z ~ N(m, v) (m = z_map, v = var(z) of the linearised posterior):
#
#     p_bar    = E[sigmoid(z)]                       predictive probability
#     H_pred   = H(p_bar)                            predictive (total) entropy
#     H_exp    = E[H(sigmoid(z))]                    expected (aleatoric) entropy
#     BALD     = H_pred - H_exp                      mutual information (epistemic), >= 0
#
# with H(p) = -p log p - (1 - p) log(1 - p) in nats. One pass over the pixels, no sampling; the
# rule depends on the logit's spread s = sqrt(v) relative to the sigmoid's width (~1):
#
# * v <= QUADRATURE_WIDE_VARIANCE (s <= 2): Gauss-Hermite with respect to the Gaussian,
#   E[f(z)] = sum_i w_i f(m + sqrt(2 v) x_i) / sqrt(pi). Exact as v -> 0 (every node sits at m, so
#   BALD -> 0 like v sigma'(m) / 2, no floor).
# * v > QUADRATURE_WIDE_VARIANCE: Gauss-Hermite cannot resolve a sigmoid step (or the entropy
#   bump) of width ~1 under a Gaussian of std s >> 1 with a few tens of nodes (24 nodes: 8 %
#   error on BALD at v = 100). There the roles are swapped: the sigmoid's exponential tails
#   become the weight of a Gauss-Laguerre rule and the Gaussian density, smooth on that scale,
#   the integrand. With t >= 0 and N(t) = N(t; m, v):
#       p_bar = Phi(m / s) + int_0^inf e^-t sigmoid(t) [N(-t) - N(t)] dt
#       H_exp = int_0^inf e^-t [e^t H(sigmoid(t))] [N(t) + N(-t)] dt,
#   using sigmoid(z) - 1[z > 0] = sigmoid(-t) sign(-z) (t = |z|) and H(sigmoid(z)) even in z;
#   e^t H(sigmoid(t)) = sigmoid(t) (t + log1p(e^-t) + log1p(e^-t) / e^-t) grows only linearly.
#   1 - p_bar is evaluated as p_bar at -m (never as a difference), so neither probability
#   loses digits when it is tiny.
#
# Accuracy against a 30-digit reference (mpmath) on a grid of |m| <= 60, 1e-8 <= v <= 1e5: with
# 20 nodes the relative BALD error is < 1e-4 wherever BALD > 1e-6 (worst just above the switch),
# the absolute error < 1e-9 elsewhere and |p_bar error| < 1e-5 (16 nodes: 4e-3 relative, 24
# nodes: 4e-5). tests/unit/test_predictive_gh.py checks 16-24 nodes against Monte Carlo. All
# arithmetic is float64.
#
# A narrow Gaussian needs far fewer Hermite nodes for that accuracy, and a fitted posterior's
# logits are mostly narrow (real_large's image head after its output temperature: 66 % of the
# pixels have v <= 0.1, 98 % v <= 0.5). HERMITE_BANDS gives each variance band the fewest nodes
# that keep the relative BALD error below 5e-5 where BALD > 1e-6, the absolute one below 1e-9
# elsewhere and |p_bar error| below 2e-6, against a 150-node rule, for every |m| <= 60 (half the
# 20-node rule's worst error; tests/unit/test_predictive_gh.py checks each band's edge). One
# band per node count (the largest v each count meets that accuracy at, found on a 0.05-0.1 grid
# of v): the more bands, the fewer nodes a pixel pays for. Above the last band, up to the
# switch, the rule takes n_nodes.
#
# Each Hermite node costs one exp and one log (_hermite_moments), in cache-sized chunks of
# pixels; the pixels are sorted by band once, so each rule runs on one contiguous slice.

QUADRATURE_NODES = 20
# (largest var(z), Gauss-Hermite nodes) per band, in increasing order; never more than n_nodes.
HERMITE_BANDS = (
    (0.1, 4),
    (0.25, 5),
    (0.4, 6),
    (0.6, 7),
    (0.85, 8),
    (1.0, 9),
    (1.2, 10),
    (1.5, 11),
    (1.7, 12),
    (1.9, 13),
    (2.1, 14),
    (2.3, 15),
    (2.5, 16),
    (2.7, 17),
    (2.9, 18),
    (3.1, 19),
)
# The most nodes accepted: beyond ~32 nothing changes at float32 output, and from ~180 nodes
# NumPy's Gauss-Laguerre/Hermite weights overflow (the maps turn NaN).
MAX_QUADRATURE_NODES = 64
QUADRATURE_WIDE_VARIANCE = 4.0
# Pixels per pass of a rule: its (pixels, nodes) buffers stay in the CPU's cache between the
# element-wise passes (~1.6x faster than whole-image passes at 65,536 pixels, 1 thread).
_NODE_CHUNK = 4096
# On a GPU one launch per step over many pixels is what pays; the chunk only bounds memory.
_DEVICE_NODE_CHUNK = 1 << 18
_NODE_CACHE: dict[tuple[str, int, str], tuple[torch.Tensor, ...]] = {}


def _node_chunk(mean: torch.Tensor) -> int:
    """Pixels per pass of a rule over ``mean``'s pixels (>= 1)."""
    chunk = _NODE_CHUNK if mean.device.type == "cpu" else _DEVICE_NODE_CHUNK
    return max(1, min(chunk, mean.numel()))


def _hermite_rule(n_nodes: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Gauss-Hermite nodes as the rows ``[1, x]`` (N, 2), so that one matrix product with the
    pixels' ``[m; sqrt(2 v)]`` gives every node's logit, and the weights ``w / sqrt(pi)``
    (summing to 1), float64."""
    key = ("hermite", n_nodes, str(device))
    if key not in _NODE_CACHE:
        from numpy.polynomial.hermite import hermgauss

        nodes, weights = hermgauss(n_nodes)
        x = torch.as_tensor(nodes, dtype=torch.float64, device=device)
        _NODE_CACHE[key] = (
            torch.stack([torch.ones_like(x), x], dim=1),
            torch.as_tensor(weights / math.sqrt(math.pi), dtype=torch.float64, device=device),
        )
    return _NODE_CACHE[key]  # type: ignore[return-value]


def _laguerre_rule(n_nodes: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Gauss-Laguerre nodes ``t`` as the columns ``[1, t, t^2 | 1, -t, t^2]`` (3, 2N), and the
    (2N, 2) weights that turn the Gaussian density at ``(t | -t)`` into ``(p_bar - Phi(m / s),
    H_exp)``: ``w sigmoid(t)`` (``-`` at ``t``, ``+`` at ``-t``) and ``w e^t H(sigmoid(t))``
    (both), float64."""
    key = ("laguerre", n_nodes, str(device))
    if key not in _NODE_CACHE:
        from numpy.polynomial.laguerre import laggauss

        nodes, weights = laggauss(n_nodes)
        t = torch.as_tensor(nodes, dtype=torch.float64, device=device)
        w = torch.as_tensor(weights, dtype=torch.float64, device=device)
        u = torch.exp(-t)  # > 0 for every node (t < 100 for n_nodes <= 24)
        log1p_u = torch.log1p(u)
        sigmoid_t = torch.sigmoid(t)
        scaled_entropy = sigmoid_t * (t + log1p_u + log1p_u / u)
        powers = torch.stack([torch.ones_like(t), t, t * t])
        mirrored = powers * torch.tensor([[1.0], [-1.0], [1.0]], dtype=torch.float64, device=device)
        sigmoid_w, entropy_w = sigmoid_t * w, scaled_entropy * w
        _NODE_CACHE[key] = (
            torch.cat([powers, mirrored], dim=1),
            torch.stack(
                [torch.cat([-sigmoid_w, sigmoid_w]), torch.cat([entropy_w, entropy_w])], dim=1
            ),
        )
    return _NODE_CACHE[key]  # type: ignore[return-value]


def _hermite_moments(
    mean: torch.Tensor, variance: torch.Tensor, n_nodes: int, out: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(p_bar, 1 - p_bar, H_exp) of (P,) float64 Gaussian logits by Gauss-Hermite, written into
    the rows of ``out`` (3, P) when given.

    One exp and one log per node, from ``u = e^-|z|``: ``sigmoid(|z|) = 1 / (1 + u)``,
    ``sigmoid(-|z|) = u / (1 + u)`` and ``H(sigmoid(z)) = log(1 + u) + |z| sigmoid(-|z|)``,
    every term >= 0 (no cancellation; log(1 + u) is log1p(u) up to the rounding of 1 + u,
    < 1.2e-16). The sign of z picks which of the two is sigmoid(z): with ``d = sigmoid(|z|) -
    sigmoid(-|z|)``, ``p_bar = E[sigmoid(-|z|)] + (E[d] + E[sign(z) d]) / 2`` and ``1 - p_bar``
    the same with ``-``; where every node has one sign the two sums cancel exactly, so a tiny
    probability keeps its digits.

    The pixels go in chunks (:func:`_node_chunk`) through buffers allocated once, on the CPU
    small enough to stay in its cache between the passes (each pass over a (pixels, nodes)
    array is memory-bound otherwise)."""
    basis, weights = _hermite_rule(n_nodes, mean.device)
    location_scale = torch.stack([mean, torch.sqrt(2.0 * variance)])  # (2, P)
    rows = _node_chunk(mean)
    z, magnitude = torch.empty(2, n_nodes * rows, dtype=torch.float64, device=mean.device)
    # per node: sigmoid(-|z|), d, sign(z) d, H(sigmoid(z)) of each pixel; node-major, so one
    # vector-matrix product sums all four
    terms = torch.empty(n_nodes * 4 * rows, dtype=torch.float64, device=mean.device)
    sums = torch.empty(4, mean.numel(), dtype=torch.float64, device=mean.device)
    for start in range(0, mean.numel(), rows):
        stop = min(start + rows, mean.numel())
        n = stop - start
        chunk = terms[: n_nodes * 4 * n].view(n_nodes, 4, n)  # contiguous for every n
        small, spread, signed, entropy = chunk.unbind(1)
        z_n = z[: n_nodes * n].view(n_nodes, n)
        magnitude_n = magnitude[: n_nodes * n].view(n_nodes, n)
        torch.mm(basis, location_scale[:, start:stop], out=z_n)  # m + sqrt(2 v) x
        torch.abs(z_n, out=magnitude_n)
        torch.neg(magnitude_n, out=small).exp_()  # u
        torch.add(small, 1.0, out=spread)
        torch.log(spread, out=entropy)
        spread.reciprocal_()  # sigmoid(|z|)
        small.mul_(spread)  # sigmoid(-|z|)
        entropy.addcmul_(magnitude_n, small)
        spread.sub_(small)
        torch.copysign(spread, z_n, out=signed)  # sign(z) d (d = 0 where z = 0)
        sums[:, start:stop] = (weights @ chunk.view(n_nodes, 4 * n)).view(4, n)
    tail, total, skew, expected = sums
    if out is None:
        out = torch.empty(3, mean.numel(), dtype=torch.float64, device=mean.device)
    p_bar, q_bar, h_exp = out.unbind()
    torch.add(total, skew, out=p_bar).mul_(0.5).add_(tail)
    torch.sub(total, skew, out=q_bar).mul_(0.5).add_(tail)
    return p_bar, q_bar, h_exp.copy_(expected)


def _laguerre_moments(
    mean: torch.Tensor, variance: torch.Tensor, n_nodes: int, out: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(p_bar, 1 - p_bar, H_exp) of (P,) float64 Gaussian logits (v > 0) by Gauss-Laguerre,
    written into the rows of ``out`` (3, P) when given.

    The log density of N(m, v) at ``+-t`` is ``a + b (+-t) + c t^2`` per pixel, so every node
    of every pixel comes from one (P, 3) x (3, 2N) matrix product, one exp and one (2N, 2)
    product (the exponent's expansion costs < 1e-12 of it for |m| <= 1e3); exponents below
    -700 (densities < 1e-304, nothing at float64 next to Phi) are clamped there, off the
    exp's slow subnormal path."""
    basis, combine = _laguerre_rule(n_nodes, mean.device)
    std = torch.sqrt(variance)
    half_precision = -0.5 / variance
    log_norm = -torch.log(std * math.sqrt(2.0 * math.pi))
    exponents = torch.stack(
        [half_precision * mean * mean + log_norm, -2.0 * half_precision * mean, half_precision],
        dim=1,
    )
    rows = _node_chunk(mean)
    density = torch.empty(rows, basis.shape[1], dtype=torch.float64, device=mean.device)
    sums = torch.empty(mean.numel(), 2, dtype=torch.float64, device=mean.device)
    for start in range(0, mean.numel(), rows):  # in cache-sized chunks, as _hermite_moments
        stop = min(start + rows, mean.numel())
        chunk = density[: stop - start]
        torch.matmul(exponents[start:stop], basis, out=chunk)
        chunk.clamp_min_(-700.0).exp_()  # N(t; m, v) | N(-t; m, v)
        torch.matmul(chunk, combine, out=sums[start:stop])
    correction, expected = sums.unbind(1)
    if out is None:
        out = torch.empty(3, mean.numel(), dtype=torch.float64, device=mean.device)
    p_bar, q_bar, h_exp = out.unbind()
    torch.special.ndtr(mean / std, out=p_bar).add_(correction)
    torch.special.ndtr(-mean / std, out=q_bar).sub_(correction)
    return p_bar, q_bar, h_exp.copy_(expected)


def gaussian_logit_uncertainty(
    map_logits: torch.Tensor,
    logit_variance: torch.Tensor,
    n_nodes: int = QUADRATURE_NODES,
) -> dict[str, torch.Tensor]:
    """Predictive probability, entropies and BALD of Gaussian logits, in one quadrature pass.

    For every pixel, ``z ~ N(map_logits, logit_variance)`` (the logit under the linearised
    posterior, any variant); see the comment block above this function for the two quadrature rules
    (Gauss-Hermite for ``var(z) <= 4``, Gauss-Laguerre over the sigmoid's tails above). No
    sampling: the result is deterministic and, unlike sample estimates or the rescaled
    closed-form approximations, BALD tends to 0 as ``var(z) -> 0``.

    Parameters
    ----------
    map_logits
        Mean logits ``z_map`` (log-odds), any shape, e.g. (B, H, W); finite.
    logit_variance
        ``var(z)`` (squared log-odds), broadcasting against ``map_logits``; negative values
        (round-off) are treated as 0.
    n_nodes
        Quadrature nodes of the widest logits, 2 to :data:`MAX_QUADRATURE_NODES` (16-24 are
        tested; 20 by default): the Gauss-Laguerre rule and Gauss-Hermite above the last band of
        :data:`HERMITE_BANDS` (``var(z) > 3.1``). Narrower logits take their band's fewer
        nodes (never more than ``n_nodes``), at least as accurate as 20 nodes are at the
        switch.

    Returns
    -------
    dict
        :data:`UNCERTAINTY_FIELDS`, each of the broadcast shape, in the floating dtype of
        ``map_logits`` (float32 for integer input), computed in float64:
        ``predictive_probability`` (``E[sigmoid(z)]`` in [0, 1]), ``entropy``
        (``H(E[sigmoid(z))])``), ``expected_entropy`` (``E[H(sigmoid(z))]``) and ``bald``
        (their difference, clamped at 0); entropies in nats.
    """
    if not is_int(n_nodes) or not (2 <= n_nodes <= MAX_QUADRATURE_NODES):
        raise ValueError(
            f"n_nodes (quadrature nodes) must be an int in [2, {MAX_QUADRATURE_NODES}]; "
            f"got {n_nodes!r}"
        )
    mean, variance = torch.broadcast_tensors(
        torch.as_tensor(map_logits), torch.as_tensor(logit_variance)
    )
    out_dtype = mean.dtype if mean.is_floating_point() else torch.float32
    shape = mean.shape
    mean = mean.detach().reshape(-1).to(torch.float64)
    variance = variance.detach().reshape(-1).to(torch.float64).clamp_min(0.0)
    edges = torch.tensor(
        [edge for edge, _ in HERMITE_BANDS] + [QUADRATURE_WIDE_VARIANCE],
        dtype=torch.float64,
        device=mean.device,
    )
    rules = [(_hermite_moments, min(nodes, n_nodes)) for _, nodes in HERMITE_BANDS]
    rules += [(_hermite_moments, n_nodes), (_laguerre_moments, n_nodes)]
    # i: edges[i - 1] < v <= edges[i]; the last band is the wide rule's
    band = torch.bucketize(variance, edges).to(torch.uint8)
    counts = torch.bincount(band, minlength=len(rules)).tolist()
    # The pixels sorted by band (one permutation, unless a single band holds them all), so that
    # each rule runs on a contiguous slice.
    order = None if max(counts) == mean.numel() else torch.argsort(band, stable=True)
    if order is not None:
        mean, variance = mean.index_select(0, order), variance.index_select(0, order)
    moments = torch.empty(3, mean.numel(), dtype=torch.float64, device=mean.device)
    start = 0
    for (rule, nodes), count in zip(rules, counts):
        if count:
            stop = start + count
            rule(mean[start:stop], variance[start:stop], nodes, out=moments[:, start:stop])
            start = stop
    if order is not None:
        moments = torch.empty_like(moments).index_copy_(1, order, moments)
    moments[:2].clamp_(0.0, 1.0)
    p_bar, q_bar, expected = moments
    expected.clamp_min_(0.0)
    return {
        name: value.reshape(shape).to(out_dtype)
        for name, value in zip(UNCERTAINTY_FIELDS, _uncertainty_fields(p_bar, q_bar, expected))
    }
