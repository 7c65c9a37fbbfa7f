"""Stage 4.5: HDF5 packing round trip, empty splits, errors, streaming memory."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path
from types import SimpleNamespace

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image

from laplace_head.cache.index import read_index, write_training_index
from laplace_head.cache.packing import (
    DEFAULT_CHUNK_ROWS,
    DEFAULT_COMPRESSION,
    PackingError,
    compression_kwargs,
    pack_image_split,
    pack_split,
)
from laplace_head.cache.split_h5 import (
    IMAGE_ARRAY,
    IMAGE_MEAN,
    IMAGE_ROW,
    IMAGE_SAMPLE_ID,
    IMAGE_STD,
    DataFileError,
    iter_split_batches,
    open_split,
    read_h5_index,
    require_head,
)
from laplace_head.cli import main as cli_main
from laplace_head.dataset.images import load_mask, resize_image_grid, resize_mask_nearest
from laplace_head.layout import ProjectLayout
from laplace_head.model.head_variant import HeadVariant
from laplace_head.training.dataset import H5SegmentationDataset
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


# --- an image head's split -----------------------------------------------------------------


def _write_images(index_csv: Path, seed: int = 0) -> dict[str, np.ndarray]:
    """A random RGB image at each sample's image_path (its index size); by sample id."""
    rng = np.random.default_rng(seed)
    images = {}
    for row in read_index(index_csv).drop_duplicates("sample_id").itertuples():
        image = rng.integers(0, 256, (row.image_h, row.image_w, 3), dtype=np.uint8)
        Path(row.image_path).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(row.image_path)
        images[row.sample_id] = image
    return images


@pytest.fixture
def image_split(tmp_path: Path) -> SimpleNamespace:
    """A packed seed split of 3 samples x 2 prompt sets and the image head's split on it."""
    index_csv = make_indexed_split(tmp_path, n_samples=3, promptsets=2)
    images = _write_images(index_csv)
    layout = ProjectLayout(tmp_path)
    base_h5 = layout.split_h5("train")
    pack_split(index_csv, base_h5, progress=False)
    image_h5 = layout.for_head("image").split_h5("train")
    report = pack_image_split(index_csv, base_h5, image_h5, progress=False)
    return SimpleNamespace(
        index_csv=index_csv, images=images, base_h5=base_h5, image_h5=image_h5, report=report
    )


def test_the_image_is_stored_once_per_sample_and_every_row_points_to_its_own(image_split):
    index = read_index(image_split.index_csv)
    assert image_split.image_h5 == image_split.base_h5.parents[1] / "image" / "train.h5"
    assert image_split.report["n_rows"] == 6 and image_split.report["n_images"] == 3
    with h5py.File(image_split.image_h5, "r") as handle:
        assert handle[IMAGE_ARRAY].shape == (3, 3, 256, 256)
        assert handle[IMAGE_ARRAY].dtype == np.uint8
        slots = handle[IMAGE_ROW][()]
        sample_ids = list(handle[IMAGE_SAMPLE_ID].asstr()[()])
        stored = handle[IMAGE_ARRAY][()]
    assert slots.tolist() == [0, 0, 1, 1, 2, 2]
    for row, sample_id in enumerate(index["sample_id"]):
        assert sample_ids[slots[row]] == sample_id
        expected = resize_image_grid(image_split.images[sample_id], 256)
        np.testing.assert_array_equal(stored[slots[row]], expected)


def test_an_image_split_links_the_logits_instead_of_copying_them(image_split):
    with h5py.File(image_split.image_h5, "r") as handle:
        for name in ("logits_256", "pos_map", "neg_map", "gt_mask_256", "index"):
            link = handle.get(name, getlink=True)
            assert isinstance(link, h5py.ExternalLink), name
            assert link.filename == "../no_image/train.h5"
    with h5py.File(image_split.base_h5, "r") as base, open_split(image_split.image_h5) as image:
        np.testing.assert_array_equal(image["logits_256"][()], base["logits_256"][()])
    # the images are the only arrays in the file: far smaller than one more logits copy
    logits_bytes = 6 * 256 * 256 * 2
    images_bytes = 3 * 3 * 256 * 256
    assert image_split.image_h5.stat().st_size < images_bytes + logits_bytes / 2
    pd.testing.assert_frame_equal(
        read_h5_index(image_split.image_h5), read_h5_index(image_split.base_h5)
    )


