"""The fitted curvature of every posterior variant, in one form: diagonal in a rotated basis.

Each variant's GGN is block-diagonal over parameter blocks (see
:mod:`laplace_head.bayes.jacobian`); within a block of shape (out, in) it is written as

    H_block = (Q_out (x) Q_in) diag(D) (Q_out (x) Q_in)^T           D: (out, in)

* ``diag`` (last layer or all layers): ``Q = I`` and ``D`` the GGN diagonal;
* ``full`` (last layer): one (1, C + 1) block, ``Q_in`` the eigenvectors of the 17 x 17 GGN;
* ``kron`` (all layers, KFAC): ``Q_out``, ``Q_in`` the eigenvectors of the gradient and input
  Kronecker factors, ``D = lambda_out (x) lambda_in`` (a bias block: ``lambda_out`` alone).

With the likelihood temperature T and the isotropic prior precision delta, the posterior
covariance of a block is ``Q diag(W) Q^T`` with ``W = 1 / (D / T + delta)``, so for a pixel whose
block Jacobian is ``J = sum_r l_r (x) r_r`` the GLM (linearised) logit variance is

    var(z) = sum_blocks sum_ij W_ij M_ij^2,     M = sum_r (Q_out^T l_r) (Q_in^T r_r)^T

- the closed form behind the probit predictive, BALD and entropy of every variant, and the one
place it is computed. The per-pixel factors of
:func:`~laplace_head.bayes.jacobian.jacobian_factors` are rotated here; those of
:class:`~laplace_head.bayes.jacobian.ImageJacobian` (whole images, a band of rows at a time)
come already rotated. Samples are ``delta_theta = Q (sqrt(W) * eps) Q^T``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from laplace_head.bayes.jacobian import JacobianFactors, Rotation
from laplace_head.bayes.variant import PosteriorVariant


@dataclass
class CurvatureBlock:
    """One parameter block: name, eigen-curvature ``D`` (out, in) and optional rotations."""

    name: str
    eigenvalues: torch.Tensor
    rot_out: torch.Tensor | None = None
    rot_in: torch.Tensor | None = None

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.eigenvalues.shape)  # type: ignore[return-value]

    def to(self, device: Any, dtype: torch.dtype) -> CurvatureBlock:
        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device, dtype)

        return CurvatureBlock(
            self.name, move(self.eigenvalues), move(self.rot_out), move(self.rot_in)
        )

    def rotated(self, factors: JacobianFactors) -> tuple[torch.Tensor, torch.Tensor]:
        """The factors in the eigenbasis: ``Q_out^T l`` (N, out, r), ``Q_in^T r`` (N, in, r)."""
        left, right = factors.left, factors.right
        if factors.in_eigenbasis:
            return left, right
        if self.rot_out is not None:
            left = torch.einsum("po,npr->nor", self.rot_out, left)
        if self.rot_in is not None:
            right = torch.einsum("pi,npr->nir", self.rot_in, right)
        return left, right

    def variance(self, factors: JacobianFactors, weights: torch.Tensor) -> torch.Tensor:
        """``sum_ij W_ij M_ij^2`` per pixel for weights (..., out, in): (..., N) (factors
        already in the eigenbasis: one weight set (out, in), (N,))."""
        left, right = self.rotated(factors)
        if factors.in_eigenbasis:
            return _eigenbasis_variance(left, right, weights)
        if left.shape[-1] == 1:  # rank one: M^2 = l^2 (x) r^2
            return torch.einsum("no,...oi,ni->...n", left[..., 0] ** 2, weights, right[..., 0] ** 2)
        m = torch.bmm(left, right.transpose(1, 2))  # (N, out, in)
        squares = (m * m).reshape(m.shape[0], -1)
        return weights.reshape(*weights.shape[:-2], -1) @ squares.T

    def feature_variance(self, features: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """:meth:`variance` of a one-output layer with a bias (the final 1x1 conv, block
        (1, C + 1)) straight from its input features (..., C), whose Jacobian is ``[phi, 1]``:
        ``sum_i w_i ((Q_in^T [phi; 1])_i)^2`` with ``w = (Q_out^2)^T W``, one weight set (1,
        C + 1). No per-pixel factors are built (the features may be a channels-last view);
        equal to :meth:`variance` of :func:`~laplace_head.bayes.jacobian.last_layer_factors` to
        float rounding. Returns (...)."""
        assert weights.ndim == 2 and weights.shape[0] == 1, "one output, one weight set"
        weight = weights[0] if self.rot_out is None else (self.rot_out**2).T @ weights
        weight = weight.reshape(-1)
        # Element-wise products and a sum over the last axis (not a matrix-vector product,
        # whose rounding may depend on the operands' addresses): the same features give the
        # same variance bit for bit, wherever they sit in memory.
        if self.rot_in is None:
            return features.square().mul_(weight[:-1]).sum(-1).add_(weight[-1])
        rotated = torch.addmm(
            self.rot_in[-1:], features.reshape(-1, features.shape[-1]), self.rot_in[:-1]
        )
        return rotated.square_().mul_(weight).sum(-1).reshape(features.shape[:-1])

    def marginal_variance(self, weights: torch.Tensor) -> torch.Tensor:
        """The diagonal of ``Q diag(W) Q^T``, (out, in)."""
        out = weights
        if self.rot_out is not None:
            out = (self.rot_out**2) @ out
        if self.rot_in is not None:
            out = out @ (self.rot_in**2).T
        return out

    def unrotate(self, coefficients: torch.Tensor) -> torch.Tensor:
        """``Q_out C Q_in^T`` for coefficients (S, out, in) in the eigenbasis."""
        if self.rot_out is not None:
            coefficients = torch.einsum("po,soi->spi", self.rot_out, coefficients)
        if self.rot_in is not None:
            coefficients = torch.einsum("qi,soi->soq", self.rot_in, coefficients)
        return coefficients


def _eigenbasis_variance(
    left: torch.Tensor, right: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    """``sum_ij W_ij M_ij^2`` per pixel, (N,), for factors in the eigenbasis (N, out, r),
    (N, in, r) and one weight set (out, in), by matrix products (rank one:
    ``sum_j (Q_out^T l)_j^2 (W (Q_in^T r)^2)_j``)."""
    assert weights.ndim == 2, "factors in the eigenbasis take one weight set (out, in)"
    if left.shape[-1] == 1:
        return ((right[..., 0] ** 2 @ weights.T) * left[..., 0] ** 2).sum(1)
    m = torch.bmm(left, right.transpose(1, 2)).square_()  # M^2, (N, out, in)
    return m.reshape(m.shape[0], -1) @ weights.reshape(-1)


@dataclass
class BlockCurvature:
    """The curvature of one posterior variant: the variant and its blocks."""

    variant: PosteriorVariant
    blocks: list[CurvatureBlock]

    @property
    def n_params(self) -> int:
        return sum(b.eigenvalues.numel() for b in self.blocks)

    def weights(
        self, prior_precision: float | torch.Tensor, temperature: float | torch.Tensor
    ) -> list[torch.Tensor]:
        """Per block ``W = 1 / (D / T + delta)``; tensor hyperparameters of shape (G,) give
        (G, out, in) weights (one per grid pair)."""
        out = []
        for block in self.blocks:
            d = block.eigenvalues.clamp_min(0.0)
            if isinstance(prior_precision, torch.Tensor) and prior_precision.ndim == 1:
                prior = prior_precision.to(d).view(-1, 1, 1)
                temp = torch.as_tensor(temperature).to(d).view(-1, 1, 1)
                out.append(1.0 / (d / temp + prior))
            else:
                out.append(1.0 / (d / float(temperature) + float(prior_precision)))
        return out

    def logit_variance(
        self, factors: Sequence[JacobianFactors], weights: Sequence[torch.Tensor]
    ) -> torch.Tensor:
        """GLM logit variance per pixel, (N,) (or (G, N) for grid weights)."""
        total = None
        for block, factor, weight in zip(self.blocks, factors, weights, strict=True):
            part = block.variance(factor, weight)
            total = part if total is None else total + part
        assert total is not None
        return total

    @property
    def rotations(self) -> list[Rotation]:
        """``(Q_out, Q_in)`` of every block (None: the identity)."""
        return [(b.rot_out, b.rot_in) for b in self.blocks]

    def marginal_variance(self, weights: Sequence[torch.Tensor]) -> torch.Tensor:
        """Marginal posterior variances of every parameter, (n_params,), blocks' order."""
        return torch.cat(
            [b.marginal_variance(w).reshape(-1) for b, w in zip(self.blocks, weights, strict=True)]
        )

    def sample(
        self,
        n_samples: int,
        weights: Sequence[torch.Tensor],
        generator: torch.Generator | None = None,
    ) -> list[torch.Tensor]:
        """Posterior parameter steps ``theta - theta_map`` per block, each (S, out, in)."""
        steps = []
        for block, weight in zip(self.blocks, weights, strict=True):
            noise = torch.randn(
                (n_samples, *block.shape),
                generator=generator,
                dtype=weight.dtype,
                device=weight.device,
            )
            steps.append(block.unrotate(noise * weight.sqrt()))
        return steps

    def data_to_prior_ratio(
        self, prior_precision: float, temperature: float
    ) -> dict[str, dict[str, float]]:
        """Per block: mean and max of the tempered curvature ``D / T`` over the prior precision.

        A ratio << 1 means the data barely moved that block's posterior off the prior
        (posterior variance = prior variance / (1 + ratio) along each eigen-direction).
        """
        report = {}
        for block in self.blocks:
            ratio = block.eigenvalues.clamp_min(0.0).double() / temperature / prior_precision
            report[block.name] = {"mean": float(ratio.mean()), "max": float(ratio.max())}
        return report

    def state(self) -> dict[str, Any]:
        """Plain tensors and strings for ``torch.save`` (``weights_only`` loadable)."""
        return {
            "subset": self.variant.subset,
            "structure": self.variant.hessian_structure,
            "blocks": [
                {
                    "name": b.name,
                    "eigenvalues": b.eigenvalues,
                    **({"rot_out": b.rot_out} if b.rot_out is not None else {}),
                    **({"rot_in": b.rot_in} if b.rot_in is not None else {}),
                }
                for b in self.blocks
            ],
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> BlockCurvature:
        return cls(
            variant=PosteriorVariant.from_stored(state["subset"], state["structure"]),
            blocks=[
                CurvatureBlock(b["name"], b["eigenvalues"], b.get("rot_out"), b.get("rot_in"))
                for b in state["blocks"]
            ],
        )

    def to(self, device: Any, dtype: torch.dtype) -> BlockCurvature:
        return BlockCurvature(self.variant, [b.to(device, dtype) for b in self.blocks])
