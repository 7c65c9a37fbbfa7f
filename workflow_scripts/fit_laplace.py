"""Stage 6 adapter: fit the last-layer Laplace posterior (``rule fit_laplace``, or stand-alone).

Stand-alone: ``python workflow_scripts/fit_laplace.py --config config/config.yaml --run_id v1
[--force]``. Skipped when the artifacts exist for the same best.pt (MD5) and settings.
"""

import argparse
from pathlib import Path

from laplace_head.bayes.fit import fit_laplace
from laplace_head.config import load_config, validate_config
from laplace_head.util.console import run_user_facing, setup_logging
from laplace_head.util.tracking import init_tracker


def run(config, laplace, run_id, checkpoint, train_h5, val_h5, out_dir, force=False) -> None:
    tracker = init_tracker(
        config["wandb"],
        config["data"]["project_root"],
        "fit_laplace",
        name=f"fit_laplace_{run_id}",
        run_config={"laplace": laplace, "run_id": run_id},
    )
    try:
        fit_laplace(
            checkpoint,
            train_h5,
            val_h5,
            out_dir,
            laplace["prior_precision_grid"],
            laplace["temperature_grid"],
            logit_clip=config["training"]["logit_clip"],
            max_pixels_fit=laplace["max_pixels_fit"],
            seed=laplace["seed"],
            force=force,
            run_id=run_id,
            tracker=tracker,
            target_layer=laplace["target_layer"],
            approx=laplace["approx"],
        )
    finally:
        tracker.finish()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="config/config.yaml", help="config YAML")
    parser.add_argument("--run_id", help="run name (default: training.run_id of the config)")
    parser.add_argument("--force", action="store_true", help="refit even if artifacts exist")
    args = parser.parse_args(argv)
    setup_logging()
    config = run_user_facing(lambda: load_config(args.config, check_paths=False))
    run_id = args.run_id or config["training"]["run_id"]
    root = Path(config["data"]["project_root"])
    data_dir = root / "training_data" / "no_image"
    setup_logging(root / "logs" / "fit_laplace" / f"run_{run_id}.log")
    run_user_facing(
        lambda: run(
            config,
            config["laplace"],
            run_id,
            root / "checkpoints" / "no_image" / f"run_{run_id}" / "best.pt",
            data_dir / "train.h5",
            data_dir / "val.h5",
            root / "laplace" / "no_image" / f"run_{run_id}",
            args.force,
        )
    )


if "snakemake" in globals():
    setup_logging(snakemake.log[0])
    run_user_facing(
        lambda: run(
            validate_config(snakemake.config, check_paths=False),
            dict(snakemake.params.laplace),
            snakemake.params.run_id,
            Path(snakemake.input.summary).parent / "best.pt",
            snakemake.input.train_h5,
            snakemake.input.val_h5,
            Path(snakemake.output.state).parent,
            force=True,  # Snakemake only runs the job when the outputs must be rebuilt
        )
    )
elif __name__ == "__main__":
    main()
