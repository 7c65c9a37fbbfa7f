"""laplace_head.dataset.scan: pairing images with masks, sample ids, pairing failures."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from laplace_head.dataset.scan import make_safe_id, make_sample_id, scan_dataset


def _touch(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@pytest.fixture
def roots(tmp_path: Path) -> tuple[Path, Path]:
    images_root, masks_root = tmp_path / "images_root", tmp_path / "masks_root"
    images_root.mkdir()
    masks_root.mkdir()
    return images_root, masks_root


def _by_id(entries) -> dict:
    grouped: dict = {}
    for entry in entries:
        grouped.setdefault(entry.sample_id, []).append(entry)
    return {key: value[0] if len(value) == 1 else value for key, value in grouped.items()}


def test_ids() -> None:
    assert make_sample_id("horse", "h 01") == "horse/h 01"
    assert make_safe_id("horse", "h 01") == "horse__h 01"


def test_pairs_every_supported_extension(roots: tuple[Path, Path]) -> None:
    images_root, masks_root = roots
    names = {"a": (".jpg", ".npy"), "b": (".JPG", ".png"), "c": (".jpeg", ".npy")}
    names |= {"d": (".PNG", ".npy"), "e": (".JpEg", ".PNG")}
    for stem, (image_ext, mask_ext) in names.items():
        _touch(images_root / "cls" / f"{stem}{image_ext}")
        _touch(masks_root / "cls" / f"{stem}{mask_ext}")
    entries = scan_dataset(images_root, masks_root)
    assert [e.sample_id for e in entries] == [f"cls/{s}" for s in "abcde"]
    for entry in entries:
        assert entry.reason == ""
        assert entry.class_name == "cls" and entry.safe_id == f"cls__{entry.stem}"
        image_ext, mask_ext = names[entry.stem]
        assert entry.image_path == str(images_root / "cls" / f"{entry.stem}{image_ext}")
        assert entry.mask_path == str(masks_root / "cls" / f"{entry.stem}{mask_ext}")


def test_unrelated_files_are_ignored(roots: tuple[Path, Path]) -> None:
    images_root, masks_root = roots
    _touch(images_root / "cls" / "a.jpg")
    _touch(masks_root / "cls" / "a.npy")
    for name in ("notes.txt", ".DS_Store", "a.jpg.bak", "Thumbs.db", "b.tif"):
        _touch(images_root / "cls" / name)
    _touch(masks_root / "cls" / "a.npz")
    assert [e.sample_id for e in scan_dataset(images_root, masks_root)] == ["cls/a"]


def test_pairing_failures_have_reasons(roots: tuple[Path, Path]) -> None:
    images_root, masks_root = roots
    _touch(images_root / "cls" / "no_mask.png")
    _touch(masks_root / "cls" / "no_image.npy")
    _touch(images_root / "cls" / "twice.jpg")
    _touch(images_root / "cls" / "twice.png")
    _touch(masks_root / "cls" / "twice.npy")
    _touch(images_root / "cls" / "case.jpg")
    _touch(images_root / "cls" / "case.JPG")
    _touch(masks_root / "cls" / "case.npy")
    _touch(images_root / "cls" / "two_masks.jpg")
    _touch(masks_root / "cls" / "two_masks.npy")
    _touch(masks_root / "cls" / "two_masks.png")
    entries = _by_id(scan_dataset(images_root, masks_root))
    assert entries["cls/no_mask"].reason == "mask missing"
    assert entries["cls/no_mask"].mask_path == ""
    assert entries["cls/no_image"].reason == "mask without image"
    assert entries["cls/no_image"].image_path == ""
    assert entries["cls/twice"].reason.startswith("two images share the stem")
    assert "twice.jpg" in entries["cls/twice"].reason
    assert "twice.png" in entries["cls/twice"].reason
    assert entries["cls/case"].reason.startswith("two images share the stem")
    assert entries["cls/two_masks"].reason.startswith("two masks share the stem")


def test_class_folder_on_one_side_only(roots: tuple[Path, Path]) -> None:
    images_root, masks_root = roots
    _touch(images_root / "only_images" / "a.jpg")
    _touch(images_root / "only_images" / "b.jpg")
    _touch(masks_root / "only_masks" / "c.npy")
    entries = _by_id(scan_dataset(images_root, masks_root))
    assert entries["only_images/a"].reason == "mask missing"
    assert entries["only_images/b"].reason == "mask missing"
    assert entries["only_masks/c"].reason == "mask without image"


def test_folders_and_broken_links_named_like_images(roots: tuple[Path, Path]) -> None:
    images_root, masks_root = roots
    (images_root / "cls" / "folder.jpg").mkdir(parents=True)
    os.symlink(images_root / "cls" / "gone.png", images_root / "cls" / "dangling.png")
    os.symlink("loop.jpg", images_root / "cls" / "loop.jpg")
    (masks_root / "cls").mkdir()
    os.symlink("loop.npy", masks_root / "cls" / "mloop.npy")
    entries = _by_id(scan_dataset(images_root, masks_root))
    for sample_id in ("cls/folder", "cls/dangling", "cls/loop", "cls/mloop"):
        assert entries[sample_id].reason.startswith("not a regular file"), sample_id
    assert entries["cls/mloop"].mask_path.endswith("mloop.npy")


def test_symlinked_files_and_class_folders_are_followed(tmp_path: Path, roots) -> None:
    images_root, masks_root = roots
    _touch(tmp_path / "elsewhere" / "a.jpg")
    _touch(tmp_path / "elsewhere_masks" / "a.npy")
    os.symlink(tmp_path / "elsewhere", images_root / "linked")
    (masks_root / "linked").mkdir()
    os.symlink(tmp_path / "elsewhere_masks" / "a.npy", masks_root / "linked" / "a.npy")
    entries = scan_dataset(images_root, masks_root)
    assert [(e.sample_id, e.reason) for e in entries] == [("linked/a", "")]


def test_symlink_loop_as_class_folder_is_skipped_with_a_warning(roots, caplog) -> None:
    images_root, masks_root = roots
    os.symlink("loop", images_root / "loop")
    _touch(images_root / "cls" / "a.jpg")
    _touch(masks_root / "cls" / "a.npy")
    with caplog.at_level(logging.WARNING, logger="laplace_head"):
        entries = scan_dataset(images_root, masks_root)
    assert [e.sample_id for e in entries] == ["cls/a"]
    assert "loop" in caplog.text and "not a usable class folder" in caplog.text


def test_files_outside_class_folders_are_reported(roots, caplog) -> None:
    images_root, masks_root = roots
    _touch(images_root / "flat.jpg")
    _touch(masks_root / "flat.npy")
    with caplog.at_level(logging.WARNING, logger="laplace_head"):
        assert scan_dataset(images_root, masks_root) == []
    assert "flat.jpg" in caplog.text and "flat.npy" in caplog.text
    assert "inside a class folder" in caplog.text


def test_missing_roots_give_no_entries(tmp_path: Path) -> None:
    assert scan_dataset(tmp_path / "nope", tmp_path / "neither") == []


def test_spaces_unicode_and_shell_metacharacters_in_ids(roots: tuple[Path, Path]) -> None:
    images_root, masks_root = roots
    stems = ["with space", "ünïcødé_猫", "$HOME;rm -rf", 'it\'s "quoted"', "back`tick`", "a,b"]
    for stem in stems:
        _touch(images_root / "my class" / f"{stem}.png")
        _touch(masks_root / "my class" / f"{stem}.npy")
    entries = _by_id(scan_dataset(images_root, masks_root))
    for stem in stems:
        entry = entries[f"my class/{stem}"]
        assert entry.reason == "" and entry.safe_id == f"my class__{stem}"
        assert Path(entry.image_path).is_file() and Path(entry.mask_path).is_file()


def test_safe_id_collisions_are_flagged(roots: tuple[Path, Path]) -> None:
    images_root, masks_root = roots
    for class_name, stem in (("a__b", "c"), ("a", "b__c")):
        _touch(images_root / class_name / f"{stem}.png")
        _touch(masks_root / class_name / f"{stem}.npy")
    entries = _by_id(scan_dataset(images_root, masks_root))
    for sample_id in ("a__b/c", "a/b__c"):
        assert entries[sample_id].safe_id == "a__b__c"
        assert "collides" in entries[sample_id].reason


def test_names_that_are_not_utf8_are_flagged_readably(roots: tuple[Path, Path]) -> None:
    images_root, masks_root = roots
    bad = os.fsdecode(b"bad\xff")
    _touch(images_root / "cls" / f"{bad}.jpg")
    _touch(masks_root / "cls" / f"{bad}.npy")
    (entry,) = scan_dataset(images_root, masks_root)
    assert entry.reason == "file or folder name is not valid UTF-8; rename it"
    assert entry.sample_id == "cls/bad\\xff"
    entry.image_path.encode("utf-8")  # writable to a CSV


def test_entries_are_sorted_and_deterministic(roots: tuple[Path, Path]) -> None:
    images_root, masks_root = roots
    for class_name in ("b", "a", "c"):
        for stem in ("z", "m", "a"):
            _touch(images_root / class_name / f"{stem}.png")
            _touch(masks_root / class_name / f"{stem}.npy")
    entries = scan_dataset(images_root, masks_root)
    ids = [e.sample_id for e in entries]
    assert ids == sorted(ids) and len(ids) == 9
    assert scan_dataset(images_root, masks_root) == entries
