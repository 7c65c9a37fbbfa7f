"""Stage 5 adapter: train the head (``rule train_head`` / ``sanity_check_head``, or stand-alone).

Stand-alone: ``python workflow_scripts/train_head.py --config config/config.yaml --run_id v1
[--resume] [--force] [--sanity_check]``. Under Snakemake an interrupted run resumes by itself.
"""

import argparse
from pathlib import Path

from laplace_head.config import load_config, validate_config
from laplace_head.training.loop import TrainingSettings, train_head
from laplace_head.training.sanity import sanity_check_to_file
from laplace_head.util.console import run_user_facing, setup_logging


def run(config, run_id, train_h5, val_h5, run_dir, resume, force=False) -> None:
    train_head(
        train_h5,
        val_h5,
        run_dir,
        TrainingSettings.from_config(config),
        run_id,
        run_config=config,
        resume=resume,
        force=force,
        wandb_config=config["wandb"],
        project_root=config["data"]["project_root"],
    )


def run_sanity(config, train_h5, output_json) -> None:
    settings = TrainingSettings.from_config(config)
    sanity_check_to_file(
        train_h5,
        output_json,
        channels_in=settings.channels_in,
        hidden_channels=settings.hidden_channels,
        logit_clip=settings.logit_clip,
        dice_lambda=settings.dice_lambda,
        seed=settings.seed,
        device=settings.device,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="config/config.yaml", help="config YAML")
    parser.add_argument("--run_id", help="run name (default: training.run_id of the config)")
    parser.add_argument("--resume", action="store_true", help="continue the run's last epoch")
    parser.add_argument("--force", action="store_true", help="start over / accept a new config")
    parser.add_argument("--sanity_check", action="store_true", help="overfit a tiny batch only")
    args = parser.parse_args(argv)
    setup_logging()
    config = run_user_facing(lambda: load_config(args.config, check_paths=False))
    run_id = args.run_id or config["training"]["run_id"]
    config["training"]["run_id"] = run_id
    root = Path(config["data"]["project_root"])
    data_dir = root / "training_data" / "no_image"
    run_dir = root / "checkpoints" / "no_image" / f"run_{run_id}"
    if args.sanity_check:
        setup_logging(root / "logs" / "sanity_check_head" / f"run_{run_id}.log")
        run_user_facing(
            lambda: run_sanity(config, data_dir / "train.h5", run_dir / "sanity_check.json")
        )
        return
    setup_logging(root / "logs" / "train_head" / f"run_{run_id}.log")
    resume = "require" if args.resume else "never"
    run_user_facing(
        lambda: run(
            config, run_id, data_dir / "train.h5", data_dir / "val.h5", run_dir, resume, args.force
        )
    )


if "snakemake" in globals():
    setup_logging(snakemake.log[0])
    _config = validate_config(snakemake.config, check_paths=False)
    _config["training"]["run_id"] = snakemake.params.run_id
    if snakemake.rule == "sanity_check_head":
        run_user_facing(
            lambda: run_sanity(_config, snakemake.input.train_h5, snakemake.output.sanity)
        )
    else:
        run_user_facing(
            lambda: run(
                _config,
                snakemake.params.run_id,
                snakemake.input.train_h5,
                snakemake.input.val_h5,
                Path(snakemake.output.summary).parent,
                resume="auto",
            )
        )
elif __name__ == "__main__":
    main()
