"""Shared fixtures: repository paths, the real_dev data, tiny on-disk datasets, snakemake runs.

The real_dev data (92 real image/mask pairs) lives outside the repository, by default in
``<repo>/../shared/data/real_dev``; point ``LAPLACE_HEAD_REAL_DEV`` elsewhere to override. When
the default folder is missing, the tests that need it are SKIPPED with a reason naming the path
(shown in the summary, ``-rs`` in pyproject's addopts); a folder set through
``LAPLACE_HEAD_REAL_DEV`` that is missing FAILS them. CI has ``../shared``, so they run there.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import yaml
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parent.parent
REAL_DEV_ENV = "LAPLACE_HEAD_REAL_DEV"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """The repository root (the folder holding the Snakefile)."""
    return REPO_ROOT


@pytest.fixture(scope="session")
def bench_script(repo_root: Path) -> Callable[[str], Any]:
    """Import a script of ``bench/`` by module name (``bench/`` is a folder of scripts, not a
    package; it is on the import path only while the script and its imports load)."""

    def load(name: str) -> Any:
        folder = str(repo_root / "bench")
        sys.path.insert(0, folder)
        try:
            return importlib.import_module(name)
        finally:
            sys.path.remove(folder)

    return load


@pytest.fixture(scope="session")
def real_dev_root(repo_root: Path) -> Path:
    """``real_dev`` with ``images_root/`` and ``masks_root/``.

    Missing: a skip with the reason when the default ``../shared/data/real_dev`` is absent (a
    machine without the data), a failure when ``LAPLACE_HEAD_REAL_DEV`` names it.
    """
    configured = os.environ.get(REAL_DEV_ENV)
    root = Path(configured) if configured else repo_root.parent / "shared" / "data" / "real_dev"
    if not (root / "images_root").is_dir() or not (root / "masks_root").is_dir():
        message = (
            f"real_dev data not found at {root} (expected images_root/ and masks_root/ inside). "
            f"Provide ../shared/data/real_dev next to the repository or set {REAL_DEV_ENV}."
        )
        if configured:
            pytest.fail(message)
        pytest.skip(message)
    return root


# --------------------------------------------------------------------------------------------
# Tiny datasets
# --------------------------------------------------------------------------------------------


def synthetic_image(height: int, width: int, seed: int) -> np.ndarray:
    """(H, W, 3) uint8 random texture."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)


def synthetic_mask(height: int, width: int, seed: int) -> np.ndarray:
    """(H, W) bool ellipse with both foreground and background (needs H, W >= 3)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    cy, cx = rng.uniform(0.35, 0.65) * height, rng.uniform(0.35, 0.65) * width
    ry, rx = max(height * 0.25, 1.0), max(width * 0.25, 1.0)
    mask = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
    mask[int(cy), int(cx)] = True
    mask[0, 0] = False
    return mask


def save_image(path: Path, image: np.ndarray, **save_kwargs) -> Path:
    """Save an array with Pillow (format from the suffix); create parent folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path, **save_kwargs)
    return path


