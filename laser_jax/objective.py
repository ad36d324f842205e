"""One LaSER forward over a training batch: both views through one backbone, then the loss.

Documents go through the latent view once and serve every term (in the same pass as the
queries when both are padded to the same width). The explicit pass runs
only when some term uses it, and the latent query pass only when some term uses that.
"""
from __future__ import annotations

from typing import Mapping, Optional

import jax
import jax.numpy as jnp

from laser_jax.laser import explicit_view, latent_view
from laser_jax.losses import LossConfig, laser_loss
from laser_jax.model.decoder import Decoder


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
    rngs = [None] * 3 if rng is None else list(jax.random.split(rng, 3))
    q_emb = q_states = e_emb = e_states = teacher_d_emb = None
    q_ids, q_mask, d_ids, d_mask = batch["q_ids"], batch["q_mask"], batch["d_ids"], batch["d_mask"]
    if loss_cfg.needs_latent_queries and q_ids.shape[1] == d_ids.shape[1]:
        # Same padded width: one latent pass over queries and documents together.
        emb, states = latent_view(model, variables, jnp.concatenate([q_ids, d_ids]),
                                  jnp.concatenate([q_mask, d_mask]), num_steps, rngs[0])
        b = q_ids.shape[0]
        q_emb, q_states, d_emb = emb[:b], states[:b], emb[b:]
    else:
        d_emb, _ = latent_view(model, variables, d_ids, d_mask, num_steps, rngs[0])
        if loss_cfg.needs_latent_queries:
            q_emb, q_states = latent_view(model, variables, q_ids, q_mask, num_steps, rngs[1])
    if loss_cfg.needs_explicit:
        if batch["e_seg"].shape[1] != num_steps:
            raise ValueError(f"e_seg has {batch['e_seg'].shape[1]} aligned positions per query but "
                             f"num_thinking_steps={num_steps}: the data pipeline and the model disagree on K")
        teacher = variables if teacher_variables is None else teacher_variables
        e_emb, e_states = explicit_view(model, teacher, batch["e_ids"], batch["e_mask"], batch["e_seg"],
                                        eos_id, rngs[2])
        if teacher_variables is not None:
            # The teacher scores against documents in its own embedding space.
            teacher_d_emb, _ = latent_view(model, teacher_variables, batch["d_ids"], batch["d_mask"],
                                           num_steps)
            e_emb, e_states, teacher_d_emb = jax.lax.stop_gradient((e_emb, e_states, teacher_d_emb))
    return laser_loss(loss_cfg, d_emb, q_emb, q_states, e_emb, e_states, teacher_d_emb)
