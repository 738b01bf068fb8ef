#!/usr/bin/env bash
# Stage 1 of the bundled default model, and the recipe of the other bundled models (see weights/README.md),
# from the repository root:
#   bash weights/train_default.sh DATASETS OUT MINUTES [extra `jmvae train` options]
# DATASETS holds celeba/ and celeba-hq-64/ as laid out in ../shared/datasets.
set -euo pipefail
datasets=${1:-../shared/datasets}
out=${2:-runs/default}
minutes=${3:-7}
shift $(($# < 3 ? $# : 3))
# --epochs is only a ceiling: --time-limit ends the run and fits the learning-rate schedule to it.
python3 -m jmvae_cli train --data "$datasets/celeba-hq-64" --data "$datasets/celeba" --out "$out" \
  --epochs 1000 --time-limit "$minutes" --batch-size 100 --lr 5e-4 --seed 0 "$@"
