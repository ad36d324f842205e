"""The causal-LM objective's pieces of a training run (train.objective=causal_lm, issue 15).

The run itself is the ordinary one (trainer.set_up, loop.train, the same step, optimizer,
mesh, checkpoints, metrics and faults); these are the few places where an LM run differs:
its data (data/lm_pipeline.py), its device batch, its token count and its progress line.
"""
from __future__ import annotations

import os

import jax
import numpy as np

from laser_jax.data import lm_pipeline
from laser_jax.method.lm_objective import LM_BATCH_KEYS


def is_lm(config) -> bool:
    return config.train.get("objective", "laser") == "causal_lm"


def set_up_data(config, paths, tokenizer, process_index: int, process_count: int):
    """(source, options, total_steps) of an LM run. The passages of data.lm_corpus (with
    data.synthetic by default the generated task's corpus.jsonl) join the other rows."""
    corpus = config.data.lm_corpus
    if not corpus and config.data.synthetic:
        corpus = os.path.join(os.path.dirname(paths.train_files), "corpus.jsonl")
        corpus = corpus if os.path.isfile(corpus) else ""
    if corpus and not os.path.isfile(corpus):
        raise FileNotFoundError(f"data.lm_corpus: {corpus}: no such file")
    source = lm_pipeline.open_lm_source(config, paths.train_files, tokenizer, corpus)
    options = lm_pipeline.lm_options(config, process_index, process_count)
    total = config.train.num_steps or lm_pipeline.steps_per_epoch(len(source), options)
    return source, options, total


def iterator(source, tokenizer, options):
    return lm_pipeline.lm_train_iterator(source, tokenizer, options)


def global_batch(host_batch: dict, batch_sharding) -> dict:
    """Host-local LM batch -> global arrays (every host pads to the same width: the
    width comes from the global batch)."""
    out = {}
    for key in LM_BATCH_KEYS:
        local = host_batch[key]
        shape = (local.shape[0] * jax.process_count(),) + local.shape[1:]
        out[key] = jax.make_array_from_process_local_data(batch_sharding, local, shape)
    return out


def step_tokens(host_batch: dict) -> tuple:
    """(real tokens on this host, positions run through the backbone on this host)."""
    return int(np.sum(host_batch["mask"])), int(np.prod(host_batch["ids"].shape))


def progress_line(step: int, total: int, m: dict, row: dict, mfu: str) -> str:
    return (f"step {step}/{total} | lm loss {m['loss']:.4f} | token acc {m['acc']:.3f} | "
            f"lr {row['learning_rate']:.2e} | {row['step_time_s']:.3f}s/step | {row['tokens_per_s']:.0f} tok/s | "
            f"{row['tflops_per_s']:.3f} TFLOP/s/device{mfu}")


def describe(run) -> str:
    c, cfg = run.config, run.model_cfg
    start = f"from {c.model.init_from}" if c.model.init_from else "random init"
    return (f"causal LM: {cfg.family} {cfg.num_params() / 1e6:.1f}M params ({start}, "
            f"{'LoRA r=%d' % c.lora.rank if c.lora.rank else 'full training'}), mesh {dict(run.mesh.shape)}, "
            f"{len(run.source)} rows, {run.total_steps} steps of {c.train.batch_size} rows")
