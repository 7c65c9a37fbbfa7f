"""The segmenter fingerprint: what made the head's inputs, recorded from stage 4.5 to stage 6 and
checked when a predictor pairs a posterior with a base segmenter."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import h5py
import pandas as pd
import pytest
from helpers.laplace_fixtures import (
    PRIOR_GRID,
    TEMPERATURE_GRID,
    laplace_settings,
    save_best,
    train_tiny_head,
)
from helpers.synthetic_h5 import make_synthetic_h5

from laplace_head.bayes.fit import LaplaceFitError, fit_laplace
from laplace_head.bayes.posterior import load_posterior
from laplace_head.cache.index import INDEX_COLUMNS
from laplace_head.cache.packing import pack_split
from laplace_head.cache.split_h5 import read_segmenter_fingerprint, write_segmenter_fingerprint
from laplace_head.config.loader import validate_config
from laplace_head.errors import LaplaceHeadError
from laplace_head.interactive.predictor import InteractivePredictor
from laplace_head.layout import ProjectLayout
from laplace_head.settings import (
    SEGMENTER_KEYS,
    SegmenterMismatchError,
    SegmenterMismatchWarning,
    segmenter_fingerprint,
    segmenter_fingerprint_differences,
    stage_params,
)

WALKER = {"backend": "random_walker", "random_walker_max_side": 160, "random_walker_beta": 2000}
SIGMA = 8.0


def _config(**sam) -> dict:
    return validate_config({"sam": {"backend": "random_walker", **sam}}, check_paths=False)


def _pack_settings(config: dict) -> dict:
    return stage_params(config)["pack_hdf5"]


def _fingerprint(config: dict) -> dict:
    settings = _pack_settings(config)
    return segmenter_fingerprint(settings["segmenter"], settings["prompt_sigma"])


# --- the fingerprint ---------------------------------------------------------------------------


def test_random_walker_fingerprint_is_stable_json_able_and_holds_the_segmenter_keys() -> None:
    fingerprint = segmenter_fingerprint(WALKER, SIGMA)
    assert fingerprint == segmenter_fingerprint(dict(reversed(WALKER.items())), SIGMA)
    assert json.loads(json.dumps(fingerprint)) == fingerprint
    assert set(fingerprint) == {*SEGMENTER_KEYS["random_walker"], "prompt_sigma"}
    assert fingerprint["prompt_sigma"] == SIGMA
    # the stage settings of a resolved config give the same fingerprint (schema defaults)
    assert _fingerprint(_config()) == fingerprint
    # keys another backend uses are not part of it
    assert segmenter_fingerprint({**WALKER, "checkpoint": "x.pth", "device": "cuda"}, SIGMA) == (
        fingerprint
    )


@pytest.mark.parametrize(
    ("key", "value"),
    [("random_walker_max_side", 32), ("random_walker_beta", 500.0), ("prompt_sigma", 6.0)],
)
def test_each_key_changes_the_fingerprint_and_is_named(key: str, value: float) -> None:
    base = segmenter_fingerprint(WALKER, SIGMA)
    if key == "prompt_sigma":
        other = segmenter_fingerprint(WALKER, value)
    else:
        other = segmenter_fingerprint({**WALKER, key: value}, SIGMA)
    assert other != base
    assert segmenter_fingerprint_differences(base, other) == {key: (base[key], value)}


def test_missing_segmenter_key_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="random_walker_beta"):
        segmenter_fingerprint({"backend": "random_walker", "random_walker_max_side": 160}, SIGMA)
    with pytest.raises(ValueError, match="medsam"):
        segmenter_fingerprint({"backend": "medsam"}, SIGMA)


def _checkpoint(path: Path, size: int, fill: int = 7) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes([fill]) * size)
    return path


def test_sam_fingerprint_identifies_the_checkpoint_file_not_its_path(tmp_path: Path) -> None:
    size = 3 << 20  # first, middle and last MiB
    checkpoint = _checkpoint(tmp_path / "a" / "sam.pth", size)
    sam = {"backend": "sam", "checkpoint": str(checkpoint), "model_type": "vit_b"}
    fingerprint = segmenter_fingerprint(sam, SIGMA)
    assert fingerprint["backend"] == "sam" and fingerprint["model_type"] == "vit_b"
    assert fingerprint["checkpoint_bytes"] == size and "checkpoint" not in fingerprint
    assert json.loads(json.dumps(fingerprint)) == fingerprint
    (tmp_path / "b").mkdir()
    moved = shutil.copy(checkpoint, tmp_path / "b" / "renamed.pth")
    assert segmenter_fingerprint({**sam, "checkpoint": moved}, SIGMA) == fingerprint
    assert segmenter_fingerprint({**sam, "model_type": "vit_h"}, SIGMA) != fingerprint
    # another file: a byte changed in its first or last MiB, or another size
    for offset in (10, size - 10):
        data = bytearray(checkpoint.read_bytes())
        data[offset] ^= 1
        other = tmp_path / f"edited_{offset}.pth"
        other.write_bytes(bytes(data))
        changed = segmenter_fingerprint({**sam, "checkpoint": str(other)}, SIGMA)
        assert set(segmenter_fingerprint_differences(fingerprint, changed)) == {
            "checkpoint_head_tail_md5"
        }
    longer = _checkpoint(tmp_path / "longer.pth", size + 1)
    changed = segmenter_fingerprint({**sam, "checkpoint": str(longer)}, SIGMA)
    assert "checkpoint_bytes" in segmenter_fingerprint_differences(fingerprint, changed)
    with pytest.raises(LaplaceHeadError, match=r"missing\.pth.*sam\.checkpoint"):
        segmenter_fingerprint({**sam, "checkpoint": str(tmp_path / "missing.pth")}, SIGMA)


# --- recorded in the split HDF5 and the posterior meta -----------------------------------------


def _empty_index(tmp_path: Path, split: str = "val") -> Path:
    index_csv = tmp_path / f"{split}_index.csv"
    pd.DataFrame(columns=INDEX_COLUMNS).to_csv(index_csv, index=False)
    return index_csv


def test_pack_split_records_the_fingerprint_in_the_hdf5(tmp_path: Path) -> None:
    fingerprint = segmenter_fingerprint(WALKER, SIGMA)
    out = tmp_path / "val.h5"
    pack_split(_empty_index(tmp_path), out, split="val", segmenter_fingerprint=fingerprint)
    with h5py.File(out, "r") as handle:
        assert read_segmenter_fingerprint(handle) == fingerprint
    pack_split(_empty_index(tmp_path), out, split="val")
    with h5py.File(out, "r") as handle:
        assert read_segmenter_fingerprint(handle) is None


def test_stage_pack_hdf5_records_the_fingerprint_of_its_settings(tmp_path: Path) -> None:
    from laplace_head import stages

    config = _config(random_walker_max_side=48)
    layout = ProjectLayout(tmp_path / "project")
    layout.training_index("val").parent.mkdir(parents=True)
    shutil.copy(_empty_index(tmp_path), layout.training_index("val"))
    stages.pack_hdf5(layout, "val", _pack_settings(config), _runtime(config))
    with h5py.File(layout.split_h5("val"), "r") as handle:
        assert read_segmenter_fingerprint(handle) == _fingerprint(config)


def _runtime(config: dict):
    from laplace_head.settings import Runtime

    return Runtime.from_config(config)


def _fitted_run(root: Path, train_fp: dict | None, val_fp: dict | None) -> ProjectLayout:
    """best.pt on two synthetic splits stamped with these fingerprints (None: none)."""
    layout = ProjectLayout(root, "t1")
    layout.training_data_dir.mkdir(parents=True, exist_ok=True)
    for split, rows, seed, fingerprint in (("train", 4, 0, train_fp), ("val", 2, 1, val_fp)):
        make_synthetic_h5(layout.split_h5(split), rows, seed=seed, size=32, split=split)
        if fingerprint is not None:
            with h5py.File(layout.split_h5(split), "a") as handle:
                write_segmenter_fingerprint(handle, fingerprint)
    save_best(train_tiny_head(layout.split_h5("train"), steps=5), layout.best_checkpoint)
    return layout


def _fit(layout: ProjectLayout, force: bool = False) -> dict:
    return fit_laplace(
        layout.best_checkpoint,
        layout.split_h5("train"),
        layout.split_h5("val"),
        layout.laplace_dir,
        laplace_settings(PRIOR_GRID, TEMPERATURE_GRID, max_pixels_fit=500),
        force=force,
        run_id="t1",
    )


@pytest.fixture(scope="module")
def default_fit(tmp_path_factory) -> ProjectLayout:
    """A posterior fitted on splits packed with the default random_walker settings."""
    fingerprint = _fingerprint(_config())
    layout = _fitted_run(tmp_path_factory.mktemp("fp"), fingerprint, fingerprint)
    _fit(layout)
    return layout


def test_the_fit_copies_the_fingerprint_into_the_posterior_meta(default_fit) -> None:
    meta = json.loads(default_fit.laplace_file("meta").read_text())
    assert meta["segmenter_fingerprint"] == _fingerprint(_config())
    assert load_posterior(default_fit.laplace_dir).meta["segmenter_fingerprint"] == (
        _fingerprint(_config())
    )


def test_a_new_fingerprint_refits_and_splits_that_disagree_are_refused(tmp_path: Path) -> None:
    walker, other = _fingerprint(_config()), _fingerprint(_config(random_walker_max_side=32))
    layout = _fitted_run(tmp_path, walker, walker)
    state = layout.laplace_file("state")
    _fit(layout)
    before = state.stat().st_mtime_ns
    _fit(layout)
    assert state.stat().st_mtime_ns == before  # same inputs: reused
    for split in ("train", "val"):
        with h5py.File(layout.split_h5(split), "a") as handle:
            write_segmenter_fingerprint(handle, other)
    assert _fit(layout)["segmenter_fingerprint"] == other  # refitted, not reused
    with h5py.File(layout.split_h5("val"), "a") as handle:
        write_segmenter_fingerprint(handle, walker)
    with pytest.raises(LaplaceFitError, match=r"random_walker_max_side.*32.*160"):
        _fit(layout, force=True)


# --- the predictor's check ---------------------------------------------------------------------


def test_from_config_refuses_another_segmenter_naming_each_key(default_fit) -> None:
    config = _config(random_walker_max_side=32)
    with pytest.raises(SegmenterMismatchError) as error:
        InteractivePredictor.from_config(config, default_fit.laplace_dir, device="cpu")
    message = str(error.value)
    assert "random_walker_max_side" in message and "160" in message and "32" in message
    assert "allow_segmenter_mismatch=True" in message and "prompt_sigma" not in message
    sigma = validate_config(
        {"sam": {"backend": "random_walker"}, "prompt_generation": {"gaussian_sigma": 5.0}},
        check_paths=False,
    )
    entry = r"prompt_sigma \(prompt_generation\.gaussian_sigma\): recorded 8\.0, given 5\.0"
    with pytest.raises(SegmenterMismatchError, match=entry):
        InteractivePredictor.from_config(sigma, default_fit.laplace_dir, device="cpu")


def test_allow_segmenter_mismatch_warns_and_proceeds(default_fit) -> None:
    config = _config(random_walker_max_side=32)
    with pytest.warns(SegmenterMismatchWarning, match="random_walker_max_side"):
        predictor = InteractivePredictor.from_config(
            config, default_fit.laplace_dir, device="cpu", allow_segmenter_mismatch=True
        )
    assert predictor.segmenter.max_side == 32


def test_the_training_runs_own_settings_pass_silently(default_fit) -> None:
    settings = {**stage_params(_config())["active_prompting"]}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        predictor = InteractivePredictor.from_settings(settings, default_fit.laplace_dir)
    assert predictor.segmenter.max_side == 160


def test_a_posterior_without_a_fingerprint_warns_and_proceeds(tmp_path: Path) -> None:
    layout = _fitted_run(tmp_path, None, None)
    assert _fit(layout)["segmenter_fingerprint"] is None
    with pytest.warns(SegmenterMismatchWarning, match="records no segmenter fingerprint"):
        predictor = InteractivePredictor.from_config(
            _config(random_walker_max_side=32), layout.laplace_dir, device="cpu"
        )
    assert predictor.segmenter.max_side == 32
