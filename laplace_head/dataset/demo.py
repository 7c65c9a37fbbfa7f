"""Deterministic synthetic demo dataset in the input layout, with a few broken pairs.

Three classes of textured shapes (``ellipse``, ``rectangle``, ``triangle``) on textured
backgrounds, at varying sizes and positions. ``ellipse`` images are JPEG, the others PNG;
``triangle`` masks are PNG, the others ``.npy``. The broken pairs show the validator's reasons:
a corrupt image, an empty mask, an all-foreground mask, a missing mask, a mask without image,
and a (valid) mask/image size mismatch.

Run ``python -m laplace_head demo-data --out demo_data`` (what ``make demo`` does).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from laplace_head.util.atomic import atomic_save_npy, atomic_write_bytes
from laplace_head.util.seeding import derive_seed

CLASSES = ("ellipse", "rectangle", "triangle")
DEMO_SEED = 2024


def _texture(rng: np.random.Generator, height: int, width: int, base: np.ndarray) -> np.ndarray:
    """Colour ``base`` modulated by blurred noise and stripes, (H, W, 3) float in [0, 255]."""
    noise = rng.normal(0.0, 1.0, size=(height // 8 + 2, width // 8 + 2))
    smooth = np.kron(noise, np.ones((8, 8)))[:height, :width]
    yy, xx = np.mgrid[0:height, 0:width]
    angle, period = rng.uniform(0, np.pi), rng.uniform(6, 18)
    stripes = np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / period)
    modulation = 18.0 * smooth + 14.0 * stripes + rng.normal(0, 10.0, size=(height, width))
    return np.clip(base[None, None, :] + modulation[:, :, None], 0, 255)


def _shape_mask(rng: np.random.Generator, class_name: str, height: int, width: int) -> np.ndarray:
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    scale = rng.uniform(0.18, 0.38)
    ry, rx = scale * height, scale * width * rng.uniform(0.7, 1.3)
    cy = rng.uniform(ry + 4, height - ry - 4)
    cx = rng.uniform(min(rx + 4, width / 2), max(width - rx - 4, width / 2))
    if class_name == "ellipse":
        return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
    if class_name == "rectangle":
        return (np.abs(yy - cy) <= ry) & (np.abs(xx - cx) <= rx)
    # triangle: apex up, base down
    top, bottom = cy - ry, cy + ry
    half_width = (yy - top) / max(bottom - top, 1.0) * rx
    return (yy >= top) & (yy <= bottom) & (np.abs(xx - cx) <= half_width)


def make_sample(seed: int, class_name: str) -> tuple[np.ndarray, np.ndarray]:
    """One (image HWC uint8, mask HW bool) pair."""
    rng = np.random.default_rng(seed)
    height, width = int(rng.integers(120, 221)), int(rng.integers(140, 261))
    mask = _shape_mask(rng, class_name, height, width)
    background_colour = rng.uniform(60, 190, size=3)
    foreground_colour = np.clip(
        background_colour + rng.choice([-1, 1], 3) * rng.uniform(25, 70, 3), 0, 255
    )
    background = _texture(rng, height, width, background_colour)
    foreground = _texture(rng, height, width, foreground_colour)
    image = np.where(mask[:, :, None], foreground, background).astype(np.uint8)
    return image, mask


def _encode(image: np.ndarray, fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format=fmt, **({"quality": 92} if fmt == "JPEG" else {}))
    return buffer.getvalue()


def write_demo_dataset(out_dir: str | Path, per_class: int = 20) -> tuple[Path, Path]:
    """Write ``<out>/images_root`` and ``<out>/masks_root``; return the two roots."""
    out_dir = Path(out_dir)
    images_root, masks_root = out_dir / "images_root", out_dir / "masks_root"
    for class_name in CLASSES:
        image_fmt, image_ext = ("JPEG", ".jpg") if class_name == "ellipse" else ("PNG", ".png")
        for index in range(per_class):
            stem = f"{class_name}_{index:03d}"
            image, mask = make_sample(derive_seed(DEMO_SEED, class_name, index), class_name)
            atomic_write_bytes(
                images_root / class_name / (stem + image_ext), _encode(image, image_fmt)
            )
            _write_mask(masks_root / class_name, stem, mask, as_png=class_name == "triangle")
    _write_broken_pairs(images_root, masks_root)
    return images_root, masks_root


def _write_mask(folder: Path, stem: str, mask: np.ndarray, as_png: bool) -> None:
    if as_png:
        atomic_write_bytes(folder / f"{stem}.png", _encode(mask.astype(np.uint8) * 255, "PNG"))
    else:
        atomic_save_npy(folder / f"{stem}.npy", mask.astype(np.uint8))


def _write_broken_pairs(images_root: Path, masks_root: Path) -> None:
    image, mask = make_sample(derive_seed(DEMO_SEED, "broken"), "rectangle")
    rng = np.random.default_rng(DEMO_SEED)
    # A JPEG header followed by garbage: fails to decode.
    atomic_write_bytes(
        images_root / "ellipse" / "broken_corrupt_image.jpg",
        b"\xff\xd8\xff\xe0" + rng.bytes(2048),
    )
    atomic_save_npy(masks_root / "ellipse" / "broken_corrupt_image.npy", mask.astype(np.uint8))
    for stem, bad_mask in (
        ("broken_empty_mask", np.zeros_like(mask)),
        ("broken_all_foreground_mask", np.ones_like(mask)),
    ):
        atomic_write_bytes(images_root / "rectangle" / f"{stem}.png", _encode(image, "PNG"))
        atomic_save_npy(masks_root / "rectangle" / f"{stem}.npy", bad_mask.astype(np.uint8))
    atomic_write_bytes(images_root / "triangle" / "broken_missing_mask.png", _encode(image, "PNG"))
    atomic_save_npy(masks_root / "ellipse" / "broken_mask_without_image.npy", mask.astype(np.uint8))
    # Valid but recorded: the mask is stored at half the image's resolution.
    atomic_write_bytes(images_root / "rectangle" / "size_mismatch.png", _encode(image, "PNG"))
    atomic_save_npy(masks_root / "rectangle" / "size_mismatch.npy", mask[::2, ::2].astype(np.uint8))
