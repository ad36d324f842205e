"""The run configuration: every field with its default and meaning, validation, converters.

Files under `configs/` start from `base_config()` and change what their run needs; any
field can be overridden on the command line as `--config.a.b=value`. The defaults are the
authors' / paper's settings (spec section 6) for Qwen3-0.6B.
"""
from __future__ import annotations

from typing import List

import ml_collections

from laser_jax.data.errors import ConfigError
from laser_jax.data.tasks import DEFAULT_TASK, TASKS, parse_options
from laser_jax.model.config import PRESET_ALIASES, PRESETS, field_problems, resolve_attention_impl

ARCH_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
               "num_attention_heads", "num_key_value_heads", "head_dim")


def base_config() -> ml_collections.ConfigDict:
    """Every field of a run config with its default (the authors' Qwen3-0.6B settings)."""
    c = ml_collections.ConfigDict()
    for name, section in (("model", _model_section), ("lora", _lora_section), ("data", _data_section),
                          ("laser", _laser_section), ("train", _train_section),
                          ("checkpoint", _checkpoint_section), ("mesh", _mesh_section), ("eval", _eval_section),
                          ("pretrain", _pretrain_section)):  # pretrain: issue 15
        setattr(c, name, section())
    return c


def _model_section() -> ml_collections.ConfigDict:
    """The decoder: architecture source, dtypes, compute options."""
    m = ml_collections.ConfigDict()
    m.preset = "qwen3_0_6b"      # architecture when init_from is empty (see model/config.py PRESETS)
    m.init_from = ""             # Hugging Face directory or GGUF file to start from; "" = random init from preset
    m.tokenizer = ""             # tokenizer directory (or GGUF file); "" = init_from (or the synthetic task's)
    m.param_dtype = "float32"    # stored parameters / optimizer state dtype
    m.compute_dtype = "bfloat16"  # matmul and activation dtype (norms, softmax, losses stay float32)
    m.scan_layers = True         # lax.scan over layers (False unrolls: faster compile for tiny models)
    m.unroll_soft_steps = False  # soft-token steps with the layer loop unrolled (launch-bound GPUs)
    m.remat_policy = "none"      # none | full | dots | dots_no_batch | qkv_proj (activation recompute)
    m.attention_impl = "auto"    # auto: cudnn on a GPU in bf16/fp16, splash on a TPU, else JAX's default
                                 # | "" (JAX picks) | xla | cudnn (flash for full-sequence passes)
                                 # | splash (Pallas TPU kernel) | xla_right_padded (testing)
    for name in ARCH_FIELDS:     # 0 = the preset's value; set to shrink a preset (smoke runs)
        setattr(m, name, 0)
    return m


def _lora_section() -> ml_collections.ConfigDict:
    """LoRA adapters (rank 0 = full fine-tuning)."""
    lo = ml_collections.ConfigDict()
    lo.rank = 64                 # LoRA rank; 0 = full fine-tuning
    lo.alpha = 32.0              # LoRA scale alpha (update scaled by alpha / rank)
    lo.dropout = 0.1             # dropout on the adapter input during training (keep rounded to 1/65536)
    lo.targets = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"  # adapted projections
    return lo


