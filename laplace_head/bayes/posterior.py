"""The fitted Laplace head as a predictive model: probabilities, samples, entropies, BALD.

``load_posterior`` rebuilds the MAP head and the Gaussian posterior of stage 6 - any variant
(:class:`~laplace_head.bayes.variant.PosteriorVariant`) - from the files of
:mod:`laplace_head.bayes.posterior_io`. Predictions use the linearised (GLM) model: a pixel's
refined logit is ``z(theta) ~ z_map + J (theta - theta_map)`` with ``J`` its Jacobian (exact
for the last layer, whose logit is linear in its weights), so:

* the **logit variance** is ``J Sigma J^T`` per pixel, in closed form
  (:meth:`~laplace_head.bayes.curvature.BlockCurvature.logit_variance`);
* the **predictive probability** is the probit approximation
  ``p = sigmoid(z_map / sqrt(1 + pi * var(z) / 8))`` of ``E[sigmoid(z)]``; BALD and the
  entropies follow from the same Gaussian by quadrature
  (:func:`~laplace_head.bayes.predictive.gaussian_logit_uncertainty`);
* **samples** draw parameter vectors ``theta_s ~ N(theta_map, Sigma)`` and push them through
  the linearised model (``J (theta_s - theta_map)`` by a Jacobian-vector product; pushing
  them through the non-linear network instead ruins the all-layer predictive); the same draws
  can be reused for several inputs (candidate prompts) so that their uncertainties differ only
  through the inputs. Entropies (nats) from S samples ``p_s = sigmoid(z_s)``: predictive
  entropy ``H[mean_s p_s]`` (total), expected entropy ``mean_s H[p_s]`` (aleatoric) and their
  difference, the mutual information / BALD (epistemic).

The formulas themselves live in :mod:`laplace_head.bayes.predictive` (shared with the
hyperparameter search of :mod:`laplace_head.bayes.tuning`); ``probit_logits``,
``binary_entropy_from_logits`` and ``uncertainty_from_samples`` are re-exported here.

Inputs are [logits_256, pos_map, neg_map] stacked as (3, H, W) or (B, 3, H, W) (float16/32/64,
NumPy or torch); the logits channel is clipped to +-logit_clip exactly as in training. Suggested
clicks for an input come from the click-policy registry
(:func:`laplace_head.interactive.predictor.suggest_for_inputs`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from laplace_head.bayes.curvature import BlockCurvature
from laplace_head.bayes.jacobian import (
    ImageJacobian,
    head_features_and_logits,
    head_logits,
    jacobian_factors,
)
from laplace_head.bayes.posterior_io import (
    PosteriorLoadError,
    check_against_head,
    read_posterior_files,
)
from laplace_head.bayes.predictive import (
    QUADRATURE_NODES,
    UncertaintyInputError,
    gaussian_logit_uncertainty,
    linear_logits,
    probit_logits,
    tempered_moments,
    uncertainty_from_samples,
)
from laplace_head.bayes.predictive import (
    binary_entropy_from_logits as binary_entropy_from_logits,  # re-exported
)
from laplace_head.bayes.variant import PosteriorVariant
from laplace_head.cache.split_h5 import assemble_inputs
from laplace_head.layout import LAPLACE_STATE, ProjectLayout
from laplace_head.model.head import NoImageHead
from laplace_head.model.head_variant import HeadVariant
from laplace_head.training.checkpoint import CheckpointError, check_model_args
from laplace_head.util.atomic import file_md5

__all__ = ["Posterior", "PosteriorLoadError", "load_posterior", "resolve_laplace_dir"]
FLOAT_DTYPES = (np.float16, np.float32, np.float64)


def stack_inputs(logits_256: Any, pos_map: Any, neg_map: Any, image_256: Any = None) -> np.ndarray:
    """Stack (H, W) or (B, H, W) maps into (3, H, W) / (B, 3, H, W) float32 head inputs; with
    ``image_256`` ((3, H, W) or (B, 3, H, W) uint8 RGB on the same grid,
    :func:`~laplace_head.dataset.images.resize_image_grid`) the image head's 6 channels, the
    image normalised as in training (:func:`~laplace_head.cache.split_h5.assemble_inputs`)."""
    arrays = [np.asarray(a) for a in (logits_256, pos_map, neg_map)]
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1 or arrays[0].ndim not in (2, 3):
        raise UncertaintyInputError(
            "logits_256, pos_map and neg_map must share one shape, (H, W) or (B, H, W); got "
            f"{[a.shape for a in arrays]}"
        )
    axis = 0 if arrays[0].ndim == 2 else 1
    stacked = np.stack([a.astype(np.float32) for a in arrays], axis=axis)
    if image_256 is None:
        return stacked
    image = np.asarray(image_256)
    expected = (3, *arrays[0].shape) if axis == 0 else (len(arrays[0]), 3, *arrays[0].shape[1:])
    if image.dtype != np.uint8 or image.shape != expected:
        raise UncertaintyInputError(
            f"image_256 must be {expected} uint8 RGB on the maps' grid; got {image.dtype} "
            f"{image.shape}"
        )
    batch = stacked if axis == 1 else stacked[None]
    images = image if axis == 1 else image[None]
    rgb = assemble_inputs(batch[:, 0], batch[:, 1], batch[:, 2], np.inf, images)[:, 3:]
    full = np.concatenate([batch, rgb], axis=1)
    return full if axis == 1 else full[0]


#: Pixels per chunk of the closed-form logit variance (bounds the Jacobian factors' memory).
VARIANCE_CHUNK_PIXELS = 1 << 15
#: Rows per band of the all-layer logit variance (keeps a band's factors in cache).
VARIANCE_BAND_ROWS = 8


@dataclass(frozen=True)
class HeadPass:
    """One forward pass of the MAP head (:meth:`Posterior.head_pass`): the checked inputs
    (B, C, H, W), the MAP logits (B, H, W) and, for a last-layer posterior, the features
    (B, hidden, H, W), which are that layer's Jacobian. :meth:`Posterior.logit_moments` of a
    pass then needs no second forward pass (None: all layers, whose Jacobian needs more of
    the pass than is worth keeping; the moments run their own)."""

    inputs: torch.Tensor
    logits: torch.Tensor
    features: torch.Tensor | None


@dataclass
class Posterior:
    """MAP head + Gaussian posterior over a subset of its weights (the stage-6 variant).

    Attributes
    ----------
    head
        The MAP :class:`NoImageHead` (eval mode, frozen).
    mean
        (n_params,) float32 MAP of the covered parameters, in the curvature's block order (the
        last layer: ``[w_0..w_{C-1}, b]``).
    curvature
        The fitted :class:`~laplace_head.bayes.curvature.BlockCurvature` of the variant.
    prior_precision, temperature
        The chosen hyperparameters (``laplace.tuning``).
    logit_clip
        Clip applied to the logits input channel (as in training).
    output_temperature
        ``tau`` of ``laplace.output_temperature`` (1: none): the predictive is that of the
        logit ``z / tau`` (:meth:`predictive_moments`); the MAP head and ``logit_variance`` are
        the head's own.
    variance
        (n_params,) float32 marginal posterior variances (derived).
    """

    head: NoImageHead
    mean: torch.Tensor
    curvature: BlockCurvature
    prior_precision: float
    temperature: float
    logit_clip: float
    meta: dict = field(default_factory=dict)
    output_temperature: float = 1.0
    variance: torch.Tensor = field(init=False, repr=False)
    _weights: list[torch.Tensor] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        weights = self.curvature.to(self.mean.device, torch.float64).weights(
            self.prior_precision, self.temperature
        )
        self.variance = (
            self.curvature.to(self.mean.device, torch.float64).marginal_variance(weights).float()
        )
        self._weights = [w.float() for w in weights]
        self.curvature = self.curvature.to(self.mean.device, torch.float32)

    @property
    def variant(self) -> PosteriorVariant:
        return self.curvature.variant

    @property
    def head_variant(self) -> HeadVariant:
        """The head variant (``no_image``, ``image``): which inputs the head reads. The fit
        records it in the meta (``head``); :func:`load_posterior` checks it against the head."""
        return HeadVariant.of_channels(self.head.channels_in)

    @property
    def subset(self) -> str:
        """The parameter blocks covered: ``last_layer`` or ``all_layers``."""
        return self.variant.subset

    @property
    def device(self) -> torch.device:
        return self.mean.device

    def as_inputs(self, inputs: Any) -> torch.Tensor:
        """Validate and convert inputs to a (B, 3, H, W) float32 tensor with clipped logits."""
        if isinstance(inputs, torch.Tensor):
            tensor = inputs.detach()
            if not tensor.is_floating_point():
                raise UncertaintyInputError(
                    f"inputs must be a float tensor; got dtype {tensor.dtype}"
                )
        else:
            array = np.asarray(inputs)
            if array.dtype.type not in FLOAT_DTYPES:
                raise UncertaintyInputError(
                    f"inputs must be float16/float32/float64; got dtype {array.dtype}"
                )
            tensor = torch.from_numpy(np.ascontiguousarray(array))
        channels = self.head.channels_in
        if tensor.ndim == 3:
            tensor = tensor.unsqueeze(0)
        if tensor.ndim != 4 or tensor.shape[1] != channels or min(tensor.shape[2:]) < 1:
            layout = "[logits_256, pos_map, neg_map]"
            if self.head_variant.needs_image:
                layout = "[logits_256, pos_map, neg_map, image R, G, B normalised]"
            raise UncertaintyInputError(
                f"inputs must have shape ({channels}, H, W) or (B, {channels}, H, W) = "
                f"{layout} for this {self.head_variant.value} head; got "
                f"{tuple(tensor.shape)}. Use stack_inputs(logits_256, pos_map, neg_map"
                f"{', image_256' if self.head_variant.needs_image else ''}) to build them."
            )
        tensor = tensor.to(self.device, torch.float32, copy=True)
        if not torch.isfinite(tensor[:, 1:]).all():
            raise UncertaintyInputError("pos_map / neg_map contain NaN or infinite values")
        tensor[:, 0].nan_to_num_(0.0).clamp_(-self.logit_clip, self.logit_clip)  # on the copy
        return tensor

    @torch.no_grad()
    def features(self, inputs: Any) -> torch.Tensor:
        """Frozen trunk features, (B, C, H, W) float32."""
        return self.head.features(self.as_inputs(inputs))

    @torch.no_grad()
    def head_pass(self, inputs: Any) -> HeadPass:
        """The MAP head's forward pass on ``inputs``, kept for :meth:`logit_moments`: its
        ``logits`` equal :meth:`map_logits` bit for bit."""
        tensor = self.as_inputs(inputs)
        if self.subset == "last_layer":
            features, logits = head_features_and_logits(self.head, tensor)
            return HeadPass(tensor, logits, features)
        return HeadPass(tensor, head_logits(self.head, tensor), None)

    @torch.no_grad()
    def logit_moments(self, inputs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """MAP logits and their GLM posterior variance ``J Sigma J^T``, both (B, H, W) float32.

        ``inputs`` may be a :class:`HeadPass` of this posterior (:meth:`head_pass`): a
        last-layer posterior then reads its Jacobian from the pass's features instead of
        running the head again (the same numbers, bit for bit).

        A last-layer posterior's variance comes straight from the head's features
        (:meth:`_last_layer_moments`). All-layer posteriors on the CPU go band by band through
        the eigenbasis
        (:meth:`_all_layer_moments`, ~4x faster there); on a GPU the per-pixel route below is
        the faster one (its few large kernels beat the bands' many small ones: 8 ms against
        53 ms per 256 x 256 image on an H200, README "GPU"). Both agree to 1e-6 relative."""
        if isinstance(inputs, HeadPass):
            if inputs.features is not None:
                return self._last_layer_moments(inputs.logits, inputs.features)
            inputs = inputs.inputs
        tensor = self.as_inputs(inputs)
        if self.subset == "last_layer":
            features, logits = head_features_and_logits(self.head, tensor)
            return self._last_layer_moments(logits, features)
        if tensor.device.type == "cpu":
            return self._all_layer_moments(tensor)
        return self._per_pixel_moments(tensor)

    def _factor_variance(self, factors: list, n_pixels: int) -> torch.Tensor:
        """``J Sigma J^T`` of ``n_pixels`` pixels from their Jacobian factors, in chunks."""
        return torch.cat(
            [
                self.curvature.logit_variance(
                    [f.rows(slice(s, s + VARIANCE_CHUNK_PIXELS)) for f in factors],
                    self._weights,
                )
                for s in range(0, n_pixels, VARIANCE_CHUNK_PIXELS)
            ]
        )

    def _last_layer_moments(
        self, logits: torch.Tensor, features: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`logit_moments` of a last-layer posterior from a pass's logits and features
        (B, C, H, W): the variance straight from the features
        (:meth:`~laplace_head.bayes.curvature.CurvatureBlock.feature_variance`), equal to
        :meth:`_per_pixel_moments`' to float rounding."""
        (block,), (weights,) = self.curvature.blocks, self._weights
        variance = block.feature_variance(features.permute(0, 2, 3, 1), weights)
        return logits, variance.clamp_min(0.0)

    def _per_pixel_moments(self, tensor: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`logit_moments` from every pixel's Jacobian factors, in chunks of pixels."""
        means, variances = [], []
        for image in tensor.split(1):
            logits, factors = jacobian_factors(self.head, image, self.variant.layer)
            means.append(logits)
            variances.append(self._factor_variance(factors, logits.numel()).reshape(logits.shape))
        return torch.cat(means), torch.cat(variances).clamp_min(0.0)

    def _all_layer_moments(self, tensor: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`logit_moments` of the all-layer posterior, image by image and band by band
        from the factors in the eigenbasis (the last layer's per-pixel factors are its
        features: the per-pixel route costs no more than the forward pass there)."""
        means, variances = [], []
        for image in tensor.split(1):
            jacobian = ImageJacobian(self.head, image, self.curvature.rotations)
            variance = torch.empty_like(jacobian.logits)
            for start in range(0, jacobian.height, VARIANCE_BAND_ROWS):
                stop = min(start + VARIANCE_BAND_ROWS, jacobian.height)
                factors = jacobian.factors(start, stop)
                band = self.curvature.logit_variance(factors, self._weights)
                variance[:, start:stop] = band.reshape(variance.shape[0], stop - start, -1)
            means.append(jacobian.logits)
            variances.append(variance)
        return torch.cat(means), torch.cat(variances).clamp_min(0.0)

    @torch.no_grad()
    def map_logits(self, inputs: Any) -> torch.Tensor:
        """Refined MAP logits (B, H, W) float32 (= the trained head's output): the forward pass
        alone, equal bit for bit to :meth:`logit_moments`' first output."""
        return head_logits(self.head, self.as_inputs(inputs))

    def map_probability(self, inputs: Any) -> torch.Tensor:
        """MAP foreground probability sigmoid(z_map), (B, H, W) float32."""
        return torch.sigmoid(self.map_logits(inputs))

    def predictive_moments(
        self, moments: tuple[torch.Tensor, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The Gaussian logit the predictive integrates, from :meth:`logit_moments`' output:
        ``(z_map / tau, var(z) / tau^2)`` with ``tau`` the :attr:`output_temperature`."""
        return tempered_moments(*moments, self.output_temperature)

    def predictive_logits(self, inputs: Any) -> torch.Tensor:
        """Effective logits of the probit predictive, (B, H, W) float32."""
        return probit_logits(*self.predictive_moments(self.logit_moments(inputs)))

    def predictive_probability(self, inputs: Any) -> torch.Tensor:
        """Probit GLM predictive foreground probability, (B, H, W) float32."""
        return torch.sigmoid(self.predictive_logits(inputs))

    def sample_weights(
        self, n_samples: int, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """``n_samples`` draws of the covered parameters, (S, n_params) float32 (mean order)."""
        if n_samples < 1:
            raise UncertaintyInputError(f"n_samples must be >= 1; got {n_samples}")
        steps = self.curvature.sample(n_samples, self._weights, generator)
        return self.mean + torch.cat([step.flatten(1) for step in steps], dim=1)

    @torch.no_grad()
    def sample_logits(
        self,
        inputs: Any,
        n_samples: int = 32,
        generator: torch.Generator | None = None,
        weight_samples: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Refined logit maps of the linearised model under posterior samples, (S, B, H, W).

        Pass ``weight_samples`` (from :meth:`sample_weights`) to reuse the same draws across
        inputs, e.g. the same image under several candidate prompts.
        """
        if weight_samples is None:
            weight_samples = self.sample_weights(n_samples, generator)
        if weight_samples.ndim != 2 or weight_samples.shape[1] != self.mean.numel():
            raise UncertaintyInputError(
                f"weight_samples must be (S, {self.mean.numel()}); got "
                f"{tuple(weight_samples.shape)}"
            )
        weight_samples = weight_samples.to(self.device, torch.float32)
        tensor = self.as_inputs(inputs)
        if self.subset == "last_layer":  # linear in its weights: exact
            return linear_logits(self.head.features(tensor), weight_samples, feature_dim=1)
        return self._linearised_samples(tensor, weight_samples - self.mean)

    def _linearised_samples(self, tensor: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
        """``z_map + J step`` per step (S, n_params) by Jacobian-vector products: (S, B, H, W)."""
        from torch.func import functional_call, jvp

        names = [name for name, _ in self.head.named_parameters()]
        params = {name: p.detach() for name, p in self.head.named_parameters()}
        shapes = [params[name].shape for name in names]
        sizes = [params[name].numel() for name in names]

        def logits(p: dict[str, torch.Tensor]) -> torch.Tensor:
            return functional_call(self.head, p, (tensor,))[:, 0]

        out = []
        for step in steps:
            tangent = {
                name: part.reshape(shape)
                for name, part, shape in zip(names, step.split(sizes), shapes, strict=True)
            }
            z_map, dz = jvp(logits, (params,), (tangent,))
            out.append(z_map + dz)
        return torch.stack(out)

    @torch.no_grad()
    def uncertainty_maps(
        self,
        inputs: Any,
        n_samples: int | None = None,
        generator: torch.Generator | None = None,
        weight_samples: torch.Tensor | None = None,
        n_nodes: int = QUADRATURE_NODES,
        moments: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> dict[str, torch.Tensor]:
        """The head's per-pixel prediction and its uncertainty, each (B, H, W).

        Keys: ``map_logits``, ``map_probability`` (the MAP estimate), ``logit_variance`` (the
        GLM ``var(z)``) and :data:`~laplace_head.bayes.predictive.UNCERTAINTY_FIELDS`
        (``predictive_probability``, ``entropy``, ``expected_entropy``, ``bald``).

        The uncertainty comes by quadrature from each pixel's Gaussian logit
        (:func:`~laplace_head.bayes.predictive.gaussian_logit_uncertainty`): one head pass, no
        sampling noise. Sampling is used only when asked for: ``n_samples`` draws (with
        ``generator``) or given ``weight_samples`` (:meth:`sample_weights`) give the four
        uncertainty maps from the linearised model's logit samples
        (:func:`~laplace_head.bayes.predictive.uncertainty_from_samples`).

        Parameters
        ----------
        moments
            ``(map_logits, logit_variance)`` of :meth:`logit_moments` for these inputs, when
            already computed (saves the head pass).
        """
        map_logits, variance = moments if moments is not None else self.logit_moments(inputs)
        if n_samples is None and weight_samples is None:
            maps = gaussian_logit_uncertainty(
                *self.predictive_moments((map_logits, variance)), n_nodes
            )
        else:
            samples = self.sample_logits(inputs, n_samples or 0, generator, weight_samples)
            maps = uncertainty_from_samples(samples / self.output_temperature)
        return {
            "map_logits": map_logits,
            "map_probability": torch.sigmoid(map_logits),
            "logit_variance": variance,
            **maps,
        }


def resolve_laplace_dir(
    path: str | os.PathLike, run_id: str | None = None, head: str | None = None
) -> Path:
    """Find the folder holding ``laplace_state.pt`` for a path a user is likely to pass.

    Accepted: the laplace run folder, its ``laplace_state.pt``, the matching
    run's checkpoint folder (``checkpoints/<head>/run_<id>``), or the project root together
    with ``run_id`` (paths of :class:`~laplace_head.layout.ProjectLayout`; ``head`` names the
    head variant there, default ``no_image``).
    """
    path = Path(path)
    if run_id is not None:
        layout = ProjectLayout(path, run_id)
        path = (
            layout.for_head(HeadVariant.parse(head, "head").value) if head else layout
        ).laplace_dir
    if path.is_file() and path.name == LAPLACE_STATE:
        return path.parent
    if (path / LAPLACE_STATE).is_file():
        return path
    run = ProjectLayout.of_run_dir(path)
    if run is not None and (run.laplace_dir / LAPLACE_STATE).is_file():
        return run.laplace_dir
    raise PosteriorLoadError(
        f"no {LAPLACE_STATE} under {str(path)!r}; pass the stage-6 folder "
        "<project_root>/laplace/<head>/run_<id> (or the project root and run_id) and run "
        "fit_laplace first (snakemake ... or python -m laplace_head fit-laplace)."
    )


def _check_source_checkpoint(folder: Path, saved_md5: str | None, meta: dict) -> None:
    """Refuse a posterior whose project's best.pt is not the one it was fitted on."""
    layout = ProjectLayout.of_laplace_dir(folder)
    recorded = saved_md5 or meta.get("source_checkpoint_md5")
    if layout is None or not recorded or not layout.best_checkpoint.is_file():
        return  # a posterior folder on its own: its head is in laplace_state.pt
    current = file_md5(layout.best_checkpoint)
    if current != recorded:
        raise PosteriorLoadError(
            f"{folder / LAPLACE_STATE} was fitted on a best.pt with MD5 {recorded}, but "
            f"{layout.best_checkpoint} (MD5 {current}) has been trained since; re-run "
            "fit_laplace (stage 6) on it, or copy the posterior folder away from this project "
            "to use the old fit on its own."
        )


def load_posterior(
    path: str | os.PathLike,
    run_id: str | None = None,
    device: str | torch.device = "cpu",
    head: str | None = None,
) -> Posterior:
    """Load a fitted Laplace head (see :func:`resolve_laplace_dir` for accepted paths; ``head``
    picks the head variant with a project root and ``run_id``).

    Every stored value is checked (:func:`~laplace_head.bayes.posterior_io
    .read_posterior_files`, :func:`~laplace_head.bayes.posterior_io.check_against_head`).
    Inside a project, the run's best.pt must be the one the posterior was fitted on (its MD5
    is recorded); a posterior folder outside a project layout loads on its own.

    Raises
    ------
    PosteriorLoadError
        Missing folder or file; ``device`` not on this machine; a file not written by this
        package's fit_laplace, altered, or fitted on another best.pt than the project's.
    """
    folder = resolve_laplace_dir(path, run_id, head)
    saved, meta = read_posterior_files(folder, device)
    state_path = folder / LAPLACE_STATE
    _check_source_checkpoint(folder, saved.source_checkpoint_md5, meta)
    try:
        args = check_model_args(saved.head_model_args, state_path)
        head = NoImageHead(**args)
        head.load_state_dict(saved.head_state)
    except (CheckpointError, RuntimeError, TypeError) as exc:
        raise PosteriorLoadError(
            f"{state_path}: its head does not load ({exc}); re-run fit_laplace with --force "
            "(stage 6) to rewrite it."
        ) from exc
    head = head.to(device).eval().requires_grad_(False)
    check_against_head(saved, head, state_path)
    recorded_head = meta.get("head", HeadVariant.NO_IMAGE.value)  # fits before heads: no_image
    actual_head = HeadVariant.of_channels(head.channels_in).value
    if recorded_head != actual_head:
        raise PosteriorLoadError(
            f"{folder}: posterior_meta.json records the {recorded_head!r} head, but its head "
            f"takes {head.channels_in} input channels (the {actual_head} head's); the files "
            "are mixed from two fits. Re-run fit_laplace with --force (stage 6)."
        )
    return Posterior(
        head=head,
        mean=saved.mean.to(device, torch.float32),
        curvature=saved.curvature,
        prior_precision=saved.prior_precision,
        temperature=saved.temperature,
        logit_clip=saved.logit_clip,
        meta=meta,
        output_temperature=saved.output_temperature,
    )
