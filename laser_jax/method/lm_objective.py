"""The causal-LM objective: next-token cross-entropy over REAL tokens only.

Batch (numpy from `laser_jax.data.lm_pipeline`), one of two layouts:
  padded (one document per row, LEFT padded like every other view):
    ids  int32 [B, T]  token ids (padding = the tokenizer's pad id)
    mask int32 [B, T]  1 for real tokens
  packed (several documents per row, data.lm_pack_len):
    ids, mask          as above (padding at the end of a row)
    segments int32 [B, T]  each token's document number within its row (1, 2, ...; 0 = padding)

Target t+1 is scored from position t only when both are real tokens of the SAME document:
padding is never a target and a document's first token (nothing of its own before it) is
not one. The loss is the mean over all scored targets of the batch (every target weighs the
same, whatever its document's length). Padded rows take positions `cumsum(mask) - 1` as in
the LaSER views; packed rows restart at 0 for each document and attend within it only (a
block-diagonal causal mask), so a document's loss does not depend on its row, its
neighbours or the padding: packed and padded batches of the same documents give the same loss.
"""
from __future__ import annotations

from typing import Mapping, Optional

import jax
import jax.numpy as jnp
import optax

from laser_jax.model.decoder import Decoder, positions_from_mask, positions_from_segments

LM_BATCH_KEYS = ("ids", "mask", "segments")  # "segments": packed batches only
PACKED_KEY = "segments"


def target_weights(mask_BT: jax.Array) -> jax.Array:
    """float32 [B, T-1]: 1 where token t+1 is a target (tokens t and t+1 both real)."""
    return (mask_BT[:, 1:] * mask_BT[:, :-1]).astype(jnp.float32)


def packed_target_weights(segments_BT: jax.Array) -> jax.Array:
    """float32 [B, T-1]: 1 where tokens t and t+1 are real tokens of one document."""
    return ((segments_BT[:, 1:] == segments_BT[:, :-1]) & (segments_BT[:, :-1] > 0)).astype(jnp.float32)


def causal_lm_objective(model: Decoder, variables, batch: Mapping[str, jax.Array],
                        rng: Optional[jax.Array] = None):
    """(loss, metrics) of a batch: mean next-token CE over real targets.

    Args:
      model: the Decoder.
      variables: trainable + frozen variables.
      batch: `ids`, `mask` [B, T] (left padded), and `segments` [B, T] for packed rows.
      rng: dropout key (LoRA dropout) or None.

    Returns:
      (loss float32 [], {"loss", "acc" (argmax == target over the same targets; ties count),
       "targets" (number of scored targets)}).
    """
    ids, mask = batch["ids"], batch["mask"]
    rngs = None if rng is None else {"dropout": rng}
    if PACKED_KEY in batch:
        segments = batch[PACKED_KEY]
        out = model.apply(variables, ids, positions_BT=positions_from_segments(segments), kv_mask_BS=mask,
                          segment_ids_BT=segments, logits="all", rngs=rngs)
        w = packed_target_weights(segments)
    else:
        out = model.apply(variables, ids, positions_BT=positions_from_mask(mask), kv_mask_BS=mask, logits="all",
                          rngs=rngs)
        w = target_weights(mask)
    logits = out.logits[:, :-1].astype(jnp.float32)
    targets = ids[:, 1:]
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    n = jnp.sum(w)
    denom = jnp.maximum(n, 1.0)
    loss = jnp.sum(ce * w) / denom
    # argmax == target, as "the target's logit is the largest" (a tie counts as a hit): a max
    # reduction costs a fraction of argmax's (value, index) reduction on CPU.
    top = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0] >= jnp.max(logits, axis=-1)
    acc = jnp.sum(top.astype(jnp.float32) * w) / denom
    return loss, {"loss": loss, "acc": acc, "targets": n}