def _data_section() -> ml_collections.ConfigDict:
    """Training data, its formatting and the input pipeline."""
    d = ml_collections.ConfigDict()
    d.train_files = ""           # JSONL path/glob, HF save_to_disk dir, ArrayRecord file or TFDS dir
    d.synthetic = False          # generate the embedded synthetic task into WORKDIR/data when needed
    d.synthetic_seed = 0         # seed of the generated task
    d.synthetic_task = DEFAULT_TASK  # which generated task: arithmetic | hops (laser_jax/data/tasks/)
    d.synthetic_options = ""     # its generator options, "key=value,..." (e.g. "facts=query"; "" = the task's defaults)
    d.eval_dir = ""              # BRIGHT-format directory evaluated at the end ("" = none)
    d.shuffle = True             # seeded shuffle and document choice per epoch; False = file order
    d.group_size = 2             # documents per query: 1 positive + (G-1) hard negatives
    d.query_max_len = 512        # query tokens (right truncation)
    d.doc_max_len = 512          # document tokens
    d.explicit_max_len = 1024    # query + reasoning tokens of the explicit view
    d.query_template = "Instruct: {instruction}\nQuery: {query}"  # spec section 5
    d.chat_template = True       # wrap texts in the tokenizer's chat template (authors' Qwen3 runs)
    d.segment_rule = "linspace"  # downsampling of segment ends: linspace (code) | paper
    d.split_mode = "code"        # segment-end tokens: code ("\n\n" id) | any_double_newline
    d.skip_bad_records = False   # skip and count malformed records instead of failing
    d.pad_multiple = 16          # padded lengths are multiples of this
    d.bucket_fractions = (0.125, 0.25, 0.5, 1.0)  # length buckets as fractions of the max lengths
    d.num_threads = 2            # grain reader threads
    d.prefetch = 4               # batches prepared ahead
    # train.objective=causal_lm only (issue 15; data/lm_pipeline.py):
    d.lm_format = "auto"         # auto | text (JSONL "text" field) | reasonemb (query + reasoning);
                                 # with data.synthetic: the task's queries + reasoning and its passages
    d.lm_max_len = 0             # tokens per LM row, EOS included (longer rows keep their start); 0 = explicit_max_len + 1
    d.lm_num_widths = 4          # padded widths: this many length quantiles of the rows (compiled shapes)
    d.lm_sort_batches = 1        # >1: rows length-sorted within windows of this many batches (less padding);
                                 # 1 = none. On the synthetic task grouping (32) cut the LM's greedy accuracy at
                                 # 1500 steps from 99.7% to 40.7%: batches of one length class learn much slower
    d.lm_pack_len = 0            # >0: pack documents into rows of exactly this many tokens (attention and
                                 # positions kept inside each document; data/lm_packing.py); 0 = one
                                 # document per row, padded per batch (lm_num_widths, lm_sort_batches)
    d.lm_corpus = ""             # a corpus.jsonl whose passages (`content`) join the rows ("" = none; with
                                 # data.synthetic: the generated task's)
    return d


def _laser_section() -> ml_collections.ConfigDict:
    """The LaSER method: thinking steps, temperatures, loss weights, teacher."""
    la = ml_collections.ConfigDict()
    la.num_thinking_steps = 3    # K latent steps (1 = plain last-token retriever)
    la.soft_token = "expected_embedding"  # what each of the K-1 soft steps is fed: the paper's
                                 # softmax(W_lm h) @ E | pause (one learned vector, the same for every
                                 # step and input: the "extra positions alone" control, issue 23)
    la.tau = 0.02                # contrastive temperature (both views)
    la.tau_kd = 0.02             # output-level KL temperature
    la.tau_mid = 0.05            # trajectory KL temperature (authors' code; paper: 0.02)
    la.lambda_latent = 1.0       # weight of the latent contrastive loss (0 = train the explicit view alone)
    la.lambda_explicit = 1.0     # weight of the explicit contrastive loss (lambda1)
    la.lambda_kl_out = 10.0      # weight of the output KL (lambda2)
    la.lambda_kl_mid = 0.1       # weight of the trajectory KL (lambda3)
    la.in_batch_negatives = True  # score against every document of the global batch (False: own group)
    la.teacher_from = ""         # checkpoint/HF dir of a frozen explicit-view teacher ("no co-learning")
    return la


