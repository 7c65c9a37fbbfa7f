"""laplace_head.dataset.images: size guards, format checks and binarisation of images and masks.

Guarded against: a forged ``.npy`` header that claims a huge shape, a PNG mask past the pixel
limit, a change to Pillow's process-wide limit, and a format other than the one the
``.png``/``.jpg`` name claims.
"""

from __future__ import annotations

import io
import struct
import subprocess
import sys
import tracemalloc

import numpy as np
import pytest
from helpers.hostile_files import EPS_BYTES, H, W, encoded, npy_header_only, png_header_only, rgb
from PIL import EpsImagePlugin, Image

from laplace_head.dataset import images as images_module
from laplace_head.dataset.images import (
    ImageReadError,
    load_image_rgb,
    load_mask,
    resize_image_grid,
)

MiB = 1 << 20


def _good_mask(height: int = H, width: int = W) -> np.ndarray:
    mask = np.zeros((height, width), np.uint8)
    mask[height // 4 : 3 * height // 4, width // 4 : 3 * width // 4] = 1
    return mask


def _peak_bytes(function, *args) -> tuple[object, int]:
    """(result or raised exception, peak traced allocation in bytes); numpy reports its buffers
    to tracemalloc, so an allocation of the claimed shape shows up here even if never touched."""
    tracemalloc.start()
    try:
        try:
            result = function(*args)
        except Exception as exc:  # noqa: BLE001 - returned for the caller to check
            result = exc
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


# ---------------------------------------------------------------------------------------------
# Item 2: masks have a size limit, checked from the header before anything is allocated
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["<f8", "|u1", "|b1"])
def test_npy_mask_with_a_huge_header_is_refused_without_allocating(tmp_path, dtype) -> None:
    path = tmp_path / "bomb.npy"
    path.write_bytes(npy_header_only((200_000, 200_000), dtype, body=b"\0" * 64))
    assert path.stat().st_size < 256
    result, peak = _peak_bytes(load_mask, path)
    assert isinstance(result, ImageReadError), result
    assert str(result).startswith("mask too large (decompression-bomb guard)"), result
    assert "200000x200000" in str(result) and f"{images_module.MAX_IMAGE_PIXELS:,}" in str(result)
    assert peak < 4 * MiB, f"allocated {peak / MiB:.0f} MiB for a {path.stat().st_size}-byte file"


def test_npy_mask_whose_header_claims_more_data_than_the_file_holds(tmp_path) -> None:
    """Under the pixel limit but larger than the file: refused before numpy allocates."""
    path = tmp_path / "forged.npy"
    path.write_bytes(npy_header_only((5_000, 5_000), "<f8", body=b"\0" * 800))
    result, peak = _peak_bytes(load_mask, path)
    assert isinstance(result, ImageReadError), result
    assert str(result).startswith("mask unreadable: truncated or forged .npy"), result
    assert "200,000,000 bytes" in str(result)
    assert peak < 4 * MiB, f"allocated {peak / MiB:.0f} MiB"


def test_npy_mask_over_the_same_pixel_limit_as_images(tmp_path, monkeypatch) -> None:
    np.save(tmp_path / "m.npy", _good_mask())
    monkeypatch.setattr(images_module, "MAX_IMAGE_PIXELS", H * W - 1)
    with pytest.raises(ImageReadError, match=r"^mask too large \(decompression-bomb guard\)"):
        load_mask(tmp_path / "m.npy")
    monkeypatch.setattr(images_module, "MAX_IMAGE_PIXELS", H * W)
    assert load_mask(tmp_path / "m.npy").shape == (H, W)


@pytest.mark.parametrize(
    "size",
    [(15_000, 15_000), (100_000, 100_000)],  # Pillow only warns for the first, errors for the 2nd
    ids=["between-pillow-warning-and-error", "over-pillow-error"],
)
def test_png_mask_over_the_pixel_limit_is_refused_from_its_header(tmp_path, size) -> None:
    path = tmp_path / "bomb.png"
    path.write_bytes(png_header_only(*size, colour_type=0))
    with pytest.raises(ImageReadError, match=r"^mask too large \(decompression-bomb guard\)"):
        load_mask(path)


