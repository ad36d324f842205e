"""Grouped-query self-attention with an optional functional KV cache.

Axis letters: B batch, T new positions, S key slots, D hidden, N query heads,
K kv heads, H head dim.

Without a cache, attention runs causally over the T inputs and the new keys/values are
returned (so a caller can start a cache from a prefill). With a cache
{"k": [B, S, K, H], "v": [B, S, K, H]}, the new keys/values are written at slots
[cache_index, cache_index + T) and the queries attend to every valid slot at or before
their own (causal in slot order).

A prefix cache {"prefix_k", "prefix_v": [B, P, K, H], "k", "v": [B, S, K, H]} holds a
fixed prefix (a prefill's keys/values) and a small tail that the new positions are
written into at [cache_index, cache_index + T) (cache_index counts tail slots). The
queries see every valid prefix slot and the tail slots at or before their own; the key
mask then covers P + S slots (prefix first). Only the updated tail {"k", "v"} is
returned, so a caller (LaSER's soft-token scan) can close over the prefix and carry the
tail alone. See `prefix_tail_attention`.

Packed rows (several documents per row, `segment_ids_BT`: each token's document id, 0 for
padding; full-sequence calls only) attend within their own document: a block-diagonal
causal mask (`segment_mask`) on the XLA path (also under "cudnn" / "xla_right_padded",
whose lengths interface cannot express segments), segment ids on the splash path.

Implementations (`ModelConfig.attention_impl`): None / "xla" pass the boolean
[B, 1, T, S] mask to `jax.nn.dot_product_attention`. "cudnn" sends full-sequence
(no-cache) calls to cuDNN's fused flash attention through `right_padded_attention`;
cached calls keep the masked XLA path, since cuDNN takes no arbitrary mask.
"xla_right_padded" runs `right_padded_attention` with the XLA implementation, so the
cuDNN code path (everything but the kernel) can be tested on CPU. "splash" sends
full-sequence calls to the Pallas splash-attention kernel for TPUs (`splash_attention`:
left padding as segment ids, no rotation); off a TPU the same kernel runs in Pallas'
interpret mode (slow; for tests).
"""
from __future__ import annotations

import math
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.ad_checkpoint import checkpoint_name
from jax.experimental.pallas.ops.tpu import splash_attention as splash
from jax.sharding import PartitionSpec

from laser_jax.model.config import ModelConfig
from laser_jax.model.layers import Proj, RMSNorm, apply_rope, dtype_of, rope_inv_freq, with_lora
from laser_jax.model.partitioning import ACTIVATION_BATCH, ACTIVATION_KV_HEADS, divisible_axes


def causal_mask(kv_mask_BS, q_slot_BT, k_slot_S):
    """[B, T, S] bool: key slot valid and not after the query's slot."""
    return (kv_mask_BS[:, None, :] > 0) & (k_slot_S[None, None, :] <= q_slot_BT[:, :, None])


def segment_mask(segment_ids_BT):
    """[B, T, T] bool for packed rows: a query sees the keys at or before it in its own
    segment (ids > 0; 0 is padding, seen by nobody): a block-diagonal causal mask."""
    T = segment_ids_BT.shape[1]
    same_BTT = (segment_ids_BT[:, :, None] == segment_ids_BT[:, None, :]) & (segment_ids_BT[:, None, :] > 0)
    return same_BTT & (jnp.arange(T)[None, None, :] <= jnp.arange(T)[None, :, None])


SEQ_MULTIPLE = 8  # right_padded_attention pads the time axis to a multiple of this


@jax.custom_vjp
def permute_time(x_BT__, index_BT, inverse_BT):
    """x[b, index[b, t]] along axis 1, where each row of `index` is a permutation of 0..T-1
    and `inverse` its inverse. The gradient is the inverse permutation, a gather again:
    autodiff of a gather would give a scatter-add with non-unique indices, which runs as
    atomic adds on a GPU (per layer, per pass, for q, k, v and the output)."""
    return jnp.take_along_axis(x_BT__, index_BT.reshape(index_BT.shape + (1,) * (x_BT__.ndim - 2)), axis=1)


