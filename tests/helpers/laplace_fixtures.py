"""A tiny trained head, its best.pt and a fitted Laplace run, for the stage 6-7 tests."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

from helpers.synthetic_h5 import make_synthetic_h5, make_synthetic_image_h5
from laplace_head.bayes.curvature import BlockCurvature, CurvatureBlock
from laplace_head.bayes.fit import fit_laplace
from laplace_head.bayes.jacobian import parameter_vector
from laplace_head.bayes.posterior import Posterior
from laplace_head.bayes.variant import PosteriorVariant
from laplace_head.layout import ProjectLayout
from laplace_head.model.head import NoImageHead
from laplace_head.settings import LaplaceSettings
from laplace_head.training.dataset import H5SegmentationDataset

MAP_SIZE = 32
PRIOR_GRID = [1e-2, 1.0, 100.0]
TEMPERATURE_GRID = [1.0, 30.0, 1000.0]


def train_tiny_head(
    train_h5: Path, steps: int = 30, seed: int = 0, overconfidence: float = 6.0
) -> NoImageHead:
    """A NoImageHead fitted for a few full-batch Adam steps, then made overconfident.

    Multiplying the final conv by ``overconfidence`` mimics a head whose logits are too sharp
    for held-out data (as heads trained on millions of correlated pixels are), so that posterior
    spread - and therefore tempering - measurably lowers the validation NLL.
    """
    torch.manual_seed(seed)
    dataset = H5SegmentationDataset(train_h5, in_memory="always")
    head = NoImageHead(dataset.head.channels_in)  # the split's head variant
    inputs, target = dataset.get_batch(range(len(dataset)))
    optimizer = torch.optim.Adam(head.parameters(), lr=1e-2)
    for _ in range(steps):
        optimizer.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(head(inputs), target)
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        head.final_conv.weight.mul_(overconfidence)
        head.final_conv.bias.mul_(overconfidence)
    return head.eval()


def save_best(head: NoImageHead, path: Path, epoch: int = 3) -> Path:
    """best.pt in the stage 5 contract layout (a plain dict)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "model_state": head.state_dict(),
            "model_args": head.constructor_args,
            "epoch": epoch,
            "metrics": {"val_iou": 0.5, "val_dice": 0.6, "val_loss": 0.3, "train_loss": 0.2},
            "run_id": "t1",
            "config": {"training": {"logit_clip": 20.0}},
        },
        path,
    )
    return path


def laplace_settings(
    prior_grid: Sequence[float], temperature_grid: Sequence[float], **overrides: Any
) -> LaplaceSettings:
    """The schema's default stage-6 settings with these grids and ``overrides``."""
    return LaplaceSettings.from_defaults(
        prior_precision_grid=tuple(prior_grid),
        temperature_grid=tuple(temperature_grid),
        **overrides,
    )


def make_fitted_run(
    root: Path, max_pixels_fit: int | None = 1500, head: str = "no_image", **laplace: Any
) -> SimpleNamespace:
    """Project-like layout under ``root`` with train/val/test splits, best.pt and a fit.

    ``laplace`` overrides further :class:`LaplaceSettings` fields (e.g. ``target_layer``,
    ``approx``, ``tuning``); the others are the schema's defaults (a last-layer diagonal).
    ``head`` ``image``: the image head's splits (:func:`make_synthetic_image_h5` over the
    no_image ones), run and fit.
    """
    layout = ProjectLayout(root, "t1").for_head(head)
    base = layout.for_head("no_image")
    base.training_data_dir.mkdir(parents=True, exist_ok=True)
    h5 = {split: base.split_h5(split) for split in ("train", "val", "test")}
    train_h5 = make_synthetic_h5(h5["train"], 4, seed=0, size=MAP_SIZE, split="train")
    val_h5 = make_synthetic_h5(h5["val"], 2, seed=1, size=MAP_SIZE, split="val")
    test_h5 = make_synthetic_h5(h5["test"], 4, seed=2, size=MAP_SIZE, split="test")
    if head != "no_image":
        train_h5, val_h5, test_h5 = (
            make_synthetic_image_h5(path, layout.split_h5(split), seed=seed)
            for seed, (split, path) in enumerate(
                (("train", train_h5), ("val", val_h5), ("test", test_h5))
            )
        )
    head = train_tiny_head(train_h5)
    best = save_best(head, layout.best_checkpoint)
    laplace_dir = layout.laplace_dir
    settings = laplace_settings(
        PRIOR_GRID, TEMPERATURE_GRID, max_pixels_fit=max_pixels_fit, **laplace
    )
    meta = fit_laplace(best, train_h5, val_h5, laplace_dir, settings, run_id="t1")
    return SimpleNamespace(
        root=root,
        train_h5=train_h5,
        val_h5=val_h5,
        test_h5=test_h5,
        head=head,
        best=best,
        laplace_dir=laplace_dir,
        meta=meta,
    )


def last_layer_posterior(
    head: NoImageHead, variance: torch.Tensor, logit_clip: float = 20.0
) -> Posterior:
    """A last-layer diagonal posterior around ``head`` with the given marginal variances (C + 1,):
    prior precision ``1 / max(variance)``, T = 1 and the curvature that makes up the rest."""
    variant = PosteriorVariant("final_conv", "diagonal")
    variance = torch.as_tensor(variance, dtype=torch.float64).reshape(1, -1)
    prior = float(1.0 / variance.max())
    curvature = BlockCurvature(variant, [CurvatureBlock("final_conv", 1.0 / variance - prior)])
    mean = parameter_vector(head, variant.layer).float()
    return Posterior(head, mean, curvature, prior, 1.0, logit_clip)
