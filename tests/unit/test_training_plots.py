"""Training-curve figure and the sanity-panel overview used by the HTML report."""

import json

import numpy as np
import pytest
from PIL import Image

from laplace_head.evaluation.sanity_panels import write_overview
from laplace_head.training.plots import plot_training_curves, plot_training_summary


def _history(n_epochs: int) -> list[dict]:
    return [
        {"epoch": e, "train_loss": 1 / e, "val_loss": 1.1 / e, "val_iou": 0.5 + e / 100,
         "val_dice": 0.6 + e / 100, "base_val_iou": 0.5, "lr": 1e-3}
        for e in range(1, n_epochs + 1)
    ]  # fmt: skip


def test_training_curves_png_written_from_summary(tmp_path) -> None:
    summary = tmp_path / "training_summary.json"
    summary.write_text(json.dumps({"history": _history(3)}))
    plot_training_summary(summary, tmp_path / "curves.png")
    with Image.open(tmp_path / "curves.png") as image:
        assert image.format == "PNG" and image.width > 500
    assert not list(tmp_path.glob(".tmp-*"))


def test_training_curves_refuse_empty_history(tmp_path) -> None:
    with pytest.raises(ValueError, match="no epoch finished"):
        plot_training_curves([], tmp_path / "curves.png")


def test_overview_stacks_the_first_four_panels(tmp_path) -> None:
    paths = []
    for index in range(6):
        path = tmp_path / f"panel_{index}.png"
        Image.fromarray(np.full((10 + index, 20, 3), index * 40, np.uint8)).save(path)
        paths.append(path)
    write_overview(paths, tmp_path / "overview.png")
    with Image.open(tmp_path / "overview.png") as image:
        assert image.size == (20, 10 + 11 + 12 + 13)
    with pytest.raises(ValueError, match="no sanity panels"):
        write_overview([], tmp_path / "none.png")
