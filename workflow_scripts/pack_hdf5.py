"""Stage 4.5 adapter: pack one split into HDF5 (``rule pack_hdf5``, or stand-alone).

Stand-alone: ``python workflow_scripts/pack_hdf5.py --config config/config.yaml [--split train]
[--chunk-rows N] [--compression none|lzf|gzip-N]`` packs the chosen split (default: all
three). Under Snakemake the optional ``params.chunk_rows`` / ``params.compression`` override the
measured defaults of :mod:`laplace_head.cache.packing` (contiguous, uncompressed).
"""

import argparse
from pathlib import Path

from laplace_head.cache.packing import DEFAULT_CHUNK_ROWS, DEFAULT_COMPRESSION, pack_split
from laplace_head.config import load_config
from laplace_head.dataset.splits import SPLITS
from laplace_head.util.console import run_user_facing, setup_logging


def run(split, index_csv, out_h5, chunk_rows=DEFAULT_CHUNK_ROWS, compression=DEFAULT_COMPRESSION):
    pack_split(index_csv, out_h5, split=split, chunk_rows=chunk_rows, compression=compression)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="config/config.yaml", help="config YAML")
    parser.add_argument("--split", choices=SPLITS, help="only this split (default: all)")
    parser.add_argument(
        "--chunk-rows",
        type=int,
        default=DEFAULT_CHUNK_ROWS,
        help="rows per chunk (default: contiguous)",
    )
    parser.add_argument("--compression", default=DEFAULT_COMPRESSION, help="none|lzf|gzip-N")
    args = parser.parse_args(argv)
    setup_logging()
    config = run_user_facing(lambda: load_config(args.config, check_paths=False))
    out_dir = Path(config["data"]["project_root"]) / "training_data" / "no_image"
    for split in [args.split] if args.split else SPLITS:
        setup_logging(Path(config["data"]["project_root"]) / "logs" / "pack_hdf5" / f"{split}.log")
        run_user_facing(
            lambda split=split: run(
                split,
                out_dir / f"{split}_index.csv",
                out_dir / f"{split}.h5",
                args.chunk_rows,
                args.compression,
            )
        )


if "snakemake" in globals():
    setup_logging(snakemake.log[0])
    run_user_facing(
        lambda: run(
            snakemake.wildcards.split,
            snakemake.input.index,
            snakemake.output.h5,
            snakemake.params.get("chunk_rows", DEFAULT_CHUNK_ROWS),
            snakemake.params.get("compression", DEFAULT_COMPRESSION),
        )
    )
elif __name__ == "__main__":
    main()
