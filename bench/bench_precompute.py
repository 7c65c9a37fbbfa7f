"""Benchmark stage 3 (precompute_sam) against its encoder floor and a naive loop.

For N images x K prompt sets it times, on the same machine and inputs:

- floor: N calls of ``set_image`` (the image encoder runs once per image - the least any
  implementation must do),
- ours: :func:`laplace_head.cache.precompute.precompute_shard` (read images, encode once, decode all
  prompt sets, write logits/prompt maps/meta atomically),
- naive: the same stage with a segmenter that re-encodes the image for every prompt set.

and prints ``ours / floor`` (target <= 1.15), ``ours / naive`` (target ~ 1/K) and the time per
prompt set beyond the encoder (decode, post-processing, prompt maps, writes). Models: a
tiny random SAM and the real ViT-B shape with random weights (``sam_model_registry['vit_b']``),
plus random_walker's time per prompt set for reference.

    .venv/bin/python bench/bench_precompute.py [--device cpu] [--skip-vit-b]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from helpers.tiny_sam import build_tiny_sam  # noqa: E402

from laplace_head.cache.precompute import precompute_shard  # noqa: E402
from laplace_head.layout import ProjectLayout  # noqa: E402
from laplace_head.prompts.sampling import sample_promptsets  # noqa: E402
from laplace_head.segmenters import BaseSegmenter  # noqa: E402
from laplace_head.segmenters.random_walker import RandomWalkerSegmenter  # noqa: E402
from laplace_head.segmenters.sam import SamSegmenter  # noqa: E402


class ReencodingSegmenter(BaseSegmenter):
    """The naive baseline: ``set_image`` again before every prompt set."""

    def __init__(self, inner: BaseSegmenter) -> None:
        super().__init__()
        self.inner = inner
        self.name = inner.name

    @property
    def info(self):
        return {**self.inner.info, "fingerprint": "naive-" + self.inner.info["fingerprint"]}

    def _set_image(self, image_rgb: np.ndarray) -> None:
        self._image = image_rgb

    def _predict(self, points_xy, labels):
        self.inner.set_image(self._image)
        return self.inner.predict(points_xy, labels)


def make_images(n_images: int, height: int, width: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Smooth synthetic (H, W, 3) uint8 images with an elliptical object, and their masks."""
    rng = np.random.default_rng(0)
    rows, cols = np.mgrid[:height, :width]
    out = []
    for _ in range(n_images):
        centre = rng.uniform(0.3, 0.7, 2) * (height, width)
        mask = ((rows - centre[0]) / (0.2 * height)) ** 2 + (
            (cols - centre[1]) / (0.25 * width)
        ) ** 2 <= 1
        colour = np.where(mask[..., None], rng.uniform(120, 250, 3), rng.uniform(0, 110, 3))
        image = np.clip(colour + rng.normal(0, 10, colour.shape), 0, 255).astype(np.uint8)
        out.append((image, mask))
    return out


def make_inputs(root: Path, n_images: int, k_sets: int, height: int, width: int) -> list[Path]:
    """Synthetic images (:func:`make_images`) and their prompt JSONs."""
    paths = []
    for index, (image, mask) in enumerate(make_images(n_images, height, width)):
        image_path = root / "images" / f"img{index:03d}.png"
        image_path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(image_path)
        sample_id, safe_id = f"bench/img{index:03d}", f"bench__img{index:03d}"
        promptsets = sample_promptsets(mask, sample_id, k_sets, 1, 10, 0)
        record = {
            "sample_id": sample_id,
            "safe_id": safe_id,
            "image_path": str(image_path),
            "image_h": height,
            "image_w": width,
            "promptsets": [p.to_json() for p in promptsets],
        }
        prompt_path = ProjectLayout(root).promptset_json("bench", safe_id)
        prompt_path.parent.mkdir(parents=True, exist_ok=True)
        prompt_path.write_text(json.dumps(record))
        paths.append(prompt_path)
    return paths


def time_stage(paths: list[Path], out_dir: Path, segmenter: BaseSegmenter) -> tuple[float, dict]:
    start = time.perf_counter()
    summary = precompute_shard(paths, out_dir, segmenter, 8.0, out_dir / "summary.json")
    elapsed = time.perf_counter() - start
    # every prompt set computed: a bench that read no prompt JSON would time nothing
    assert summary["done"] == summary["n_promptsets"] > 0, summary
    assert summary["failed"] == summary["skipped"] == summary["samples_failed"] == 0, summary
    return elapsed, summary


