"""Dropout keep-masks that read 16 random bits per element: four masks per threefry hash.

`jax.random.bernoulli` compares a float made of a whole hash output with p, one threefry
hash per masked element. LoRA dropout masks the input of every adapter (one independent
mask per projection, as PEFT's per-module `nn.Dropout`): on the paper's recipe millions of
elements per step. On a CPU, where JAX lowers threefry to rolled loops, drawing them cost
about a quarter of a LoRA train step (bench/NOTES.md, 2026-12-08). Here one threefry2x32 hash
(JAX's own primitive, keyed by the dropout key, counting the mask's positions like
`jax.random.bits` in its partitionable mode, so sharded masks need no communication) gives
two 32-bit words, i.e. four 16-bit draws, each compared with the keep threshold. The keep
probability is rounded to a multiple of 1/65536 (within 7.7e-6 of the one asked for) and
`keep_mask` returns the rounded value, so inverted-dropout scaling by it keeps every
expectation exact. Keys of other PRNG implementations draw 16-bit words with
`jax.random.bits` (one hash per element).
"""
from __future__ import annotations

import math
from typing import Tuple

import jax
import jax.numpy as jnp
from jax.extend.random import threefry2x32_p

LEVELS = 1 << 16  # a mask element reads 16 random bits
PER_HASH = 4  # 16-bit draws per threefry2x32 hash (two 32-bit outputs)


def rounded_keep(rate: float) -> float:
    """The keep probability the masks realise for dropout `rate`: 1 - rate rounded to a
    multiple of 1/65536 (ValueError outside [0, 1))."""
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"dropout rate {rate} is not in [0, 1)")
    return max(1, round((1.0 - rate) * LEVELS)) / LEVELS


def _is_threefry(key: jax.Array) -> bool:
    return jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key) and "threefry" in str(jax.random.key_impl(key))


def _position_counts(shape: Tuple[int, ...]) -> jax.Array:
    """uint32 row-major position of every element of `shape` (the hash's counter)."""
    count = jnp.zeros(shape, jnp.uint32)
    stride = 1
    for axis in range(len(shape) - 1, -1, -1):
        count = count + jax.lax.broadcasted_iota(jnp.uint32, shape, axis) * jnp.uint32(stride)
        stride *= shape[axis]
    return count


def random_halfwords(key: jax.Array, shape: Tuple[int, ...]) -> jax.Array:
    """uint32 values in [0, 65536), independent and uniform, of `shape` (last axis grouped by
    four per hash: element i of the last axis and i + m, i + 2m, i + 3m, m = ceil(last / 4),
    come from one hash's four 16-bit halves)."""
    last = shape[-1]
    if not _is_threefry(key):
        return jax.random.bits(key, shape, jnp.uint16).astype(jnp.uint32)
    words_shape = tuple(shape[:-1]) + (-(-last // PER_HASH),)
    if math.prod(words_shape) > 2 ** 32:
        raise ValueError(f"a dropout mask of shape {shape} has more than 2**34 elements")
    k1, k2 = jax.random.key_data(key)
    w1, w2 = threefry2x32_p.bind(k1, k2, jnp.zeros(words_shape, jnp.uint32), _position_counts(words_shape))
    halves = [w1 & 0xFFFF, w1 >> 16, w2 & 0xFFFF, w2 >> 16]
    return jnp.concatenate(halves, axis=-1)[..., :last]


def keep_mask(key: jax.Array, rate: float, shape: Tuple[int, ...]) -> Tuple[jax.Array, float]:
    """(bool mask of `shape`, True with probability `rounded_keep(rate)` independently per
    element; that probability)."""
    keep = rounded_keep(rate)
    return random_halfwords(key, tuple(shape)) < jnp.uint32(round(keep * LEVELS)), keep