def _train_section() -> ml_collections.ConfigDict:
    """The optimizer, its schedule, logging and non-finite steps."""
    t = ml_collections.ConfigDict()
    t.batch_size = 8             # queries per optimizer step, global
    t.grad_accum_steps = 1       # micro-batches per step (each sees only its own in-batch negatives)
    t.cache_chunk_size = 0       # >0: GradCache-style step over chunks of this many queries (all in-batch negatives kept)
    t.num_steps = 0              # optimizer steps; 0 = one epoch
    t.learning_rate = 1e-4       # peak AdamW learning rate
    t.warmup_ratio = 0.1         # linear warm-up fraction of the steps, then linear decay to 0
    t.weight_decay = 0.0         # AdamW weight decay
    t.adam_b1 = 0.9
    t.adam_b2 = 0.999
    t.adam_eps = 1e-8
    t.max_grad_norm = 1.0        # global-norm clipping (0 = off)
    t.seed = 0                   # parameter init, dropout and data order
    t.log_every = 10             # steps between progress lines / metrics rows
    t.nonfinite = "stop"         # on a non-finite loss/gradient: stop (no update) | skip (the update)
    t.peak_tflops = 0.0          # per-device peak for MFU; 0 = from the device kind when known
    # issue 15:
    t.objective = "laser"        # laser | causal_lm (next-token CE over real tokens: LM pretraining)
    t.schedule = "linear"        # decay after the warm-up: linear | cosine
    t.min_lr_ratio = 0.0         # the decay ends at this fraction of the peak learning rate
    t.warmup_steps = 0           # warm-up steps; 0 = warmup_ratio * num_steps
    return t


def _checkpoint_section() -> ml_collections.ConfigDict:
    """Checkpoint frequency and retention."""
    ck = ml_collections.ConfigDict()
    ck.every_steps = 500         # save every N steps (and at the end, and on SIGTERM)
    ck.keep = 3                  # checkpoints kept
    ck.async_save = True         # write checkpoints in the background
    return ck


def _mesh_section() -> ml_collections.ConfigDict:
    """The device mesh."""
    ms = ml_collections.ConfigDict()
    ms.shape = (-1, 1, 1)        # (data, fsdp, tensor) device counts; one -1 = fill with the rest
    ms.num_devices = 0           # use the first N devices only; 0 = all
    return ms


def _eval_section() -> ml_collections.ConfigDict:
    """The held-out evaluation at the end of a run."""
    ev = ml_collections.ConfigDict()
    ev.num_thinking_steps = 0    # K at evaluation; 0 = laser.num_thinking_steps
    ev.max_length = 8192         # tokens per query / document at evaluation
    ev.batch_size = 16
    return ev


def _pretrain_section() -> ml_collections.ConfigDict:
    """The causal-LM pretraining stage before LaSER (train/stages.py, issue 15). It runs when
    num_steps > 0, data.synthetic, train.objective=laser and no model.init_from: the decoder
    (this config's architecture, full training from random init) is trained as an LM on the
    task's queries + reasoning and passages, saved as a Hugging Face directory, scored
    (greedy end-state accuracy on eval/: end number or end entity), and LaSER then starts from it."""
    p = ml_collections.ConfigDict()
    p.num_steps = 0              # LM steps; 0 = no pretraining stage
    p.dir = ""                   # the LM's directory; "" = WORKDIR/lm (point several runs at one shared LM)
    p.batch_size = 32            # rows per step
    p.learning_rate = 3e-3       # peak AdamW learning rate
    p.warmup_steps = 100         # linear warm-up steps
    p.schedule = "cosine"        # decay after the warm-up: cosine | linear
    p.min_lr_ratio = 0.1         # the decay ends at this fraction of the peak
    p.weight_decay = 0.01
    p.adam_b2 = 0.99
    p.max_grad_norm = 1.0        # global-norm clipping (0 = off)
    p.seed = 0                   # LM init and row order
    p.log_every = 100            # steps between progress lines / metrics rows
    p.checkpoint_every = 500     # checkpoint steps (an interrupted stage resumes from the newest)
    p.eval = True                # report greedy end-state (number / entity) accuracy on eval/
    return p


def validate(c: ml_collections.ConfigDict) -> None:
    """Raise ConfigError naming every invalid field (device-independent checks)."""
    problems: List[str] = []
    for section in (_model_problems, _data_problems, _laser_problems, _train_problems, _other_problems,
                    _pretrain_problems):
        problems += section(c)
    if problems:
        raise ConfigError("invalid config:\n  " + "\n  ".join(problems))


class _Problems(list):
    """"field: message" lines; `need(ok, field, message)` adds one when `ok` is false."""

    def need(self, ok, field: str, message: str) -> None:
        if not ok:
            self.append(f"{field}: {message}")


