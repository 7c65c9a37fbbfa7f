"""Stage 7 adapter: evaluate base / MAP / temperature-scaled / Laplace on the test split.

Stand-alone: ``python workflow_scripts/evaluate.py --config config/config.yaml --run_id v1``.
Writes reports/eval/run_<id>/metrics.{json,csv,md}, reliability.png, uncertainty_examples.png.
"""

import argparse
from pathlib import Path

from laplace_head.config import load_config, validate_config
from laplace_head.evaluation.evaluate import evaluate
from laplace_head.util.console import run_user_facing, setup_logging
from laplace_head.util.tracking import init_tracker


def run(config, settings, run_id, laplace_dir, test_h5, val_h5, out_dir) -> None:
    tracker = init_tracker(
        config["wandb"],
        config["data"]["project_root"],
        "evaluate",
        name=f"evaluate_{run_id}",
        run_config={"evaluation": settings, "run_id": run_id},
    )
    try:
        evaluate(
            laplace_dir,
            test_h5,
            val_h5,
            out_dir,
            n_posterior_samples=settings["n_posterior_samples"],
            ece_bins=settings["ece_bins"],
            prompt_sigma=settings["prompt_sigma"],
            max_pixels_calibration=settings["max_pixels_calibration"],
            seed=settings["seed"],
            run_id=run_id,
            tracker=tracker,
        )
    finally:
        tracker.finish()


def settings_from_config(config: dict) -> dict:
    laplace = config["laplace"]
    return {
        "n_posterior_samples": laplace["n_posterior_samples"],
        "ece_bins": laplace["ece_bins"],
        "prompt_sigma": config["prompt_generation"]["gaussian_sigma"],
        "max_pixels_calibration": laplace["max_pixels_fit"],
        "seed": laplace["seed"],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="config/config.yaml", help="config YAML")
    parser.add_argument("--run_id", help="run name (default: training.run_id of the config)")
    args = parser.parse_args(argv)
    setup_logging()
    config = run_user_facing(lambda: load_config(args.config, check_paths=False))
    run_id = args.run_id or config["training"]["run_id"]
    root = Path(config["data"]["project_root"])
    data_dir = root / "training_data" / "no_image"
    setup_logging(root / "logs" / "evaluate" / f"run_{run_id}.log")
    run_user_facing(
        lambda: run(
            config,
            settings_from_config(config),
            run_id,
            root / "laplace" / "no_image" / f"run_{run_id}",
            data_dir / "test.h5",
            data_dir / "val.h5",
            root / "reports" / "eval" / f"run_{run_id}",
        )
    )


if "snakemake" in globals():
    setup_logging(snakemake.log[0])
    run_user_facing(
        lambda: run(
            validate_config(snakemake.config, check_paths=False),
            dict(snakemake.params.settings),
            snakemake.params.run_id,
            Path(snakemake.input.state).parent,
            snakemake.input.test_h5,
            snakemake.input.val_h5,
            Path(snakemake.output.metrics).parent,
        )
    )
elif __name__ == "__main__":
    main()
