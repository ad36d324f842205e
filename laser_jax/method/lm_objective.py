"""The causal-LM objective: next-token cross-entropy over REAL tokens only.

Batch (numpy from `laser_jax.data.lm_pipeline`, LEFT padded like every other view):
  ids  int32 [B, T]  token ids (padding = the tokenizer's pad id)
  mask int32 [B, T]  1 for real tokens

Target t+1 is scored from position t only when both t and t+1 are real tokens: padding is
never a target and the first real token of a row (nothing real before it) is not a target.
The loss is the mean over all scored targets of the batch (every target weighs the same,
whatever its row's length). Positions are `cumsum(mask) - 1` as in the LaSER views, so a
row's loss does not depend on how much padding its batch has.
"""
from __future__ import annotations

from typing import Mapping, Optional

import jax
import jax.numpy as jnp
import optax

from laser_jax.model.decoder import Decoder, positions_from_mask

LM_BATCH_KEYS = ("ids", "mask")


def target_weights(mask_BT: jax.Array) -> jax.Array:
    """float32 [B, T-1]: 1 where token t+1 is a target (tokens t and t+1 both real)."""
    return (mask_BT[:, 1:] * mask_BT[:, :-1]).astype(jnp.float32)


def causal_lm_objective(model: Decoder, variables, batch: Mapping[str, jax.Array],
                        rng: Optional[jax.Array] = None):
    """(loss, metrics) of a batch: mean next-token CE over real targets.

    Args:
      model: the Decoder.
      variables: trainable + frozen variables.
      batch: `ids`, `mask` [B, T] (left padded).
      rng: dropout key (LoRA dropout) or None.

    Returns:
      (loss float32 [], {"loss", "acc" (argmax == target over the same targets),
       "targets" (number of scored targets)}).
    """
    ids, mask = batch["ids"], batch["mask"]
    out = model.apply(variables, ids, positions_BT=positions_from_mask(mask), kv_mask_BS=mask, logits="all",
                      rngs=None if rng is None else {"dropout": rng})
    logits = out.logits[:, :-1].astype(jnp.float32)
    targets = ids[:, 1:]
    w = target_weights(mask)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    n = jnp.sum(w)
    denom = jnp.maximum(n, 1.0)
    loss = jnp.sum(ce * w) / denom
    acc = jnp.sum((jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32) * w) / denom
    return loss, {"loss": loss, "acc": acc, "targets": n}