@pytest.mark.parametrize("in_memory", ["never", "always"])
def test_reading_a_row_of_an_image_split_returns_its_sample_image(image_split, in_memory):
    index = read_index(image_split.index_csv)
    dataset = H5SegmentationDataset(image_split.image_h5, logit_clip=5.0, in_memory=in_memory)
    base = H5SegmentationDataset(image_split.base_h5, logit_clip=5.0, in_memory=in_memory)
    rows = [5, 0, 3, 3]
    inputs, target = dataset.get_batch(rows)
    base_inputs, base_target = base.get_batch(rows)
    assert inputs.shape == (4, 6, 256, 256) and base_inputs.shape == (4, 3, 256, 256)
    torch.testing.assert_close(inputs[:, :3], base_inputs, rtol=0, atol=0)
    torch.testing.assert_close(target, base_target, rtol=0, atol=0)
    mean = torch.tensor(IMAGE_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGE_STD).view(3, 1, 1)
    for position, row in enumerate(rows):
        image = resize_image_grid(image_split.images[index["sample_id"][row]], 256)
        expected = (torch.from_numpy(image).float() / 255.0 - mean) / std
        torch.testing.assert_close(inputs[position, 3:], expected, rtol=0, atol=1e-5)
    batches = list(iter_split_batches(image_split.image_h5, 4, logit_clip=5.0))
    streamed = torch.cat([batch.inputs for batch in batches])
    torch.testing.assert_close(streamed[rows], inputs, rtol=0, atol=0)


def test_an_image_split_whose_base_was_repacked_or_removed_is_refused(image_split):
    # repacked from another index (one prompt set fewer): the links now point at other rows
    index = read_index(image_split.index_csv)
    index.iloc[:-1].to_csv(image_split.index_csv, index=False)
    pack_split(image_split.index_csv, image_split.base_h5, progress=False)
    with pytest.raises(DataFileError, match="repacked since"):
        open_split(image_split.image_h5)
    image_split.base_h5.unlink()
    with pytest.raises(DataFileError, match="cannot be opened"):
        open_split(image_split.image_h5)


def test_packing_images_against_a_base_of_another_index_or_a_changed_image_fails(image_split):
    other = image_split.index_csv.with_name("other_index.csv")
    read_index(image_split.index_csv).iloc[:-2].to_csv(other, index=False)
    with pytest.raises(PackingError, match="another index"):
        pack_image_split(other, image_split.base_h5, image_split.image_h5, progress=False)
    first = read_index(image_split.index_csv).iloc[0]
    Image.fromarray(np.zeros((7, 9, 3), np.uint8)).save(first["image_path"])
    with pytest.raises(PackingError, match="7x9 pixels"):
        pack_image_split(
            image_split.index_csv, image_split.base_h5, image_split.image_h5, progress=False
        )
    with pytest.raises(ValueError, match="reads no image"):
        pack_image_split(
            image_split.index_csv,
            image_split.base_h5,
            image_split.image_h5,
            head="no_image",
            progress=False,
        )


def test_a_head_refuses_another_heads_split(image_split):
    assert require_head(image_split.image_h5, 6, "the image head") is HeadVariant.IMAGE
    with pytest.raises(DataFileError, match="holds the no_image head's inputs"):
        require_head(image_split.base_h5, 6, "the image head")
    with pytest.raises(DataFileError, match="holds the image head's inputs"):
        require_head(image_split.image_h5, 3, "the no_image head")
