"""Splitting a global batch into micro-batches (gradient accumulation, cached steps)."""
from __future__ import annotations

from typing import Dict, Mapping

import jax


def split_microbatches(batch: Mapping[str, jax.Array], n: int) -> Dict[str, jax.Array]:
    """[B, ...] views -> [n, B/n, ...]; micro-batch a takes queries a, a+n, a+2n, ... (strided,
    so every device keeps its share) and the G documents of exactly those queries."""
    out = {}
    b = batch["q_ids" if "q_ids" in batch else "ids"].shape[0]  # "ids": a causal-LM batch (issue 15)
    for key, x in batch.items():
        rows = x.shape[0]
        g = rows // b  # 1 for query-aligned arrays, G for documents
        x = x.reshape((b // n, n, g) + x.shape[1:]).swapaxes(0, 1)
        out[key] = x.reshape((n, (b // n) * g) + x.shape[3:])
    return out