def test_png_mask_uses_the_same_pixel_limit_as_images(tmp_path, monkeypatch) -> None:
    Image.fromarray(_good_mask() * 255).save(tmp_path / "m.png")
    Image.fromarray(rgb()).save(tmp_path / "i.png")
    monkeypatch.setattr(images_module, "MAX_IMAGE_PIXELS", H * W - 1)
    with pytest.raises(ImageReadError, match=r"^mask too large \(decompression-bomb guard\)"):
        load_mask(tmp_path / "m.png")
    with pytest.raises(ImageReadError, match=r"^image too large \(decompression-bomb guard\)"):
        load_image_rgb(tmp_path / "i.png")
    monkeypatch.setattr(images_module, "MAX_IMAGE_PIXELS", H * W)
    assert load_mask(tmp_path / "m.png").shape == (H, W)
    assert load_image_rgb(tmp_path / "i.png").shape == (H, W, 3)


def test_importing_the_module_leaves_pillows_global_limit_alone() -> None:
    code = (
        "from PIL import Image; before = Image.MAX_IMAGE_PIXELS; "
        "import laplace_head.dataset.images; "
        "assert Image.MAX_IMAGE_PIXELS == before, (before, Image.MAX_IMAGE_PIXELS)"
    )
    process = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert process.returncode == 0, process.stderr


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int16, np.uint8, np.bool_])
def test_binarising_a_mask_makes_no_float64_copy(tmp_path, dtype) -> None:
    """``value > 0`` on the loaded array: peak memory is the array plus the boolean result."""
    mask = np.zeros((1000, 1000), dtype)
    mask[100:200, 300:400] = 1
    np.save(tmp_path / "m.npy", mask)
    result, peak = _peak_bytes(load_mask, tmp_path / "m.npy")
    assert isinstance(result, np.ndarray) and result.dtype == np.bool_, result
    assert int(result.sum()) == 100 * 100
    assert peak < mask.nbytes + result.nbytes + MiB, (
        f"peak {peak / MiB:.1f} MiB for a {mask.nbytes / MiB:.1f} MiB {np.dtype(dtype)} mask"
    )


def test_nan_and_negative_values_are_background(tmp_path) -> None:
    mask = np.array([[np.nan, -1.0, 0.0], [0.5, np.inf, -np.inf]], np.float32)
    np.save(tmp_path / "m.npy", mask)
    assert load_mask(tmp_path / "m.npy").tolist() == [[False, False, False], [True, True, False]]


def test_big_endian_and_fortran_order_masks_load(tmp_path) -> None:
    mask = np.asfortranarray(_good_mask().astype(">i4"))
    np.save(tmp_path / "m.npy", mask)
    assert np.array_equal(load_mask(tmp_path / "m.npy"), _good_mask().astype(bool))


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"not numpy at all", "mask unreadable: "),
        (b"PK\x03\x04" + b"\0" * 40, "mask unreadable: an .npz archive"),
        (b"\x80\x04\x95" + b"\0" * 40, "mask unreadable (pickled objects are refused)"),
    ],
    ids=["text", "zip", "pickle"],
)
def test_npy_files_that_are_not_npy(tmp_path, data: bytes, reason: str) -> None:
    (tmp_path / "m.npy").write_bytes(data)
    with pytest.raises(ImageReadError) as info:
        load_mask(tmp_path / "m.npy")
    assert str(info.value).startswith(reason), info.value


# ---------------------------------------------------------------------------------------------
# Item 6: a file is decoded only by the format its extension claims
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def no_other_plugin(monkeypatch) -> list[str]:
    """Fail loudly if the EPS (Ghostscript) plugin is even asked to parse a file."""
    calls: list[str] = []

    def refuse(self) -> None:
        calls.append(str(getattr(self, "filename", "?")))
        raise AssertionError("the EPS plugin must never see a file named .png/.jpg")

    monkeypatch.setattr(EpsImagePlugin.EpsImageFile, "_open", refuse)
    return calls