def save_mask(path: Path, mask: np.ndarray) -> Path:
    """Save a mask as ``.npy`` (array as given) or ``.png`` (0/255)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".npy":
        np.save(path, mask)
    else:
        Image.fromarray(np.asarray(mask, dtype=np.uint8) * 255).save(path)
    return path


def write_pair(
    images_root: Path,
    masks_root: Path,
    class_name: str,
    stem: str,
    height: int = 24,
    width: int = 32,
    image_ext: str = ".png",
    mask_ext: str = ".npy",
    seed: int = 0,
) -> tuple[Path, Path]:
    """Write one valid image/mask pair; return (image_path, mask_path)."""
    image_path = save_image(
        images_root / class_name / f"{stem}{image_ext}", synthetic_image(height, width, seed)
    )
    mask = synthetic_mask(height, width, seed + 1)
    mask_path = save_mask(masks_root / class_name / f"{stem}{mask_ext}", mask.astype(np.uint8))
    return image_path, mask_path


def make_dataset(root: Path, counts: dict[str, int], **pair_kwargs) -> tuple[Path, Path]:
    """``root/images_root`` and ``root/masks_root`` with ``counts[class]`` valid pairs each."""
    images_root, masks_root = root / "images_root", root / "masks_root"
    images_root.mkdir(parents=True, exist_ok=True)
    masks_root.mkdir(parents=True, exist_ok=True)
    for class_index, (class_name, count) in enumerate(sorted(counts.items())):
        for index in range(count):
            write_pair(
                images_root,
                masks_root,
                class_name,
                f"{class_name}_{index:03d}",
                seed=1000 * class_index + 10 * index,
                **pair_kwargs,
            )
    return images_root, masks_root


@pytest.fixture(scope="session")
def data_tools() -> SimpleNamespace:
    """The dataset helpers of this file: ``synthetic_image``, ``synthetic_mask``,
    ``save_image``, ``save_mask``, ``write_pair`` and ``make_dataset``."""
    return SimpleNamespace(
        synthetic_image=synthetic_image,
        synthetic_mask=synthetic_mask,
        save_image=save_image,
        save_mask=save_mask,
        write_pair=write_pair,
        make_dataset=make_dataset,
    )


@pytest.fixture
def dataset_factory(tmp_path: Path) -> Callable[..., tuple[Path, Path]]:
    """Build a tiny valid dataset: ``dataset_factory({"a": 3, "b": 12}, name="data")``."""

    def factory(counts: dict[str, int], name: str = "data", **pair_kwargs):
        return make_dataset(tmp_path / name, counts, **pair_kwargs)

    return factory


# --------------------------------------------------------------------------------------------
# Snakemake
# --------------------------------------------------------------------------------------------


def write_override_config(
    path: Path, images_root: Path, masks_root: Path, project_root: Path, **sections: Any
) -> Path:
    """A YAML config overriding the data roots (wandb off); ``sections`` merge in more keys (a
    mapping key by key into its section, any other value, e.g. ``heads=[...]``, as it is)."""
    config: dict = {
        "data": {
            "images_root": str(images_root),
            "masks_root": str(masks_root),
            "project_root": str(project_root),
        },
        "wandb": {"enabled": False},
    }
    for section, values in sections.items():
        if isinstance(values, dict):
            config.setdefault(section, {}).update(values)
        else:
            config[section] = values
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
    return path


def snakemake_executable() -> Path:
    """The ``snakemake`` entry point of the interpreter running the tests."""
    executable = Path(sys.executable).parent / "snakemake"
    if not executable.is_file():
        pytest.fail(f"snakemake not found next to {sys.executable}; install the project first.")
    return executable


def run_snakemake(
    args: list[str], cwd: str | os.PathLike = REPO_ROOT, check: bool = True
) -> subprocess.CompletedProcess:
    """Run snakemake with ``args`` in ``cwd``; with ``check`` a failure shows its output."""
    process = subprocess.run(
        [str(snakemake_executable()), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**os.environ, "WANDB_MODE": "disabled"},
        timeout=600,
    )
    if check and process.returncode != 0:
        pytest.fail(
            f"snakemake {' '.join(args)} failed (exit {process.returncode}):\n"
            f"--- stdout ---\n{process.stdout[-6000:]}\n--- stderr ---\n{process.stderr[-6000:]}"
        )
    return process


@pytest.fixture(scope="session")
def snakemake_runner() -> Callable[..., subprocess.CompletedProcess]:
    """:func:`run_snakemake`: ``snakemake_runner(args, cwd=repo_root, check=True)``."""
    return run_snakemake


@pytest.fixture(scope="session")
def config_writer() -> Callable[..., Path]:
    """:func:`write_override_config`."""
    return write_override_config
