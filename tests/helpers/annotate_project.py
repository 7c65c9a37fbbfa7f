"""A tiny finished project for the annotator's tests: manifests over a synthetic dataset and a
fitted posterior (``make_fitted_run``: a head trained on synthetic maps, random_walker base)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import yaml
from PIL import Image

from helpers.laplace_fixtures import make_fitted_run
from laplace_head.config import load_configs
from laplace_head.dataset.manifests import build_manifests
from laplace_head.layout import ProjectLayout

REPO_ROOT = Path(__file__).resolve().parents[2]
RUN_ID = "t1"  # make_fitted_run's run
CLASSES = {"disc": 3, "square": 3}
HEIGHT, WIDTH = 60, 80


def _image_and_mask(shape: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A bright disc or square on a dark noisy background, and its mask."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[:HEIGHT, :WIDTH]
    cy, cx = rng.uniform(0.4, 0.6, 2) * (HEIGHT, WIDTH)
    if shape == "disc":
        mask = ((rows - cy) / (0.28 * HEIGHT)) ** 2 + ((cols - cx) / (0.22 * WIDTH)) ** 2 <= 1
    else:
        mask = (abs(rows - cy) <= 0.25 * HEIGHT) & (abs(cols - cx) <= 0.2 * WIDTH)
    colour = np.where(mask[..., None], 200.0, 40.0) + rng.normal(0, 12, (HEIGHT, WIDTH, 3))
    return np.clip(colour, 0, 255).astype(np.uint8), mask


def write_images(images_root: Path, masks_root: Path | None = None) -> None:
    """``<images_root>/<class>/<class>_NNN.png`` (and ``.npy`` masks under ``masks_root``)."""
    for class_index, (shape, count) in enumerate(sorted(CLASSES.items())):
        for index in range(count):
            image, mask = _image_and_mask(shape, 100 * class_index + index)
            stem = f"{shape}_{index:03d}"
            (images_root / shape).mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(images_root / shape / f"{stem}.png")
            if masks_root is not None:
                (masks_root / shape).mkdir(parents=True, exist_ok=True)
                np.save(masks_root / shape / f"{stem}.npy", mask.astype(np.uint8))


def make_annotate_project(root: Path) -> SimpleNamespace:
    """Images, masks, stage-1 manifests and a fitted run ``t1`` under ``root``; a config file
    ``root/config.yaml`` (an overlay of config/config.yaml: random_walker on the CPU)."""
    images_root, masks_root = root / "data" / "images_root", root / "data" / "masks_root"
    project_root = root / "project"
    write_images(images_root, masks_root)
    overlay = {
        "data": {
            "images_root": str(images_root),
            "masks_root": str(masks_root),
            "project_root": str(project_root),
        },
        "sam": {"backend": "random_walker", "device": "cpu"},
        "training": {"run_id": RUN_ID},
        "wandb": {"enabled": False},
    }
    overlay_path = root / "config.yaml"
    overlay_path.write_text(yaml.safe_dump(overlay), encoding="utf-8")
    config_files = [REPO_ROOT / "config" / "config.yaml", overlay_path]
    config = load_configs(config_files)
    layout = ProjectLayout(project_root).with_run(RUN_ID)
    build_manifests(images_root, masks_root, layout.project(), config["data"]["split_seed"])
    make_fitted_run(project_root)
    return SimpleNamespace(
        root=root,
        images_root=images_root,
        masks_root=masks_root,
        project_root=project_root,
        config=config,
        config_files=config_files,
        layout=layout,
    )
