"""``--sanity_check``: can the head overfit a tiny fixed batch? (a bug detector, not a metric)."""

from __future__ import annotations

import logging
import os
import sys

import torch
from tqdm import tqdm

from laplace_head.errors import LaplaceHeadError
from laplace_head.model.head import NoImageHead
from laplace_head.model.losses import bce_dice_loss
from laplace_head.model.metrics import per_image_iou
from laplace_head.training.dataset import H5SegmentationDataset
from laplace_head.util.atomic import atomic_write_json
from laplace_head.util.devices import resolve_device
from laplace_head.util.seeding import derive_seed

LOGGER = logging.getLogger(__name__)


def _base_iou(dataset: H5SegmentationDataset, rows: list[int], chunk: int = 32) -> torch.Tensor:
    """Per-row IoU of the base segmenter (``logits_256 > 0``), (len(rows),) float32."""
    values = []
    for start in range(0, len(rows), chunk):
        inputs, target = dataset.get_batch(rows[start : start + chunk])
        values.append(per_image_iou(inputs[:, :1], target))
    return torch.cat(values)


def run_sanity_check(
    train_h5: str | os.PathLike,
    channels_in: int = 3,
    hidden_channels: int = 16,
    logit_clip: float = 20.0,
    dice_lambda: float = 0.5,
    seed: int = 0,
    device: str = "auto",
    n_samples: int = 4,
    max_steps: int = 300,
    lr: float = 1e-2,
    target_iou: float = 0.9,
    n_candidates: int = 256,
) -> dict:
    """Overfit ``n_samples`` fixed training rows; pass when their IoU exceeds ``target_iou``.

    Full-batch AdamW steps (fp32, no weight decay, ``lr`` higher than for training) until the
    per-image mean IoU of the batch - measured on the logits of each step's forward pass, before
    the update - exceeds ``target_iou``, or ``max_steps`` steps were taken. A head that cannot
    overfit a handful of examples has a bug in its data, loss or optimisation.

    Which rows: the head never sees the image and looks at a 5x5 neighbourhood, so it cannot
    fit a row whose base logits and prompt maps do not determine the mask (e.g. where the base
    segmenter leaked into the background) - no pipeline, buggy or not, reaches 0.9 on such rows.
    The fixed batch is therefore the ``n_samples`` rows with the highest base-segmenter IoU
    among ``n_candidates`` rows drawn with ``derive_seed(seed, "sanity_rows")``. The head starts
    from random weights, so it still has to learn to reproduce them; a target that does not
    match its inputs (misaligned, shuffled, wrong channel) makes every row's base IoU low and
    the check fail. ``batch_base_iou`` is reported next to the curve.

    Returns
    -------
    dict
        ``passed``, ``steps``, ``best_iou``, ``target_iou``, ``max_steps``, ``rows`` (HDF5
        rows used), ``batch_base_iou``, ``iou_curve`` and ``loss_curve`` (one value per step).
    """
    dataset = H5SegmentationDataset(train_h5, logit_clip, in_memory="never")
    if len(dataset) == 0:
        raise LaplaceHeadError(f"the sanity check needs training rows; {train_h5} has none.")
    torch_device = resolve_device(device, "training.device")
    generator = torch.Generator().manual_seed(derive_seed(seed, "sanity_rows"))
    candidates = sorted(torch.randperm(len(dataset), generator=generator)[:n_candidates].tolist())
    best = torch.argsort(_base_iou(dataset, candidates), descending=True, stable=True)[:n_samples]
    rows = sorted(candidates[i] for i in best.tolist())
    inputs, target = (tensor.to(torch_device) for tensor in dataset.get_batch(rows))
    dataset.close()
    torch.manual_seed(derive_seed(seed, "init"))
    model = NoImageHead(channels_in, hidden_channels).to(torch_device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    iou_curve: list[float] = []
    loss_curve: list[float] = []
    for _ in tqdm(range(max_steps), desc="sanity check", file=sys.stderr, leave=False):
        logits = model(inputs)
        loss = bce_dice_loss(logits, target, dice_lambda)
        iou_curve.append(float(per_image_iou(logits.detach(), target).mean()))
        loss_curve.append(loss.item())
        if iou_curve[-1] > target_iou:
            break
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    result = {
        "passed": max(iou_curve) > target_iou,
        "steps": len(iou_curve),
        "best_iou": max(iou_curve),
        "target_iou": target_iou,
        "max_steps": max_steps,
        "rows": rows,
        "batch_base_iou": float(per_image_iou(inputs[:, :1], target).mean()),
        "iou_curve": iou_curve,
        "loss_curve": loss_curve,
    }
    LOGGER.info(
        "sanity check %s: best train IoU %.4f after %d steps (target > %.2f)",
        "PASSED" if result["passed"] else "FAILED",
        result["best_iou"],
        result["steps"],
        target_iou,
    )
    return result


def format_curve(iou_curve: list[float], every: int = 10) -> str:
    """``step:IoU`` pairs every ``every`` steps (and the last), for the failure message."""
    points = [(i + 1, v) for i, v in enumerate(iou_curve) if i % every == 0]
    if iou_curve and points[-1][0] != len(iou_curve):
        points.append((len(iou_curve), iou_curve[-1]))
    return ", ".join(f"{step}:{value:.3f}" for step, value in points)


class SanityCheckFailed(LaplaceHeadError):
    """The head could not overfit the fixed batch within the step budget."""


def sanity_check_to_file(
    train_h5: str | os.PathLike, output_json: str | os.PathLike, **kwargs
) -> dict:
    """Run :func:`run_sanity_check` (same keyword arguments), write its result as JSON.

    Raises
    ------
    SanityCheckFailed
        After writing the JSON, when the check failed; the message holds the IoU curve.
    """
    result = run_sanity_check(train_h5, **kwargs)
    atomic_write_json(output_json, result)
    if not result["passed"]:
        raise SanityCheckFailed(
            f"sanity check failed: the head did not overfit {len(result['rows'])} training rows "
            f"of {train_h5} (best IoU {result['best_iou']:.3f}, needed > "
            f"{result['target_iou']}) in {result['steps']} steps; the base segmenter's IoU on "
            f"these rows is {result['batch_base_iou']:.3f}. IoU curve (step:IoU): "
            f"{format_curve(result['iou_curve'])}. Check the data (visualize_sanity), the "
            "logit clipping and the loss before a full run."
        )
    return result
