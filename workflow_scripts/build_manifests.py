"""Stage 1 adapter: scan, validate and split (``rule build_manifests``, or stand-alone).

Stand-alone: ``python workflow_scripts/build_manifests.py --config config/config.yaml``.
"""

import argparse
from pathlib import Path

from laplace_head.config import load_config, project_path, validate_config
from laplace_head.dataset.manifests import build_manifests
from laplace_head.util.console import run_user_facing, setup_logging
from laplace_head.util.tracking import init_tracker


def run(config: dict, manifests_dir: Path, workers: int) -> None:
    data = config["data"]
    tracker = init_tracker(config["wandb"], data["project_root"], "build_manifests")
    report = build_manifests(
        data["images_root"], data["masks_root"], manifests_dir, data["split_seed"], workers
    )
    tracker.log(
        {
            "manifest/valid": report["n_valid"],
            "manifest/invalid": report["n_invalid"],
            **{f"manifest/{k}_size": v for k, v in report["split_sizes"].items()},
        }
    )
    import pandas as pd

    tracker.log_table("manifest/per_class", pd.DataFrame(report["per_class"]))
    if report["invalid_samples"]:
        tracker.log_table("manifest/invalid_samples", pd.DataFrame(report["invalid_samples"]))
    tracker.finish()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="config/config.yaml", help="config YAML")
    parser.add_argument("--force", action="store_true", help="rescan even if manifests exist")
    parser.add_argument("--workers", type=int, default=1, help="validation processes")
    args = parser.parse_args(argv)
    setup_logging()
    config = run_user_facing(lambda: load_config(args.config))
    manifests_dir = project_path(config, "manifests")
    done = all(
        (manifests_dir / f"{n}.csv").is_file() for n in ("all_samples", "train", "val", "test")
    )
    if done and not args.force:
        print(f"manifests exist in {manifests_dir}; pass --force to rescan (splits stay frozen)")
        return
    setup_logging(project_path(config, "logs", "build_manifests", "build_manifests.log"))
    run_user_facing(lambda: run(config, manifests_dir, args.workers))


if "snakemake" in globals():
    setup_logging(snakemake.log[0])
    run_user_facing(
        lambda: run(
            validate_config(snakemake.config, check_paths=False),
            Path(snakemake.output.all_samples).parent,
            snakemake.threads,
        )
    )
elif __name__ == "__main__":
    main()