def time_floor(paths: list[Path], segmenter: BaseSegmenter) -> float:
    images = [
        np.asarray(Image.open(json.loads(p.read_text())["image_path"]).convert("RGB"))
        for p in paths
    ]
    start = time.perf_counter()
    for image in images:
        segmenter.set_image(image)
    return time.perf_counter() - start


def bench_model(label, segmenter, work, n_images, k_sets, size, repeats) -> dict:
    paths = make_inputs(work / label, n_images, k_sets, *size)
    segmenter.set_image(np.zeros((*size, 3), dtype=np.uint8))  # warm-up (lazy init, allocator)
    floor = min(time_floor(paths, segmenter) for _ in range(repeats))
    ours, naive = [], []
    for repeat in range(repeats):
        ours.append(time_stage(paths, work / label / f"ours{repeat}", segmenter)[0])
        naive.append(
            time_stage(paths, work / label / f"naive{repeat}", ReencodingSegmenter(segmenter))[0]
        )
    return {
        "model": label,
        "N": n_images,
        "K": k_sets,
        "image": f"{size[0]}x{size[1]}",
        "floor_s": floor,
        "ours_s": min(ours),
        "naive_s": min(naive),
    }


def print_table(rows: list[dict]) -> None:
    header = (
        f"{'model':<10} {'N':>3} {'K':>3} {'image':>8} {'floor s':>9} {'ours s':>9} "
        f"{'naive s':>9} {'ours/floor':>10} {'ours/naive':>10} {'1/K':>6} {'extra ms/set':>12}"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        print(
            f"{row['model']:<10} {row['N']:>3} {row['K']:>3} {row['image']:>8} "
            f"{row['floor_s']:>9.3f} {row['ours_s']:>9.3f} {row['naive_s']:>9.3f} "
            f"{row['ours_s'] / row['floor_s']:>10.3f} {row['ours_s'] / row['naive_s']:>10.3f} "
            f"{1 / row['K']:>6.3f} "
            f"{1000 * (row['ours_s'] - row['floor_s']) / (row['N'] * row['K']):>12.1f}"
        )


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    parser.add_argument("--tiny-images", type=int, default=10)
    parser.add_argument("--tiny-k", type=int, default=10)
    parser.add_argument("--vit-b-images", type=int, default=2)
    parser.add_argument("--vit-b-k", type=int, default=4)
    parser.add_argument("--size", type=int, nargs=2, default=(480, 640), metavar=("H", "W"))
    parser.add_argument("--skip-vit-b", action="store_true")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (1 keeps timings stable on a shared machine)",
    )
    parser.add_argument("--vit-h", action="store_true", help="also the ViT-H shape (GPU only)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, device {args.device}")
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_precompute_") as tmp:
        work = Path(tmp)
        tiny = SamSegmenter(model=build_tiny_sam(seed=0), device=args.device)
        rows.append(
            bench_model("tiny_sam", tiny, work, args.tiny_images, args.tiny_k, args.size, 3)
        )
        print_table(rows)
        from segment_anything import sam_model_registry

        shapes = [] if args.skip_vit_b else ["vit_b"]
        shapes += ["vit_h"] if args.vit_h else []
        for model_type in shapes:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                model = sam_model_registry[model_type](checkpoint=None)
            segmenter = SamSegmenter(model=model, model_type=model_type, device=args.device)
            repeats = 1 if segmenter.device.type == "cpu" else 3
            rows.append(
                bench_model(
                    model_type, segmenter, work, args.vit_b_images, args.vit_b_k, args.size, repeats
                )
            )
            print_table(rows)
        walker = RandomWalkerSegmenter()
        paths = make_inputs(work / "rw", 4, 10, *args.size)
        elapsed, summary = time_stage(paths, work / "rw" / "out", walker)
        print(
            f"\nrandom_walker (max_side 160, bf): {1000 * elapsed / summary['done']:.1f} ms per "
            f"prompt set over {summary['done']} prompt sets of {args.size[0]}x{args.size[1]} "
            "images (whole stage incl. IO)"
        )
    print()
    print_table(rows)


if __name__ == "__main__":
    main()
