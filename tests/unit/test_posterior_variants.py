"""Every posterior variant against an independent computation.

The reference for a variant is laplace-torch's own dense posterior covariance ``Sigma`` of the
fitted object, pushed through the autograd Jacobian of the *full-image* head (torch.func
.jacrev): ``var(z_u) = J_u Sigma J_u^T``. Neither the closed-form Jacobian factors of
:mod:`laplace_head.bayes.jacobian` nor the rotated curvature of
:mod:`laplace_head.bayes.curvature` enter it. Then each variant is fitted end to end by
``fit_laplace``, reloaded through ``load_posterior`` and checked again, with its tuning rule
and its warnings.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from helpers.laplace_fixtures import (
    PRIOR_GRID,
    TEMPERATURE_GRID,
    laplace_settings,
    save_best,
    train_tiny_head,
)
from helpers.synthetic_h5 import make_synthetic_h5
from torch.func import functional_call, jacrev
from torch.utils.data import DataLoader, TensorDataset

from laplace_head.bayes.curvature import BlockCurvature
from laplace_head.bayes.fit import LaplaceFitError, fit_laplace
from laplace_head.bayes.jacobian import (
    ImageJacobian,
    block_shapes,
    jacobian_factors,
    parameter_vector,
)
from laplace_head.bayes.laplace_torch import (
    PatchHead,
    PixelBernoulliLayer,
    curvature_from_laplace,
    fit_laplace_model,
    laplace_model,
    make_laplace,
)
from laplace_head.bayes.pixels import PixelStream, flat_features, pixel_patches, pixels_per_row
from laplace_head.bayes.posterior import VARIANCE_BAND_ROWS, Posterior, load_posterior
from laplace_head.bayes.predictive import gaussian_logit_uncertainty
from laplace_head.bayes.variant import (
    CURVLINOPS_GGN,
    PATCH_DIAGONAL_GGN,
    Approx,
    PosteriorVariant,
    TargetLayer,
)
from laplace_head.cache.split_h5 import split_shape
from laplace_head.model.head import NoImageHead
from laplace_head.model.head_variant import HeadVariant

# (target_layer, approx) -> subset and structure (as saved), laplace-torch's subset_of_weights
# of the head and the curvature backend
VARIANTS = [
    ("final_conv", "diagonal", "last_layer", "diag", "last_layer", "AsdlGGN"),
    ("final_conv", "full", "last_layer", "full", "last_layer", "CurvlinopsGGN"),
    ("all", "diagonal", "all_layers", "diag", "all", "PatchDiagonalGGN"),
    ("all", "kron", "all_layers", "kron", "all", "CurvlinopsGGN"),
]
VARIANT_PAIRS = [(layer, approx) for layer, approx, *_ in VARIANTS]
PRIOR, TEMPERATURE = 0.7, 3.0
SPREAD = (0.02, 1.0)  # prior precision and temperature at which the data shape every block


#: Every head variant's input channels: the patch model must be exact for each (same 5x5
#: receptive field, only channels_in differs).
HEADS = [pytest.param(variant.channels_in, id=variant.value) for variant in HeadVariant]


def _head(seed: int = 0, channels_in: int = 3) -> NoImageHead:
    torch.manual_seed(seed)
    head = NoImageHead(channels_in).double().eval()
    with torch.no_grad():  # make some ReLUs inactive so the derivative masks matter
        for parameter in head.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    return head


def test_every_name_of_a_variant_is_a_property_of_it():
    for layer, approx, subset, structure, subset_of_weights, backend in VARIANTS:
        variant = PosteriorVariant(layer, approx)
        assert variant == PosteriorVariant(TargetLayer(layer), Approx(approx))
        assert (variant.subset, variant.hessian_structure) == (subset, structure)
        assert (variant.subset_of_weights, variant.backend) == (subset_of_weights, backend)
        assert PosteriorVariant.from_stored(subset, structure) == variant
    assert [(v.layer.value, v.approx.value) for v in PosteriorVariant.all()] == VARIANT_PAIRS
    for layer, approx in (("final_conv", "kron"), ("all", "full"), ("trunk", "diagonal")):
        with pytest.raises(ValueError, match=f"'{layer}'.*valid.*final_conv \\+ diagonal"):
            PosteriorVariant(layer, approx)


def _full_image_jacobian(head: NoImageHead, x: torch.Tensor, layer: str) -> torch.Tensor:
    """(pixels, params) d logit / d theta of the full-image head, by autograd."""
    params = {name: p.detach() for name, p in head.named_parameters()}
    jac = jacrev(lambda p: functional_call(head, p, (x,)).flatten())(params)
    names = ["final_conv.weight", "final_conv.bias"] if layer == "final_conv" else list(params)
    return torch.cat([jac[name].reshape(jac[name].shape[0], -1) for name in names], dim=1)


def _dense_covariance(la, approx: str) -> torch.Tensor:
    la.prior_precision, la.temperature = PRIOR, TEMPERATURE
    if approx == "diagonal":
        return torch.diag(la.posterior_variance)
    if approx == "full":
        return la.posterior_covariance
    return la.posterior_precision.to_matrix(exponent=-1)


@pytest.mark.parametrize("channels_in", HEADS)
def test_patch_model_reproduces_the_full_image_head_at_the_border(channels_in):
    head = _head(channels_in=channels_in)
    x = torch.randn(2, channels_in, 7, 8, dtype=torch.float64)
    patches = pixel_patches(x).reshape(-1, channels_in + 1, 5, 5)
    logits = PatchHead(head)(patches)
    torch.testing.assert_close(logits[:, 1], head(x).flatten(), rtol=0, atol=1e-12)
    assert torch.all(logits[:, 0] == 0)
    # without the indicator channel (plain zero padding) the border pixels are wrong
    unmasked = patches.clone()
    unmasked[:, -1] = 1.0
    wrong = (PatchHead(head)(unmasked)[:, 1] - head(x).flatten()).abs()
    assert wrong.max() > 1e-3


def _fitted(head: NoImageHead, variant: PosteriorVariant, x: torch.Tensor):
    """laplace-torch's fit of ``variant`` on the pixels of ``x`` (random labels) and its
    :class:`BlockCurvature`."""
    labels = (torch.rand(x[:, 0].numel(), generator=torch.Generator().manual_seed(1)) > 0.5).long()
    if variant.layer is TargetLayer.FINAL_CONV:
        inputs = flat_features(head, x).reshape(-1, head.hidden_channels)
        model = PixelBernoulliLayer.from_conv(head.final_conv)
    else:
        inputs = pixel_patches(x).reshape(-1, head.channels_in + 1, 5, 5)
        model = PatchHead(head)
    la = make_laplace(model, variant, 1.0, 1.0)
    la.fit(DataLoader(TensorDataset(inputs, labels), batch_size=40))
    return (
        model,
        inputs,
        labels,
        la,
        curvature_from_laplace(la, variant, block_shapes(head, variant.layer)),
    )


@pytest.mark.parametrize("channels_in", HEADS)
@pytest.mark.parametrize(("target_layer", "approx"), VARIANT_PAIRS)
def test_variant_logit_variance_equals_j_sigma_jt(target_layer, approx, channels_in):
    variant = PosteriorVariant(target_layer, approx)
    head = _head(channels_in=channels_in)
    x = torch.randn(2, channels_in, 7, 8, dtype=torch.float64)
    model, inputs, labels, la, curvature = _fitted(head, variant, x)
    torch.testing.assert_close(la.mean.detach(), parameter_vector(head, target_layer))

    reference_la = la
    if variant.backend == PATCH_DIAGONAL_GGN:  # independent Sigma
        reference_la = make_laplace(model, variant, 1.0, 1.0, backend=CURVLINOPS_GGN)
        reference_la.fit(DataLoader(TensorDataset(inputs, labels), batch_size=40))
    sigma = _dense_covariance(reference_la, approx)
    jac = _full_image_jacobian(head, x, target_layer)
    reference = torch.einsum("np,pq,nq->n", jac, sigma, jac)
    weights = curvature.weights(PRIOR, TEMPERATURE)
    logits, factors = jacobian_factors(head, x, target_layer)
    torch.testing.assert_close(logits.flatten(), head(x).flatten(), rtol=0, atol=1e-12)
    variance = curvature.logit_variance(factors, weights)
    torch.testing.assert_close(variance, reference, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(curvature.marginal_variance(weights), sigma.diagonal())
    if approx != "diagonal":  # the correlations are real: a diagonal would differ
        diagonal_only = torch.einsum("np,p,np->n", jac, sigma.diagonal(), jac)
        assert (diagonal_only - reference).abs().max() > 1e-3 * reference.abs().max()

    # samples: J . (theta_s - theta_map) through the factors equals the dense Jacobian's
    steps = curvature.sample(5, weights, torch.Generator().manual_seed(0))
    flat = torch.cat([step.reshape(5, -1) for step in steps], dim=1)
    pushed = sum(
        torch.einsum("nor,soi,nir->sn", f.left, step, f.right)
        for f, step in zip(factors, steps, strict=True)
    )
    torch.testing.assert_close(pushed, flat @ jac.T, rtol=1e-9, atol=1e-12)
    # and their covariance is Sigma (on a few parameters of every block, to keep it cheap)
    many = curvature.sample(20_000, weights, torch.Generator().manual_seed(1))
    index = torch.cat([torch.arange(6) + start for start in _block_starts(head, target_layer)])
    flat = torch.cat([step.reshape(20_000, -1) for step in many], dim=1)[:, index]
    empirical = torch.cov(flat.T)
    reference_cov = sigma[index][:, index]
    assert (empirical - reference_cov).abs().max() < 0.06 * reference_cov.diagonal().max()


def _spread_curvature(head: NoImageHead, variant: PosteriorVariant) -> BlockCurvature:
    """A fitted curvature of ``variant`` whose weights ``W`` differ strongly along every
    block's eigen-directions (at PRIOR_SPREAD, T = 1), so that a wrong rotation shows."""
    x = torch.randn(2, head.channels_in, 7, 8, dtype=torch.float64)
    curvature = _fitted(head, variant, x)[-1]
    for block, weight in zip(curvature.blocks, curvature.weights(*SPREAD), strict=True):
        if weight.numel() > 1:
            assert weight.max() > 2 * weight.min(), block.name
    return curvature


