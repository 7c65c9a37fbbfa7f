"""laplace_head.dataset.scan: pairing images with masks, sample ids, pairing failures."""

from __future__ import annotations

import csv
import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from laplace_head.dataset.manifests import (
    MANIFEST_COLUMNS,
    build_manifests,
    read_split_manifest,
)
from laplace_head.dataset.scan import (
    MAX_SAFE_ID_BYTES,
    NAME_MAX_BYTES,
    ScanError,
    make_safe_id,
    make_sample_id,
    name_problem,
    scan_dataset,
)
from laplace_head.dataset.splits import SPLITS
from laplace_head.evaluation.sanity_panels import panel_name
from laplace_head.layout import ProjectLayout
from laplace_head.util.atomic import TMP_PREFIX, atomic_path, atomic_write_json


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


# ---------------------------------------------------------------------------------------------
# Control characters and line separators in class or stem names
# ---------------------------------------------------------------------------------------------

# Every character that splits a line somewhere: C0/C1 controls (Unicode category Cc, incl. DEL
# and NEL), the Unicode line and paragraph separators; NUL cannot occur in a POSIX file name.
LINE_BREAKING = ["\r", "\n", "\r\n", "\t", "\x0b", "\x0c", "\x1b", "\x1c", "\x7f", "\x85"]
LINE_BREAKING += ["\u2028", "\u2029"]


@pytest.mark.parametrize("char", LINE_BREAKING, ids=[repr(c) for c in LINE_BREAKING])
@pytest.mark.parametrize("where", ["stem", "class"])
def test_control_characters_in_names_are_rejected_with_a_reason(roots, char, where) -> None:
    images_root, masks_root = roots
    class_name, stem = ("cls", f"bad{char}name") if where == "stem" else (f"c{char}x", "s")
    _touch(images_root / class_name / f"{stem}.png")
    _touch(masks_root / class_name / f"{stem}.npy")
    _touch(images_root / "cls" / "good.png")
    _touch(masks_root / "cls" / "good.npy")
    entries = _by_id(scan_dataset(images_root, masks_root))
    bad = entries[f"{class_name}/{stem}"]  # still listed, under its real name
    assert bad.reason.startswith(f"{where} name contains a control character"), bad.reason
    assert repr(char[0])[1:-1] in bad.reason  # readable: the reason names the character
    assert bad.reason.isprintable() and "rename" in bad.reason
    assert entries["cls/good"].reason == ""


@pytest.mark.parametrize("name", ["a\x00b", "a\rb", "a\u2028b", "a\x7fb", "\x85"])
def test_name_problem_names_the_character(name: str) -> None:
    problem = name_problem(name)
    assert problem.startswith("contains a control character") and problem.isprintable()


@pytest.mark.parametrize("name", ["with space", "ünïcødé_猫", "=1+2", 'a "q", b', "\u200bzero"])
def test_ordinary_odd_names_have_no_problem(name: str) -> None:
    assert name_problem(name) == ""


# Names that must stay valid AND round-trip through the manifest CSVs byte for byte.
HOSTILE_BUT_VALID = [
    'it\'s "quoted"',
    "comma,and;semicolon",
    "=SUM(A1:A2)",
    "+cmd|' -C calc'!A0",
    "-leading dash",
    "@at",
    " leading and trailing spaces ",
    "NA",
    "null",
    "007",
    "1e5",
    "#hash",
    "back\\slash",
    "ünïcødé_猫_😀",
    "tab-free\u00a0nbsp",
    "\u202eright-to-left",
]


