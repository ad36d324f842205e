"""LaSER's two views of one backbone (spec sections 2 and 3), as pure functions.

Axis letters: B batch, T text length, D hidden, V vocab, J latent steps (the spec's K),
L layers, K kv heads, H head dim.

- `latent_view`: one prefill over the left-padded text, then `jax.lax.scan` over the J-1
  soft-token steps. Each step turns the last state into logits (one position only), a
  full-vocabulary softmax, and the expected input embedding, which is fed back as one
  cached position (with the model's `soft_token` "pause": one learned vector instead,
  `soft_step_input`). The prefill's keys/values are closed over by the step (a prefix
  cache); the scan carries only a tail cache of J-1 slots, so it neither copies nor
  saves the [L, B, T, K, H] prefill cache per step. With `unroll_soft_steps` each step
  runs the layer stack unrolled over per-layer weights and caches sliced once before the
  scan (`decoder.cached_stack`; the prefill keeps the model's `scan_layers`).
- `explicit_view`: one pass over query + reasoning with an appended EOS embedding; the
  EOS state and the states at the (pre-computed, downsampled) segment ends.
"""
from __future__ import annotations

from typing import Optional, Tuple

import jax
import jax.numpy as jnp

from laser_jax.model.decoder import LATENT, PAUSE, Decoder, cached_stack, positions_from_mask


def resolve_num_thinking_steps(given: Optional[int], default: int) -> int:
    """K for a call: `given` when set, else the model's own `default`.

    Raises:
      ValueError: when the K that would be used is < 1 (an explicit 0 is an error, never
        "use the default").
    """
    steps = default if given is None else given
    if isinstance(steps, bool) or int(steps) != steps or steps < 1:
        raise ValueError(f"num_thinking_steps must be >= 1, an integer (K=1 is a plain last-token "
                         f"retriever), got {steps!r}")
    return int(steps)


def l2_normalize(x, axis=-1, eps=1e-12):
    """x / max(||x||, eps) in float32 (as torch.nn.functional.normalize)."""
    x = x.astype(jnp.float32)
    return x / jnp.maximum(jnp.linalg.norm(x, axis=axis, keepdims=True), eps)


def _rngs(rng, step):
    return None if rng is None else {"dropout": jax.random.fold_in(rng, step)}


def soft_token(model: Decoder, variables, h_BD):
    """Expected input embedding under the LM head's distribution: softmax(W_lm h) @ E.

    Logits are computed for this one position only, the softmax in float32
    (`Decoder.expected_embedding`). Returns [B, D] in the compute dtype.
    """
    return model.apply(variables, h_BD, method=Decoder.expected_embedding)


def check_soft_token_variables(cfg, variables) -> None:
    """ValueError when a soft_token "pause" model's variables lack its pause vector."""
    if getattr(cfg, "soft_token", None) == "pause" and PAUSE not in (variables or {}).get(LATENT, {}):
        raise ValueError(f"the model's soft_token is 'pause' but its variables have no {LATENT}/{PAUSE} "
                         f"(collections: {sorted(variables)}); load it with laser_jax.inference.load, "
                         "which restores the vector from a checkpoint or an export")


def soft_step_input(model: Decoder, variables, h_BD):
    """What one soft step is fed [B, D], by `model.cfg.soft_token`: the expected embedding of
    the previous state h (`soft_token`, the paper's), or "pause": the learned pause vector,
    the same for every row and step (it never reads h, so no LM head runs)."""
    if model.cfg.soft_token == "pause":
        pause_D = model.apply(variables, method=Decoder.pause_embedding)
        return jnp.broadcast_to(pause_D, h_BD.shape)
    return soft_token(model, variables, h_BD)