@pytest.mark.parametrize(
    "name, data, claimed, actual",
    [
        ("tiff.png", lambda: encoded(rgb(), "TIFF"), "PNG", "TIFF"),
        ("webp.png", lambda: encoded(rgb(), "WEBP"), "PNG", "WEBP"),
        ("tiff.jpg", lambda: encoded(rgb(), "TIFF"), "JPEG", "TIFF"),
        ("webp.jpeg", lambda: encoded(rgb(), "WEBP"), "JPEG", "WEBP"),
        ("gif.png", lambda: encoded(rgb()[..., 0], "GIF"), "PNG", "GIF"),
        ("bmp.jpg", lambda: encoded(rgb(), "BMP"), "JPEG", "BMP"),
        ("eps.png", lambda: EPS_BYTES, "PNG", "EPS"),
        ("eps.jpg", lambda: EPS_BYTES, "JPEG", "EPS"),
        ("png.jpg", lambda: encoded(rgb(), "PNG"), "JPEG", "PNG"),
        ("jpeg.png", lambda: encoded(rgb(), "JPEG"), "PNG", "JPEG"),
    ],
)
def test_image_content_must_match_its_extension(
    tmp_path, no_other_plugin, name, data, claimed, actual
) -> None:
    path = tmp_path / name
    path.write_bytes(data())
    with pytest.raises(ImageReadError) as info:
        load_image_rgb(path)
    message = str(info.value)
    assert message.startswith("image fails to decode: "), message
    assert f"is not a {claimed} (it is {actual})" in message, message
    assert no_other_plugin == []


@pytest.mark.parametrize(
    "name, data, actual",
    [
        ("tiff.png", lambda: encoded(_good_mask() * 255, "TIFF"), "TIFF"),
        ("webp.png", lambda: encoded(_good_mask() * 255, "WEBP"), "WEBP"),
        ("eps.png", lambda: EPS_BYTES, "EPS"),
    ],
)
def test_png_mask_content_must_be_png(tmp_path, no_other_plugin, name, data, actual) -> None:
    path = tmp_path / name
    path.write_bytes(data())
    with pytest.raises(ImageReadError) as info:
        load_mask(path)
    message = str(info.value)
    assert message.startswith("mask unreadable: "), message
    assert f"is not a PNG (it is {actual})" in message, message
    assert no_other_plugin == []


def test_unknown_content_under_an_image_name(tmp_path, no_other_plugin) -> None:
    (tmp_path / "text.png").write_bytes(b"just some text, not an image\n")
    with pytest.raises(ImageReadError, match=r"^image fails to decode: .*is not a PNG"):
        load_image_rgb(tmp_path / "text.png")


@pytest.mark.parametrize("suffix", [".png", ".PNG", ".jpg", ".JPG", ".jpeg", ".JpEg"])
def test_matching_content_still_loads(tmp_path, suffix) -> None:
    fmt = "PNG" if suffix.lower() == ".png" else "JPEG"
    (tmp_path / f"i{suffix}").write_bytes(encoded(rgb(), fmt))
    assert load_image_rgb(tmp_path / f"i{suffix}").shape == (H, W, 3)


def _npy(array: np.ndarray, version: tuple[int, int]) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, array, version=version)
    return buffer.getvalue()


@pytest.mark.parametrize("version", [(1, 0), (2, 0), (3, 0)])
def test_npy_masks_of_every_format_version_load(tmp_path, version) -> None:
    path = tmp_path / "m.npy"
    path.write_bytes(_npy(_good_mask(), version))
    assert np.array_equal(load_mask(path), _good_mask().astype(bool))


def _npy_3_0_header(header: str, body: bytes = b"") -> bytes:
    encoded = header.encode("utf-8")
    return b"\x93NUMPY\x03\x00" + struct.pack("<I", len(encoded)) + encoded + body


