#!/usr/bin/env bash
# One device call: laser_jax and the PyTorch + Hugging Face baseline side by side, each pair
# back to back, in priority order, each step under its own time cap so that a slow step cannot
# eat the rest of the call. Every bench step writes its JSON rows the moment they are measured,
# so a step cut off by its cap keeps what it had measured.
#
#   bash bench/run_device.sh BASELINE.py OUTDIR [PHASE] [SECONDS]
#
# PHASE q06 (default, 540 s): the Qwen3-0.6B pairs - LoRA step, full fine-tuning step, encode at
#   batch 8 and 64 with K=1 and K=3 (profiled) - then our encode with unrolled soft steps
#   (model.unroll_soft_steps), then the loss agreement if time is left.
# PHASE q8b (300 s): the Qwen3-8B pairs - our LoRA step against the baseline with --ckpt views
#   (it keeps the KV cache, as ours does: like for like), and encoding at batch 8 and 64.
# BASELINE.py is the shared torch_baseline.py (not part of this project; copy it into the
# git-ignored .bench_shared/ and carry that). OUTDIR gets one JSON per step plus log.txt.
# SECONDS overrides the phase's budget. PROF=DIR: profiler traces (default /tmp/laser_profiles;
# the JSON rows hold their summaries). DRY=1: print each step's cap and command, run nothing
# (checks the plan on any machine: tests/test_bench.py runs it).
set -u
BASELINE=$1
OUT=$2
PHASE=${3:-q06}
case $PHASE in
  q06) BUDGET=${4:-540} ;;
  q8b) BUDGET=${4:-300} ;;
  *) echo "unknown phase $PHASE (q06 or q8b)" >&2; exit 2 ;;
esac
mkdir -p "$OUT"
START=$(date +%s)
PROF=${PROF:-/tmp/laser_profiles}

step() {  # step NAME CAP_SECONDS COMMAND...
  local name=$1 cap=$2; shift 2
  local left=$(( BUDGET - ($(date +%s) - START) ))
  if (( left < 20 )); then echo "[skip] $name: ${left}s left" | tee -a "$OUT/log.txt"; return; fi
  (( cap > left )) && cap=$left
  if [[ -n ${DRY:-} ]]; then echo "[dry] $name (cap ${cap}s): $*" | tee -a "$OUT/log.txt"; return; fi
  echo "[run] $name (cap ${cap}s): $*" | tee -a "$OUT/log.txt"
  local t0=$(date +%s)
  timeout "$cap" "$@" >>"$OUT/log.txt" 2>&1
  echo "[done] $name rc=$? in $(( $(date +%s) - t0 ))s" | tee -a "$OUT/log.txt"
}

[[ -z ${DRY:-} ]] && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >>"$OUT/log.txt" 2>&1
# Caps: the measured durations of the 2026-11-27 H200 calls (bench/results/h200_2026-11-27_cudnn/
# call*_log.txt) plus about 40% for the profile; they add up to the phase budget.
if [[ $PHASE == q06 ]]; then
  Q06="--arch qwen3-0.6b --warmup 2 --iters 5"
  step jax_q06_lora 95 python bench/bench_laser.py $Q06 --only train --attn cudnn --remat full \
    --profile "$PROF/train" --out "$OUT/jax_q06_lora.json"
  step torch_q06_lora 60 python "$BASELINE" $Q06 --only train --out "$OUT/torch_q06_lora.json"
  step jax_q06_full 60 python bench/bench_laser.py $Q06 --only train --full --attn cudnn --remat full \
    --out "$OUT/jax_q06_full.json"
  step torch_q06_full 45 python "$BASELINE" $Q06 --only train --full --out "$OUT/torch_q06_full.json"
  step jax_q06_enc 70 python bench/bench_laser.py $Q06 --only encode --attn cudnn --enc-batches 8,64 --enc-K 1,3 \
    --profile "$PROF/enc" --out "$OUT/jax_q06_enc.json"
  step torch_q06_enc 45 python "$BASELINE" $Q06 --only encode --enc-batches 8,64 --enc-K 1,3 \
    --out "$OUT/torch_q06_enc.json"
  step jax_q06_enc_unrolled 60 python bench/bench_laser.py $Q06 --only encode --attn cudnn --enc-batches 8,64 \
    --enc-K 1,3 --unroll-soft-steps --out "$OUT/jax_q06_enc_unrolled.json"
  step loss_agreement_q06 90 python bench/loss_agreement.py "$BASELINE" --arch qwen3-0.6b --attn cudnn \
    --remat full --out "$OUT/loss_agreement_q06.json"
else
  Q8="--arch qwen3-8b --warmup 1 --iters 3"
  step jax_q8b_lora 80 python bench/bench_laser.py $Q8 --only train --attn cudnn --remat full \
    --out "$OUT/jax_q8b_lora.json"
  step torch_q8b_lora 100 python "$BASELINE" $Q8 --only train --ckpt views --out "$OUT/torch_q8b_lora.json"
  step jax_q8b_enc 55 python bench/bench_laser.py $Q8 --only encode --attn cudnn --enc-batches 8,64 --enc-K 1,3 \
    --out "$OUT/jax_q8b_enc.json"
  step torch_q8b_enc 60 python "$BASELINE" $Q8 --only encode --enc-batches 8,64 --enc-K 1,3 \
    --out "$OUT/torch_q8b_enc.json"
fi
echo "[total] $(( $(date +%s) - START ))s" | tee -a "$OUT/log.txt"
