"""Sanity panels from a packed split or from its index CSV."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from laplace_head.cache.index import write_training_index
from laplace_head.cache.packing import pack_split
from laplace_head.cli import main as cli_main
from laplace_head.evaluation.sanity_panels import (
    choose_rows,
    panel_name,
    prompt_points,
    write_sanity_panels,
)
from laplace_head.layout import ProjectLayout
from laplace_head.util.atomic import read_json

REPO = Path(__file__).resolve().parents[2]


def make_packed_split(root: Path, n_samples: int, promptsets: int, split: str = "train") -> Path:
    """Images, masks, stage-3 folders (meta with points), index and HDF5; returns the HDF5."""
    rng = np.random.default_rng(0)
    records = []
    for number in range(n_samples):
        stem = f"img{number}"
        image_path = root / "images" / "bird" / f"{stem}.png"
        mask_path = root / "masks" / "bird" / f"{stem}.npy"
        image_path.parent.mkdir(parents=True, exist_ok=True)
        mask_path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(image_path)
        mask = np.zeros((48, 64), np.uint8)
        mask[10:30, 20:50] = 1
        np.save(mask_path, mask)
        records.append(
            {
                "sample_id": f"bird/{stem}",
                "safe_id": f"bird__{stem}",
                "class": "bird",
                "image_path": str(image_path),
                "mask_path": str(mask_path),
                "image_h": 48,
                "image_w": 64,
            }
        )
        for promptset_id in range(promptsets):
            folder = root / "sam_precompute" / split / f"bird__{stem}"
            folder = folder / f"promptset_{promptset_id:04d}"
            folder.mkdir(parents=True)
            for name in ("logits_256", "pos_map", "neg_map"):
                np.save(folder / f"{name}.npy", rng.normal(0, 5, (256, 256)).astype(np.float16))
            meta = {
                "k": 1,
                "branch_index": 0,
                "scores": [0.7],
                "score": 0.7,
                "pos_points": [[30, 20]],
                "neg_points": [[5, 40]],
            }
            (folder / "meta.json").write_text(json.dumps(meta))
    split_csv = root / "manifests" / f"{split}.csv"
    split_csv.parent.mkdir(parents=True, exist_ok=True)
    columns = ["sample_id", "safe_id", "class", "image_path", "mask_path", "image_h", "image_w"]
    pd.DataFrame(records, columns=columns).to_csv(split_csv, index=False)
    layout = ProjectLayout(root)
    index_csv, out = layout.training_index(split), layout.split_h5(split)
    write_training_index(
        split,
        split_csv,
        layout.precompute_dir(split),
        [],
        index_csv,
        layout.training_failures(split),
    )
    pack_split(index_csv, out, split=split, progress=False)
    return out


def _is_png(path: Path) -> bool:
    with Image.open(path) as image:
        return image.format == "PNG" and image.size[0] > 500


@pytest.mark.parametrize("from_h5", [True, False])
def test_panels_are_written_deterministically_covering_distinct_samples(tmp_path, from_h5):
    h5 = make_packed_split(tmp_path, n_samples=4, promptsets=3)
    source = h5 if from_h5 else h5.with_name("train_index.csv")
    out = tmp_path / "reports" / "debug_panels"
    written = write_sanity_panels(source, out, n=2, seed=5)
    assert len(written) == 2 and all(_is_png(p) for p in written)
    assert len({p.name.split("__promptset")[0] for p in written}) == 2  # distinct samples
    assert all(p.name.startswith("train__bird__img") for p in written)
    again = write_sanity_panels(source, out, n=2, seed=5)
    assert [p.name for p in again] == [p.name for p in written]
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in written)


def test_more_panels_than_samples_and_stale_panels_removed(tmp_path):
    h5 = make_packed_split(tmp_path, n_samples=2, promptsets=2)
    out = tmp_path / "panels"
    out.mkdir()
    (out / "train__bird__old__promptset_0009.png").write_bytes(b"stale")
    (out / "val__bird__img0__promptset_0000.png").write_bytes(b"other split, kept")
    listing = out / "train_panels.json"
    written = write_sanity_panels(h5, out, n=10, seed=0, listing_json=listing)
    assert len(written) == 4  # every row
    assert not (out / "train__bird__old__promptset_0009.png").exists()
    assert (out / "val__bird__img0__promptset_0000.png").exists()
    assert read_json(listing)["panels"] == [str(p) for p in written]


def test_empty_split_writes_no_panel(tmp_path):
    h5 = make_packed_split(tmp_path, n_samples=0, promptsets=1, split="val")
    listing = tmp_path / "panels" / "val_panels.json"
    assert write_sanity_panels(h5, tmp_path / "panels", n=8, listing_json=listing) == []
    assert read_json(listing)["panels"] == []


def test_unreadable_image_still_gives_a_panel(tmp_path):
    h5 = make_packed_split(tmp_path, n_samples=1, promptsets=1)
    (tmp_path / "images" / "bird" / "img0.png").write_bytes(b"")
    (written,) = write_sanity_panels(h5, tmp_path / "panels", n=1)
    assert written.name == panel_name("train", "bird__img0", 0) and _is_png(written)


def test_choose_rows_and_prompt_points(tmp_path):
    index = pd.DataFrame({"sample_id": ["a", "a", "b", "c", "c", "c"]})
    rows = choose_rows(index, 2, seed=1, split="train")
    assert rows == choose_rows(index, 2, seed=1, split="train") and len(rows) == 2
    assert len(set(index.sample_id[rows])) == 2
    assert choose_rows(index, 0, 1, "train") == [] and choose_rows(index.iloc[:0], 3, 1, "x") == []
    meta = tmp_path / "meta.json"
    meta.write_text(json.dumps({"pos_points": [[0, 0], [99, 49]], "neg_points": []}))
    points = prompt_points(meta, (50, 100))
    np.testing.assert_allclose(points["pos_256"], [[0.78, 2.06], [254.22, 252.94]], atol=0.01)
    assert points["neg"].shape == (0, 2)
    assert prompt_points(tmp_path / "missing.json", (50, 100))["pos"].shape == (0, 2)


def test_standalone_script(tmp_path, monkeypatch):
    project = tmp_path / "project"
    make_packed_split(project, n_samples=3, promptsets=1)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"data": {"project_root": str(project)}}))
    cli_main(["visualize-sanity", "--config", str(config), "--n", "2", "--split", "train"])
    panels = sorted((project / "reports" / "debug_panels").glob("train__*.png"))
    assert len(panels) == 2
    layout = ProjectLayout(project)
    assert layout.panels_listing("train").is_file() and layout.panels_overview("train").is_file()


def test_panel_count_comes_from_the_config(tmp_path):
    project = tmp_path / "project"
    make_packed_split(project, n_samples=3, promptsets=1)
    config = tmp_path / "config.yaml"
    config.write_text(
        yaml.safe_dump({"data": {"project_root": str(project)}, "sanity_panels": {"n": 3}})
    )
    cli_main(["visualize-sanity", "--config", str(config), "--split", "train"])
    assert len(read_json(ProjectLayout(project).panels_listing("train"))["panels"]) == 3
