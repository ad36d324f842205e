"""Greedy decoding with the decoder's functional KV cache: batched, left-padded, jitted.

Axis letters: B batch, T prompt length, N new tokens, S cache slots (T + N), M stop-sequence
length.

The prompt is prefilled into slots [0, T) of a cache of S = T + N slots; new token j is then
fed at slot T + j - 1 with RoPE position (the row's last position) + j, so a row's positions
count only its real tokens whatever the padding (as in the latent view). A row stops at its
own stop token or when its last tokens equal its stop sequence (the token form of a stop
string); stopped rows emit `pad_id`. The loop (`lax.while_loop`) ends when every row has
stopped or after N tokens.
"""
from __future__ import annotations

import functools
from typing import Optional

import flax
import jax
import jax.numpy as jnp

from laser_jax.model.decoder import Decoder, init_cache, positions_from_mask


@flax.struct.dataclass
class Generation:
    """tokens: int32 [B, N] (pad_id after a row stopped; the stop token or sequence itself is
    included); lengths: int32 [B] tokens generated before stopping, the stop token or stop
    sequence included (N when a row never stopped); stopped: bool [B]."""

    tokens: jax.Array
    lengths: jax.Array
    stopped: jax.Array


def _ends_with(history_BN, length_B, seq_BM):
    """Whether each row's first `length` tokens end with its stop sequence (right-aligned in
    `seq_BM`, left-filled with -1; an all -1 row never matches)."""
    m = seq_BM.shape[1]
    idx_BM = length_B[:, None] - m + jnp.arange(m)[None, :]
    got_BM = jnp.take_along_axis(history_BN, jnp.clip(idx_BM, 0, history_BN.shape[1] - 1), axis=1)
    used_BM = seq_BM >= 0
    ok_BM = ~used_BM | ((idx_BM >= 0) & (got_BM == seq_BM))
    return jnp.any(used_BM, axis=1) & jnp.all(ok_BM, axis=1)


@functools.partial(jax.jit, static_argnames=("model", "max_new_tokens"))
def greedy_generate(model: Decoder, variables, ids_BT, mask_BT, *, max_new_tokens: int, stop_ids_B,
                    stop_seqs_BM: Optional[jax.Array] = None, pad_id: int = 0) -> Generation:
    """Greedy (argmax) continuation of a LEFT-padded batch of prompts.

    Args:
      model: the Decoder.
      variables: its variables ({"params"} and optionally {"lora"}).
      ids_BT, mask_BT: int prompts and mask (1 = real token), left padded; every row needs at
        least one real token.
      max_new_tokens: N, the most tokens generated per row.
      stop_ids_B: int [B] (or a scalar): the token that ends each row (e.g. EOS); -1 = none.
      stop_seqs_BM: optional int [B, M]: a token sequence that ends each row, right-aligned and
        left-filled with -1 (a row of -1 has none).
      pad_id: emitted after a row stopped.

    Returns:
      Generation(tokens [B, N], lengths [B], stopped [B]).
    """
    B, T = ids_BT.shape
    n = max_new_tokens
    stop_ids_B = jnp.broadcast_to(jnp.asarray(stop_ids_B, jnp.int32), (B,))
    if stop_seqs_BM is None:
        stop_seqs_BM = jnp.full((B, 1), -1, jnp.int32)
    positions_BT = positions_from_mask(mask_BT)
    kv_mask_BS = jnp.concatenate([mask_BT, jnp.ones((B, n), mask_BT.dtype)], axis=1)
    cache = init_cache(model.cfg, B, T + n)
    out = model.apply(variables, ids_BT, positions_BT=positions_BT, kv_mask_BS=kv_mask_BS, cache=cache,
                      cache_index=0, logits="last")
    last_pos_B1 = positions_BT[:, -1:]

    def choose(logits_B1V, j, tokens_BN, stopped_B):
        nxt_B = jnp.argmax(logits_B1V[:, -1], axis=-1).astype(jnp.int32)
        nxt_B = jnp.where(stopped_B, pad_id, nxt_B)
        tokens_BN = jax.lax.dynamic_update_slice(tokens_BN, nxt_B[:, None], (0, j))
        ends = (nxt_B == stop_ids_B) | _ends_with(tokens_BN, jnp.full((B,), j + 1, jnp.int32), stop_seqs_BM)
        newly = ~stopped_B & ends
        return nxt_B, tokens_BN, stopped_B | newly, newly

    tokens_BN = jnp.full((B, n), pad_id, jnp.int32)
    lengths_B = jnp.full((B,), n, jnp.int32)
    nxt_B, tokens_BN, stopped_B, newly = choose(out.logits, 0, tokens_BN, jnp.zeros((B,), bool))
    lengths_B = jnp.where(newly, 1, lengths_B)

    def cond(state):
        j, _, _, _, stopped_B, _ = state
        return (j < n) & ~jnp.all(stopped_B)

    def body(state):
        j, cache, nxt_B, tokens_BN, stopped_B, lengths_B = state
        o = model.apply(variables, nxt_B[:, None], positions_BT=last_pos_B1 + j, kv_mask_BS=kv_mask_BS,
                        cache=cache, cache_index=T + j - 1, logits="last")
        nxt_B, tokens_BN, stopped_B, newly = choose(o.logits, j, tokens_BN, stopped_B)
        lengths_B = jnp.where(newly, j + 1, lengths_B)
        return j + 1, o.cache, nxt_B, tokens_BN, stopped_B, lengths_B

    state = (jnp.int32(1), out.cache, nxt_B, tokens_BN, stopped_B, lengths_B)
    _, _, _, tokens_BN, stopped_B, lengths_B = jax.lax.while_loop(cond, body, state)
    return Generation(tokens=tokens_BN, lengths=lengths_B, stopped=stopped_B)