def test_manifest_csvs_round_trip_hostile_names(tmp_path: Path, data_tools) -> None:
    """Every row of every manifest reads back equal to what was written, incl. names that
    are rejected for a control character (they are listed with their real name)."""
    images_root, masks_root = tmp_path / "images_root", tmp_path / "masks_root"
    for index, stem in enumerate(HOSTILE_BUT_VALID):
        data_tools.write_pair(images_root, masks_root, 'cls, "x"', stem, seed=index)
    for index, stem in enumerate(["cr\rname", "lf\nname", "crlf\r\nname", "ls\u2028name"]):
        data_tools.write_pair(images_root, masks_root, "cls", stem, seed=50 + index)
    data_tools.write_pair(images_root, masks_root, "bad\rclass", "s", seed=60)
    manifests = tmp_path / "manifests"
    build_manifests(images_root, masks_root, ProjectLayout(tmp_path), split_seed=0)

    frame = read_split_manifest(manifests / "all_samples.csv")
    expected_ids = {f'cls, "x"/{stem}' for stem in HOSTILE_BUT_VALID}
    expected_bad = {"cls/cr\rname", "cls/lf\nname", "cls/crlf\r\nname", "cls/ls\u2028name"}
    expected_bad.add("bad\rclass/s")
    assert set(frame["sample_id"]) == expected_ids | expected_bad
    assert len(frame) == len(expected_ids | expected_bad)
    by_id = frame.set_index("sample_id")
    for sample_id in expected_ids:
        row = by_id.loc[sample_id]
        class_name, stem = sample_id.split("/", 1)
        assert bool(row["valid"]) and row["reason"] == "", (sample_id, row["reason"])
        assert (row["class"], row["stem"]) == (class_name, stem)
        assert row["safe_id"] == f"{class_name}__{stem}"
        assert row["image_path"] == str((images_root / class_name / f"{stem}.png").resolve())
        assert Path(row["mask_path"]).is_file()
    for sample_id in expected_bad:
        row = by_id.loc[sample_id]
        assert not bool(row["valid"]) and "control character" in row["reason"], sample_id
        assert row["split"] == ""
        assert Path(row["image_path"]).is_file() and Path(row["mask_path"]).is_file()

    # The split CSVs hold exactly the valid rows, equal field by field to all_samples.csv.
    splits = pd.concat([read_split_manifest(manifests / f"{s}.csv") for s in SPLITS])
    assert sorted(splits["sample_id"]) == sorted(expected_ids)
    for _, row in splits.iterrows():
        written = by_id.loc[row["sample_id"]]
        for column in MANIFEST_COLUMNS[1:]:
            assert str(row[column]) == str(written[column]), (row["sample_id"], column)
    # A plain csv reader agrees (no row is split by a stray line break).
    with open(manifests / "all_samples.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert sorted(r["sample_id"] for r in rows) == sorted(frame["sample_id"])
    # The split registry too.
    registry = pd.read_csv(manifests / "split_registry.csv", dtype=str, keep_default_na=False)
    assert sorted(registry["sample_id"]) == sorted(expected_ids)


# ---------------------------------------------------------------------------------------------
# Over-long names
# ---------------------------------------------------------------------------------------------


def test_the_safe_id_limit_leaves_room_for_every_derived_file_name() -> None:
    longest = panel_name("train", "s" * MAX_SAFE_ID_BYTES, 9999)
    temp = f"{TMP_PREFIX}{longest}.abcdefgh.png"  # atomic_path: mkstemp(prefix, suffix)
    assert len(temp.encode()) <= NAME_MAX_BYTES == 255
    assert MAX_SAFE_ID_BYTES >= 200  # still generous for real data sets


@pytest.mark.parametrize("char, width", [("s", 1), ("é", 2), ("猫", 3)])
def test_over_long_safe_ids_are_rejected_with_a_reason(roots, char: str, width: int) -> None:
    images_root, masks_root = roots
    room = MAX_SAFE_ID_BYTES - len("c__")
    fits = char * (room // width) + "x" * (room % width)
    too_long = fits + "y"
    for stem in (fits, too_long):
        _touch(images_root / "c" / f"{stem}.png")
        _touch(masks_root / "c" / f"{stem}.npy")
    entries = _by_id(scan_dataset(images_root, masks_root))
    assert len(entries[f"c/{fits}"].safe_id.encode()) == MAX_SAFE_ID_BYTES
    assert entries[f"c/{fits}"].reason == ""
    reason = entries[f"c/{too_long}"].reason
    assert reason.startswith("name too long"), reason
    assert f"{MAX_SAFE_ID_BYTES + 1} bytes" in reason and f"limit {MAX_SAFE_ID_BYTES}" in reason


def test_a_safe_id_at_the_limit_can_be_written_by_every_later_stage(tmp_path: Path) -> None:
    """Real writes: the stage-2 JSON and a sanity panel, through their atomic temp names."""
    safe_id = "c__" + "s" * (MAX_SAFE_ID_BYTES - 3)
    json_path = ProjectLayout(tmp_path).promptset_json("train", safe_id)
    atomic_write_json(json_path, {"ok": True})
    assert json_path.is_file()
    panel = tmp_path / "panels" / panel_name("train", safe_id, 9999)
    with atomic_path(panel) as tmp:
        tmp.write_bytes(b"png")
    assert panel.is_file()


# --- One name rule for every stage; one row per id; one file is never its own mask ---

NAMES_EVERY_STAGE_JUDGES = [
    *HOSTILE_BUT_VALID,
    "cr\rname",
    "del\x7fname",
    "ls\u2028name",
    "L" * (MAX_SAFE_ID_BYTES - len("c__")),
    "L" * (MAX_SAFE_ID_BYTES - len("c__") + 1),
]


@pytest.mark.parametrize("stem", NAMES_EVERY_STAGE_JUDGES, ids=range(len(NAMES_EVERY_STAGE_JUDGES)))
def test_stages_1_2_and_3_apply_one_name_rule(tmp_path: Path, roots, stem: str) -> None:
    """A name stage 1 accepts is accepted by stage 2 (safe_id_problem) and stage 3 (the prompt
    JSON's check), and a name stage 1 refuses is refused by them: no sample is lost late."""
    from laplace_head.cache.precompute import _check_safe_id
    from laplace_head.dataset.scan import safe_id_problem

    images_root, masks_root = roots
    _touch(images_root / "c" / f"{stem}.png")
    _touch(masks_root / "c" / f"{stem}.npy")
    (entry,) = scan_dataset(images_root, masks_root)
    stage_2 = safe_id_problem(entry.safe_id)
    try:
        _check_safe_id(entry.safe_id, tmp_path / f"{entry.safe_id}.json")
        stage_3 = ""
    except ValueError as exc:
        stage_3 = str(exc)
    assert (entry.reason == "") == (stage_2 == "") == (stage_3 == ""), (entry.reason, stage_3)
    if stage_3:  # a refusal names the problem without contradicting itself
        assert "not the file's own name" not in stage_3 and stage_2 in stage_3


def test_a_backslash_stem_is_a_valid_sample(tmp_path: Path, data_tools) -> None:
    images_root, masks_root = tmp_path / "images_root", tmp_path / "masks_root"
    data_tools.write_pair(images_root, masks_root, "names", "back\\slash", seed=1)
    (entry,) = scan_dataset(images_root, masks_root)
    assert (entry.sample_id, entry.safe_id, entry.reason) == (
        "names/back\\slash",
        "names__back\\slash",
        "",
    )


def _fifo(path: Path) -> None:
    os.mkfifo(path)


def _folder(path: Path) -> None:
    path.mkdir()


def _dangling(path: Path) -> None:
    os.symlink(path.parent / "gone.png", path)


def _loop(path: Path) -> None:
    os.symlink(path.name, path)


@pytest.mark.parametrize("make", [_fifo, _folder, _dangling, _loop], ids=lambda f: f.__name__[1:])
@pytest.mark.parametrize("side", ["image", "mask"])
def test_an_unusable_file_with_its_counterpart_gives_one_row(roots, make, side: str) -> None:
    images_root, masks_root = roots
    (images_root / "c").mkdir()
    (masks_root / "c").mkdir()
    bad = images_root / "c" / "a.png" if side == "image" else masks_root / "c" / "a.npy"
    good = masks_root / "c" / "a.npy" if side == "image" else images_root / "c" / "a.png"
    make(bad)
    _touch(good)
    entries = scan_dataset(images_root, masks_root)
    assert [e.sample_id for e in entries] == ["c/a"]
    (entry,) = entries
    assert entry.reason.startswith("not a regular file"), entry.reason
    assert "without image" not in entry.reason and "mask missing" not in entry.reason
    assert (entry.image_path, entry.mask_path) == (
        str(images_root / "c" / "a.png"),
        str(masks_root / "c" / "a.npy"),
    )


def test_a_self_looping_link_next_to_a_real_image_gives_one_row(roots) -> None:
    images_root, masks_root = roots
    _touch(images_root / "c" / "a.jpg")
    _loop(images_root / "c" / "a.png")
    _touch(masks_root / "c" / "a.npy")
    entries = scan_dataset(images_root, masks_root)
    assert [e.sample_id for e in entries] == ["c/a"]
    assert entries[0].reason.startswith("not a regular file") and "a.png" in entries[0].reason


def test_a_fifo_as_image_gives_one_manifest_row(tmp_path: Path, data_tools) -> None:
    images_root, masks_root = tmp_path / "images_root", tmp_path / "masks_root"
    data_tools.write_pair(images_root, masks_root, "c", "good", seed=1)
    data_tools.write_pair(images_root, masks_root, "c", "other", seed=2)
    data_tools.write_pair(images_root, masks_root, "c", "third", seed=3)
    os.mkfifo(images_root / "c" / "pipe.png")
    np.save(masks_root / "c" / "pipe.npy", np.eye(4))
    project = ProjectLayout(tmp_path / "project")
    report = build_manifests(images_root, masks_root, project, split_seed=0)
    frame = read_split_manifest(project.manifest("all_samples"))
    assert frame["sample_id"].is_unique and report["n_invalid"] == 1
    (reason,) = frame.loc[frame["sample_id"] == "c/pipe", "reason"]
    assert reason.startswith("not a regular file") and "FIFO" in reason


@pytest.mark.parametrize("how", ["same path", "symlink"])
def test_one_folder_as_both_roots_is_refused(tmp_path: Path, data_tools, how: str) -> None:
    root = tmp_path / "data"
    data_tools.write_pair(root, root, "c", "a", seed=1)  # a.png: image and (as .png) mask
    masks_root = root
    if how == "symlink":
        masks_root = tmp_path / "masks"
        os.symlink(root, masks_root)
    with pytest.raises(ScanError) as caught:
        scan_dataset(root, masks_root)
    message = str(caught.value)
    assert str(root) in message and "own mask" in message and "masks_root" in message


def test_an_escaped_undecodable_name_equal_to_a_real_name_gives_one_row(roots) -> None:
    images_root, masks_root = roots
    for stem in (b"a\xff", b"a\\xff"):  # the second is the first's escaped spelling
        for root, ext in ((images_root, b".png"), (masks_root, b".npy")):
            (root / "c").mkdir(exist_ok=True)
            (Path(os.fsdecode(bytes(root / "c"))) / os.fsdecode(stem + ext)).write_bytes(b"x")
    entries = scan_dataset(images_root, masks_root)
    assert [e.sample_id for e in entries] == ["c/a\\xff"]
    assert "not valid UTF-8" in entries[0].reason and entries[0].reason.isprintable()


@pytest.mark.parametrize("how", ["class folder link", "file link", "hard link"])
def test_an_image_that_is_its_own_mask_is_refused(tmp_path: Path, roots, data_tools, how) -> None:
    images_root, masks_root = roots
    image, _ = data_tools.write_pair(images_root, tmp_path / "unused", "c", "a", seed=1)
    data_tools.write_pair(images_root, masks_root, "d", "ok", seed=2)
    if how == "class folder link":
        os.symlink(images_root / "c", masks_root / "c")
    else:
        (masks_root / "c").mkdir()
        link = os.symlink if how == "file link" else os.link
        link(image, masks_root / "c" / "a.png")
    entries = _by_id(scan_dataset(images_root, masks_root))
    assert "is its own mask" in entries["c/a"].reason, entries["c/a"].reason
    assert entries["d/ok"].reason == ""


def test_a_file_named_only_by_its_extension_is_listed_with_a_reason(roots) -> None:
    images_root, masks_root = roots
    _touch(images_root / "c" / ".png")
    _touch(masks_root / "c" / ".npy")
    _touch(images_root / "c" / ".PNG.jpg")  # stem ".PNG": an ordinary hidden-file name
    _touch(masks_root / "c" / ".PNG.npy")
    entries = _by_id(scan_dataset(images_root, masks_root))
    assert set(entries) == {"c/", "c/.PNG"}
    assert (
        entries["c/"].reason.startswith("stem name is empty") and "rename" in entries["c/"].reason
    )
    assert entries["c/.PNG"].reason == ""
