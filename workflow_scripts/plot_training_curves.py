"""Training-curve figure adapter (``rule plot_training_curves``, or stand-alone).

Stand-alone: ``python workflow_scripts/plot_training_curves.py --config config/config.yaml
--run_id v1`` writes ``checkpoints/no_image/run_<id>/training_curves.png``.
"""

import argparse

from laplace_head.config import load_config, project_path
from laplace_head.training.plots import plot_training_summary
from laplace_head.util.console import run_user_facing, setup_logging


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="config/config.yaml", help="config YAML")
    parser.add_argument("--run_id", default=None, help="run id (default: training.run_id)")
    args = parser.parse_args(argv)
    setup_logging()
    config = run_user_facing(lambda: load_config(args.config, check_paths=False))
    run_dir = project_path(
        config, "checkpoints", "no_image", f"run_{args.run_id or config['training']['run_id']}"
    )
    run_user_facing(
        lambda: plot_training_summary(
            run_dir / "training_summary.json", run_dir / "training_curves.png"
        )
    )


if "snakemake" in globals():
    setup_logging(snakemake.log[0])
    run_user_facing(lambda: plot_training_summary(snakemake.input.summary, snakemake.output.png))
elif __name__ == "__main__":
    main()
