#!/usr/bin/env bash
# The quickstart ablation: trains each variant of the quickstart config (one change at a
# time, then the chosen combination) into runs/ablation/NAME and evaluates it with
# `jaxddpm eval --metric quality` over 3 sampling seeds, with the ancestral sampler and with
# DDIM at 50 steps (the base was also evaluated with the predicted x0 clipped:
# SAMPLERS=" ;--clip-x0;--sampler ddim --steps 50;--sampler ddim --steps 50 --clip-x0").
#
#   bash experiments/quickstart/ablation.sh [NAME ...]     (default: every variant below)
#
# A variant whose workdir already has a final checkpoint is not retrained (training resumes
# otherwise); evaluations write runs/ablation/NAME/eval/*.json and are appended to
# runs/ablation/NAME/eval.log; wall times go to runs/ablation/NAME/train_time.txt.
# JUDGE16=0 leaves out the 16x16 judgement of 8x8 runs (round 4 was screened with
# SAMPLERS="--sampler ddim --steps 50" JUDGE16=0, its chosen run then evaluated with " ").
# Tabulate with: python experiments/quickstart/ablation_table.py runs/ablation
set -euo pipefail

# Every variant spells out the base it changes, so the commands do not move when the
# quickstart config does. Round 1 changes the quickstart as it was before the U-Net (the
# article's SimpleUNet, 2,000 steps at batch 64); round 2 changes the residual U-Net at 1,000
# steps at batch 64 (the round-1 winner, `ddpm-unet`); round 3 models the digits at their own
# 8x8 size instead of upscaled to 16x16 (NATIVE: the round-2 U-Net at batch 32, 4,000 steps).
# Runs at 8x8 are also judged at 16x16 (judge_upscaled.py: their samples upscaled as the
# dataset's images are, the 16x16 classifier and real images), on the scale of rounds 1-2.
SIMPLE="--config.data.image_size=16 --config.train.lr_schedule=constant --config.train.warmup_steps=0 --config.model.name=simple_unet --config.model.channels=(32,64,128) --config.model.time_emb_dim=32 --config.train.batch_size=64 --config.train.num_steps=2000 --config.train.learning_rate=1e-3 --config.train.ema_decay=0.995"
UNET="--config.data.image_size=16 --config.train.lr_schedule=constant --config.train.warmup_steps=0 --config.model.name=ddpm_unet --config.model.base_channels=32 --config.model.channel_mult=(1,2,2) --config.model.num_res_blocks=1 --config.model.attention_resolutions=(4,) --config.model.dropout=0.0 --config.train.batch_size=64 --config.train.num_steps=1000 --config.train.learning_rate=1e-3 --config.train.ema_decay=0.995"
NATIVE="--config.data.image_size=8 --config.train.lr_schedule=constant --config.train.warmup_steps=0 --config.model.name=ddpm_unet --config.model.base_channels=32 --config.model.channel_mult=(1,2,2) --config.model.num_res_blocks=1 --config.model.attention_resolutions=(4,) --config.model.dropout=0.0 --config.train.batch_size=32 --config.train.num_steps=4000 --config.train.learning_rate=1e-3 --config.train.ema_decay=0.995"
declare -A VARIANTS=(
  [base]="$SIMPLE"
  [cosine]="$SIMPLE --config.train.lr_schedule=cosine --config.train.warmup_steps=100"
  [ema]="$SIMPLE --config.train.ema_decay=0.999 --config.train.ema_start=500"
  [temb128]="$SIMPLE --config.model.time_emb_dim=128"
  [batch128]="$SIMPLE --config.train.batch_size=128 --config.train.num_steps=1000"
  [lr2e-3]="$SIMPLE --config.train.learning_rate=2e-3"
  [schedule-cosine]="$SIMPLE --config.diffusion.schedule=cosine"
  [wide]="$SIMPLE --config.model.channels=(48,96,192) --config.train.num_steps=1200"
  [beta-end-0.05]="$SIMPLE --config.diffusion.beta_end=0.05"
  [batch32]="$SIMPLE --config.train.batch_size=32 --config.train.num_steps=4000"
  [ddpm-unet]="$UNET"
  [unet-scaled-betas]="$UNET --config.diffusion.beta_start=3.3333e-4 --config.diffusion.beta_end=0.066667"
  [unet-lr2e-3]="$UNET --config.train.learning_rate=2e-3"
  [unet-ema0.99]="$UNET --config.train.ema_decay=0.99"
  [unet-batch32]="$UNET --config.train.batch_size=32 --config.train.num_steps=2000"
  [unet-batch32-ema0.99]="$UNET --config.train.batch_size=32 --config.train.num_steps=2000 --config.train.ema_decay=0.99"
  [unet-batch16]="$UNET --config.train.batch_size=16 --config.train.num_steps=3000"
  [unet-c16-batch32]="$UNET --config.model.base_channels=16 --config.train.batch_size=32 --config.train.num_steps=4000"
  [unet-c48-batch32]="$UNET --config.model.base_channels=48 --config.train.batch_size=32 --config.train.num_steps=1000"
  [unet-batch32-1800]="$UNET --config.train.batch_size=32 --config.train.num_steps=1800"  # the quickstart of round 2
  [native-1800]="$NATIVE --config.train.num_steps=1800"
  [native]="$NATIVE"
  [native-cosine]="$NATIVE --config.train.lr_schedule=cosine --config.train.warmup_steps=100"
  [native-batch16]="$NATIVE --config.train.batch_size=16 --config.train.num_steps=6000"
  [native-c48]="$NATIVE --config.model.base_channels=48 --config.train.num_steps=2400"
  [native-cosine-dropout0.1]="$NATIVE --config.train.lr_schedule=cosine --config.train.warmup_steps=100 --config.model.dropout=0.1"
  [native-cosine-attn8]="$NATIVE --config.train.lr_schedule=cosine --config.train.warmup_steps=100 --config.model.attention_resolutions=(8,4)"
  [native-cosine-ema0.999]="$NATIVE --config.train.lr_schedule=cosine --config.train.warmup_steps=100 --config.train.ema_decay=0.999"
  [native-cosine-2levels-4900]="$NATIVE --config.train.lr_schedule=cosine --config.train.warmup_steps=100 --config.model.channel_mult=(1,2) --config.train.num_steps=4900"
  [native-cosine-2levels]="$NATIVE --config.train.lr_schedule=cosine --config.train.warmup_steps=100 --config.model.channel_mult=(1,2) --config.train.num_steps=6500"
  [native-cosine-2levels-lr2e-3]="$NATIVE --config.train.lr_schedule=cosine --config.train.warmup_steps=100 --config.model.channel_mult=(1,2) --config.train.num_steps=6500 --config.train.learning_rate=2e-3"
  [native-cosine-2levels-2blocks]="$NATIVE --config.train.lr_schedule=cosine --config.train.warmup_steps=100 --config.model.channel_mult=(1,2) --config.model.num_res_blocks=2 --config.train.num_steps=4500"
)
# Round 4 changes round 3's best run (`native-cosine-2levels-lr2e-3`).
R4="${VARIANTS[native-cosine-2levels-lr2e-3]}"
VARIANTS[native-cosine-2levels-lr2e-3-groups8]="$R4 --config.model.norm_groups=8"
VARIANTS[native-cosine-2levels-lr2e-3-noattn]="$R4 --config.model.attention_resolutions=()"
VARIANTS[native-cosine-2levels-lr2e-3-c24-8000]="$R4 --config.model.base_channels=24 --config.model.norm_groups=24 --config.train.num_steps=8000"
VARIANTS[native-cosine-2levels-lr3e-3-5500]="$R4 --config.train.learning_rate=3e-3 --config.train.num_steps=5500"
VARIANTS[native-cosine-2levels-lr3e-3-4750]="$R4 --config.train.learning_rate=3e-3 --config.train.num_steps=4750"
# Round 5: the shipped config (lr 3e-3, 5,500 steps) with GroupNorm 8 groups.
VARIANTS[native-cosine-2levels-lr3e-3-5500-groups8]="${VARIANTS[native-cosine-2levels-lr3e-3-5500]} --config.model.norm_groups=8"
Q="${VARIANTS[native-cosine-2levels-lr3e-3-5500]}"  # the quickstart of rounds 4-6 (5,500 steps), spelled out
VARIANTS[quickstart]="$Q"  # the same config as trained by the code of round 6 (LLVM level 0 initialisation)
VARIANTS[qs-lr5e-3]="$Q --config.train.learning_rate=5e-3"
VARIANTS[qs-seed1]="$Q --config.train.seed=1"
VARIANTS[qs-seed2]="$Q --config.train.seed=2"
VARIANTS[qs-ema0.999]="$Q --config.train.ema_decay=0.999"
VARIANTS[qs-b2-0.99]="$Q --config.train.adam_betas=(0.9,0.99)"
VARIANTS[qs-noattn-6000]="$Q --config.model.attention_resolutions=() --config.train.num_steps=6000"
# Round 7: the 5,500-step config with timesteps stratified over each batch (same expected loss),
# gradient clipping at norm 1 (Ho et al.'s), dropout 0.1, 6,500 steps (three training seeds) and
# 6,500 steps without attention.
VARIANTS[qs-stratified]="$Q --config.train.timestep_sampling=stratified"
VARIANTS[qs-clip1]="$Q --config.train.grad_clip_norm=1.0"
VARIANTS[qs-dropout0.1]="$Q --config.model.dropout=0.1"
VARIANTS[qs-6500]="$Q --config.train.num_steps=6500"  # the shipped quickstart since round 7
VARIANTS[qs-noattn-6500]="$Q --config.model.attention_resolutions=() --config.train.num_steps=6500"
VARIANTS[qs-6500-seed1]="$Q --config.train.num_steps=6500 --config.train.seed=1"
VARIANTS[qs-6500-seed2]="$Q --config.train.num_steps=6500 --config.train.seed=2"
# Round 8: the shipped config (6,500 steps) as trained since DDPMUNet normalises with
# jaxddpm.models.GroupNorm (the same function as Flax's, rounded differently, so a new run).
VARIANTS[qs-6500-groupnorm]="$Q --config.train.num_steps=6500"
VARIANTS[qs-6500-groupnorm-seed1]="$Q --config.train.num_steps=6500 --config.train.seed=1"
# Round 9: the shipped config with the time embedding scaling and shifting each block's second
# GroupNorm (model.time_scale_shift), four training seeds.
VARIANTS[qs-6500-scaleshift]="$Q --config.train.num_steps=6500 --config.model.time_scale_shift=True"
VARIANTS[qs-6500-scaleshift-seed1]="$Q --config.train.num_steps=6500 --config.model.time_scale_shift=True --config.train.seed=1"
VARIANTS[qs-6500-scaleshift-seed2]="$Q --config.train.num_steps=6500 --config.model.time_scale_shift=True --config.train.seed=2"
VARIANTS[qs-6500-scaleshift-seed3]="$Q --config.train.num_steps=6500 --config.model.time_scale_shift=True --config.train.seed=3"
# The shipped config since round 9, trained by the code that computes the scale and shift
# from slices of the Dense layer's kernel (SplitDense; the same function): the fresh run of
# experiments/quickstart/README.md was `jaxddpm train` with no arguments, the same overrides.
VARIANTS[qs-6500-scaleshift-splitdense]="$Q --config.train.num_steps=6500 --config.model.time_scale_shift=True"
# Round 10: the scale-shift block without the convolution after each upsampling
# (model.upsample_conv=False; a training step about 8% faster than the shipped config's).
SS="$Q --config.train.num_steps=6500 --config.model.time_scale_shift=True --config.model.upsample_conv=False"
VARIANTS[qs-6500-ss-noupconv]="$SS"
VARIANTS[qs-6500-ss-noupconv-seed1]="$SS --config.train.seed=1"
VARIANTS[ddpm-unet+cosine]="${VARIANTS[ddpm-unet]} ${VARIANTS[cosine]#"$SIMPLE"}"
VARIANTS[ddpm-unet+cosine+ema]="${VARIANTS[ddpm-unet+cosine]} --config.train.ema_decay=0.998 --config.train.ema_start=100"
ORDER=(base cosine ema temb128 batch128 lr2e-3 schedule-cosine wide beta-end-0.05 batch32 ddpm-unet ddpm-unet+cosine
       ddpm-unet+cosine+ema unet-scaled-betas unet-lr2e-3 unet-ema0.99 unet-batch32 unet-batch32-ema0.99 unet-batch16
       unet-c16-batch32 unet-c48-batch32 unet-batch32-1800 native-1800 native native-cosine native-batch16 native-c48
       native-cosine-dropout0.1 native-cosine-attn8 native-cosine-ema0.999 native-cosine-2levels-4900 native-cosine-2levels
       native-cosine-2levels-lr2e-3 native-cosine-2levels-2blocks native-cosine-2levels-lr2e-3-groups8
       native-cosine-2levels-lr2e-3-noattn native-cosine-2levels-lr2e-3-c24-8000 native-cosine-2levels-lr3e-3-5500
       native-cosine-2levels-lr3e-3-4750 native-cosine-2levels-lr3e-3-5500-groups8 qs-lr5e-3 qs-seed1 qs-seed2 qs-ema0.999 qs-b2-0.99
       qs-noattn-6000 quickstart qs-stratified qs-clip1 qs-dropout0.1 qs-6500 qs-noattn-6500 qs-6500-seed1 qs-6500-seed2
       qs-6500-groupnorm qs-6500-groupnorm-seed1 qs-6500-scaleshift qs-6500-scaleshift-seed1
       qs-6500-scaleshift-seed2 qs-6500-scaleshift-seed3 qs-6500-scaleshift-splitdense
       qs-6500-ss-noupconv qs-6500-ss-noupconv-seed1)
SEEDS=${SEEDS:-3}
NUM=${NUM:-297}   # one group of the held-out set's size per seed
# Sampler settings evaluated, separated by ";" (default: ancestral and DDIM-50).
IFS=';' read -r -a SAMPLERS <<< "${SAMPLERS:- ;--sampler ddim --steps 50}"

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
    if [ "${JUDGE16:-1}" = 1 ] && [ "$(python -c 'import json, sys; print(json.load(open(sys.argv[1]))["data"]["image_size"])' "$dir/config.json")" != 16 ]; then
      # shellcheck disable=SC2086
      python experiments/quickstart/judge_upscaled.py "$dir" --size 16 --seeds "$SEEDS" --num-samples "$NUM" $sampler | tee -a "$dir/eval.log"
    fi
  done
done
