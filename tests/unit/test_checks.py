"""laplace_head.dataset.checks: every failure reason of a sample, and what a valid one records."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from laplace_head.dataset import checks
from laplace_head.dataset.checks import check_sample
from laplace_head.dataset.manifests import build_manifests
from laplace_head.dataset.scan import ScanEntry
from laplace_head.layout import ProjectLayout

HEIGHT, WIDTH = 20, 30


def _entry(image_path: Path | str, mask_path: Path | str, reason: str = "") -> ScanEntry:
    return ScanEntry(
        sample_id="cls/s",
        safe_id="cls__s",
        class_name="cls",
        stem="s",
        image_path=str(image_path),
        mask_path=str(mask_path),
        reason=reason,
    )


def _good_mask(height: int = HEIGHT, width: int = WIDTH) -> np.ndarray:
    mask = np.zeros((height, width), dtype=np.uint8)
    mask[height // 4 : 3 * height // 4, width // 4 : 3 * width // 4] = 1
    return mask


@pytest.fixture
def image_path(tmp_path: Path, data_tools) -> Path:
    return data_tools.save_image(tmp_path / "s.png", data_tools.synthetic_image(HEIGHT, WIDTH, 1))


def _mask_file(tmp_path: Path, mask, name: str = "s.npy") -> Path:
    path = tmp_path / name
    np.save(path, mask)
    return path


def test_valid_sample_records_sizes(tmp_path: Path, image_path: Path) -> None:
    result = check_sample(_entry(image_path, _mask_file(tmp_path, _good_mask())))
    assert result.valid and result.reason == ""
    assert (result.image_h, result.image_w, result.mask_h, result.mask_w) == (20, 30, 20, 30)
    assert result.size_mismatch is False


def test_png_mask_is_binarised(tmp_path: Path, image_path: Path) -> None:
    mask_path = tmp_path / "s_mask.png"
    Image.fromarray(_good_mask() * 7).save(mask_path)
    assert check_sample(_entry(image_path, mask_path)).valid


def test_size_mismatch_is_valid_but_recorded(tmp_path: Path, image_path: Path) -> None:
    result = check_sample(_entry(image_path, _mask_file(tmp_path, _good_mask(10, 15))))
    assert result.valid
    assert result.size_mismatch is True
    assert (result.mask_h, result.mask_w) == (10, 15)


def test_scan_reason_is_kept_without_reading_files(tmp_path: Path) -> None:
    result = check_sample(_entry("", tmp_path / "m.npy", reason="mask without image"))
    assert not result.valid and result.reason == "mask without image"


def _image_bytes(fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((HEIGHT, WIDTH, 3), 128, np.uint8)).save(buffer, format=fmt)
    return buffer.getvalue()


# (name, image file bytes or None for a valid PNG, mask array or bytes, expected reason prefix)
FAILURES = {
    "corrupt image": (b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4, None, "image fails to decode"),
    "truncated png": (_image_bytes("PNG")[:60], None, "image fails to decode"),
    "text as image": (b"just text\n", None, "image fails to decode"),
    "empty image file": (b"", None, "image file is empty"),
    "empty mask file": (None, b"", "mask file is empty"),
    "mask not npy": (None, b"not numpy at all", "mask unreadable"),
    "mask 3D": (None, np.ones((HEIGHT, WIDTH, 3), np.uint8), "mask is not 2D"),
    "mask 1D": (None, np.ones(5, np.uint8), "mask is not 2D"),
    "mask 0D": (None, np.array(1), "mask is not 2D"),
    "mask zero-size": (None, np.zeros((0, 4), np.uint8), "mask is empty"),
    "mask strings": (None, np.array([["a", "b"], ["c", "d"]]), "mask has non-numeric dtype"),
    "no foreground": (None, np.zeros((HEIGHT, WIDTH), np.uint8), "mask has no foreground"),
    "all foreground": (None, np.ones((HEIGHT, WIDTH), np.uint8), "mask is all foreground"),
    "object array": (None, "object", "mask unreadable (pickled objects are refused)"),
    # only the format the extension claims is decoded
    "tiff named .png": (_image_bytes("TIFF"), None, "image fails to decode: file named"),
    "webp named .png": (_image_bytes("WEBP"), None, "image fails to decode: file named"),
}


@pytest.mark.parametrize("case", sorted(FAILURES))
def test_failure_reasons(tmp_path: Path, image_path: Path, case: str) -> None:
    image_bytes, mask, expected = FAILURES[case]
    if image_bytes is not None:
        image_path = tmp_path / "bad.png"
        image_path.write_bytes(image_bytes)
    mask_path = tmp_path / "m.npy"
    if mask is None:
        np.save(mask_path, _good_mask())
    elif isinstance(mask, bytes):
        mask_path.write_bytes(mask)
    elif isinstance(mask, str):
        np.save(mask_path, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    else:
        np.save(mask_path, mask)
    result = check_sample(_entry(image_path, mask_path))
    assert not result.valid
    assert result.reason.startswith(expected), result.reason
    assert "\n" not in result.reason


def test_missing_files_are_reasons_not_crashes(tmp_path: Path, image_path: Path) -> None:
    mask_path = _mask_file(tmp_path, _good_mask())
    assert check_sample(_entry(tmp_path / "gone.png", mask_path)).reason.startswith(
        "image fails to decode"
    )
    assert check_sample(_entry(image_path, tmp_path / "gone.npy")).reason.startswith(
        "mask unreadable"
    )


def test_mismatched_mask_that_loses_its_foreground_when_resized(tmp_path, image_path) -> None:
    """Prompts are drawn on the mask resized to the image, so it must keep both regions."""
    mask = np.zeros((200, 300), np.uint8)
    mask[0, 1] = 1  # one pixel that nearest-neighbour resizing to 20x30 never samples
    result = check_sample(_entry(image_path, _mask_file(tmp_path, mask)))
    assert not result.valid
    assert result.reason == "mask has no foreground after resizing to the image size (20x30)"
    inverse = 1 - mask
    result = check_sample(_entry(image_path, _mask_file(tmp_path, inverse, "inv.npy")))
    assert result.reason == "mask has no background after resizing to the image size (20x30)"


def _raise(error: BaseException):
    def explode(*args, **kwargs):
        raise error

    return explode


ERRORS = {
    "MemoryError": MemoryError("Unable to allocate 37.3 GiB"),
    "RuntimeError": RuntimeError("odd\nfailure"),
    "ValueError": ValueError("bad value"),
}


@pytest.mark.parametrize("error", sorted(ERRORS))
@pytest.mark.parametrize("where", ["load_mask", "resize_mask_nearest"])
def test_any_exception_while_checking_is_the_samples_reason(
    tmp_path, image_path, monkeypatch, where: str, error: str
) -> None:
    """Every conversion is inside the per-sample ``try``; a MemoryError (or
    anything else) on one sample becomes its reason instead of escaping ``check_sample``."""
    mask_path = _mask_file(tmp_path, _good_mask(10, 15))  # mismatched: resize is reached
    monkeypatch.setattr(checks, where, _raise(ERRORS[error]))
    result = check_sample(_entry(image_path, mask_path))
    assert not result.valid
    assert error in result.reason and str(ERRORS[error]).split("\n")[0] in result.reason
    assert "\n" not in result.reason
    if error == "MemoryError":
        assert result.reason.startswith("out of memory while checking the sample")


def test_a_memory_error_on_one_sample_does_not_stop_stage_1(tmp_path, data_tools, monkeypatch):
    images_root, masks_root = data_tools.make_dataset(tmp_path / "data", {"a": 4})
    real_load_mask = checks.load_mask

    def load_mask(path):
        if Path(path).stem == "a_001":
            raise MemoryError("Unable to allocate 37.3 GiB")
        return real_load_mask(path)

    monkeypatch.setattr(checks, "load_mask", load_mask)
    report = build_manifests(images_root, masks_root, ProjectLayout(tmp_path), split_seed=0)
    assert report["n_valid"] == 3 and report["n_invalid"] == 1
    (invalid,) = report["invalid_samples"]
    assert invalid["sample_id"] == "a/a_001"
    assert invalid["reason"].startswith("out of memory while checking the sample")
