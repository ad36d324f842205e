#!/usr/bin/env bash
# One device call: laser_jax and the PyTorch + Hugging Face baseline side by side, in priority
# order, each step under its own time cap so a slow step cannot eat the rest of the call.
#
#   bash bench/run_device.sh BASELINE.py OUTDIR [SECONDS]
#
# BASELINE.py is the shared torch_baseline.py (not part of this project); OUTDIR gets one JSON
# per step plus log.txt. SECONDS (default 540) is the whole script's budget. ONLY=REGEX runs
# only the steps whose names match (e.g. ONLY='q8b' for the 8B steps). PROF=DIR: where the
# profiler traces go (default /tmp/laser_profiles; the JSON rows hold their summaries).
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
PROF=${PROF:-/tmp/laser_profiles}  # traces stay on the machine; their summaries go into the JSON rows
# Encoding: the current path, then soft steps with the layer loop unrolled (K=1 has no soft step)
step jax_q06_enc_cudnn 100 python bench/bench_laser.py $COMMON --only encode --attn cudnn \
  --enc-batches 8,64 --profile "$PROF/enc" --out "$OUT/jax_q06_enc_cudnn.json"
step jax_q06_enc_unroll 90 python bench/bench_laser.py $COMMON --only encode --attn cudnn --unroll-soft-steps \
  --enc-batches 8,64 --enc-K 3 --profile "$PROF/enc_unroll" --out "$OUT/jax_q06_enc_unroll.json"
step torch_q06_enc 60 python "$BASELINE" $COMMON --only encode --enc-batches 8,64 --out "$OUT/torch_q06_enc.json"
# Training (one process per variant: peak_bytes_in_use is per process)
step jax_q06_train_cudnn_full 100 python bench/bench_laser.py $COMMON --only train --attn cudnn \
  --remat full --profile "$PROF/train" --out "$OUT/jax_q06_train_cudnn_full.json"
step jax_q06_train_unroll 100 python bench/bench_laser.py $COMMON --only train --attn cudnn --remat full \
  --unroll-soft-steps --out "$OUT/jax_q06_train_unroll.json"
step torch_q06_train 80 python "$BASELINE" $COMMON --only train --out "$OUT/torch_q06_train.json"
# Do both implementations compute the same losses? (fp32 and bf16, same weights and batch)
step loss_agreement_q06 150 python bench/loss_agreement.py "$BASELINE" --arch qwen3-0.6b --attn cudnn \
  --remat full --out "$OUT/loss_agreement_q06.json"
step jax_q06_full_cudnn 80 python bench/bench_laser.py $COMMON --only train --full --attn cudnn \
  --remat full --out "$OUT/jax_q06_full_cudnn.json"
step torch_q06_full 60 python "$BASELINE" $COMMON --only train --full --out "$OUT/torch_q06_full.json"
# Qwen3-8B: encoding (never measured yet), then training
step jax_q8b_enc 150 python bench/bench_laser.py --arch qwen3-8b --warmup 1 --iters 3 --only encode --attn cudnn \
  --enc-batches 8,64 --out "$OUT/jax_q8b_enc.json"
step torch_q8b_enc 120 python "$BASELINE" --arch qwen3-8b --warmup 1 --iters 3 --only encode --enc-batches 8,64 \
  --out "$OUT/torch_q8b_enc.json"
step jax_q8b_train_cudnn 180 python bench/bench_laser.py --arch qwen3-8b --warmup 1 --iters 3 \
  --only train --attn cudnn --remat full --out "$OUT/jax_q8b_train_cudnn.json"
step torch_q8b_train 200 python "$BASELINE" --arch qwen3-8b --warmup 1 --iters 3 --only train --ckpt layers \
  --out "$OUT/torch_q8b_train.json"
echo "[total] $(( $(date +%s) - START ))s" | tee -a "$OUT/log.txt"
