#!/usr/bin/env bash
# Stages 2 and 3 of the bundled default model (see weights/README.md), from the repository root:
#   bash weights/finetune_default.sh DATASETS OUT STAGE1_MODEL [extra `jmvae train` options]
# STAGE1_MODEL is the JMVAE-kl model of weights/train_default.sh (run with --alpha 1.0). Both stages fine-tune it
# with the cross-modal term (--cross-weight), which trains the image->attribute route that img2attr reads.
set -euo pipefail
datasets=${1:-../shared/datasets}
out=${2:-runs/default}
stage1=${3:-$out/1-jmvae-kl/model.safetensors}
shift $(($# < 3 ? $# : 3))
data=(--data "$datasets/celeba-hq-64" --data "$datasets/celeba")
common=(--alpha 1.0 --lr 2e-4 --warmup-epochs 0 --batch-size 100 --seed 0)
# The bundled model's stage 2 ran under a 30-minute schedule and was stopped after 9 epochs (15 minutes on 2 CPU
# cores); --epochs 9 here ends it at the same point, with the schedule decayed further.
python3 -m jmvae_cli train "${data[@]}" "${common[@]}" --out "$out/2-cross-100" --init "$stage1" \
  --cross-weight 100 --epochs 9 --time-limit 30 "$@"
python3 -m jmvae_cli train "${data[@]}" "${common[@]}" --out "$out/3-cross-1000" \
  --init "$out/2-cross-100/model.safetensors" --cross-weight 1000 --epochs 100 --time-limit 35 "$@"
