"""Stage 4.5: HDF5 packing round trip, empty splits, errors, streaming memory."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import yaml

from laplace_head.cache.index import read_index, write_training_index
from laplace_head.cache.packing import (
    DEFAULT_CHUNK_ROWS,
    DEFAULT_COMPRESSION,
    PackingError,
    compression_kwargs,
    pack_split,
)
from laplace_head.cache.split_h5 import read_h5_index
from laplace_head.cli import main as cli_main
from laplace_head.dataset.images import load_mask, resize_mask_nearest
from laplace_head.layout import ProjectLayout
from laplace_head.util.atomic import file_md5

REPO = Path(__file__).resolve().parents[2]
ARRAYS = ("logits_256", "pos_map", "neg_map")


def make_indexed_split(
    root: Path, n_samples: int, promptsets: int = 2, split: str = "train", seed: int = 0
) -> Path:
    """Fake stage-1..3 outputs (masks of odd sizes, float16 npy, meta.json) + the stage-4 index."""
    rng = np.random.default_rng(seed)
    records = []
    precompute = root / "sam_precompute" / split
    for number in range(n_samples):
        stem = f"s{number:03d}"
        height, width = 20 + number % 7, 33 + number % 5
        mask_path = root / "masks" / "dog" / f"{stem}.npy"
        mask_path.parent.mkdir(parents=True, exist_ok=True)
        np.save(mask_path, (rng.random((height, width)) > 0.6).astype(np.uint8) * 255)
        records.append(
            {
                "sample_id": f"dog/{stem}",
                "safe_id": f"dog__{stem}",
                "class": "dog",
                "image_path": str(root / "images" / "dog" / f"{stem}.png"),
                "mask_path": str(mask_path),
                "image_h": height,
                "image_w": width,
                "split": split,
            }
        )
        for promptset_id in range(promptsets):
            folder = precompute / f"dog__{stem}" / f"promptset_{promptset_id:04d}"
            folder.mkdir(parents=True)
            logits = rng.normal(0, 30, (256, 256)).astype(np.float16)  # beyond any clip
            logits[0, 0] = np.float16(np.inf) if number == 0 else logits[0, 0]
            np.save(folder / "logits_256.npy", logits)
            np.save(folder / "pos_map.npy", rng.random((256, 256)).astype(np.float16))
            np.save(folder / "neg_map.npy", rng.random((256, 256)).astype(np.float16))
            meta = {
                "k": 1 + promptset_id,
                "branch_index": 2,
                "scores": [0.1, 0.2, 0.3],
                "score": 0.3,
            }
            (folder / "meta.json").write_text(json.dumps(meta))
    split_csv = root / "manifests" / f"{split}.csv"
    split_csv.parent.mkdir(parents=True, exist_ok=True)
    columns = ["sample_id", "safe_id", "class", "image_path", "mask_path", "image_h", "image_w"]
    pd.DataFrame(records, columns=[*columns, "split"]).to_csv(split_csv, index=False)
    layout = ProjectLayout(root)
    index_csv = layout.training_index(split)
    write_training_index(
        split, split_csv, precompute, [], index_csv, layout.training_failures(split)
    )
    return index_csv


@pytest.mark.parametrize(
    ("chunk_rows", "compression"),
    [
        (DEFAULT_CHUNK_ROWS, DEFAULT_COMPRESSION),
        (1, "none"),
        (4, "lzf"),
        (3, "gzip-1"),
        (16, "none"),
    ],
)
def test_round_trip_equals_npy_files_exactly(tmp_path, chunk_rows, compression):
    index_csv = make_indexed_split(tmp_path, n_samples=5, promptsets=2)  # 10 rows
    out = tmp_path / "train.h5"
    report = pack_split(index_csv, out, chunk_rows=chunk_rows, compression=compression)
    index = read_index(index_csv)
    assert report["n_rows"] == len(index) == 10
    with h5py.File(out, "r") as handle:
        assert dict(handle.attrs.items()).keys() >= {
            "format_version",
            "split",
            "n_rows",
            "source_index_md5",
            "chunks",
            "compression",
        }
        assert handle.attrs["format_version"] == 1 and handle.attrs["split"] == "train"
        assert handle.attrs["n_rows"] == 10
        assert handle.attrs["source_index_md5"] == file_md5(index_csv)
        chunks = None if chunk_rows is None else (chunk_rows, 256, 256)
        assert (
            (handle.attrs["chunks"] == "contiguous")
            if chunks is None
            else (tuple(handle.attrs["chunks"]) == chunks)
        )
        assert handle.attrs["compression"] == compression
        for name in (*ARRAYS, "gt_mask_256"):
            assert handle[name].chunks == chunks
        for position, row in index.iterrows():
            for name in ARRAYS:
                stored = handle[name][position]
                source = np.load(row[f"{name}_path"])
                assert stored.dtype == np.float16
                assert stored.tobytes() == source.tobytes()  # bit-exact, inf and all
            gt = handle["gt_mask_256"][position]
            expected = resize_mask_nearest(load_mask(row["mask_path"]), 256, 256)
            assert gt.dtype == np.uint8 and set(np.unique(gt)) <= {0, 1}
            np.testing.assert_array_equal(gt, expected.astype(np.uint8))
        assert np.isinf(handle["logits_256"][0, 0, 0])  # not clipped on disk
    pd.testing.assert_frame_equal(read_h5_index(out), index)


def test_gt_is_nearest_resize_of_the_mask_from_its_own_size(tmp_path):
    index_csv = make_indexed_split(tmp_path, n_samples=1, promptsets=1)
    mask_path = read_index(index_csv).mask_path[0]
    mask = np.zeros((2, 4), np.uint8)
    mask[0, 1] = mask[1, 3] = 1
    np.save(mask_path, mask)
    pack_split(index_csv, tmp_path / "train.h5")
    with h5py.File(tmp_path / "train.h5", "r") as handle:
        gt = handle["gt_mask_256"][0]
    expected = np.zeros((256, 256), np.uint8)
    expected[:128, 64:128] = 1
    expected[128:, 192:] = 1
    np.testing.assert_array_equal(gt, expected)


def test_empty_split(tmp_path):
    index_csv = make_indexed_split(tmp_path, n_samples=0, split="test")
    out = tmp_path / "test.h5"
    with pytest.raises(PackingError, match="pass the split"):  # no row names it
        pack_split(index_csv, out)
    report = pack_split(index_csv, out, split="test")
    assert report["n_rows"] == 0 and report["split"] == "test"
    with h5py.File(out, "r") as handle:
        assert handle["logits_256"].shape == (0, 256, 256)
        assert handle["gt_mask_256"].dtype == np.uint8
        assert handle.attrs["n_rows"] == 0 and handle.attrs["split"] == "test"
    frame = read_h5_index(out)
    assert frame.empty and list(frame.columns) == list(read_index(index_csv).columns)


def test_missing_array_fails_cleanly_without_leaving_files(tmp_path):
    index_csv = make_indexed_split(tmp_path, n_samples=2, promptsets=1)
    missing = read_index(index_csv).pos_map_path[1]
    Path(missing).unlink()
    out = tmp_path / "out" / "train.h5"
    with pytest.raises(PackingError, match="pos_map.npy"):
        pack_split(index_csv, out)
    assert list(out.parent.iterdir()) == []


def test_wrong_shape_array_and_bad_options_are_rejected(tmp_path):
    index_csv = make_indexed_split(tmp_path, n_samples=1, promptsets=1)
    np.save(read_index(index_csv).neg_map_path[0], np.zeros((256, 256), np.float32))
    with pytest.raises(PackingError, match="float16"):
        pack_split(index_csv, tmp_path / "a.h5")
    with pytest.raises(ValueError, match="none, lzf, gzip-1"):
        pack_split(index_csv, tmp_path / "a.h5", compression="zstd")
    with pytest.raises(ValueError, match="chunk_rows"):
        pack_split(index_csv, tmp_path / "a.h5", chunk_rows=0)
    with pytest.raises(ValueError, match="needs chunking"):
        pack_split(index_csv, tmp_path / "a.h5", chunk_rows=None, compression="lzf")
    assert compression_kwargs("gzip-4") == {
        "compression": "gzip",
        "compression_opts": 4,
        "shuffle": True,
    }


@pytest.mark.parametrize(("chunk_rows", "expected"), [(3, [3, 3, 1]), (None, [1] * 7)])
def test_writer_never_writes_more_than_one_chunk_at_a_time(
    tmp_path, monkeypatch, chunk_rows, expected
):
    index_csv = make_indexed_split(tmp_path, n_samples=7, promptsets=1)
    written: list[int] = []
    original = h5py.Dataset.__setitem__

    def spy(self, key, value):
        if self.ndim == 3:
            written.append(np.asarray(value).shape[0])
        return original(self, key, value)

    monkeypatch.setattr(h5py.Dataset, "__setitem__", spy)
    pack_split(index_csv, tmp_path / "train.h5", chunk_rows=chunk_rows, progress=False)
    assert written == [rows for rows in expected for _ in range(4)]  # 4 datasets per block


def _peak_bytes(index_csv: Path, out: Path) -> int:
    tracemalloc.start()
    try:
        pack_split(index_csv, out, progress=False)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_peak_memory_does_not_grow_with_n(tmp_path):
    small = make_indexed_split(tmp_path / "small", n_samples=10, promptsets=2)  # 20 rows
    large = make_indexed_split(tmp_path / "large", n_samples=30, promptsets=2)  # 60 rows
    _peak_bytes(small, tmp_path / "warm.h5")  # first-call imports and caches
    peak_small = _peak_bytes(small, tmp_path / "small.h5")
    peak_large = _peak_bytes(large, tmp_path / "large.h5")
    row_bytes = 256 * 256 * 7
    # Holding all rows would add 40 rows (~17.5 MiB); allow a few rows of slack.
    assert peak_large - peak_small < 3 * row_bytes, (peak_small, peak_large)
    assert peak_large < 10 * row_bytes


def test_standalone_script(tmp_path, monkeypatch):
    project = tmp_path / "project"
    make_indexed_split(project, n_samples=2, promptsets=1, split="val")
    config = tmp_path / "config.yaml"
    # the split records its segmenter's fingerprint: a backend whose settings exist here
    walker = {"backend": "random_walker"}
    config.write_text(yaml.safe_dump({"data": {"project_root": str(project)}, "sam": walker}))
    argv = ["pack-hdf5", "--config", str(config), "--split", "val", "--chunk-rows", "1"]
    cli_main([*argv, "--compression", "lzf"])
    with h5py.File(project / "training_data" / "no_image" / "val.h5", "r") as handle:
        assert handle.attrs["compression"] == "lzf" and handle.attrs["n_rows"] == 2
        assert tuple(handle.attrs["chunks"]) == (1, 256, 256)


def test_storage_settings_come_from_the_config_and_flags_override_them(tmp_path):
    project = tmp_path / "project"
    make_indexed_split(project, n_samples=2, promptsets=1, split="val")
    config = tmp_path / "config.yaml"
    data = {"project_root": str(project), "h5_chunk_rows": 2, "h5_compression": "gzip-4"}
    config.write_text(yaml.safe_dump({"data": data, "sam": {"backend": "random_walker"}}))
    h5 = ProjectLayout(project).split_h5("val")
    cli_main(["pack-hdf5", "--config", str(config), "--split", "val"])
    with h5py.File(h5, "r") as handle:
        assert handle.attrs["compression"] == "gzip-4"
        assert tuple(handle.attrs["chunks"]) == (2, 256, 256)
    cli_main(["pack-hdf5", "--config", str(config), "--split", "val", "--compression", "lzf"])
    with h5py.File(h5, "r") as handle:
        assert handle.attrs["compression"] == "lzf"
        assert tuple(handle.attrs["chunks"]) == (2, 256, 256)


def test_a_bad_compression_flag_is_a_config_error_naming_the_key(tmp_path, capsys):
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"data": {"project_root": str(tmp_path)}}))
    with pytest.raises(SystemExit):
        cli_main(["pack-hdf5", "--config", str(config), "--compression", "zstd"])
    assert "data.h5_compression" in capsys.readouterr().err


@pytest.mark.parametrize("compression", ["lzf\n", "none\n", "gzip-1\n", " lzf", "gzip-10"])
def test_compression_name_must_match_as_a_whole(compression):
    with pytest.raises(ValueError, match="none, lzf, gzip-1"):
        compression_kwargs(compression)
