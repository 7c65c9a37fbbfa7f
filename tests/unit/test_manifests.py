"""Stage 1 (and stage 2 after it) on hostile inputs: scan, validation, manifests, prompt sets.

Every case ends as a row of ``all_samples.csv`` with ``valid`` and a ``reason`` (or, for a
whole-dataset problem, a clear message) - never a traceback and never a silently dropped file.

Orientation: EXIF orientation is NOT applied. Masks are assumed to follow the stored pixel grid
(what ``numpy.asarray(Image.open(path))`` gives). A mask whose shape matches the EXIF-rotated
(displayed) image instead is rejected with a reason rather than silently resized.

Names with control characters or line separators, over-long names, masks whose header claims a
huge size, and files whose content is not the format their extension claims are rejected at
stage 1 with a reason; the rest of the data set still goes through stage 2. The same inputs
through Snakemake: tests/workflow/test_hostile_inputs.py.
"""

from __future__ import annotations

import io
import json
import os
import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers.hostile_files import EPS_BYTES, H, W, encoded, npy_header_only, png_header_only, rgb
from PIL import Image

from laplace_head.dataset import images as images_module
from laplace_head.dataset.checks import check_sample
from laplace_head.dataset.images import load_image_rgb, load_mask
from laplace_head.dataset.manifests import build_manifests
from laplace_head.dataset.scan import MAX_SAFE_ID_BYTES, ScanEntry
from laplace_head.layout import ProjectLayout
from laplace_head.prompts.promptsets import generate_promptsets_shard

MARKER_NAME = "UNPICKLED"


