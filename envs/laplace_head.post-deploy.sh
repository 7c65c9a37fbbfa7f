#!/usr/bin/env bash
# Snakemake runs this once, inside the freshly created conda environment of
# laplace_head.yaml, from the directory it was started in: the repository root (the folder
# holding the Snakefile and pyproject.toml). It installs the laplace_head package from there,
# editable, so that the environment always runs this checkout's code.
set -euo pipefail
if ! grep -qs '^name = "laplace-head"' pyproject.toml; then
    echo "laplace_head.post-deploy.sh: run snakemake from the repository root" \
        "(no laplace-head pyproject.toml in $PWD)" >&2
    exit 1
fi
python -m pip install --no-deps -e .
