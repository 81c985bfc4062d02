#!/usr/bin/env bash
# Before/after measurement of the CPU tuning (jaxddpm/kernels/xla_flags.py, the ConvPolicy forms,
# the phases transposed convolution), one after the other on the same machine:
#   before: XLA's default convolutions (YNNPACK), autodiff gradients, sub-pixel upsampling
#   after:  the defaults
# Usage: bash scripts/bench_cpu_tuning.sh [extra jaxddpm bench flags]
set -euo pipefail
JAXDDPM_XLA_FLAGS=0 jaxddpm bench --conv-impl xla --upsample-impl subpixel --out experiments/bench/before-cpu-tuning "$@"
jaxddpm bench "$@"