class _TouchOnUnpickle:
    """Unpickling creates a marker file: proof that somebody ran pickle on the mask."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _mask(height: int = H, width: int = W) -> np.ndarray:
    mask = np.zeros((height, width), dtype=np.uint8)
    mask[height // 4 : 3 * height // 4, width // 4 : 3 * width // 4] = 1
    return mask


def _jpeg_bytes(image: np.ndarray, **kwargs) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", **kwargs)
    return buffer.getvalue()


LONG_STEM = "L" * (MAX_SAFE_ID_BYTES - len("h__") + 1)  # safe_id one byte over the limit


def _exif_rotated(orientation: int = 6) -> dict:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return {"exif": exif}


# Expected outcome per sample id: (valid, reason prefix or "").
EXPECTED = {
    "h/ok_rgba_png": (True, ""),
    "h/ok_grey_jpg": (True, ""),
    "h/ok_grey_png": (True, ""),
    "h/ok_16bit_png": (True, ""),
    "h/ok_cmyk_jpg": (True, ""),
    "h/ok_palette_png": (True, ""),
    "h/ok_png_mask_with_alpha": (True, ""),
    "h/exif_mask_follows_stored_grid": (True, ""),
    "h/exif_mask_follows_display": (False, "mask follows the EXIF-rotated (displayed) orientation"),
    "h/mask_bool": (True, ""),
    "h/mask_float32": (True, ""),
    "h/mask_float16": (True, ""),
    "h/mask_int64": (True, ""),
    "h/mask_uint16": (True, ""),
    "h/mask_nan_background": (True, ""),
    "h/mask_all_nan": (False, "mask has no foreground"),
    "h/mask_3d": (False, "mask is not 2D"),
    "h/mask_empty_2d": (False, "mask is empty (zero-size array)"),
    "h/mask_empty_1d": (False, "mask is not 2D"),
    "h/mask_pickled_object_array": (False, "mask unreadable (pickled objects are refused)"),
    "h/mask_raw_pickle": (False, "mask unreadable (pickled objects are refused)"),
    "h/mask_npz_archive": (False, "mask unreadable: an .npz archive"),
    "h/mask_truncated_npy": (False, "mask unreadable: "),
    "h/mask_zero_bytes": (False, "mask file is empty"),
    "h/mask_strings": (False, "mask has non-numeric dtype"),
    "h/image_zero_bytes": (False, "image file is empty"),
    "h/image_truncated_jpeg": (False, "image fails to decode"),
    "h/image_text_named_jpg": (False, "image fails to decode"),
    "h/image_png_named_jpg": (False, "image fails to decode: file named"),
    "h/image_huge_header": (False, "image too large (decompression-bomb guard)"),
    "h/image_tiff_named_png": (False, "image fails to decode: file named"),
    "h/image_webp_named_jpg": (False, "image fails to decode: file named"),
    "h/image_eps_named_png": (False, "image fails to decode: file named"),
    "h/mask_tiff_named_png": (False, "mask unreadable: file named"),
    "h/mask_npy_huge_header": (False, "mask too large (decompression-bomb guard)"),
    "h/mask_npy_header_claims_more_than_the_file": (False, "mask unreadable: truncated or forged"),
    "h/mask_png_huge_header": (False, "mask too large (decompression-bomb guard)"),
    "h/tiny_1x1_fg": (False, "mask is all foreground"),
    "h/tiny_1x1_with_2x2_mask": (False, "mask has no "),
    "h/one_foreground_pixel": (True, ""),
    "h/with space": (True, ""),
    "h/ünïcødé_猫": (True, ""),
    "h/$HOME;rm -rf x": (True, ""),
    'h/it\'s "quoted"': (True, ""),
    "h/back`ticks`&|<>": (True, ""),
    "h/comma,and;semicolon": (True, ""),
    "h/=SUM(A1) leading equals": (True, ""),
    "h/comma,and\nnewline": (False, "stem name contains a control character"),
    "h/carriage\rreturn": (False, "stem name contains a control character"),
    "h/line\u2028separator": (False, "stem name contains a control character"),
    "h/delete\x7fchar": (False, "stem name contains a control character"),
    "bad\rclass/ok": (False, "class name contains a control character"),
    f"h/{LONG_STEM}": (False, "name too long"),
    "no masks folder/a": (False, "mask missing"),
    "no masks folder/b": (False, "mask missing"),
}


@pytest.fixture(scope="module")
def hostile(tmp_path_factory) -> dict:
    """Write the hostile dataset, run stage 1 once, return paths and all_samples.csv."""
    root = tmp_path_factory.mktemp("hostile")
    images, masks = root / "images_root", root / "masks_root"
    (images / "h").mkdir(parents=True)
    (masks / "h").mkdir(parents=True)
    (images / "no masks folder").mkdir()
    written: list[Path] = []

    def image(stem: str, data: np.ndarray | bytes, ext: str = ".png", **kwargs) -> None:
        path = images / "h" / f"{stem}{ext}"
        if isinstance(data, bytes):
            path.write_bytes(data)
        else:
            Image.fromarray(data).save(path, **kwargs)
        written.append(path)

    def mask(stem: str, data, ext: str = ".npy") -> None:
        path = masks / "h" / f"{stem}{ext}"
        if isinstance(data, bytes):
            path.write_bytes(data)
        elif ext == ".npy":
            np.save(path, data)
        else:
            Image.fromarray(data).save(path)
        written.append(path)

    good = _mask()
    image("ok_rgba_png", np.dstack([rgb(), np.full((H, W), 128, np.uint8)]))
    image("ok_grey_jpg", rgb()[..., 0], ".jpg")
    image("ok_grey_png", rgb()[..., 0])
    image("ok_16bit_png", (np.arange(H * W).reshape(H, W) * 97).astype(np.uint16))
    cmyk = io.BytesIO()
    Image.fromarray(rgb()).convert("CMYK").save(cmyk, format="JPEG")
    image("ok_cmyk_jpg", cmyk.getvalue(), ".jpg")
    image("ok_palette_png", np.asarray(Image.fromarray(rgb()).convert("P")))
    image("ok_png_mask_with_alpha", rgb())
    image("exif_mask_follows_stored_grid", _jpeg_bytes(rgb(), **_exif_rotated()), ".jpg")
    image("exif_mask_follows_display", _jpeg_bytes(rgb(), **_exif_rotated()), ".jpg")
    for stem in ("ok_rgba_png", "ok_grey_jpg", "ok_grey_png", "ok_16bit_png", "ok_cmyk_jpg"):
        mask(stem, good)
    mask("ok_palette_png", good)
    mask(
        "ok_png_mask_with_alpha",
        np.dstack([good * 255] * 3 + [np.full((H, W), 255, np.uint8)]),
        ".png",
    )
    mask("exif_mask_follows_stored_grid", good)
    mask("exif_mask_follows_display", _mask(W, H))

    for stem, array in {
        "mask_bool": good.astype(bool),
        "mask_float32": good.astype(np.float32) * 0.5,
        "mask_float16": good.astype(np.float16),
        "mask_int64": good.astype(np.int64) * 3,
        "mask_uint16": good.astype(np.uint16) * 65535,
        "mask_nan_background": np.where(good > 0, 1.0, np.nan),
        "mask_all_nan": np.full((H, W), np.nan),
        "mask_3d": np.stack([good] * 3),
        "mask_empty_2d": np.zeros((0, 0), np.uint8),
        "mask_empty_1d": np.array([]),
        "mask_strings": np.full((H, W), "1"),
    }.items():
        image(stem, rgb())
        mask(stem, array)
    marker = root / MARKER_NAME
    image("mask_pickled_object_array", rgb())
    buffer = io.BytesIO()
    np.save(buffer, np.array([_TouchOnUnpickle(marker)], dtype=object), allow_pickle=True)
    mask("mask_pickled_object_array", buffer.getvalue())
    image("mask_raw_pickle", rgb())
    mask("mask_raw_pickle", pickle.dumps(_TouchOnUnpickle(marker)))
    image("mask_npz_archive", rgb())
    buffer = io.BytesIO()
    np.savez(buffer, mask=good)
    mask("mask_npz_archive", buffer.getvalue())
    image("mask_truncated_npy", rgb())
    buffer = io.BytesIO()
    np.save(buffer, good.astype(np.float64))
    mask("mask_truncated_npy", buffer.getvalue()[:200])
    image("mask_zero_bytes", rgb())
    mask("mask_zero_bytes", b"")

    image("image_zero_bytes", b"", ".jpg")
    image("image_truncated_jpeg", _jpeg_bytes(rgb(60, 80))[:400], ".jpg")
    image("image_text_named_jpg", b"I am a text file, not a JPEG.\n", ".jpg")
    buffer = io.BytesIO()
    Image.fromarray(rgb()).save(buffer, format="PNG")
    image("image_png_named_jpg", buffer.getvalue(), ".jpg")
    image("image_huge_header", png_header_only(100_000, 100_000))
    image("image_tiff_named_png", encoded(rgb(), "TIFF"))
    image("image_webp_named_jpg", encoded(rgb(), "WEBP"), ".jpg")
    image("image_eps_named_png", EPS_BYTES)
    for stem in ("image_zero_bytes", "image_truncated_jpeg", "image_text_named_jpg"):
        mask(stem, good)
    for stem in ("image_png_named_jpg", "image_huge_header", "image_tiff_named_png"):
        mask(stem, good)
    mask("image_webp_named_jpg", good)
    mask("image_eps_named_png", good)
    for stem in ("mask_tiff_named_png", "mask_npy_huge_header", "mask_png_huge_header"):
        image(stem, rgb())
    image("mask_npy_header_claims_more_than_the_file", rgb())
    mask("mask_tiff_named_png", encoded(good * 255, "TIFF"), ".png")
    mask("mask_npy_huge_header", npy_header_only((200_000, 200_000)))
    mask("mask_npy_header_claims_more_than_the_file", npy_header_only((H, W), "<f8"))
    mask("mask_png_huge_header", png_header_only(100_000, 100_000), ".png")

    image("tiny_1x1_fg", rgb(1, 1))
    mask("tiny_1x1_fg", np.ones((1, 1), np.uint8))
    image("tiny_1x1_with_2x2_mask", rgb(1, 1))
    mask("tiny_1x1_with_2x2_mask", np.array([[1, 0], [0, 0]], np.uint8))
    image("one_foreground_pixel", rgb(5, 7))
    single = np.zeros((5, 7), np.uint8)
    single[3, 5] = 1
    mask("one_foreground_pixel", single)

    for stem in (
        "with space",
        "ünïcødé_猫",
        "$HOME;rm -rf x",
        'it\'s "quoted"',
        "back`ticks`&|<>",
        "comma,and;semicolon",
        "=SUM(A1) leading equals",
        "comma,and\nnewline",
        "carriage\rreturn",
        "line\u2028separator",
        "delete\x7fchar",
        LONG_STEM,
    ):
        image(stem, rgb())
        mask(stem, good)
    (images / "bad\rclass").mkdir()
    (masks / "bad\rclass").mkdir()
    Image.fromarray(rgb()).save(images / "bad\rclass" / "ok.png")
    np.save(masks / "bad\rclass" / "ok.npy", good)
    written += [images / "bad\rclass" / "ok.png", masks / "bad\rclass" / "ok.npy"]

    for stem in ("a", "b"):
        path = images / "no masks folder" / f"{stem}.png"
        Image.fromarray(rgb()).save(path)
        written.append(path)

    os.symlink("loop.jpg", images / "h" / "loop.jpg")
    written.append(images / "h" / "loop.jpg")
    bad_name = images / "h" / os.fsdecode(b"latin1_\xe9.png")
    Image.fromarray(rgb()).save(bad_name)
    written.append(bad_name)

    manifests = root / "project" / "manifests"
    report = build_manifests(images, masks, ProjectLayout(root / "project"), split_seed=3)
    frame = pd.read_csv(manifests / "all_samples.csv", dtype=str, keep_default_na=False)
    assert len(frame) == report["n_candidates"]  # no row split by a stray line break
    return {
        "root": root,
        "written": written,
        "frame": frame,
        "report": report,
        "marker": marker,
        "manifests": manifests,
    }


def _row(frame: pd.DataFrame, sample_id: str) -> pd.Series:
    rows = frame[frame["sample_id"] == sample_id]
    assert len(rows) == 1, f"{sample_id!r}: {len(rows)} rows"
    return rows.iloc[0]


@pytest.mark.parametrize("sample_id", sorted(EXPECTED))
def test_expected_outcome(hostile: dict, sample_id: str) -> None:
    valid, reason = EXPECTED[sample_id]
    row = _row(hostile["frame"], sample_id)
    assert row["valid"] == str(valid), (sample_id, row["reason"])
    assert row["reason"].startswith(reason), (sample_id, row["reason"])
    if valid:
        assert row["split"] in ("train", "val", "test")
    else:
        assert row["split"] == "" and row["reason"]


def test_nothing_is_silently_dropped(hostile: dict) -> None:
    frame = hostile["frame"]
    listed = set(frame["image_path"]) | set(frame["mask_path"])
    for path in hostile["written"]:
        text = str(path)
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            text = os.fsencode(text).decode("utf-8", "backslashreplace")
        assert text in listed, f"{text!r} is not in all_samples.csv"
    assert hostile["report"]["n_candidates"] == len(frame)


def test_symlink_loop_and_undecodable_name_have_reasons(hostile: dict) -> None:
    frame = hostile["frame"]
    loop = frame[frame["image_path"].str.endswith("/loop.jpg")]
    assert list(loop["reason"]) == ["not a regular file (broken symlink, symlink loop or folder)"]
    bad = frame[frame["sample_id"] == "h/latin1_\\xe9"]
    assert list(bad["reason"]) == ["file or folder name is not valid UTF-8; rename it"]


def test_pickled_masks_are_never_unpickled(hostile: dict) -> None:
    assert not hostile["marker"].exists()
    truncated = _row(hostile["frame"], "h/mask_truncated_npy")
    assert "pickle" not in truncated["reason"]


def test_exif_orientation_is_not_applied(hostile: dict) -> None:
    row = _row(hostile["frame"], "h/exif_mask_follows_stored_grid")
    assert (row["image_h"], row["image_w"]) == (str(H), str(W))
    assert row["size_mismatch"] == "False"
    path = row["image_path"]
    assert Image.open(path).getexif()[0x0112] == 6
    assert load_image_rgb(path).shape == (H, W, 3)  # the stored grid, not the displayed one


@pytest.mark.parametrize(
    "stem", ["comma,and;semicolon", "comma,and\nnewline", "carriage\rreturn", "line\u2028separator"]
)
def test_csv_round_trips_odd_names(hostile: dict, stem: str) -> None:
    """Rejected names stay listed under their real name: the paths read back still exist."""
    row = _row(hostile["frame"], f"h/{stem}")
    assert Path(row["image_path"]).is_file() and Path(row["mask_path"]).is_file()
    assert row["safe_id"] == f"h__{stem}" and row["stem"] == stem


def test_report_and_split_csvs_agree(hostile: dict) -> None:
    frame = hostile["frame"]
    n_valid = sum(valid for valid, _ in EXPECTED.values())
    assert hostile["report"]["n_valid"] == n_valid == int((frame["valid"] == "True").sum())
    in_splits = pd.concat(
        pd.read_csv(hostile["manifests"] / f"{s}.csv", dtype=str, keep_default_na=False)
        for s in ("train", "val", "test")
    )
    assert sorted(in_splits["sample_id"]) == sorted(frame[frame["valid"] == "True"]["sample_id"])


def test_every_valid_sample_gets_prompt_sets(hostile: dict, tmp_path: Path) -> None:
    """What stage 1 accepts, stage 2 can always use (no failures after validation)."""
    frame = pd.read_csv(
        hostile["manifests"] / "all_samples.csv",
        keep_default_na=False,
        dtype={"sample_id": str, "safe_id": str, "class": str, "stem": str},
    )
    valid = frame[frame["valid"]]
    layout = ProjectLayout(tmp_path)
    summary = generate_promptsets_shard(valid, "train", layout, 3, 1, 4, prompt_seed=1)
    assert summary["failed"] == 0, summary["failures"]
    assert summary["generated"] == len(valid)
    record = json.loads(layout.promptset_json("train", "h__one_foreground_pixel").read_text())
    for promptset in record["promptsets"]:
        assert promptset["pos_points"] == [[5, 3]] * promptset["k"]
        assert [5, 3] not in promptset["neg_points"]
    assert not hostile["marker"].exists()


def test_masks_of_other_dtypes_binarise_as_positive(hostile: dict) -> None:
    images_root = hostile["root"] / "masks_root" / "h"
    expected = _mask().astype(bool)
    for stem in ("mask_bool", "mask_float32", "mask_float16", "mask_int64", "mask_uint16"):
        assert np.array_equal(load_mask(images_root / f"{stem}.npy"), expected), stem
    assert np.array_equal(load_mask(images_root / "mask_nan_background.npy"), expected)
    assert np.array_equal(load_mask(images_root / "ok_png_mask_with_alpha.png"), expected)


@pytest.mark.parametrize("limit_factor", [0.5, 0.9])
def test_decompression_bomb_limit(tmp_path: Path, monkeypatch, limit_factor: float) -> None:
    """The limit is ``images.MAX_IMAGE_PIXELS``, checked from the header (Pillow's own global
    limit is left alone); anything over it is a reason."""
    Image.fromarray(rgb()).save(tmp_path / "big.png")
    np.save(tmp_path / "big.npy", _mask())
    monkeypatch.setattr(images_module, "MAX_IMAGE_PIXELS", int(H * W * limit_factor))
    entry = ScanEntry(
        "c/big", "c__big", "c", "big", str(tmp_path / "big.png"), str(tmp_path / "big.npy")
    )
    result = check_sample(entry)
    assert not result.valid
    assert result.reason.startswith("image too large (decompression-bomb guard)")


def test_empty_images_root_gives_empty_manifests(tmp_path: Path, caplog) -> None:
    """Decision: stage 1 succeeds with empty split manifests and a warning; stage 2 then has
    no shard to run. The reason is visible in the log and in manifest_report.json."""
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    with caplog.at_level("WARNING", logger="laplace_head"):
        project = ProjectLayout(tmp_path)
        report = build_manifests(tmp_path / "images", tmp_path / "masks", project, 1)
    assert report["n_candidates"] == report["n_valid"] == 0
    assert "no valid samples" in caplog.text
    for name in ("all_samples", "train", "val", "test"):
        frame = pd.read_csv(project.manifest(name))
        assert len(frame) == 0 and "sample_id" in frame.columns
