"""Attention paths: the right-padded (cuDNN-shaped) path and the splash kernel (Pallas
interpret mode) equal the masked path on CPU."""
import numpy as np
import pytest

import jax
import jax.numpy as jnp

from laser_jax.train import sharding
from laser_jax.model.attention import (causal_mask, permute_time, prefix_tail_attention, right_padded_attention,
                                       segment_mask, splash_attention)
from laser_jax.model.config import preset
from laser_jax.model.decoder import Decoder, init_variables, positions_from_mask

B, T, N, K, H = 4, 9, 6, 2, 8
LENGTHS = [9, 5, 1, 7]  # row 0 full length, row 2 a single token


def left_padded_mask(lengths, width):
    return jnp.asarray(np.arange(width)[None, :] >= width - np.asarray(lengths)[:, None], jnp.int32)


def masked_attention(q, k, v, mask_BT):
    """The default path of `Attention` without a cache."""
    slots = jnp.arange(q.shape[1])
    mask_BTS = causal_mask(mask_BT, jnp.broadcast_to(slots, mask_BT.shape), slots)
    return jax.nn.dot_product_attention(q, k, v, mask=mask_BTS[:, None], scale=H ** -0.5,
                                        implementation="xla")


def right_padded(q, k, v, mask_BT):
    return right_padded_attention(q, k, v, mask_BT, H ** -0.5, "xla")


@pytest.fixture(scope="module")
def qkv():
    keys = jax.random.split(jax.random.key(0), 4)
    q = jax.random.normal(keys[0], (B, T, N, H), jnp.float32)
    k = jax.random.normal(keys[1], (B, T, K, H), jnp.float32)
    v = jax.random.normal(keys[2], (B, T, K, H), jnp.float32)
    w = jax.random.normal(keys[3], (B, T, N, H), jnp.float32)  # cotangent weights
    return q, k, v, w, left_padded_mask(LENGTHS, T)


def test_right_padded_equals_masked_on_valid_positions_and_zeroes_padding(qkv):
    q, k, v, _, mask = qkv
    ref = np.asarray(jax.jit(masked_attention)(q, k, v, mask))
    out = np.asarray(jax.jit(right_padded)(q, k, v, mask))
    valid = np.asarray(mask).astype(bool)
    np.testing.assert_allclose(out[valid], ref[valid], atol=1e-6, rtol=0)
    assert np.all(out[~valid] == 0.0)


def test_right_padded_gradients_equal_masked(qkv):
    q, k, v, w, mask = qkv
    valid = mask[:, :, None, None] > 0

    def loss(fn):
        # Only valid outputs count: the masked path's padded rows are meaningless.
        return lambda q, k, v: jnp.sum(jnp.where(valid, fn(q, k, v, mask) * w, 0.0))

    g_ref = jax.jit(jax.grad(loss(masked_attention), argnums=(0, 1, 2)))(q, k, v)
    g_out = jax.jit(jax.grad(loss(right_padded), argnums=(0, 1, 2)))(q, k, v)
    valid_q = np.asarray(mask).astype(bool)
    np.testing.assert_allclose(np.asarray(g_out[0])[valid_q], np.asarray(g_ref[0])[valid_q], atol=1e-5, rtol=0)
    for a, b in zip(g_out[1:], g_ref[1:]):  # k, v: padded slots get no gradient either way
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5, rtol=0)
    assert np.all(np.asarray(g_out[0])[~valid_q] == 0.0)


def test_permute_time_gradient_is_the_inverse_permutation():
    rng = np.random.default_rng(0)
    index = np.stack([rng.permutation(T) for _ in range(B)])
    inverse = np.argsort(index, axis=1)
    x = jax.random.normal(jax.random.key(5), (B, T, N, H))
    w = jax.random.normal(jax.random.key(6), (B, T, N, H))
    index, inverse = jnp.asarray(index, jnp.int32), jnp.asarray(inverse, jnp.int32)
    out = permute_time(x, index, inverse)
    np.testing.assert_array_equal(out, np.take_along_axis(np.asarray(x), np.asarray(index)[:, :, None, None], 1))
    grad = jax.grad(lambda x: jnp.sum(permute_time(x, index, inverse) * w))(x)
    autodiff = jax.grad(lambda x: jnp.sum(jnp.take_along_axis(x, index[:, :, None, None], 1) * w))(x)
    np.testing.assert_array_equal(grad, autodiff)


