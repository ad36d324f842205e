"""Which records a step sees and which documents each record contributes.

Shuffle off (deterministic, file order): epoch e visits records 0..N-1 in order; a record
takes positives[e % P] and negatives[(e*(G-1) + j) % Nn] for j < G-1, i.e. the first G-1
negatives at epoch 0 (cycled when there are fewer), rotating by G-1 every epoch.
Shuffle on (seeded): record order is a permutation drawn from (seed, epoch); a record's
positive is positives[(h + e) % P] for a per-record hash h drawn from (seed, record), as
the authors' code does; its negatives are a seeded per-record permutation read at offset
e*(G-1) (cycled), or, with fewer than G-1 negatives, drawn with replacement from
(seed, record, epoch).
"""
from __future__ import annotations

from typing import Tuple

import numpy as np

from laser_jax.data.records import Record

_ORDER, _RECORD, _FEW = 1, 2, 3  # stream tags keeping the seeded draws independent


def epoch_order(num_records: int, epoch: int, shuffle: bool, seed: int) -> np.ndarray:
    """Record indices in the order epoch `epoch` visits them.

    Args:
      num_records: N.
      epoch: 0-based epoch.
      shuffle: permute (seeded by (seed, epoch)) or keep file order.
      seed: non-negative seed.

    Returns:
      int64 [N].
    """
    if not shuffle:
        return np.arange(num_records, dtype=np.int64)
    return np.random.default_rng([seed, _ORDER, epoch]).permutation(num_records)


def choose_documents(record: Record, record_index: int, epoch: int, group_size: int,
                     shuffle: bool, seed: int) -> Tuple[str, ...]:
    """The G documents of one record at one epoch: positive first, then G-1 negatives.

    Args:
      record: the record.
      record_index: its index in the source (keys the seeded choice).
      epoch: 0-based epoch.
      group_size: G.
      shuffle: seeded choice (True) or the deterministic rule (False); see module doc.
      seed: non-negative seed.

    Returns:
      A tuple of G passage texts.
    """
    pos, neg, k = record.positives, record.negatives, group_size - 1
    if k and not neg:
        raise ValueError(f"record {record_index} has no negative passages, but group_size="
                         f"{group_size} needs {k}; open the records with group_size="
                         f"{group_size} so they are validated for it")
    if not shuffle:
        negatives = tuple(neg[(epoch * k + j) % len(neg)] for j in range(k))
        return (pos[epoch % len(pos)],) + negatives
    rng = np.random.default_rng([seed, _RECORD, record_index])
    positive = pos[(int(rng.integers(1 << 30)) + epoch) % len(pos)]
    if len(neg) >= k:
        perm = rng.permutation(len(neg))
        negatives = tuple(neg[perm[(epoch * k + j) % len(neg)]] for j in range(k))
    else:
        draw = np.random.default_rng([seed, _FEW, record_index, epoch]).integers(len(neg), size=k)
        negatives = tuple(neg[i] for i in draw)
    return (positive,) + negatives
