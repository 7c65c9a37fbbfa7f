"""DAG-scale benchmark: dry-run time, peak memory and job count for large synthetic manifests.

For each size N the script writes a finished stage 1 (manifest CSVs for N samples, 80/10/10,
fake image paths) into a temporary project_root, then times
``snakemake -n --quiet`` over the full workflow (all stages, default shard_size 64) in a
subprocess and reads its peak RSS. Prints one row per N: jobs planned, seconds, MiB, and
jobs per 1,000 samples (the shard design keeps it near 1000/64 x 2 stages + 3 per split).

Usage: ``python bench/bench_dag.py [--sizes 1000 10000 100000]``
"""

import argparse
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from laplace_head.layout import SPLITS, ProjectLayout

REPO = Path(__file__).resolve().parent.parent
SNAKEMAKE = Path(sys.executable).with_name("snakemake")
COLUMNS = ["sample_id", "safe_id", "class", "stem", "image_path", "mask_path", "image_h",
           "image_w", "mask_h", "mask_w", "size_mismatch", "valid", "reason", "split"]  # fmt: skip


def write_manifests(project: Path, n_samples: int) -> None:
    layout = ProjectLayout(project)
    layout.manifests_dir.mkdir(parents=True)
    rows = []
    for i in range(n_samples):
        split = "train" if i % 10 < 8 else ("val" if i % 10 == 8 else "test")
        stem = f"img{i:06d}"
        rows.append([f"c{i % 5}/{stem}", f"c{i % 5}__{stem}", f"c{i % 5}", stem,
                     f"/nonexistent/{stem}.jpg", f"/nonexistent/{stem}.npy", 256, 256, 256, 256,
                     False, True, "", split])  # fmt: skip
    frame = pd.DataFrame(rows, columns=COLUMNS)
    frame.to_csv(layout.manifest("all_samples"), index=False)
    for split in SPLITS:
        frame[frame["split"] == split].to_csv(layout.manifest(split), index=False)
    layout.manifest_report.write_text("{}\n")


def dry_run(n_samples: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "images").mkdir()
        (tmp / "masks").mkdir()
        write_manifests(tmp / "project", n_samples)
        override = tmp / "bench.yaml"
        override.write_text(
            f"data:\n  images_root: {tmp / 'images'}\n  masks_root: {tmp / 'masks'}\n"
            f"  project_root: {tmp / 'project'}\n  shard_size: 64\nwandb:\n  enabled: false\n"
        )
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        start = time.perf_counter()
        result = subprocess.run(
            [str(SNAKEMAKE), "-n", "--workflow-profile", "none", "--cores", "1",
             "--configfile", "config/demo.yaml", str(override)],
            cwd=REPO, capture_output=True, text=True, check=False,
        )  # fmt: skip
        seconds = time.perf_counter() - start
        peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        if result.returncode != 0:
            raise SystemExit(f"dry run failed for N={n_samples}:\n{result.stderr[-3000:]}")
        match = re.search(r"^total\s+(\d+)", result.stdout, flags=re.MULTILINE)
        jobs = int(match.group(1)) if match else -1
        return {
            "samples": n_samples,
            "jobs": jobs,
            "seconds": round(seconds, 2),
            # ru_maxrss of children is the max over all children so far: monotone, so the
            # sizes are run in increasing order and each row is that run's peak or earlier.
            "peak_MiB": round(max(peak_kib, before) / 1024, 1),
            "jobs_per_1000_samples": round(1000 * jobs / n_samples, 1),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000])
    args = parser.parse_args()
    os.environ.setdefault("PYTHONHASHSEED", "0")
    rows = [dry_run(n) for n in sorted(args.sizes)]
    print(pd.DataFrame(rows).to_string(index=False))


if __name__ == "__main__":
    main()