def test_right_padded_attention_backward_has_no_scatter(qkv):
    """The rotations' gradients are gathers: a scatter-add would run as GPU atomics."""
    q, k, v, w, mask = qkv
    grad = jax.grad(lambda q, k, v: jnp.sum(right_padded(q, k, v, mask) * w), argnums=(0, 1, 2))
    hlo = jax.jit(grad).lower(q, k, v).as_text()
    assert "gather" in hlo and "scatter" not in hlo


def test_decoder_with_right_padded_attention_equals_default():
    cfg = preset("tiny_qwen3", num_attention_heads=4, num_key_value_heads=2)
    variables = init_variables(cfg, jax.random.key(1))
    ids = jax.random.randint(jax.random.key(2), (B, T), 3, cfg.vocab_size)
    mask = left_padded_mask(LENGTHS, T)
    ids = jnp.where(mask > 0, ids, 0)

    def hidden(c):
        fn = jax.jit(lambda v, i, m: Decoder(c).apply(v, i, positions_BT=positions_from_mask(m),
                                                      kv_mask_BS=m).hidden)
        return np.asarray(fn(variables, ids, mask))

    ref = hidden(cfg)
    out = hidden(cfg.replace(attention_impl="xla_right_padded"))
    valid = np.asarray(mask).astype(bool)
    np.testing.assert_allclose(out[valid], ref[valid], atol=1e-5, rtol=0)


def splash(q, k, v, mask_BT):
    return splash_attention(q, k, v, mask_BT, H ** -0.5)


def test_splash_equals_masked_with_gradients(qkv):
    """Left padding as segment ids; T=9 padded to the kernel's 128; GQA groups of 3."""
    q, k, v, w, mask = qkv
    valid = np.asarray(mask).astype(bool)
    out = np.asarray(jax.jit(splash)(q, k, v, mask))
    ref = np.asarray(jax.jit(masked_attention)(q, k, v, mask))
    np.testing.assert_allclose(out[valid], ref[valid], atol=1e-5, rtol=0)
    assert np.all(out[~valid] == 0.0)

    def loss(fn):
        return lambda q, k, v: jnp.sum(jnp.where(mask[:, :, None, None] > 0, fn(q, k, v, mask) * w, 0.0))

    g_out = jax.jit(jax.grad(loss(splash), argnums=(0, 1, 2)))(q, k, v)
    g_ref = jax.jit(jax.grad(loss(masked_attention), argnums=(0, 1, 2)))(q, k, v)
    for a, b in zip(g_out, g_ref):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5, rtol=0)


SEGMENTS = [[1, 1, 1, 2, 2, 3, 3, 3, 0], [1, 1, 1, 1, 1, 1, 1, 1, 1], [1, 2, 2, 2, 2, 0, 0, 0, 0],
            [1, 1, 2, 3, 4, 4, 4, 4, 0]]  # packed rows: documents 1, 2, ..., padding 0 at the end


def test_segment_mask_is_block_diagonal_causal():
    seg = np.asarray(SEGMENTS)
    m = np.asarray(segment_mask(jnp.asarray(seg)))
    for b in range(B):
        for t in range(T):
            for s in range(T):
                assert m[b, t, s] == (s <= t and seg[b, s] == seg[b, t] and seg[b, s] > 0)


def test_splash_with_segment_ids_equals_the_block_diagonal_mask(qkv):
    """Packed rows: the kernel's segment ids give what the XLA path's segment mask gives."""
    q, k, v, _, _ = qkv
    seg = jnp.asarray(SEGMENTS, jnp.int32)
    mask = (seg > 0).astype(jnp.int32)
    ref = jax.nn.dot_product_attention(q, k, v, mask=segment_mask(seg)[:, None], scale=H ** -0.5,
                                       implementation="xla")
    out = jax.jit(lambda q, k, v, m, s: splash_attention(q, k, v, m, H ** -0.5, s))(q, k, v, mask, seg)
    valid = np.asarray(mask).astype(bool)
    np.testing.assert_allclose(np.asarray(out)[valid], np.asarray(ref)[valid], atol=1e-5, rtol=0)


