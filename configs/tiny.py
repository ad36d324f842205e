"""The embedded default: a tiny Qwen3-style decoder on the generated multi-step arithmetic
retrieval task (laser_jax.data.synthetic), on CPU in minutes: pretrained as a causal LM on
the task's texts (the pretrain section), then trained with LaSER from that LM.

    python -m laser_jax.train --config=configs/tiny.py --workdir=runs/tiny
    python -m laser_jax.train --config=configs/tiny.py:hops --workdir=runs/tiny_hops

Variants (comma-separated, e.g. `:hops,smoke`): `hops` the entity-hops task
(laser_jax/data/tasks/hops.py: facts in the LM's pretraining texts, one relation and entity
per "\n\n" segment), `hops_query` the hops task with the facts listed in each query
(data.synthetic_options="facts=query"), `smoke` a few steps of each stage for tests.
"""
from laser_jax.train.config import base_config

# Per task variant: generator options and the generated task's longest texts (meta.json
# token_lengths; a test holds them together), its vocabulary (<= model.vocab_size) and
# eval.max_length (>= the longest query and passage).
TASK_VARIANTS = {
    "hops": dict(task="hops", options="", query_max_len=31, doc_max_len=21, explicit_max_len=42,
                 vocab_size=768, eval_max_length=64),
    "hops_query": dict(task="hops", options="facts=query", query_max_len=94, doc_max_len=21,
                       explicit_max_len=105, vocab_size=768, eval_max_length=128),
}


def get_config(arg=None):
    c = base_config()
    c.model.preset = "tiny_qwen3"      # random init
    c.model.vocab_size = 640           # >= the synthetic tokenizer's ~600 tokens
    c.model.hidden_size = 64
    c.model.intermediate_size = 192
    c.model.num_hidden_layers = 2
    c.model.num_attention_heads = 4
    c.model.num_key_value_heads = 2
    c.model.head_dim = 16
    c.model.param_dtype = "float32"
    c.model.compute_dtype = "float32"  # CPU: float32 is as fast and exact
    c.model.scan_layers = False        # unrolled: ~1/3 faster steps on CPU at 2 layers, same compile time
    c.lora.rank = 0                    # full training (the model starts from random weights)
    c.lora.dropout = 0.0
    c.data.synthetic = True            # generate the task into WORKDIR/data when missing
    c.data.chat_template = False       # the tiny tokenizer's texts are short; no chat wrapping
    # Exactly the generated task's longest texts (meta.json token_lengths; a test holds the
    # two together), unrounded: on CPU every padded position costs as much as a real one.
    c.data.query_max_len = 46          # longest formatted query
    c.data.doc_max_len = 33            # longest passage
    c.data.explicit_max_len = 85       # longest query + reasoning
    c.data.pad_multiple = 1
    c.data.bucket_fractions = (1.0,)   # one shape per view: compile once
    c.data.group_size = 2              # 1 positive + 1 near-miss negative (the paper's G)
    c.laser.lambda_kl_out = 1.0
    c.train.batch_size = 32
    c.train.num_steps = 600
    c.train.learning_rate = 1e-3       # from scratch; on dev/ every variant beat 2e-3 (experiments/dev_checks.md)
    c.train.warmup_ratio = 0.05
    c.train.weight_decay = 0.01
    c.train.log_every = 50
    c.checkpoint.every_steps = 100000  # only the final checkpoint
    c.eval.max_length = 64
    c.eval.batch_size = 64
    # Stage 1 (train/stages.py): the decoder pretrained as a causal LM on the task's queries +
    # reasoning and passages, then LaSER starts from it. Documents are packed whole into rows
    # of 128 tokens (data.lm_pack_len; attention and positions stay inside each document):
    # 93% of a row is real tokens, against 66% for the padded rows of random batches, and one
    # batch shape. The greedy end-number accuracy jumps late and follows the number of steps
    # more than the rows per step (dev/, 2026-12-07, pretrain.seed 0 / 1): 12 rows x 1200 steps
    # 99.3 / 93.3; 12 x 1000 95.7 / 85.3; 8 x 1500 93.0 / 92.7; 8 x 1000 71.7; 16 x 1500 98.3;
    # 16 x 750 29.3; padded rows, 32 x 1500 (the earlier default) 99.7, at ~2.2x the work.
    # Rows are batched at random (data.lm_sort_batches=1): length-grouped padded batches
    # reached only 40.7% on eval/ at 1500 steps, random ones 99.7% (2026-11-29).
    c.data.lm_pack_len = 128
    c.pretrain.num_steps = 1200
    c.pretrain.batch_size = 12
    c.pretrain.learning_rate = 3e-3
    c.pretrain.warmup_steps = 100
    c.pretrain.schedule = "cosine"
    c.pretrain.min_lr_ratio = 0.1
    c.pretrain.weight_decay = 0.01
    c.pretrain.adam_b2 = 0.99
    c.pretrain.max_grad_norm = 1.0
    c.pretrain.log_every = 100
    c.pretrain.checkpoint_every = 500
    variants = [v.strip() for v in (arg or "").split(",") if v.strip()]
    unknown = [v for v in variants if v != "smoke" and v not in TASK_VARIANTS]
    if unknown:
        raise ValueError(f"configs/tiny.py: unknown variant {unknown[0]!r} (known: smoke, {', '.join(TASK_VARIANTS)}; "
                         "comma-separated, e.g. hops,smoke)")
    if sum(v in TASK_VARIANTS for v in variants) > 1:
        raise ValueError(f"configs/tiny.py: {arg!r} names more than one task variant")
    for v in variants:
        if v in TASK_VARIANTS:
            _task_variant(c, TASK_VARIANTS[v])
    if "smoke" in variants:            # a few steps of each stage, for tests (the task and model stay as above)
        c.train.num_steps = 4
        c.train.batch_size = 8
        c.train.log_every = 1
        c.checkpoint.every_steps = 2
        c.pretrain.num_steps = 3
        c.pretrain.batch_size = 8
        c.pretrain.warmup_steps = 1
        c.pretrain.log_every = 1
        c.pretrain.checkpoint_every = 2
    return c


def _task_variant(c, v: dict) -> None:
    c.data.synthetic_task = v["task"]
    c.data.synthetic_options = v["options"]
    c.data.query_max_len, c.data.doc_max_len, c.data.explicit_max_len = (
        v["query_max_len"], v["doc_max_len"], v["explicit_max_len"])
    c.model.vocab_size = v["vocab_size"]
    c.eval.max_length = v["eval_max_length"]
