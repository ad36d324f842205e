"""One LaSER forward over a training batch: both views through one backbone, then the loss.

Documents go through the latent view once and serve every term (in the same pass as the
queries when both are padded to the same width). The explicit pass runs
only when some term uses it, and the latent query pass only when some term uses that.
"""
from __future__ import annotations

from typing import Dict, Mapping, Optional

import jax
import jax.numpy as jnp

from laser_jax.method.views import explicit_view, latent_view
from laser_jax.method.losses import LossConfig, laser_loss
from laser_jax.model.decoder import Decoder


def _check_segments(batch, num_steps: int):
    if batch["e_seg"].shape[-1] != num_steps:
        raise ValueError(f"e_seg has {batch['e_seg'].shape[-1]} aligned positions per query but "
                         f"num_thinking_steps={num_steps}: the data pipeline and the model disagree on K")


def student_representations(model: Decoder, variables, chunk: Mapping[str, jax.Array], *, num_steps: int,
                            loss_cfg: LossConfig, eos_id: int, rng: Optional[jax.Array] = None,
                            explicit: bool = True) -> Dict[str, jax.Array]:
    """The representations of one chunk that the shared backbone produces (differentiable).

    Args:
      model: the Decoder.
      variables: trainable + frozen variables of the backbone.
      chunk: `q_ids, q_mask` [C, Lq], `d_ids, d_mask` [C*G, Ld], and when the explicit view
        runs `e_ids, e_mask` [C, Le], `e_seg` [C, J].
      num_steps: J latent steps.
      loss_cfg: decides which views run.
      eos_id: token whose embedding the explicit view appends.
      rng: dropout key of this chunk, or None.
      explicit: run the explicit view here (False when a separate teacher runs it).

    Returns:
      {"d_emb": [C*G, D] float32} plus "q_emb" [C, D], "q_states" [C, J, D] when a term uses
      the latent queries, and "e_emb" [C, D], "e_states" [C, J, D] when `explicit` and a
      term uses the explicit view.
    """
    rngs = [None] * 3 if rng is None else list(jax.random.split(rng, 3))
    out = {}
    q_ids, q_mask, d_ids, d_mask = chunk["q_ids"], chunk["q_mask"], chunk["d_ids"], chunk["d_mask"]
    if loss_cfg.needs_latent_queries and q_ids.shape[1] == d_ids.shape[1]:
        emb, states = latent_view(model, variables, jnp.concatenate([q_ids, d_ids]),
                                  jnp.concatenate([q_mask, d_mask]), num_steps, rngs[0])
        b = q_ids.shape[0]
        out.update(q_emb=emb[:b], q_states=states[:b], d_emb=emb[b:])
    else:
        out["d_emb"], _ = latent_view(model, variables, d_ids, d_mask, num_steps, rngs[0])
        if loss_cfg.needs_latent_queries:
            out["q_emb"], out["q_states"] = latent_view(model, variables, q_ids, q_mask, num_steps, rngs[1])
    if explicit and loss_cfg.needs_explicit:
        _check_segments(chunk, num_steps)
        out["e_emb"], out["e_states"] = explicit_view(model, variables, chunk["e_ids"], chunk["e_mask"],
                                                      chunk["e_seg"], eos_id, rngs[2])
    return out


def teacher_representations(model: Decoder, teacher_variables, chunk: Mapping[str, jax.Array], *,
                            num_steps: int, eos_id: int) -> Dict[str, jax.Array]:
    """A separate frozen teacher's explicit view and documents of one chunk (no gradient).

    Returns:
      {"e_emb": [C, D], "e_states": [C, J, D], "teacher_d_emb": [C*G, D]}.
    """
    _check_segments(chunk, num_steps)
    e_emb, e_states = explicit_view(model, teacher_variables, chunk["e_ids"], chunk["e_mask"], chunk["e_seg"],
                                    eos_id)
    t_emb, _ = latent_view(model, teacher_variables, chunk["d_ids"], chunk["d_mask"], num_steps)
    return jax.lax.stop_gradient({"e_emb": e_emb, "e_states": e_states, "teacher_d_emb": t_emb})


def laser_objective(model: Decoder, variables, batch: Mapping[str, jax.Array], *, num_steps: int,
                    loss_cfg: LossConfig, eos_id: int, rng: Optional[jax.Array] = None,
                    teacher_variables=None):
    """(loss, metrics) of a batch in the layout of docs/architecture.md.

    Args:
      model: the Decoder.
      variables: trainable + frozen variables of the shared backbone.
      batch: `q_ids, q_mask, d_ids, d_mask` and, when the explicit view is used,
        `e_ids, e_mask, e_seg`.
      num_steps: J, latent thinking steps.
      loss_cfg: temperatures and weights (decides which passes run).
      eos_id: token whose embedding the explicit view appends.
      rng: dropout key or None.
      teacher_variables: if given, a frozen separate teacher runs the explicit view and
        encodes the documents it is scored against ("no co-learning" ablation); its
        outputs carry no gradient.
    """
    reps = student_representations(model, variables, batch, num_steps=num_steps, loss_cfg=loss_cfg,
                                   eos_id=eos_id, rng=rng, explicit=teacher_variables is None)
    if teacher_variables is not None and loss_cfg.needs_explicit:
        reps.update(teacher_representations(model, teacher_variables, batch, num_steps=num_steps, eos_id=eos_id))
    return laser_loss(loss_cfg, **reps)