# The run-config fields that become ModelConfig fields (checked by the model's own rules).
_MODEL_FIELDS = {"param_dtype": "model.param_dtype", "compute_dtype": "model.compute_dtype",
                 "remat_policy": "model.remat_policy", "attention_impl": "model.attention_impl",
                 "lora_rank": "lora.rank", "lora_targets": "lora.targets", "lora_alpha": "lora.alpha",
                 "lora_dropout": "lora.dropout", "soft_token": "laser.soft_token"}


def _model_problems(c: ml_collections.ConfigDict) -> List[str]:
    m, lo = c.model, c.lora
    p = _Problems()
    preset = PRESET_ALIASES.get(m.preset, m.preset)
    p.need(m.init_from or preset in PRESETS, "model.preset",
           f"unknown preset {m.preset!r} (known: {', '.join(sorted(PRESETS))})")
    p.need(m.tokenizer or m.init_from or c.data.synthetic, "model.tokenizer",
           "empty; set model.tokenizer or model.init_from to a directory with a Hugging Face tokenizer")
    for f in ARCH_FIELDS:
        p.need(getattr(m, f) >= 0, f"model.{f}", "must be >= 0 (0 = the preset's)")
    fields = dict(param_dtype=m.param_dtype, compute_dtype=m.compute_dtype, remat_policy=m.remat_policy,
                  # "auto" and "" (JAX picks) resolve to valid values on any machine
                  attention_impl=resolve_attention_impl(m.attention_impl, m.compute_dtype, backend="cpu"),
                  lora_rank=lo.rank, lora_targets=lora_targets(lo.targets), lora_alpha=lo.alpha,
                  lora_dropout=lo.dropout, soft_token=soft_token(c))
    p += [f"{_MODEL_FIELDS[name]}: {text}" for name, text in field_problems(fields)]
    return p


def _data_problems(c: ml_collections.ConfigDict) -> List[str]:
    d = c.data
    p = _Problems()
    p.need(d.train_files or d.synthetic, "data.train_files", "empty (set a path, or data.synthetic=True)")
    for f in ("group_size", "query_max_len", "doc_max_len", "explicit_max_len", "pad_multiple"):
        p.need(getattr(d, f) >= 1, f"data.{f}", f"must be >= 1, got {getattr(d, f)}")
    p.need(d.explicit_max_len >= d.query_max_len, "data.explicit_max_len",
           f"{d.explicit_max_len} is shorter than data.query_max_len={d.query_max_len}: the reasoning "
           "would always be cut off")
    p.need(d.num_threads >= 1, "data.num_threads", f"must be >= 1, got {d.num_threads}")
    p.need(d.prefetch >= 0, "data.prefetch", f"must be >= 0, got {d.prefetch}")
    fractions = tuple(d.bucket_fractions or ())
    p.need(all(0 < f <= 1 for f in fractions), "data.bucket_fractions",
           f"{fractions}: each fraction must be in (0, 1]")
    p.need(d.segment_rule in ("linspace", "paper"), "data.segment_rule", "must be linspace or paper")
    p.need(d.split_mode in ("code", "any_double_newline"), "data.split_mode",
           "must be code or any_double_newline")
    p.need(d.synthetic_task in TASKS, "data.synthetic_task",
           f"unknown task {d.synthetic_task!r} (known: {', '.join(sorted(TASKS))})")
    if d.synthetic_task in TASKS:
        try:
            parse_options(d.synthetic_task, d.synthetic_options)
        except ValueError as e:
            p.append(f"data.synthetic_options: {e}")
    return p


def _laser_problems(c: ml_collections.ConfigDict) -> List[str]:
    la = c.laser
    p = _Problems()
    p.need(la.num_thinking_steps >= 1, "laser.num_thinking_steps",
           f"must be >= 1 (K=1 is a plain retriever), got {la.num_thinking_steps}")
    for f in ("tau", "tau_kd", "tau_mid"):
        p.need(getattr(la, f) > 0, f"laser.{f}", "temperatures must be > 0")
    for f in ("lambda_latent", "lambda_explicit", "lambda_kl_out", "lambda_kl_mid"):
        p.need(getattr(la, f) >= 0, f"laser.{f}", "weights must be >= 0")
    return p


