"""HDF5 dataset: layout, clipping, in-RAM mode, batched reads, workers, batch order."""

import pickle

import h5py
import numpy as np
import pytest
import torch
from helpers.synthetic_h5 import INDEX_COLUMNS, make_synthetic_h5

from laplace_head.cache.split_h5 import DataFileError, read_h5_index
from laplace_head.training.dataset import (
    EpochBatchSampler,
    H5SegmentationDataset,
    make_loader,
    should_load_in_memory,
)


@pytest.fixture(scope="module")
def split_h5(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "train.h5"
    make_synthetic_h5(path, n_rows=6, seed=3)
    with h5py.File(path, "r+") as handle:  # logits far outside the clip range
        handle["logits_256"][0, 0, 0] = 60000.0
        handle["logits_256"][0, 0, 1] = -60000.0
    return path


def test_item_layout_dtype_and_clipping(split_h5):
    dataset = H5SegmentationDataset(split_h5, logit_clip=20.0, in_memory="never")
    inputs, target = dataset[0]
    assert inputs.shape == (3, 256, 256) and inputs.dtype == torch.float32
    assert target.shape == (1, 256, 256) and target.dtype == torch.float32
    assert inputs[0, 0, 0].item() == 20.0 and inputs[0, 0, 1].item() == -20.0
    assert inputs[0].abs().max().item() <= 20.0
    with h5py.File(split_h5, "r") as handle:
        np.testing.assert_array_equal(inputs[1].numpy(), handle["pos_map"][0].astype(np.float32))
        np.testing.assert_array_equal(target[0].numpy(), handle["gt_mask_256"][0])
    assert set(torch.unique(target).tolist()) <= {0.0, 1.0}
    odd_clip = H5SegmentationDataset(split_h5, logit_clip=7.3, in_memory="never")[0][0]
    assert odd_clip[0].max().item() == pytest.approx(7.3, abs=1e-6)  # not rounded to float16


def test_in_memory_and_lazy_reads_agree_for_unsorted_repeated_rows(split_h5):
    lazy = H5SegmentationDataset(split_h5, 20.0, in_memory="never")
    ram = H5SegmentationDataset(split_h5, 20.0, in_memory="always")
    assert not lazy.in_memory and ram.in_memory
    rows = [4, 1, 4, 0]
    for got, expected in zip(lazy.get_batch(rows), ram.get_batch(rows)):
        assert torch.equal(got, expected)
    assert torch.equal(lazy.get_batch(rows)[0][1], lazy[1][0])
    with pytest.raises(IndexError):
        lazy.get_batch([6])


def test_auto_in_memory_depends_on_footprint():
    assert should_load_in_memory("auto", 1024)
    assert not should_load_in_memory("auto", 1 << 62)
    assert should_load_in_memory("always", 1 << 62)
    assert not should_load_in_memory("never", 1)
    with pytest.raises(ValueError, match="auto, always, never"):
        should_load_in_memory("sometimes", 1)


def test_pickling_drops_the_open_handle(split_h5):
    dataset = H5SegmentationDataset(split_h5, 20.0, in_memory="never")
    dataset[0]
    clone = pickle.loads(pickle.dumps(dataset))
    assert clone._handle is None
    assert torch.equal(clone[2][0], dataset[2][0])


def test_loader_with_workers_matches_main_process(split_h5):
    dataset = H5SegmentationDataset(split_h5, 20.0, in_memory="never")
    batches = {}
    for workers in (0, 2):
        loader, sampler = make_loader(dataset, 4, shuffle=True, seed=1, num_workers=workers)
        sampler.set_epoch(3)
        batches[workers] = list(loader)
    assert [b[0].shape[0] for b in batches[0]] == [4, 2]
    for (inputs0, target0), (inputs2, target2) in zip(batches[0], batches[2]):
        assert torch.equal(inputs0, inputs2) and torch.equal(target0, target2)


def test_batch_order_depends_only_on_seed_and_epoch():
    sampler = EpochBatchSampler(10, 4, shuffle=True, seed=7)
    sampler.set_epoch(2)
    first = list(sampler)
    other = EpochBatchSampler(10, 4, shuffle=True, seed=7)
    other.set_epoch(2)
    assert list(other) == first and len(sampler) == 3
    assert sorted(sum(first, [])) == list(range(10))
    sampler.set_epoch(3)
    assert list(sampler) != first
    assert list(EpochBatchSampler(5, 2, shuffle=False)) == [[0, 1], [2, 3], [4]]


def test_empty_split_and_index(tmp_path):
    path = make_synthetic_h5(tmp_path / "val.h5", n_rows=0, split="val")
    assert len(H5SegmentationDataset(path, 20.0)) == 0
    index = read_h5_index(path)
    assert len(index) == 0 and set(index.columns) == set(INDEX_COLUMNS)


def test_index_strings_are_decoded(split_h5):
    index = read_h5_index(split_h5)
    assert index["sample_id"].iloc[0] == "synth/img0000"
    assert index["promptset_id"].tolist() == [0, 1, 0, 1, 0, 1]


def test_missing_or_foreign_file_is_a_clear_error(tmp_path):
    with pytest.raises(DataFileError, match="does not exist"):
        H5SegmentationDataset(tmp_path / "nope.h5")
    (tmp_path / "junk.h5").write_text("not hdf5")
    with pytest.raises(DataFileError, match="cannot read"):
        H5SegmentationDataset(tmp_path / "junk.h5")
    with h5py.File(tmp_path / "partial.h5", "w") as handle:
        handle.create_dataset("logits_256", data=np.zeros((1, 256, 256), np.float16))
    with pytest.raises(DataFileError, match="gt_mask_256"):
        H5SegmentationDataset(tmp_path / "partial.h5")


def test_training_and_streaming_assemble_the_same_finite_inputs(tmp_path):
    """Training (the Dataset) and stages 6-7 (iter_split_batches) build the head's input the same
    way: NaN logits become 0 and +-inf the clip, in both paths (one assembly, cache.split_h5)."""
    from laplace_head.cache.split_h5 import iter_split_batches

    path = make_synthetic_h5(tmp_path / "nan.h5", n_rows=2, seed=4, size=32)
    with h5py.File(path, "r+") as handle:
        handle["logits_256"][0, 0, :3] = [np.nan, np.inf, -np.inf]
    for in_memory in ("never", "always"):
        inputs, _ = H5SegmentationDataset(path, logit_clip=7.0, in_memory=in_memory).get_batch(
            [0, 1]
        )
        assert torch.isfinite(inputs).all()
        assert inputs[0, 0, 0, :3].tolist() == [0.0, 7.0, -7.0]
        (streamed,) = list(iter_split_batches(path, batch_rows=2, logit_clip=7.0))
        assert torch.equal(inputs, streamed.inputs)
