#!/usr/bin/env bash
# Stage 4 of the bundled default model (see weights/README.md), from the repository root:
#   bash weights/finetune_decoder.sh DATASETS OUT STAGE3_MODEL GAN_WEIGHT [extra `jmvae train` options]
# Fine-tunes the image decoder p(x|z) alone (--train-only image-decoder): the encoders and p(w|z) stay frozen, so
# img2attr and the edit directions fitted on q(z|x) (jmvae calibrate) cannot change. GAN_WEIGHT 0 trains on the
# likelihood alone; above 0 it adds the adversarial term of gan.py. Then recalibrate the edit strengths. Extra
# options override the ones below; --decoder-width W trains a new decoder W times as wide from scratch instead
# (docs/results.md, "A wider decoder").
set -euo pipefail
datasets=${1:-../shared/datasets}
out=${2:-runs/default}
stage3=${3:-$out/3-cross-1000/model.safetensors}
gan_weight=${4:-0}
shift $(($# < 4 ? $# : 4))
gan=()
if [ "$gan_weight" != 0 ]; then gan=(--gan --gan-weight "$gan_weight"); fi
python3 -m jmvae_cli train --data "$datasets/celeba-hq-64" --data "$datasets/celeba" --out "$out/4-decoder" \
  --init "$stage3" --train-only image-decoder "${gan[@]}" --alpha 1.0 --cross-weight 1000 --lr 2e-4 \
  --warmup-epochs 0 --batch-size 100 --seed 0 --epochs 1000 --ema 0.999 --time-limit 5 "$@"
