"""The grain training pipeline: step index -> this host's share of that global batch.

The dataset is `grain.MapDataset.range(num_steps).map(StepBatcher)`: element k is built
from global step k alone (epoch e = k // steps_per_epoch, the epoch's record order, rows
[p*B_host, (p+1)*B_host) of the global batch for host p), so it is deterministic, random
access, and its iterator state is just the next step; grain's `get_state`/`set_state`
and Orbax's `grain.checkpoint.CheckpointSave/CheckpointRestore` save and restore it.
Each epoch drops its last N mod global_batch records (a different set per epoch when
shuffling). Batches are numpy dicts (see `batch.build_batch`).
"""
from __future__ import annotations

import sys
import threading
from typing import Dict, Optional

import grain
import numpy as np

from laser_jax.data.batch import build_batch
from laser_jax.data.errors import ConfigError
from laser_jax.data.options import PipelineOptions
from laser_jax.data.sampling import choose_documents, epoch_order
from laser_jax.data.segments import split_token_ids
from laser_jax.data.tokenize import Bucketing, tokenize_batch  # noqa: F401  (re-exported)

__all__ = ["PipelineOptions", "StepBatcher", "steps_per_epoch", "train_dataset",
           "train_iterator", "tokenize_batch", "Bucketing"]


def steps_per_epoch(num_records: int, options: PipelineOptions) -> int:
    """Full global batches in one pass over `num_records` records (remainder dropped)."""
    steps = num_records // options.global_batch_size
    if steps == 0:
        raise ConfigError(f"{num_records} records cannot fill one global batch of "
                          f"{options.global_batch_size} queries "
                          f"({options.batch_size} per host x {options.process_count} hosts)")
    return steps


class StepBatcher:
    """Maps a global step index to this host's batch.

    Args:
      source: random-access records (len / getitem -> `Record`), e.g. `open_records(...)`.
      tokenizer: Hugging Face tokenizer.
      options: `PipelineOptions`.
    """

    def __init__(self, source, tokenizer, options: PipelineOptions):
        self.source, self.tokenizer, self.options = source, tokenizer, options
        checked = getattr(source, "group_size", None)
        if options.group_size > 1 and checked is not None and checked < options.group_size:
            raise ConfigError(f"the records were validated for group_size={checked} (negatives "
                              f"optional) but the pipeline uses group_size={options.group_size}"
                              f"; open them with group_size={options.group_size}")
        self.steps_per_epoch = steps_per_epoch(len(source), options)
        self.split_ids = split_token_ids(tokenizer, options.split_mode)
        self._orders: Dict[int, np.ndarray] = {}
        self._lock = threading.Lock()

    def _order(self, epoch: int) -> np.ndarray:
        with self._lock:
            if epoch not in self._orders:
                if len(self._orders) >= 2:
                    self._orders.pop(min(self._orders))
                self._orders[epoch] = epoch_order(len(self.source), epoch, self.options.shuffle,
                                                  self.options.seed)
            return self._orders[epoch]

    def host_indices(self, step: int) -> np.ndarray:
        """Source indices of this host's rows of global step `step` (int64 [B_host])."""
        o = self.options
        epoch, k = divmod(int(step), self.steps_per_epoch)
        first = k * o.global_batch_size + o.process_index * o.batch_size
        return self._order(epoch)[first:first + o.batch_size]

    def __call__(self, step: int) -> Dict[str, np.ndarray]:
        o = self.options
        epoch = int(step) // self.steps_per_epoch
        indices = [int(i) for i in self.host_indices(step)]
        records = [self.source[i] for i in indices]
        documents = [choose_documents(r, i, epoch, o.group_size, o.shuffle, o.seed)
                     for r, i in zip(records, indices)]
        return build_batch(records, documents, indices, self.tokenizer, o, self.split_ids)


def train_dataset(source, tokenizer, options: PipelineOptions):
    """The training data as a `grain.MapDataset` of host batches (one per global step).

    Args:
      source: random-access records.
      tokenizer: Hugging Face tokenizer.
      options: `PipelineOptions`.

    Returns:
      A MapDataset of length steps_per_epoch * num_epochs (sys.maxsize if infinite).
    """
    batcher = StepBatcher(source, tokenizer, options)
    total = (sys.maxsize if options.num_epochs is None
             else batcher.steps_per_epoch * options.num_epochs)
    return grain.MapDataset.range(total).map(batcher)


def train_iterator(source, tokenizer, options: PipelineOptions, start_step: Optional[int] = None):
    """A checkpointable iterator over this host's training batches.

    Args:
      source: random-access records.
      tokenizer: Hugging Face tokenizer.
      options: `PipelineOptions` (num_threads / prefetch set grain's ReadOptions).
      start_step: optionally start at this global step instead of 0.

    Returns:
      A `grain.DatasetIterator`: `next()` gives a batch dict; `get_state()` /
      `set_state()` and `grain.checkpoint.CheckpointSave(it)` / `CheckpointRestore(it)`.
    """
    dataset = train_dataset(source, tokenizer, options)
    read = grain.ReadOptions(num_threads=options.num_threads,
                             prefetch_buffer_size=options.prefetch)
    iterator = iter(dataset.to_iter_dataset(read))
    if start_step:
        iterator.set_state({"next_index": int(start_step)})
    return iterator
