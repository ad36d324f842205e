"""Dropout keep-masks drawn 16 bits at a time: two independent masks per random 32-bit word.

`jax.random.bernoulli` hashes one 32-bit word per masked element. LoRA dropout masks the
input of every adapter (one mask per projection, as PEFT's per-module `nn.Dropout`), which
on the paper's recipe is millions of elements per step; on a CPU, where JAX lowers its
threefry hash to rolled loops, drawing them cost about a fifth of a LoRA train step
(bench/NOTES.md, 2026-12-08). Here each word's low and high 16 bits are compared with the
keep threshold separately, halving the hashing. The keep probability is rounded to a
multiple of 1/65536 (within 7.7e-6 of the requested one) and `keep_mask` returns the rounded
value, so inverted-dropout scaling by it keeps every expectation exact.
"""
from __future__ import annotations

from typing import Tuple

import jax
import jax.numpy as jnp

LEVELS = 1 << 16  # a mask element reads 16 random bits


def rounded_keep(rate: float) -> float:
    """The keep probability the masks realise for dropout `rate`: 1 - rate rounded to a
    multiple of 1/65536 (ValueError outside [0, 1))."""
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"dropout rate {rate} is not in [0, 1)")
    return max(1, round((1.0 - rate) * LEVELS)) / LEVELS


def keep_mask(key: jax.Array, rate: float, shape: Tuple[int, ...]) -> Tuple[jax.Array, float]:
    """(bool mask of `shape`, True with probability `rounded_keep(rate)` independently per
    element; that probability). The last axis is split in two halves: the first half reads
    the low 16 bits of the words the second half reads the high 16 bits of."""
    keep = rounded_keep(rate)
    threshold = jnp.uint32(round(keep * LEVELS))
    last = shape[-1]
    words = jax.random.bits(key, tuple(shape[:-1]) + ((last + 1) // 2,), jnp.uint32)
    mask = jnp.concatenate([(words & 0xFFFF) < threshold, (words >> 16) < threshold], axis=-1)
    return mask[..., :last], keep