def latent_view(model: Decoder, variables, ids_BT, mask_BT, num_steps: int,
                rng: Optional[jax.Array] = None) -> Tuple[jax.Array, jax.Array]:
    """Latent ("thinking") view of a left-padded batch (queries or documents).

    Args:
      model: the Decoder.
      variables: its variables ({"params": ..., optionally "lora": ...}).
      ids_BT, mask_BT: int token ids and mask (1 = real token), LEFT padded.
      num_steps: J >= 1; J = 1 is plain last-token pooling. May differ from training.
      rng: optional dropout key (LoRA dropout); None = deterministic.

    Returns:
      (embedding [B, D] float32, L2-normalised mean of the J states;
       states [B, J, D] unnormalised, in the compute dtype).
    """
    num_steps = resolve_num_thinking_steps(num_steps, num_steps)
    check_soft_token_variables(model.cfg, variables)
    B, T = ids_BT.shape
    extra = num_steps - 1
    positions_BT = positions_from_mask(mask_BT)
    out = model.apply(variables, ids_BT, positions_BT=positions_BT, kv_mask_BS=mask_BT,
                      rngs=_rngs(rng, 0))
    h1_BD = out.hidden[:, -1]
    if extra == 0:
        states_BJD = h1_BD[:, None]
    else:
        # The prefill's keys/values [L, B, T, K, H] are a constant prefix for every step
        # (closed over, not carried); soft token j is written to tail slot j, and
        # causality in slot order hides the tail slots not yet written.
        tail = jax.tree_util.tree_map(
            lambda kv: jnp.zeros(kv.shape[:2] + (extra,) + kv.shape[3:], kv.dtype), out.cache)
        tail, run_stack = cached_stack(model, variables, {"prefix_k": out.cache["k"], "prefix_v": out.cache["v"],
                                                          **tail})
        kv_mask_BS = jnp.concatenate([mask_BT, jnp.ones((B, extra), mask_BT.dtype)], axis=1)
        last_pos_B1 = positions_BT[:, -1:]

        def step(carry, j):
            tail, h_BD = carry
            x_B1D = soft_step_input(model, variables, h_BD)[:, None]
            hidden, tail = run_stack(tail, x_B1D, positions_BT=last_pos_B1 + 1 + j, kv_mask_BS=kv_mask_BS,
                                     cache_index=j, rngs=_rngs(rng, 1 + j))
            h_BD = hidden[:, 0]
            return (tail, h_BD), h_BD

        _, hs_JBD = jax.lax.scan(step, (tail, h1_BD), jnp.arange(extra))
        states_BJD = jnp.concatenate([h1_BD[:, None], hs_JBD.transpose(1, 0, 2)], axis=1)
    embedding_BD = l2_normalize(jnp.mean(states_BJD.astype(jnp.float32), axis=1))
    return embedding_BD, states_BJD


def explicit_view(model: Decoder, variables, ids_BT, mask_BT, seg_BJ, eos_id: int,
                  rng: Optional[jax.Array] = None) -> Tuple[jax.Array, jax.Array]:
    """Explicit view: [query ; reasoning ; EOS embedding] in one pass.

    Args:
      ids_BT, mask_BT: query text + reasoning, LEFT padded (no EOS appended).
      seg_BJ: int indices into the length T+1 hidden sequence (T = the appended EOS) of
        the J aligned states, computed by the data pipeline (`laser_jax.data.segments`).
      eos_id: token whose input embedding is appended.
      rng: optional dropout key.

    Returns:
      (v_star [B, D] float32 L2-normalised EOS state; aligned states [B, J, D]
       unnormalised, in the compute dtype).
    """
    B, _ = ids_BT.shape
    x_BTD = model.apply(variables, ids_BT, method=Decoder.embed)
    eos_B1D = model.apply(variables, jnp.full((B, 1), eos_id, ids_BT.dtype), method=Decoder.embed)
    x_BTD = jnp.concatenate([x_BTD, eos_B1D], axis=1)
    mask_BT = jnp.concatenate([mask_BT, jnp.ones((B, 1), mask_BT.dtype)], axis=1)
    out = model.apply(variables, x_BTD=x_BTD, positions_BT=positions_from_mask(mask_BT),
                      kv_mask_BS=mask_BT, rngs=_rngs(rng, 0))
    v_star_BD = l2_normalize(out.hidden[:, -1])
    aligned_BJD = jnp.take_along_axis(out.hidden, seg_BJ[:, :, None].astype(jnp.int32), axis=1)
    return v_star_BD, aligned_BJD
