"""Dropout keep-masks that read 16 random bits per element: four masks per threefry hash.

`jax.random.bernoulli` compares a float made of a whole hash output with p, one threefry
hash per masked element. LoRA dropout masks the input of every adapter (one independent
mask per projection, as PEFT's per-module `nn.Dropout`): on the paper's recipe millions of
elements per step. On a CPU, where JAX lowers threefry to rolled loops, drawing them cost
about a quarter of a LoRA train step (bench/NOTES.md, 2026-12-08). Here one Threefry-2x32
hash (keyed by the dropout key, counting the mask's positions like `jax.random.bits` in its
partitionable mode, so sharded masks need no communication) gives two 32-bit words, i.e.
four 16-bit draws, each compared with the keep threshold. The hash is written out as
elementwise integer ops (`threefry2x32`: Random123's 20 rounds, bit-equal to JAX's own
primitive, tests/test_dropout.py), because JAX lowers its primitive on a CPU as a rolled
loop whose 5 iterations each read and write the whole counter arrays, while the written-out
ops fuse into one pass. The keep probability is rounded to a multiple of 1/65536 (within
7.7e-6 of the one asked for) and `keep_mask` returns the rounded value, so inverted-dropout
scaling by it keeps every expectation exact. Keys of other PRNG implementations draw 16-bit
words with `jax.random.bits` (one hash per element).
"""
from __future__ import annotations

import math
from typing import Tuple

import jax
import jax.numpy as jnp

LEVELS = 1 << 16  # a mask element reads 16 random bits
PER_HASH = 4  # 16-bit draws per threefry2x32 hash (two 32-bit outputs)


# Threefry-2x32 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC 2011):
# the rotation constants of its two alternating four-round groups and the key-schedule parity.
ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
KEY_PARITY = 0x1BD11BDA


def _rotate_left(x: jax.Array, bits: int) -> jax.Array:
    return (x << jnp.uint32(bits)) | (x >> jnp.uint32(32 - bits))


def threefry2x32(key1: jax.Array, key2: jax.Array, x1: jax.Array, x2: jax.Array) -> Tuple[jax.Array, jax.Array]:
    """Threefry-2x32 with 20 rounds of the uint32 counter pair (x1, x2) under the key (key1,
    key2), elementwise: the same bits as `jax.extend.random.threefry2x32_p`, as plain ops."""
    ks = (key1, key2, key1 ^ key2 ^ jnp.uint32(KEY_PARITY))
    x1, x2 = x1 + ks[0], x2 + ks[1]
    for group in range(5):
        for r in ROTATIONS[group % 2]:
            x1 = x1 + x2
            x2 = _rotate_left(x2, r) ^ x1
        x1 = x1 + ks[(group + 1) % 3]
        x2 = x2 + ks[(group + 2) % 3] + jnp.uint32(group + 1)
    return x1, x2


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
    w1, w2 = threefry2x32(k1, k2, jnp.zeros(words_shape, jnp.uint32), _position_counts(words_shape))
    halves = [w1 & 0xFFFF, w1 >> 16, w2 & 0xFFFF, w2 >> 16]
    return jnp.concatenate(halves, axis=-1)[..., :last]


def keep_mask(key: jax.Array, rate: float, shape: Tuple[int, ...]) -> Tuple[jax.Array, float]:
    """(bool mask of `shape`, True with probability `rounded_keep(rate)` independently per
    element; that probability)."""
    keep = rounded_keep(rate)
    return random_halfwords(key, tuple(shape)) < jnp.uint32(round(keep * LEVELS)), keep
