"""Packed causal-LM batches (data.lm_pack_len > 0): several documents per fixed-length row.

A padded LM batch (lm_pipeline.LMStepBatcher) pads every row to about the longest one of
its batch; on the synthetic task a third of each step is padding. Here the rows (documents,
each ending in EOS) are packed once, in an order seeded by train.seed, into rows of exactly
`pack_len` tokens: each document goes whole into the first of the last OPEN_ROWS rows that
has room for it (first fit over a short window, so the order stays random and rows fill to
~93% at 128 tokens on the synthetic task), else it opens a new row. The documents of a row
are numbered 1, 2, ... in its `segments` array (0 = the padding at the row's end); the model
attends within a document only and its positions restart at 0 for each one
(method/lm_objective.py), so which documents share a row changes nothing in their loss.

Batches: epoch e orders the packed rows by a permutation seeded with (seed, e) and cuts it
into batches of global_batch rows (dropping the last rows mod global_batch); the batch of
global step k depends on k alone (exact resume, as for padded batches). Every batch has
the one shape [B, pack_len]: one compile.

A batch: {"ids", "mask", "segments": int32 [B_host, pack_len], "record": int32 [n] the
indices of the documents in this host's rows, in row order (for error messages)}.
"""
from __future__ import annotations

import threading
from typing import Dict, List

import numpy as np

from laser_jax.data.errors import ConfigError

OPEN_ROWS = 16  # rows still taking documents while packing


def pack(lengths: np.ndarray, pack_len: int, order: np.ndarray) -> List[np.ndarray]:
    """Document indices of each packed row: `order`'s documents, first fit over the last
    OPEN_ROWS open rows (a full window closes its oldest row). Rows keep the order in which
    they were opened; each row's documents the order in which they came."""
    if len(lengths) and int(np.max(lengths)) > pack_len:
        raise ConfigError(f"data.lm_pack_len: {pack_len} tokens cannot hold a document of "
                          f"{int(np.max(lengths))} tokens (EOS included); raise it or lower data.lm_max_len")
    rows: List[List[int]] = []
    room: List[int] = []  # free tokens of each row
    first_open = 0
    for i in order:
        n = int(lengths[i])
        for r in range(first_open, len(rows)):
            if room[r] >= n:
                rows[r].append(int(i))
                room[r] -= n
                break
        else:
            rows.append([int(i)])
            room.append(pack_len - n)
            if len(rows) - first_open > OPEN_ROWS:
                first_open += 1
    return [np.asarray(r, np.int64) for r in rows]


class PackedStepBatcher:
    """Global step -> this host's packed LM batch (module doc)."""

    def __init__(self, source, pad_id: int, options):
        self.source, self.options, self.pad_id = source, options, int(pad_id)
        self.pack_len = int(options.pack_len)
        o = options
        order = np.random.default_rng([o.seed, 1 << 20]).permutation(len(source)) if o.shuffle \
            else np.arange(len(source))
        self.rows = pack(source.lengths, self.pack_len, order)
        self.steps_per_epoch = len(self.rows) // o.global_batch_size
        if self.steps_per_epoch == 0:
            raise ConfigError(f"train.batch_size: {len(source)} LM rows pack into {len(self.rows)} rows of "
                              f"{self.pack_len} tokens, which cannot fill one global batch of "
                              f"{o.global_batch_size}")
        self._lock = threading.Lock()
        self._cached = (None, None)

    @property
    def fill(self) -> float:
        """Real tokens / packed slots."""
        return float(self.source.lengths.sum()) / (len(self.rows) * self.pack_len)

    def epoch_batches(self, epoch: int) -> np.ndarray:
        """int64 [steps_per_epoch, global_batch]: the packed rows of every batch of an epoch."""
        with self._lock:
            if self._cached[0] == epoch:
                return self._cached[1]
        o = self.options
        n = len(self.rows)
        order = np.random.default_rng([o.seed, epoch]).permutation(n) if o.shuffle else np.arange(n)
        batches = order[:self.steps_per_epoch * o.global_batch_size].reshape(self.steps_per_epoch, -1)
        with self._lock:
            self._cached = (epoch, batches)
        return batches

    def __call__(self, step: int) -> Dict[str, np.ndarray]:
        o = self.options
        epoch, k = divmod(int(step), self.steps_per_epoch)
        rows = self.epoch_batches(epoch)[k][o.process_index * o.batch_size:(o.process_index + 1) * o.batch_size]
        ids = np.full((len(rows), self.pack_len), self.pad_id, np.int32)
        segments = np.zeros((len(rows), self.pack_len), np.int32)
        records = []
        for b, r in enumerate(rows):
            at = 0
            for s, doc in enumerate(self.rows[r], 1):
                tokens = self.source.rows[doc]
                ids[b, at:at + len(tokens)] = tokens
                segments[b, at:at + len(tokens)] = s
                at += len(tokens)
            records.extend(self.rows[r].tolist())
        return {"ids": ids, "mask": (segments > 0).astype(np.int32), "segments": segments,
                "record": np.asarray(records, np.int32)}