def _train_problems(c: ml_collections.ConfigDict) -> List[str]:
    t = c.train
    p = _Problems()
    p.need(t.batch_size >= 1, "train.batch_size", f"must be >= 1, got {t.batch_size}")
    p.need(t.grad_accum_steps >= 1, "train.grad_accum_steps", "must be >= 1")
    p.need(t.batch_size % max(t.grad_accum_steps, 1) == 0, "train.grad_accum_steps",
           f"{t.grad_accum_steps} does not divide train.batch_size={t.batch_size}")
    p.need(t.cache_chunk_size >= 0, "train.cache_chunk_size", "must be >= 0 (0 = off)")
    p.need(not t.cache_chunk_size or t.batch_size % t.cache_chunk_size == 0, "train.cache_chunk_size",
           f"{t.cache_chunk_size} does not divide train.batch_size={t.batch_size}")
    p.need(not (t.cache_chunk_size and t.grad_accum_steps > 1), "train.cache_chunk_size",
           "use either gradient caching or train.grad_accum_steps, not both")
    p.need(t.num_steps >= 0, "train.num_steps", "must be >= 0 (0 = one epoch)")
    p.need(t.learning_rate > 0, "train.learning_rate", "must be > 0")
    p.need(0 <= t.warmup_ratio < 1, "train.warmup_ratio", "must be in [0, 1)")
    p.need(t.nonfinite in ("stop", "skip"), "train.nonfinite", f"{t.nonfinite!r} must be stop or skip")
    p.need(t.max_grad_norm >= 0, "train.max_grad_norm", "must be >= 0 (0 = off)")
    p.need(t.weight_decay >= 0, "train.weight_decay", "must be >= 0")
    for f in ("adam_b1", "adam_b2"):
        p.need(0 <= getattr(t, f) < 1, f"train.{f}", f"must be in [0, 1), got {getattr(t, f)}")
    p.need(t.adam_eps > 0, "train.adam_eps", "must be > 0")
    p.need(t.log_every >= 1, "train.log_every", "must be >= 1")
    # issue 15
    p.need(t.objective in ("laser", "causal_lm"), "train.objective", f"{t.objective!r} must be laser or causal_lm")
    p.need(t.schedule in ("linear", "cosine"), "train.schedule", f"{t.schedule!r} must be linear or cosine")
    p.need(0 <= t.min_lr_ratio <= 1, "train.min_lr_ratio", f"must be in [0, 1], got {t.min_lr_ratio}")
    p.need(t.warmup_steps >= 0, "train.warmup_steps", "must be >= 0 (0 = warmup_ratio)")
    p.need(not (t.objective == "causal_lm" and t.cache_chunk_size), "train.cache_chunk_size",
           "gradient caching is for the LaSER objective; use train.grad_accum_steps with causal_lm")
    d = c.data
    p.need(d.lm_format in ("auto", "text", "reasonemb"), "data.lm_format",
           f"{d.lm_format!r} must be auto, text or reasonemb")
    p.need(d.lm_max_len >= 0, "data.lm_max_len", "must be >= 0 (0 = data.explicit_max_len + 1)")
    p.need(d.lm_num_widths >= 1, "data.lm_num_widths", "must be >= 1")
    p.need(d.lm_sort_batches >= 1, "data.lm_sort_batches", "must be >= 1")
    pack, longest = d.get("lm_pack_len", 0), d.lm_max_len or d.explicit_max_len + 1
    p.need(pack == 0 or pack >= longest, "data.lm_pack_len",
           f"must be 0 (no packing) or hold the longest LM row (data.lm_max_len, else data.explicit_max_len + 1: "
           f"{longest} tokens), got {pack}")
    p.need(not (pack and d.lm_sort_batches > 1), "data.lm_sort_batches",
           "length grouping is for padded LM batches; packed rows (data.lm_pack_len) have no padding to cut: use 1")
    return p


