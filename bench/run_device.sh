#!/usr/bin/env bash
# One device call: laser_jax and the PyTorch + Hugging Face baseline side by side, in priority
# order, each step under its own time cap so a slow step cannot eat the rest of the call.
#
#   bash bench/run_device.sh BASELINE.py OUTDIR [SECONDS]
#
# BASELINE.py is the shared torch_baseline.py (not part of this project); OUTDIR gets one JSON
# per step plus log.txt. SECONDS (default 540) is the whole script's budget. ONLY=REGEX runs
# only the steps whose names match.
set -u
BASELINE=$1
OUT=$2
BUDGET=${3:-540}
mkdir -p "$OUT"
START=$(date +%s)
COMMON="--arch qwen3-0.6b --warmup 2 --iters 5"

step() {  # step NAME CAP_SECONDS COMMAND...
  local name=$1 cap=$2; shift 2
  [[ $name =~ ${ONLY:-.} ]] || return 0
  local left=$(( BUDGET - ($(date +%s) - START) ))
  if (( left < 30 )); then echo "[skip] $name: ${left}s left" | tee -a "$OUT/log.txt"; return; fi
  (( cap > left )) && cap=$left
  echo "[run] $name (cap ${cap}s): $*" | tee -a "$OUT/log.txt"
  local t0=$(date +%s)
  timeout "$cap" "$@" >>"$OUT/log.txt" 2>&1
  echo "[done] $name rc=$? in $(( $(date +%s) - t0 ))s" | tee -a "$OUT/log.txt"
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >>"$OUT/log.txt" 2>&1
# one process per remat policy: peak_bytes_in_use is per process
step jax_q06_train_cudnn_full 90 python bench/bench_laser.py $COMMON --only train --attn cudnn \
  --remat full --out "$OUT/jax_q06_train_cudnn_full.json"
step jax_q06_train_cudnn_none 90 python bench/bench_laser.py $COMMON --only train --attn cudnn \
  --remat none --out "$OUT/jax_q06_train_cudnn_none.json"
step torch_q06_train 80 python "$BASELINE" $COMMON --only train --out "$OUT/torch_q06_train.json"
step jax_q06_enc_cudnn 90 python bench/bench_laser.py $COMMON --only encode --attn cudnn \
  --enc-batches 8,64 --out "$OUT/jax_q06_enc_cudnn.json"
step torch_q06_enc 60 python "$BASELINE" $COMMON --only encode --enc-batches 8,64 --out "$OUT/torch_q06_enc.json"
step jax_q06_full_cudnn 80 python bench/bench_laser.py $COMMON --only train --full --attn cudnn \
  --remat full --out "$OUT/jax_q06_full_cudnn.json"
step torch_q06_full 60 python "$BASELINE" $COMMON --only train --full --out "$OUT/torch_q06_full.json"
step jax_q8b_train_cudnn 180 python bench/bench_laser.py --arch qwen3-8b --warmup 1 --iters 3 \
  --only train --attn cudnn --remat full --out "$OUT/jax_q8b_train_cudnn.json"
# experiments (bench/NOTES.md): unrolled layer stack for encoding; rbg PRNG for LoRA dropout
step jax_q06_enc_cudnn_unrolled 120 python bench/bench_laser.py $COMMON --only encode --attn cudnn \
  --unroll-layers --enc-batches 8,64 --out "$OUT/jax_q06_enc_cudnn_unrolled.json"
step jax_q06_train_cudnn_full_rbg 90 python bench/bench_laser.py $COMMON --only train --attn cudnn \
  --remat full --prng rbg --out "$OUT/jax_q06_train_cudnn_full_rbg.json"
echo "[total] $(( $(date +%s) - START ))s" | tee -a "$OUT/log.txt"