@pytest.mark.parametrize(
    "header, reason",
    [
        (
            "{'descr': '<f8', 'fortran_order': False, 'shape': (200000, 200000), }\n",
            "mask too large",
        ),
        ("{'descr': '<f8', 'fortran_order': False, 'shape': (4, 4), }\n", "truncated or forged"),
        ("{'descr': '<f8', 'shape': (4, 4), }\n", "bad .npy header"),
        ("__import__('os').system('true')\n", "bad .npy header"),
        ("{'descr': '<f8', 'fortran_order': False, 'shape': (4, 4), 'é': 1}\n", "bad .npy header"),
        (
            "{'descr': [('\u00e9\u732b', '<f8')], 'fortran_order': False, 'shape': (4, 4)}\n",
            "non-numeric",
        ),
    ],
    ids=["huge", "truncated", "missing key", "code", "extra key", "utf-8 field name"],
)
def test_a_bad_version_3_npy_header_is_refused_with_its_reason(tmp_path, header, reason) -> None:
    path = tmp_path / "m.npy"
    path.write_bytes(_npy_3_0_header(header, body=b"\0" * 64))
    with pytest.raises(ImageReadError, match=reason):
        load_mask(path)


# --- the image at the 256 grid (the image head's input) --------------------------------------


def _square_image(height: int, width: int, rows: slice, cols: slice) -> np.ndarray:
    image = np.full((height, width, 3), 20, dtype=np.uint8)
    image[rows, cols] = (250, 200, 150)
    return image


def test_a_bright_square_lands_on_the_grid_cells_it_covers() -> None:
    # 512 x 384 pixels: one grid cell is 2 image rows by 1.5 image columns (stretched, no pad)
    image = _square_image(512, 384, slice(128, 256), slice(96, 192))
    grid = resize_image_grid(image, 256)
    assert grid.shape == (3, 256, 256) and grid.dtype == np.uint8
    expected = np.zeros((256, 256), dtype=bool)
    expected[64:128, 64:128] = True  # rows 128 / 2 .. 256 / 2, columns 96 / 1.5 .. 192 / 1.5
    np.testing.assert_array_equal(grid[0] > (250 + 20) / 2, expected)
    assert (grid[:, 66:126, 66:126] == np.array([250, 200, 150])[:, None, None]).all()
    assert (grid[:, :62] == 20).all() and (grid[:, :, 130:] == 20).all()


def test_the_image_follows_the_resize_rule_of_the_logits() -> None:
    """SAM's logits reach the grid by torch's bilinear antialias resize of the image-size
    logits (segmenters.sam): the same plane resized as an image agrees to uint8 rounding."""
    import torch
    import torch.nn.functional as F

    rng = np.random.default_rng(0)
    image = _square_image(300, 200, slice(90, 210), slice(50, 150))
    image[::7, ::5] = rng.integers(0, 256, image[::7, ::5].shape, dtype=np.uint8)  # texture
    plane = torch.from_numpy(image.transpose(2, 0, 1).astype(np.float32))[None]
    logits_rule = F.interpolate(
        plane, (256, 256), mode="bilinear", align_corners=False, antialias=True
    )[0].numpy()
    grid = resize_image_grid(image, 256).astype(np.float32)
    assert np.abs(grid - logits_rule).max() <= 1.0


def test_the_image_at_the_grid_is_aligned_with_the_base_segmenters_logits() -> None:
    from laplace_head.segmenters import build_segmenter

    # a non-square image, a bright object on a dark background, clicks inside and outside
    image = _square_image(300, 200, slice(90, 210), slice(50, 150))
    segmenter = build_segmenter("random_walker", max_side=160, beta=2000.0)
    segmenter.set_image(image)
    points = np.array([[100.0, 150.0], [10.0, 10.0], [190.0, 290.0], [10.0, 290.0]])
    logits_256, _, _ = segmenter.predict(points, np.array([1, 0, 0, 0]))
    foreground = logits_256 > 0
    bright = resize_image_grid(image, 256)[0] > (250 + 20) / 2
    iou = (foreground & bright).sum() / (foreground | bright).sum()
    assert iou > 0.97, iou
    # the same object shifted by a few grid cells no longer lines up as well
    shifted = np.roll(bright, 4, axis=1)
    assert (foreground & shifted).sum() / (foreground | shifted).sum() < iou - 0.04


def test_resize_image_grid_refuses_what_is_not_an_rgb_image() -> None:
    with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8"):
        resize_image_grid(np.zeros((8, 8), np.uint8), 256)
    with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8"):
        resize_image_grid(np.zeros((8, 8, 3), np.float32), 256)