def _other_problems(c: ml_collections.ConfigDict) -> List[str]:
    """checkpoint, mesh and eval."""
    p = _Problems()
    p.need(c.checkpoint.every_steps >= 1, "checkpoint.every_steps", "must be >= 1")
    p.need(c.checkpoint.keep >= 1, "checkpoint.keep", "must be >= 1")
    shape = tuple(c.mesh.shape)
    p.need(len(shape) == 3 and all(s == -1 or s >= 1 for s in shape) and list(shape).count(-1) <= 1,
           "mesh.shape", f"{shape} must be (data, fsdp, tensor) with positive sizes and at most one -1")
    p.need(c.mesh.num_devices >= 0, "mesh.num_devices", "must be >= 0 (0 = all devices)")
    ev = c.eval
    p.need(ev.num_thinking_steps >= 0, "eval.num_thinking_steps", "must be >= 0 (0 = laser.num_thinking_steps)")
    p.need(ev.max_length >= 1, "eval.max_length", f"must be >= 1, got {ev.max_length}")
    p.need(ev.batch_size >= 1, "eval.batch_size", f"must be >= 1, got {ev.batch_size}")
    return p


def _pretrain_problems(c: ml_collections.ConfigDict) -> List[str]:
    """The pretrain section (issue 15); absent in configs built before it."""
    p = _Problems()
    if "pretrain" not in c:
        return p
    s = c.pretrain
    p.need(s.num_steps >= 0, "pretrain.num_steps", "must be >= 0 (0 = no pretraining stage)")
    p.need(s.batch_size >= 1, "pretrain.batch_size", f"must be >= 1, got {s.batch_size}")
    p.need(s.learning_rate > 0, "pretrain.learning_rate", "must be > 0")
    p.need(s.warmup_steps >= 0, "pretrain.warmup_steps", "must be >= 0")
    p.need(s.schedule in ("linear", "cosine"), "pretrain.schedule", f"{s.schedule!r} must be linear or cosine")
    p.need(0 <= s.min_lr_ratio <= 1, "pretrain.min_lr_ratio", "must be in [0, 1]")
    p.need(s.weight_decay >= 0, "pretrain.weight_decay", "must be >= 0")
    p.need(0 <= s.adam_b2 < 1, "pretrain.adam_b2", "must be in [0, 1)")
    p.need(s.max_grad_norm >= 0, "pretrain.max_grad_norm", "must be >= 0 (0 = off)")
    p.need(s.log_every >= 1, "pretrain.log_every", "must be >= 1")
    p.need(s.checkpoint_every >= 1, "pretrain.checkpoint_every", "must be >= 1")
    return p


def soft_token(c: ml_collections.ConfigDict) -> str:
    """`laser.soft_token` (the paper's expected embedding in configs written before it)."""
    return c.laser.get("soft_token", "expected_embedding")


def lora_targets(targets: str) -> tuple:
    """`lora.targets` ("q_proj,v_proj") -> ModelConfig.lora_targets."""
    return tuple(t.strip() for t in targets.split(",") if t.strip())


def shrink_for_smoke(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The `:smoke` variant of any config: same family and method, a tiny random-init
    model on the generated synthetic task, a few float32 steps on CPU."""
    c.model.init_from = ""
    c.model.tokenizer = ""
    for name, value in dict(vocab_size=768, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                            num_attention_heads=4, num_key_value_heads=2, head_dim=16).items():
        setattr(c.model, name, value)
    c.model.param_dtype = c.model.compute_dtype = "float32"
    c.model.remat_policy = "none"
    c.lora.rank = min(c.lora.rank, 4)
    c.data.train_files = ""
    c.data.synthetic = True
    c.data.eval_dir = ""
    c.data.query_max_len, c.data.doc_max_len, c.data.explicit_max_len = 64, 48, 128
    c.data.bucket_fractions = (1.0,)
    c.train.batch_size = 4
    c.train.grad_accum_steps = 1
    c.train.num_steps = 3
    c.train.log_every = 1
    c.checkpoint.every_steps = 2
    c.mesh.shape = (1, 1, 1)
    c.mesh.num_devices = 1
    return c


def apply_variant(c: ml_collections.ConfigDict, arg, name: str) -> ml_collections.ConfigDict:
    """Config-file variants: None (the real run) or "smoke"."""
    if arg in (None, ""):
        return c
    if arg == "smoke":
        return shrink_for_smoke(c)
    raise ValueError(f"{name}: unknown variant {arg!r} (known: smoke)")