def _per_pixel_variance(head: NoImageHead, x: torch.Tensor, curvature: BlockCurvature):
    """The reference: per-pixel factors rotated by the curvature, float64, (B, H, W)."""
    curvature = curvature.to("cpu", torch.float64)
    logits, factors = jacobian_factors(head, x, curvature.variant.layer)
    return curvature.logit_variance(factors, curvature.weights(*SPREAD)).reshape(logits.shape)


@pytest.mark.parametrize("channels_in", HEADS)
@pytest.mark.parametrize("approx", ["diagonal", "kron"])
def test_whole_image_factors_are_the_rotated_per_pixel_factors(approx, channels_in):
    """ImageJacobian's factors of a band of rows equal the per-pixel factors of
    jacobian_factors rotated into every block's eigenbasis, and give the same variance."""
    head = _head(2, channels_in)
    curvature = _spread_curvature(head, PosteriorVariant("all", approx))
    x = torch.randn(2, channels_in, 11, 9, dtype=torch.float64)
    logits, factors = jacobian_factors(head, x, "all")
    jacobian = ImageJacobian(head, x, curvature.rotations)
    assert torch.equal(jacobian.logits, logits)  # the same forward pass
    start, stop = 3, 7
    pixels = torch.arange(x[:, 0].numel()).reshape(2, 11, 9)[:, start:stop].reshape(-1)
    for block, mine, theirs in zip(
        curvature.blocks, jacobian.factors(start, stop), factors, strict=True
    ):
        assert mine.in_eigenbasis and not theirs.in_eigenbasis
        expected = block.rotated(theirs.rows(pixels))
        torch.testing.assert_close(mine.left, expected[0], rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(mine.right, expected[1], rtol=1e-12, atol=1e-14)
    weights = curvature.weights(*SPREAD)
    band = curvature.logit_variance(jacobian.factors(start, stop), weights)
    reference = _per_pixel_variance(head, x, curvature)[:, start:stop].reshape(-1)
    torch.testing.assert_close(band, reference, rtol=1e-12, atol=0)
    with pytest.raises(ValueError, match="6 all-layer blocks; got 1"):
        ImageJacobian(head, x, curvature.rotations[:1])


def _todays_route(posterior: Posterior, x: torch.Tensor) -> torch.Tensor:
    """The reference route of ``Posterior.logit_moments``: every image's per-pixel factors of
    jacobian_factors, rotated by the curvature, float32 (B, H, W)."""
    variances = []
    for image in posterior.as_inputs(x).split(1):
        logits, factors = jacobian_factors(posterior.head, image, posterior.variant.layer)
        variance = posterior.curvature.logit_variance(factors, posterior._weights)
        variances.append(variance.reshape(logits.shape))
    return torch.cat(variances)


@pytest.mark.parametrize("channels_in", HEADS)
@pytest.mark.parametrize(("target_layer", "approx"), VARIANT_PAIRS)
def test_logit_moments_agree_with_the_per_pixel_route_to_1e_6(target_layer, approx, channels_in):
    """Posterior.logit_moments (float32; all-layer variants by whole-image bands, last-layer
    ones straight from the head's features) against the per-pixel route in float32 (1e-6
    relative) and, for the all-layer variants, in float64 (1e-6 relative: float32 is safe
    there), on images whose height is no multiple of the band."""
    variant = PosteriorVariant(target_layer, approx)
    head = _head(1, channels_in)
    curvature = _spread_curvature(head, variant)
    head32 = NoImageHead(channels_in).eval().requires_grad_(False)
    head32.load_state_dict(head.state_dict())
    posterior = Posterior(
        head32, parameter_vector(head32, target_layer), curvature, *SPREAD, logit_clip=20.0
    )
    rows = 2 * VARIANCE_BAND_ROWS + 3
    x = torch.randn(2, channels_in, rows, 23, generator=torch.Generator().manual_seed(4))
    logits, variance = posterior.logit_moments(x)
    assert variance.dtype == torch.float32 and variance.shape == (2, rows, 23)
    torch.testing.assert_close(logits, head32(x)[:, 0], rtol=0, atol=1e-6)
    reference = _todays_route(posterior, x)
    torch.testing.assert_close(variance, reference, rtol=1e-6, atol=0)
    if variant.layer is not TargetLayer.FINAL_CONV:
        reference = _per_pixel_variance(head, x.double(), curvature)
        torch.testing.assert_close(variance.double(), reference, rtol=1e-6, atol=0)
        # the route a GPU takes (per pixel) gives the same moments as the CPU's bands
        gpu_logits, gpu_variance = posterior._per_pixel_moments(x)
        torch.testing.assert_close(gpu_logits, logits, rtol=0, atol=1e-6)
        torch.testing.assert_close(gpu_variance, variance, rtol=1e-6, atol=0)


@pytest.mark.parametrize("channels_in", HEADS)
@pytest.mark.parametrize(("target_layer", "approx"), VARIANT_PAIRS)
def test_the_moments_of_a_kept_head_pass_equal_a_fresh_pass_bit_for_bit(
    target_layer, approx, channels_in
):
    """The interactive predictor keeps the MAP pass of each prediction (Posterior.head_pass)
    and reads the posterior maps from it: its logits are map_logits' and its moments
    logit_moments' of the raw inputs, exactly; a last-layer pass keeps the features (the
    layer's Jacobian), an all-layer pass none."""
    variant = PosteriorVariant(target_layer, approx)
    head = _head(2, channels_in)
    head32 = NoImageHead(channels_in).eval().requires_grad_(False)
    head32.load_state_dict(head.state_dict())
    curvature = _spread_curvature(head, variant)
    posterior = Posterior(
        head32, parameter_vector(head32, target_layer), curvature, *SPREAD, logit_clip=20.0
    )
    x = torch.randn(1, channels_in, 19, 23, generator=torch.Generator().manual_seed(5))
    x[:, 0] *= 30  # beyond the clip: the pass holds the clipped inputs
    head_pass = posterior.head_pass(x)
    assert torch.equal(head_pass.logits, posterior.map_logits(x))
    assert torch.equal(head_pass.inputs, posterior.as_inputs(x))
    assert (head_pass.features is not None) == (variant.layer is TargetLayer.FINAL_CONV)
    for kept, fresh in zip(posterior.logit_moments(head_pass), posterior.logit_moments(x)):
        assert torch.equal(kept, fresh)


def _block_starts(head: NoImageHead, layer: str) -> list[int]:
    starts, offset = [], 0
    for _, n_out, n_in in block_shapes(head, layer):
        starts.append(min(offset, offset + n_out * n_in - 6))
        offset += n_out * n_in
    return [max(0, s) for s in starts]


@pytest.mark.parametrize("channels_in", HEADS)
def test_the_closed_form_all_layer_diagonal_equals_curvlinops(channels_in):
    """The all-layer diagonal's backend (closed-form Jacobians) gives laplace-torch's
    CurvlinopsGGN GGN diagonal and loss; AsdlGGN is not used there (its first-conv diagonal
    disagreed, measured sum ratio 0.15)."""
    variant = PosteriorVariant("all", "diagonal")
    assert variant.backend == PATCH_DIAGONAL_GGN
    head = _head(3, channels_in)
    x = torch.randn(2, channels_in, 6, 7, dtype=torch.float64)
    patches = pixel_patches(x).reshape(-1, channels_in + 1, 5, 5)
    labels = torch.rand(patches.shape[0], generator=torch.Generator().manual_seed(2)) > 0.4
    loader = DataLoader(TensorDataset(patches, labels.long()), batch_size=25)
    fitted = {}
    for backend in (PATCH_DIAGONAL_GGN, CURVLINOPS_GGN):
        la = make_laplace(PatchHead(head), variant, 1.0, 1.0, backend=backend)
        la.fit(loader)
        fitted[backend] = la
    mine, reference = fitted[PATCH_DIAGONAL_GGN], fitted[CURVLINOPS_GGN]
    torch.testing.assert_close(mine.H, reference.H, rtol=1e-9, atol=1e-12)
    assert float(mine.loss) == pytest.approx(float(reference.loss), rel=1e-12)
    assert mine.n_data == reference.n_data == patches.shape[0]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("variants")
    train_h5 = make_synthetic_h5(root / "train.h5", 4, seed=0, size=24, split="train")
    val_h5 = make_synthetic_h5(root / "val.h5", 2, seed=1, size=24, split="val")
    head = train_tiny_head(train_h5)
    return root, train_h5, val_h5, head, save_best(head, root / "best.pt")


@pytest.mark.parametrize(
    ("target_layer", "approx", "subset", "structure", "weights", "backend"), VARIANTS
)
def test_fitted_variant_reloads_and_predicts_in_closed_form(
    data, target_layer, approx, subset, structure, weights, backend
):
    root, train_h5, val_h5, head, best = data
    settings = laplace_settings(
        PRIOR_GRID,
        TEMPERATURE_GRID,
        max_pixels_fit=600,
        target_layer=target_layer,
        approx=approx,
    )
    out = root / f"{target_layer}_{approx}"
    meta = fit_laplace(best, train_h5, val_h5, out, settings, run_id="t1")
    assert meta["posterior"]["subset"] == subset
    assert meta["hessian_structure"] == meta["posterior"]["structure"] == structure
    assert (meta["subset_of_weights"], meta["backend"]) == (weights, backend)
    assert set(meta["data_to_prior_ratio"]) == {n for n, _, _ in block_shapes(head, target_layer)}
    assert 0.0 <= meta["val_bald_error_auroc"] <= 1.0
    posterior = load_posterior(out)
    assert posterior.subset == subset and posterior.variant == PosteriorVariant(
        target_layer, approx
    )
    assert posterior.prior_precision == meta["prior_precision"]
    assert posterior.mean.numel() == meta["n_params"]

    # closed form vs laplace-torch's dense covariance at the chosen hyperparameters
    x = torch.from_numpy(np.random.default_rng(0).normal(size=(1, 3, 9, 10)).astype(np.float32))
    map_logits, variance = posterior.logit_moments(x)
    torch.testing.assert_close(map_logits, head(x)[:, 0], rtol=0, atol=1e-5)
    jac = _full_image_jacobian(head.double(), x.double(), target_layer)
    head.float()
    la = _refit(head, train_h5, settings)
    la.prior_precision, la.temperature = posterior.prior_precision, posterior.temperature
    sigma = {
        "diagonal": lambda: torch.diag(la.posterior_variance),
        "full": lambda: la.posterior_covariance,
        "kron": lambda: la.posterior_precision.to_matrix(exponent=-1),
    }[approx]()
    reference = torch.einsum("np,pq,nq->n", jac, sigma, jac).reshape(variance.shape)
    torch.testing.assert_close(variance.double(), reference, rtol=2e-4, atol=1e-7)

    # sampling (linearised) agrees with the closed-form variance
    samples = posterior.sample_logits(x, n_samples=800, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(
        samples.mean(0), map_logits, rtol=0, atol=0.1 * variance.max() ** 0.5 + 1e-3
    )
    ratio = samples.var(0).double() / variance.double().clamp_min(1e-12)
    assert float(ratio.median()) == pytest.approx(1.0, abs=0.1)
    maps = gaussian_logit_uncertainty(map_logits, variance)
    assert torch.all(maps["bald"] >= 0)


def _refit(head, train_h5, settings):
    """laplace-torch's CurvlinopsGGN fitted on the pixels fit_laplace used (its own stream)."""
    variant = settings.variant
    n_rows, height, width = split_shape(train_h5)
    per_row = pixels_per_row(n_rows, height * width, settings.max_pixels_fit)
    model, per_pixel = laplace_model(head, variant)
    stream = PixelStream(per_pixel, train_h5, settings.logit_clip, per_row, settings.seed, 4)
    la = make_laplace(model, variant, 1.0, 1.0, backend=CURVLINOPS_GGN)  # the reference
    fit_laplace_model(la, stream)
    return la


@pytest.mark.parametrize("tuning", ["fixed_temperature", "marglik"])
def test_tuning_rules_fix_the_temperature(data, tuning):
    root, train_h5, val_h5, head, best = data
    settings = laplace_settings(
        PRIOR_GRID,
        TEMPERATURE_GRID,
        max_pixels_fit=600,
        approx="full",
        tuning=tuning,
        fixed_temperature="pixels_per_image",
    )
    meta = fit_laplace(best, train_h5, val_h5, root / f"tune_{tuning}", settings)
    assert meta["temperature"] == meta["pixels_per_row"]  # one prompt set = one observation
    assert meta["grid"]["temperature"] == [meta["pixels_per_row"]]
    assert meta["posterior"]["tuning"] == tuning
    if tuning == "marglik":
        assert meta["prior_precision"] == pytest.approx(
            meta["marglik"]["optimized_prior_precision_at_chosen_temperature"]
        )
    else:
        nll = np.asarray(meta["grid"]["val_nll"])[:, 0]
        assert meta["prior_precision"] == PRIOR_GRID[int(np.argmin(nll))]
    numeric = replace(settings, fixed_temperature=7.0)
    meta = fit_laplace(best, train_h5, val_h5, root / f"tune7_{tuning}", numeric)
    assert meta["temperature"] == 7.0


def test_a_posterior_flattened_onto_its_prior_is_reported(data, caplog):
    root, train_h5, val_h5, head, best = data
    settings = laplace_settings(
        (1e6,), (1e9,), max_pixels_fit=600
    )  # T huge, prior strong: the data cannot move the posterior
    with caplog.at_level("WARNING"):
        meta = fit_laplace(best, train_h5, val_h5, root / "collapsed", settings)
    assert meta["collapsed_onto_prior"] is True
    assert all(r["mean"] < 0.05 for r in meta["data_to_prior_ratio"].values())
    assert "collapsed onto its prior" in caplog.text
    assert "Validation NLL chose T = 1e+09: use laplace.tuning: fixed_temperature" in caplog.text
    caplog.clear()
    fixed = replace(settings, tuning="fixed_temperature", fixed_temperature=1e9)
    with caplog.at_level("WARNING"):
        meta = fit_laplace(best, train_h5, val_h5, root / "collapsed_fixed", fixed)
    assert meta["collapsed_onto_prior"] is True
    # the advice fits the rule: T is already fixed, the prior precision is what to change
    assert "At the fixed T = 1e+09, validation NLL chose the prior precision 1e+06" in caplog.text
    assert "use laplace.tuning: fixed_temperature" not in caplog.text
    untempered = laplace_settings((1e-2,), (1.0,), max_pixels_fit=600)
    meta = fit_laplace(best, train_h5, val_h5, root / "untempered", untempered)
    assert meta["collapsed_onto_prior"] is False


@pytest.mark.parametrize(("auroc", "warned"), [(0.3, True), (0.7, False)])
def test_a_below_chance_bald_auroc_is_a_warning(data, caplog, monkeypatch, auroc, warned):
    import laplace_head.bayes.fit as fit_module

    root, train_h5, val_h5, head, best = data
    real = fit_module.validation_error_aurocs
    monkeypatch.setattr(
        fit_module,
        "validation_error_aurocs",
        lambda *a, **k: {**real(*a, **k), "bald_error_auroc": auroc},
    )
    settings = laplace_settings(PRIOR_GRID, TEMPERATURE_GRID, max_pixels_fit=600)
    with caplog.at_level("WARNING"):
        meta = fit_laplace(best, train_h5, val_h5, root / f"auroc{auroc}", settings)
    assert meta["val_bald_error_auroc"] == auroc
    assert ("anti-correlated" in caplog.text) is warned


def test_validation_error_auroc_is_the_rank_statistic():
    """AUROC = P(score of an error > score of a correct pixel), ties one half, brute force."""
    from laplace_head.bayes.tuning import _auroc

    rng = np.random.default_rng(0)
    errors = torch.from_numpy(rng.integers(0, 5, 40).astype(np.float32))
    correct = torch.from_numpy(rng.integers(0, 5, 70).astype(np.float32))
    pairs = errors[:, None] - correct[None, :]
    expected = float(((pairs > 0).double() + 0.5 * (pairs == 0).double()).mean())
    assert _auroc([errors[:15], errors[15:]], [correct]) == pytest.approx(expected, rel=1e-12)
    assert _auroc([errors[:0]], [correct]) is None


def test_invalid_variants_are_rejected_with_the_valid_list(data):
    root, train_h5, val_h5, head, best = data
    for target_layer, approx in (("final_conv", "kron"), ("all", "full")):
        settings = laplace_settings(
            PRIOR_GRID, TEMPERATURE_GRID, target_layer=target_layer, approx=approx
        )
        with pytest.raises(LaplaceFitError, match="final_conv \\+ diagonal"):
            fit_laplace(best, train_h5, val_h5, root / "bad", settings)
    settings = laplace_settings(PRIOR_GRID, TEMPERATURE_GRID, tuning="bayes")
    with pytest.raises(LaplaceFitError, match="val_nll"):
        fit_laplace(best, train_h5, val_h5, root / "bad", settings)