def _permute_time_fwd(x_BT__, index_BT, inverse_BT):
    return permute_time(x_BT__, index_BT, inverse_BT), (index_BT, inverse_BT)


def _permute_time_bwd(residuals, g_BT__):
    index_BT, inverse_BT = residuals
    return permute_time(g_BT__, inverse_BT, index_BT), None, None


permute_time.defvjp(_permute_time_fwd, _permute_time_bwd)


SPLASH_SEQ_MULTIPLE = 128  # splash_attention pads the time axis to a multiple of this


def _splash_kernel(t_padded: int, group: int, block: int, interpret: bool):
    """A causal splash-attention kernel for one kv head and its `group` query heads.

    Built afresh at each trace (the block-mask bookkeeping is numpy work of a few blocks):
    the kernel holds its block-mask arrays, which must belong to the trace that uses them.
    """
    mask = splash.MultiHeadMask([splash.CausalMask((t_padded, t_padded))] * group)
    sizes = splash.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block, block_q_dkv=block,
                              block_kv_dkv=block, block_kv_dkv_compute=block, block_q_dq=block,
                              block_kv_dq=block)
    return splash.make_splash_mqa_single_device(mask, block_sizes=sizes, interpret=interpret)


def _splash_local(q_BTNH, k_BTKH, v_BTKH, mask_BT, scale, segment_ids_BT=None):
    B, T, N, H = q_BTNH.shape
    K = k_BTKH.shape[2]
    tp = -(-T // SPLASH_SEQ_MULTIPLE) * SPLASH_SEQ_MULTIPLE
    block = next(b for b in (512, 256, 128) if tp % b == 0)
    kernel = _splash_kernel(tp, N // K, block, jax.default_backend() != "tpu")
    pad = ((0, 0), (0, tp - T), (0, 0), (0, 0))
    q_BKGTH = jnp.pad(q_BTNH * jnp.asarray(scale, q_BTNH.dtype), pad).reshape(
        B, tp, K, N // K, H).transpose(0, 2, 3, 1, 4)
    k_BKTH = jnp.pad(k_BTKH.astype(q_BTNH.dtype), pad).transpose(0, 2, 1, 3)
    v_BKTH = jnp.pad(v_BTKH.astype(q_BTNH.dtype), pad).transpose(0, 2, 1, 3)
    # Real tokens are segment 1 (or their packed document's id), left and tail padding
    # segment 0: with the causal mask a real token sees exactly the real tokens of its own
    # segment at or before it; a pad sees pads only.
    seg_BT = (mask_BT > 0).astype(jnp.int32) if segment_ids_BT is None else segment_ids_BT.astype(jnp.int32)
    seg_BT = jnp.pad(seg_BT, ((0, 0), (0, tp - T)))
    per_kv_head = jax.vmap(kernel, in_axes=(0, 0, 0, None))
    out_BKGTH = jax.vmap(per_kv_head)(q_BKGTH, k_BKTH, v_BKTH, splash.SegmentIds(q=seg_BT, kv=seg_BT))
    out_BTNH = out_BKGTH.transpose(0, 3, 1, 2, 4).reshape(B, tp, N, H)[:, :T]
    return jnp.where((mask_BT > 0)[:, :, None, None], out_BTNH, jnp.zeros_like(out_BTNH))


def splash_attention(q_BTNH, k_BTKH, v_BTKH, mask_BT, scale, segment_ids_BT=None):
    """Causal self-attention over LEFT-padded rows with the Pallas splash kernel (TPU).

    Padding is expressed as segment ids (real tokens 1, pads 0; packed rows pass their
    documents' ids as `segment_ids_BT`), which splash ands with
    its static causal mask, so no rotation is needed; the time axis is zero-padded at the
    end to a multiple of `SPLASH_SEQ_MULTIPLE` (those slots come after every real query,
    so causality hides them). q is pre-scaled (the kernel takes no scale). Grouped
    queries: the MQA kernel runs once per kv head (vmapped) on its group of query heads.
    Padded output rows are exactly zero.

    A Pallas kernel cannot be partitioned by XLA, so under an ambient (abstract) mesh (the
    train step sets one: `batch_sharded_activations` in train/sharding.py) the call runs
    under `shard_map`: the batch split over the mesh axes the context's logical rules give
    "activation_batch", the kv heads over those of "activation_kv_heads" (each only where
    it divides; without rules nothing is split and each device computes the whole call).
    """
    mesh = jax.sharding.get_abstract_mesh()
    if segment_ids_BT is None:
        segment_ids_BT = (mask_BT > 0).astype(jnp.int32)
    if mesh.empty or math.prod(mesh.axis_sizes) == 1:
        return _splash_local(q_BTNH, k_BTKH, v_BTKH, mask_BT, scale, segment_ids_BT)
    batch = divisible_axes(ACTIVATION_BATCH, q_BTNH.shape[0])
    heads = divisible_axes(ACTIVATION_KV_HEADS, k_BTKH.shape[2])
    spec, rows = PartitionSpec(batch, None, heads, None), PartitionSpec(batch, None)
    fn = jax.shard_map(lambda q, k, v, m, seg: _splash_local(q, k, v, m, scale, seg), mesh=mesh,
                       in_specs=(spec, spec, spec, rows, rows), out_specs=spec, check_vma=False)
    return fn(q_BTNH, k_BTKH, v_BTKH, mask_BT, segment_ids_BT)


def right_padded_attention(q_BTNH, k_BTKH, v_BTKH, mask_BT, scale, implementation):
    """Causal self-attention over LEFT-padded rows using the right-padding interface.

    cuDNN's fused attention expresses padding only as per-row lengths
    (`query_seq_lengths` / `key_value_seq_lengths`, valid tokens first), not as a mask.
    Our rows are left padded with one contiguous valid region (0 0 1 1 1), so each row is
    rotated left by its pad count (valid tokens move to slots [0, length)), attended with
    `is_causal=True` plus the lengths, and rotated back. RoPE was already applied with
    the mask's positions, so the rotation does not change any score. Padded output rows
    are exactly zero. The time axis is zero-padded at the end to a multiple of
    `SEQ_MULTIPLE` for the kernel (cuDNN's training kernels reject odd lengths such as the
    explicit view's 1024 + EOS); the lengths keep those slots out of every score.
    """
    T = q_BTNH.shape[1]
    lengths_B = jnp.maximum(jnp.sum(mask_BT > 0, axis=-1), 1).astype(jnp.int32)
    pad_B1 = (T - lengths_B)[:, None]
    t_1T = jnp.arange(T)[None, :]

    to_right_BT = (t_1T + pad_B1) % T  # right-padded slot t reads left-padded slot t + pad
    to_left_BT = (t_1T - pad_B1) % T  # its inverse
    tail = -T % SEQ_MULTIPLE

    def to_right(x):
        return jnp.pad(permute_time(x, to_right_BT, to_left_BT), ((0, 0), (0, tail), (0, 0), (0, 0)))

    out_BTNH = jax.nn.dot_product_attention(
        to_right(q_BTNH), to_right(k_BTKH), to_right(v_BTKH),
        is_causal=True, query_seq_lengths=lengths_B, key_value_seq_lengths=lengths_B,
        scale=scale, implementation=implementation)[:, :T]
    out_BTNH = permute_time(out_BTNH, to_left_BT, to_right_BT)
    return jnp.where((mask_BT > 0)[:, :, None, None], out_BTNH, jnp.zeros_like(out_BTNH))


def prefix_tail_attention(q_BTNH, prefix_k_BPKH, prefix_v_BPKH, tail_k_BSKH, tail_v_BSKH,
                          prefix_mask_BTP, tail_mask_BTS, scale):
    """Attention of T queries (a soft step: T = 1) over a prefix cache and a tail cache, kept apart.

    Equal to attention over the concatenated keys/values, but the keys/values are never
    concatenated, copied or re-laid out: each part is one matrix product per row, batched
    over B alone, that reads a cache where it lies ([B, S, K, H] is [B, S, K * H]). A
    product batched over (B, K) would want [B, K, ...]-major operands and copy the prefix
    into them at every layer of every step; instead each query head's vector is placed in
    its kv head's H-wide block of a zero [K * H] row, so one product over K * H gives every
    head its scores against its own kv head (K times the multiplies of a per-head product,
    a few MFLOP per soft step), and the mixing product's output keeps each head's own
    block. On a CPU this is 1.6x (4 layers x 256, batch 64) to 4.5x (Qwen3-0.6B's heads)
    faster than the elementwise multiply-and-sum it replaces (bench/NOTES.md, 2026-12-08).
    Scores and the softmax are float32 (products of the cache's dtype, accumulated in
    float32); the mixing product takes the probabilities in the cache's dtype (as the
    prefill's attention does) and accumulates in float32, so a bfloat16 cache is read as it
    is stored, never converted to a float32 copy. Only the [B, T, N, P + S] scores are
    concatenated, so one softmax normalises over both parts.
    """
    B, T, N, H = q_BTNH.shape
    P, K = prefix_k_BPKH.shape[1], prefix_k_BPKH.shape[2]
    own_kv_NK = (np.arange(N)[:, None] // (N // K)) == np.arange(K)[None, :]
    neg = jnp.finfo(jnp.float32).min
    q_BMX = jnp.where(own_kv_NK[:, :, None], q_BTNH[:, :, :, None, :], jnp.zeros((), q_BTNH.dtype))
    q_BMX = q_BMX.reshape(B, T * N, K * H)

    def scores(k_BSKH, mask_BTS):
        S = k_BSKH.shape[1]
        s_BMS = jnp.einsum("bmx,bsx->bms", q_BMX.astype(k_BSKH.dtype), k_BSKH.reshape(B, S, K * H),
                           preferred_element_type=jnp.float32)
        return jnp.where(mask_BTS[:, :, None, :], s_BMS.reshape(B, T, N, S) * scale, neg)

    p_BTNX = jax.nn.softmax(jnp.concatenate([scores(prefix_k_BPKH, prefix_mask_BTP),
                                             scores(tail_k_BSKH, tail_mask_BTS)], axis=3), axis=3)

    def mix(p_BTNS, v_BSKH):
        S = v_BSKH.shape[1]
        return jnp.einsum("bms,bsx->bmx", p_BTNS.reshape(B, T * N, S).astype(v_BSKH.dtype),
                          v_BSKH.reshape(B, S, K * H), preferred_element_type=jnp.float32)

    out_BTNKH = (mix(p_BTNX[..., :P], prefix_v_BPKH) + mix(p_BTNX[..., P:], tail_v_BSKH)).reshape(B, T, N, K, H)
    out_BTNH = jnp.sum(jnp.where(own_kv_NK[:, :, None], out_BTNKH, 0.0), axis=3)
    return out_BTNH.astype(q_BTNH.dtype)


class Attention(nn.Module):
    """Qwen3 / Qwen2 / Llama attention: GQA, RoPE, optional q/k biases and q/k RMSNorm."""

    cfg: ModelConfig

    @nn.compact
    def __call__(self, x_BTD, positions_BT, kv_mask_BS, cache: Optional[dict], cache_index, segment_ids_BT=None):
        cfg = self.cfg
        B, T, _ = x_BTD.shape
        N, K, H = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        shapes = {"q_proj": (N * H, ("embed", "q_heads")), "k_proj": (K * H, ("embed", "kv_heads")),
                  "v_proj": (K * H, ("embed", "kv_heads"))}
        qkv = with_lora(cfg, x_BTD, {name: Proj(width, axes, cfg, use_bias=cfg.attention_bias, name=name)(x_BTD)
                                     for name, (width, axes) in shapes.items()},
                        {name: axes for name, (_, axes) in shapes.items()})
        q_BTNH = qkv["q_proj"].reshape(B, T, N, H)
        k_BTKH = qkv["k_proj"].reshape(B, T, K, H)
        v_BTKH = qkv["v_proj"].reshape(B, T, K, H)
        if cfg.qk_norm:
            q_BTNH = RMSNorm(cfg.rms_norm_eps, dtype_of(cfg.param_dtype), "head_dim", name="q_norm")(q_BTNH)
            k_BTKH = RMSNorm(cfg.rms_norm_eps, dtype_of(cfg.param_dtype), "head_dim", name="k_norm")(k_BTKH)
        inv_freq = rope_inv_freq(H, cfg.rope_theta, cfg.rope_scaling)
        q_BTNH = checkpoint_name(apply_rope(q_BTNH, positions_BT, inv_freq), "query")
        k_BTKH = checkpoint_name(apply_rope(k_BTKH, positions_BT, inv_freq), "key")
        v_BTKH = checkpoint_name(v_BTKH, "value")

        if cache is not None and segment_ids_BT is not None:
            raise ValueError("segment_ids_BT (packed rows) is for full-sequence calls, not with a cache")
        if cache is None:
            k_BSKH, v_BSKH = k_BTKH, v_BTKH
            q_slot_BT = jnp.broadcast_to(jnp.arange(T), (B, T))
            new_cache = {"k": k_BTKH, "v": v_BTKH}
        else:
            start = (0, cache_index, 0, 0)
            k_BSKH = jax.lax.dynamic_update_slice(cache["k"], k_BTKH.astype(cache["k"].dtype), start)
            v_BSKH = jax.lax.dynamic_update_slice(cache["v"], v_BTKH.astype(cache["v"].dtype), start)
            q_slot_BT = jnp.broadcast_to(cache_index + jnp.arange(T), (B, T))
            new_cache = {"k": k_BSKH, "v": v_BSKH}
        if cache is not None and "prefix_k" in cache:
            # Key slots are the P prefix slots, then the tail's: a query in tail slot s sits
            # at slot P + s, after every prefix slot.
            P = cache["prefix_k"].shape[1]
            mask_BTX = causal_mask(kv_mask_BS, P + q_slot_BT, jnp.arange(P + k_BSKH.shape[1]))
            out_BTNH = prefix_tail_attention(
                q_BTNH, cache["prefix_k"], cache["prefix_v"], k_BSKH, v_BSKH,
                mask_BTX[..., :P], mask_BTX[..., P:], H ** -0.5)
        elif cache is None and cfg.attention_impl == "splash":
            out_BTNH = splash_attention(q_BTNH, k_BTKH, v_BTKH, kv_mask_BS, H ** -0.5, segment_ids_BT)
        elif cache is None and segment_ids_BT is None and cfg.attention_impl in ("cudnn", "xla_right_padded"):
            out_BTNH = right_padded_attention(
                q_BTNH, k_BTKH, v_BTKH, kv_mask_BS, H ** -0.5,
                "cudnn" if cfg.attention_impl == "cudnn" else "xla")
        else:
            # cuDNN and splash cannot take this mask: cached calls (and, under cuDNN, packed
            # rows: cuDNN takes lengths, not segments) use XLA unless the config names the
            # plain "xla" implementation or leaves it to JAX (None).
            impl = cfg.attention_impl if cfg.attention_impl in (None, "xla") else "xla"
            if segment_ids_BT is not None:  # packed rows (no cache): a block-diagonal causal mask
                mask_BTS = segment_mask(segment_ids_BT) & (kv_mask_BS[:, None, :] > 0)
            else:
                mask_BTS = causal_mask(kv_mask_BS, q_slot_BT, jnp.arange(k_BSKH.shape[1]))
            out_BTNH = jax.nn.dot_product_attention(
                q_BTNH, k_BSKH.astype(q_BTNH.dtype), v_BSKH.astype(q_BTNH.dtype),
                mask=mask_BTS[:, None], scale=H ** -0.5, implementation=impl)
        out_BTNH = checkpoint_name(out_BTNH, "attention").reshape(B, T, N * H)
        out_BTD = with_lora(cfg, out_BTNH, {"o_proj": Proj(cfg.hidden_size, ("q_heads", "embed"), cfg,
                                                           name="o_proj")(out_BTNH)},
                            {"o_proj": ("q_heads", "embed")})["o_proj"]
        return out_BTD, new_cache
