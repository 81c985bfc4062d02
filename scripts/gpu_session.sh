#!/usr/bin/env bash
# What one run on a lent GPU machine measures, as one command (run from the repository root):
#
#     bash scripts/gpu_session.sh OUTDIR
#
#   1. OUTDIR/env.txt: nvidia-smi and package versions;
#   2. `jaxddpm bench` (float32 pinned on both sides; adds the torch.compile and bfloat16
#      rows on a GPU): OUTDIR/bench.log and OUTDIR/<device>.json;
#   3. `jaxddpm bench --conv-impl cpu` without the GPU-only rows (does Winograd pay on a GPU
#      too?): OUTDIR/bench-conv-impl-cpu.log and OUTDIR/conv-impl-cpu/<device>.json;
#   4. scripts/bench_forms.py (transposed-convolution forms, bfloat16, the CPU forms in
#      bfloat16, against torch eager with and without cudnn.benchmark): OUTDIR/variants.json;
#   5. `python -m parity` with JAX on the GPU (PyTorch on the CPU): OUTDIR/parity-gpu.txt.
# Each stage has its own time limit (seconds: BENCH_S, BENCH_CPU_FORMS_S, VARIANTS_S, PARITY_S), so one that
# fails or runs long does not cost the others. Wheels in .whl/ (packages the machine lacks)
# are installed into /tmp/site first. The machine needs JAX with CUDA and PyTorch with CUDA.
# The lent H100 of 2026-11-26 (jax 0.11.2, torch 2.11.0+cu130, Python 3.12) lacked
# ml_collections; its wheel and those of the flax and optax versions tested here were
# fetched into .whl/ (pip download --no-deps --only-binary=:all: --python-version 3.12
# ml_collections==1.1.0 flax==0.12.8 optax==0.2.8) and carried. The stage limits add up to
# 570 s; the machine start and the setup come on top.
set -u
out=${1:?usage: bash scripts/gpu_session.sh OUTDIR}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH="/tmp/site:$PYTHONPATH"
fi
{
  date -u
  nvidia-smi
  python3 -c "import sys, jax, flax, optax, torch; print(sys.version); print('jax', jax.__version__, jax.devices()); \
print('flax', flax.__version__, 'optax', optax.__version__, 'torch', torch.__version__, torch.cuda.is_available())"
} > "$out/env.txt" 2>&1
if ! python3 -c "import jaxddpm, jax; jax.numpy.zeros(1).block_until_ready()" >> "$out/env.txt" 2>&1; then
  echo "import with jaxddpm's XLA:CPU flags failed; running with JAXDDPM_XLA_FLAGS=0" | tee -a "$out/env.txt"
  export JAXDDPM_XLA_FLAGS=0
fi
tail -n 4 "$out/env.txt"

echo "== jaxddpm bench"
timeout "${BENCH_S:-220}" python3 -m jaxddpm.cli bench --reps 30 --sample-reps 3 --out "$out" > "$out/bench.log" 2>&1
echo "rc=$?"; tail -n 16 "$out/bench.log"

echo "== jaxddpm bench --conv-impl cpu (Winograd and the other CPU forms, on the GPU)"
timeout "${BENCH_CPU_FORMS_S:-130}" python3 -m jaxddpm.cli bench --conv-impl cpu --no-gpu-extras --steps-per-call 1 --reps 30 \
  --sample-reps 3 --out "$out/conv-impl-cpu" > "$out/bench-conv-impl-cpu.log" 2>&1
echo "rc=$?"; tail -n 9 "$out/bench-conv-impl-cpu.log"

echo "== variants"
timeout "${VARIANTS_S:-110}" python3 scripts/bench_forms.py --reps 30 --out "$out/variants.json" \
  torch default upsample=dilated upsample=subpixel dtype=bfloat16/impl=cpu torch/cudnn_benchmark=1 > "$out/variants.log" 2>&1
echo "rc=$?"; grep -E '^  "|median|first_over|rror' "$out/variants.log" | tail -n 40

echo "== parity, JAX on the GPU"
timeout "${PARITY_S:-110}" python3 -m parity > "$out/parity-gpu.txt" 2>&1
echo "rc=$?"; grep -E 'FAIL|passed|rror' "$out/parity-gpu.txt" | tail -n 12
