#!/usr/bin/env bash
# The quickstart ablation: trains each variant of the quickstart config (one change at a
# time, then the chosen combination) into runs/ablation/NAME and evaluates it with
# `jaxddpm eval --metric quality` over 3 sampling seeds, with the ancestral sampler and with
# DDIM at 50 steps, each with and without clipping the predicted x0.
#
#   bash experiments/quickstart/ablation.sh [NAME ...]     (default: every variant below)
#
# A variant whose workdir already has a final checkpoint is not retrained (training resumes
# otherwise); evaluations write runs/ablation/NAME/eval/*.json and are appended to
# runs/ablation/NAME/eval.log; wall times go to runs/ablation/NAME/train_time.txt.
# Tabulate with: python experiments/quickstart/ablation_table.py runs/ablation
set -euo pipefail

declare -A VARIANTS=(
  [base]=""
  [cosine]="--config.train.lr_schedule=cosine --config.train.warmup_steps=100"
  [ema]="--config.train.ema_decay=0.999 --config.train.ema_start=500"
  [temb128]="--config.model.time_emb_dim=128"
  [batch128]="--config.train.batch_size=128 --config.train.num_steps=1000"
  [lr2e-3]="--config.train.learning_rate=2e-3"
  [schedule-cosine]="--config.diffusion.schedule=cosine"
  [wide]="--config.model.channels=(48,96,192) --config.train.num_steps=1200"
  [beta-end-0.05]="--config.diffusion.beta_end=0.05"
  [batch32]="--config.train.batch_size=32 --config.train.num_steps=4000"
  [ddpm-unet]="--config.model.name=ddpm_unet --config.model.base_channels=32 --config.model.channel_mult=(1,2,2) --config.model.num_res_blocks=1 --config.model.attention_resolutions=(4,) --config.model.dropout=0.0 --config.train.num_steps=1000"
)
VARIANTS[ddpm-unet+cosine]="${VARIANTS[ddpm-unet]} ${VARIANTS[cosine]}"
VARIANTS[ddpm-unet+cosine+ema]="${VARIANTS[ddpm-unet+cosine]} --config.train.ema_decay=0.998 --config.train.ema_start=100"
ORDER=(base cosine ema temb128 batch128 lr2e-3 schedule-cosine wide beta-end-0.05 batch32 ddpm-unet ddpm-unet+cosine ddpm-unet+cosine+ema)
SEEDS=${SEEDS:-3}
NUM=${NUM:-297}   # one group of the held-out set's size per seed
# Sampler settings evaluated, separated by ";" (default: ancestral and DDIM-50, each with and without clipping).
IFS=';' read -r -a SAMPLERS <<< "${SAMPLERS:- ;--clip-x0;--sampler ddim --steps 50;--sampler ddim --steps 50 --clip-x0}"

mkdir -p runs/ablation
for name in "${@:-${ORDER[@]}}"; do
  if [ -z "${VARIANTS[$name]+set}" ]; then echo "unknown variant $name; known: ${ORDER[*]}" >&2; exit 2; fi
  dir=runs/ablation/$name
  if [ ! -f "$dir/train_time.txt" ]; then
    # shellcheck disable=SC2086
    /usr/bin/time -f "wall %e s, peak RSS %M KB" -o "$dir.time" jaxddpm train --workdir "$dir" ${VARIANTS[$name]}
    mv "$dir.time" "$dir/train_time.txt"
  fi
  for sampler in "${SAMPLERS[@]}"; do
    # shellcheck disable=SC2086
    jaxddpm eval --workdir "$dir" --metric quality --seeds "$SEEDS" --num-samples "$NUM" $sampler | tee -a "$dir/eval.log"
  done
done
