"""Training curves of a finished (or interrupted) run, from ``training_summary.json``."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from laplace_head.util.atomic import atomic_path, read_json  # noqa: E402


def plot_training_curves(history: Sequence[Mapping[str, Any]], out_png: str | os.PathLike) -> None:
    """Loss (train / val) and val IoU / Dice per epoch, with the base segmenter's val IoU.

    Parameters
    ----------
    history
        One mapping per epoch with ``epoch``, ``train_loss``, ``val_loss``, ``val_iou``,
        ``val_dice`` and ``base_val_iou`` (the ``history`` of ``training_summary.json``).
    """
    if not history:
        raise ValueError("training history is empty: no epoch finished")
    epochs = [row["epoch"] for row in history]
    fig, (ax_loss, ax_iou) = plt.subplots(1, 2, figsize=(10, 3.6))
    ax_loss.plot(epochs, [r["train_loss"] for r in history], "o-", label="train loss")
    ax_loss.plot(epochs, [r["val_loss"] for r in history], "o-", label="val loss")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("BCE + λ·Dice")
    ax_loss.legend()
    ax_iou.plot(epochs, [r["val_iou"] for r in history], "o-", label="head val IoU")
    ax_iou.plot(epochs, [r["val_dice"] for r in history], "o-", label="head val Dice")
    ax_iou.plot(epochs, [r["base_val_iou"] for r in history], "k--", label="base segmenter IoU")
    ax_iou.set_xlabel("epoch")
    ax_iou.legend()
    for axis in (ax_loss, ax_iou):
        axis.grid(alpha=0.3)
    fig.suptitle("training curves (per-image mean IoU / Dice at logit > 0)")
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight")
    plt.close(fig)


def plot_training_summary(summary_json: str | os.PathLike, out_png: str | os.PathLike) -> None:
    """Read a run's ``training_summary.json`` and draw its curves."""
    plot_training_curves(read_json(summary_json)["history"], out_png)