def test_splash_under_a_mesh_runs_in_shard_map_and_matches_one_device():
    """8 devices (data 2 x fsdp 2 x tensor 2): batch and kv heads split, same result."""
    keys = jax.random.split(jax.random.key(3), 3)
    b, k_heads = 8, 2
    q = jax.random.normal(keys[0], (b, T, 2 * k_heads, H))
    k = jax.random.normal(keys[1], (b, T, k_heads, H))
    v = jax.random.normal(keys[2], (b, T, k_heads, H))
    mask = left_padded_mask([9, 5, 1, 7, 3, 9, 2, 8], T)
    mesh = sharding.make_mesh((2, 2, 2))

    def under_mesh(q, k, v, m):
        with sharding.batch_sharded_activations(mesh):
            return splash(q, k, v, m)

    batch = sharding.batch_sharding(mesh)
    fn = jax.jit(under_mesh, in_shardings=(batch,) * 4)
    assert "shard_map" in str(jax.make_jaxpr(under_mesh)(q, k, v, mask))
    np.testing.assert_allclose(np.asarray(fn(q, k, v, mask)), np.asarray(jax.jit(splash)(q, k, v, mask)),
                               atol=1e-6, rtol=0)


def test_decoder_with_splash_attention_equals_default():
    cfg = preset("tiny_qwen3", num_attention_heads=4, num_key_value_heads=2)
    variables = init_variables(cfg, jax.random.key(1))
    ids = jnp.where(left_padded_mask(LENGTHS, T) > 0, jax.random.randint(jax.random.key(2), (B, T), 3, 100), 0)
    mask = left_padded_mask(LENGTHS, T)

    def hidden(c):
        return np.asarray(jax.jit(lambda v, i, m: Decoder(c).apply(
            v, i, positions_BT=positions_from_mask(m), kv_mask_BS=m).hidden)(variables, ids, mask))

    valid = np.asarray(mask).astype(bool)
    np.testing.assert_allclose(hidden(cfg.replace(attention_impl="splash"))[valid], hidden(cfg)[valid],
                               atol=1e-5, rtol=0)


def test_attention_impl_is_validated():
    with pytest.raises(ValueError, match="attention_impl='flash'"):
        preset("tiny_qwen3", attention_impl="flash")
    for impl in (None, "xla", "cudnn", "xla_right_padded", "splash"):
        assert preset("tiny_qwen3", attention_impl=impl).attention_impl == impl


def test_prefix_tail_attention_equals_masked_attention_over_concatenated_keys(qkv):
    """Two queries written at tail slots 1, 2 of a 4-slot tail after a left-padded prefix."""
    _, pk, pv, _, prefix_mask = qkv
    keys = jax.random.split(jax.random.key(5), 3)
    S, Tq, index = 4, 2, 1
    q = jax.random.normal(keys[0], (B, Tq, N, H), jnp.float32)
    tk = jax.random.normal(keys[1], (B, S, K, H), jnp.float32)
    tv = jax.random.normal(keys[2], (B, S, K, H), jnp.float32)
    kv_mask = jnp.concatenate([prefix_mask, jnp.ones((B, S), jnp.int32)], axis=1)
    q_slot = jnp.broadcast_to(T + index + jnp.arange(Tq), (B, Tq))
    mask_BTX = causal_mask(kv_mask, q_slot, jnp.arange(T + S))
    ref = jax.nn.dot_product_attention(q, jnp.concatenate([pk, tk], 1), jnp.concatenate([pv, tv], 1),
                                       mask=mask_BTX[:, None], scale=H ** -0.5, implementation="xla")
    out = prefix_tail_attention(q, pk, pv, tk, tv, mask_BTX[..., :T], mask_BTX[..., T:], H ** -0.5)
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), atol=1e-6, rtol=0)
