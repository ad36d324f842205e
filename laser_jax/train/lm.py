"""The causal-LM objective's pieces of a training run (train.objective=causal_lm, issue 15).

The run itself is the ordinary one (trainer.set_up, loop.train, the same step, optimizer,
mesh, checkpoints, metrics and faults); these are the few places where an LM run differs:
its data (data/lm_pipeline.py), its device batch, its token count and its progress line.
"""
from __future__ import annotations

import logging
import os

import jax
import numpy as np

from laser_jax.data import lm_pipeline
from laser_jax.data.tasks.layout import CORPUS_FILE, read_meta
from laser_jax.method.lm_objective import LM_BATCH_KEYS
from laser_jax.train.flops import StepFlops, train_step_flops

log = logging.getLogger("laser_jax")


def is_lm(config) -> bool:
    return config.train.get("objective", "laser") == "causal_lm"


def open_source(config, paths, tokenizer) -> lm_pipeline.LMSource:
    """The LM rows of a run. The passages of data.lm_corpus (with data.synthetic by default
    the generated task's LM corpus: meta.json "lm_corpus", e.g. corpus.jsonl) join the other rows."""
    corpus = config.data.lm_corpus
    if not corpus and config.data.synthetic:
        task_dir = os.path.dirname(paths.train_files)
        corpus = os.path.join(task_dir, (read_meta(task_dir) or {}).get("lm_corpus", CORPUS_FILE))
        corpus = corpus if os.path.isfile(corpus) else ""
    if corpus and not os.path.isfile(corpus):
        raise FileNotFoundError(f"data.lm_corpus: {corpus}: no such file")
    return lm_pipeline.open_lm_source(config, paths.train_files, tokenizer, corpus)


def options_and_steps(config, source, process_index: int, process_count: int):
    """(LMOptions, total steps: train.num_steps or one epoch) of an LM run. Packed rows are
    packed here once, so a document too long for data.lm_pack_len fails at set-up."""
    options = lm_pipeline.lm_options(config, process_index, process_count)
    if options.pack_len:
        packed = lm_pipeline.PackedStepBatcher(source, 0, options)  # the pad id plays no part in the count
        log.info("packed %d LM rows into %d rows of %d tokens (%.1f%% real tokens)", len(source), len(packed.rows),
                 options.pack_len, 100 * packed.fill)
        return options, config.train.num_steps or packed.steps_per_epoch
    return options, config.train.num_steps or lm_pipeline.steps_per_epoch(len(source), options)


def iterator(source, tokenizer, options):
    return lm_pipeline.lm_train_iterator(source, tokenizer, options)


def global_batch(host_batch: dict, batch_sharding) -> dict:
    """Host-local LM batch -> global arrays (every host pads to the same width: the
    width comes from the global batch)."""
    out = {}
    for key in (k for k in LM_BATCH_KEYS if k in host_batch):  # "segments": packed batches
        local = host_batch[key]
        shape = (local.shape[0] * jax.process_count(),) + local.shape[1:]
        out[key] = jax.make_array_from_process_local_data(batch_sharding, local, shape)
    return out


def real_tokens(host_batch: dict) -> int:
    """Real (non-padding) tokens of this host's LM batch."""
    return int(np.sum(host_batch["mask"]))


def step_flops(cfg, shape) -> StepFlops:
    """FLOPs of one LM step on ids of `shape` [B, T]: the backbone as for one explicit-view
    pass of the same positions (flops.train_step_flops), plus the LM head at every position
    (forward, activation gradients, and the table's gradients when it trains)."""
    b, t = shape
    base = train_step_flops(cfg, {"q_ids": (0, 0), "d_ids": (0, 0), "e_ids": (b, t - 1)}, 1, True)
    head = b * t * 2.0 * cfg.vocab_size * cfg.hidden_size * (2.0 + (0.0 if cfg.lora_rank else 1.0))
    return StepFlops(model_6pt=base.model_6pt, executed=base.executed + head)


def describe(run) -> str:
    c, cfg = run.config, run.model_cfg
    start = f"from {c.model.init_from}" if c.model.init_from else "random init"
    pack = c.data.get("lm_pack_len", 0)
    rows = f"{len(run.source)} documents packed into rows of {pack} tokens" if pack else f"{len(run.source)} rows"
    return (f"causal LM: {cfg.family} {cfg.num_params() / 1e6:.1f}M params ({start}, "
            f"{'LoRA r=%d' % c.lora.rank if c.lora.rank else 'full training'}), mesh {dict(run.mesh.shape)}, "
            f"{rows}, {run.total_steps} steps of {c.train.batch_size} rows")
