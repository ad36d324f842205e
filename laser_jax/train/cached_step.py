"""Cached (GradCache-style) LaSER gradients: memory follows a chunk of queries, not the batch.

Used by `train_step` when `StepConfig.cache_chunk_size` > 0. With C = cache_chunk_size and
n = B / C chunks (chunk a holds queries a, a+n, a+2n, ... and their G documents, the same
strided split as gradient accumulation, so every device keeps its share):

1. every representation the loss reads is computed chunk by chunk with no activations
   kept (`lax.map`, outputs under stop-gradient): latent query embeddings [C, D] and step
   states [C, J, D], explicit embeddings and aligned states, document embeddings [C*G, D];
2. the loss of the WHOLE global batch (every query against every document) and its
   gradient with respect to those representations (`laser_loss` under `jax.grad`);
3. each chunk again under `jax.vjp`, pulling its slice of the representation gradients
   back into the trainable parameters, summed over chunks (`lax.scan`).

By the chain rule the result is the plain step's gradient; activation memory is that of
one chunk (forward and backward) instead of the batch. Each chunk's dropout key is
`fold_in(rng, chunk index)` in both passes, so pass 3 recomputes exactly pass 1's values.
A separate frozen teacher ("no co-learning") runs in pass 1 only: its outputs carry no
gradient, as in the plain step. The explicit representations of the shared backbone get
gradients from L_cl_explicit only (the distillation targets sit under stop-gradient
inside `laser_loss`), as in the plain step.
"""
from __future__ import annotations

from typing import Dict, Mapping, Optional, Tuple

import jax
import jax.numpy as jnp

from laser_jax.method.losses import laser_loss
from laser_jax.model.decoder import Decoder
from laser_jax.model.lora import adapters_for_compute
from laser_jax.method.objective import student_representations, teacher_representations
from laser_jax.train.microbatches import split_microbatches


def _merge_chunks(x):
    """[n, R, ...] -> [n*R, ...]: chunk a's rows follow chunk a-1's."""
    return x.reshape((-1,) + x.shape[2:])


def cached_gradients(model: Decoder, step_cfg, trainable, frozen, batch: Mapping[str, jax.Array],
                     rng: Optional[jax.Array], teacher_variables=None) -> Tuple[dict, Dict[str, jax.Array]]:
    """Gradient of the LaSER loss of the whole batch, computed chunk by chunk (module doc).

    Args:
      model: the Decoder.
      step_cfg: `StepConfig` (cache_chunk_size C > 0 dividing the batch's B queries).
      trainable, frozen: the state's variable trees (gradients are taken for `trainable`).
      batch: the global batch (docs/architecture.md layout), B queries.
      rng: the step's dropout key or None.
      teacher_variables: a separate frozen teacher, or None (co-learning).

    Returns:
      (grads shaped like `trainable`, metrics of `laser_loss` over the whole batch).
    """
    size, b = step_cfg.cache_chunk_size, batch["q_ids"].shape[0]
    if size < 1 or b % size:
        raise ValueError(f"cache_chunk_size={size} does not divide the batch of {b} queries")
    if step_cfg.grad_accum_steps != 1:
        raise ValueError("cache_chunk_size and grad_accum_steps > 1 cannot be combined")
    n = b // size
    chunks = split_microbatches(batch, n)  # [n, C(*G), ...]
    indices = jnp.arange(n)
    kw = dict(num_steps=step_cfg.num_thinking_steps, eos_id=step_cfg.eos_id)

    def student(params, chunk, i):
        key = None if rng is None else jax.random.fold_in(rng, i)
        variables = {**frozen, **adapters_for_compute(params, model.cfg)}
        return student_representations(model, variables, chunk, loss_cfg=step_cfg.loss, rng=key,
                                       explicit=teacher_variables is None, **kw)

    # Pass 1: representations of every chunk, no activations kept.
    def forward(xs):
        chunk, i = xs
        reps = jax.lax.stop_gradient(student(trainable, chunk, i))
        if teacher_variables is not None and step_cfg.loss.needs_explicit:
            reps.update(teacher_representations(model, teacher_variables, chunk, **kw))
        return reps

    reps = {k: _merge_chunks(v) for k, v in jax.lax.map(forward, (chunks, indices)).items()}

    # Pass 2: the loss over the whole batch and its gradient w.r.t. the student's outputs.
    student_keys = [k for k in reps if k != "teacher_d_emb" and (teacher_variables is None or k[0] != "e")]
    fixed = {k: v for k, v in reps.items() if k not in student_keys}

    def loss_of(student_reps):
        return laser_loss(step_cfg.loss, **student_reps, **fixed)

    (_, metrics), rep_grads = jax.value_and_grad(loss_of, has_aux=True)({k: reps[k] for k in student_keys})
    rep_grads = {k: g.reshape((n, -1) + g.shape[1:]) for k, g in rep_grads.items()}

    # Pass 3: each chunk again, its representation gradients pulled back into the parameters.
    def backward(total, xs):
        chunk, i, cotangent = xs
        _, pull = jax.vjp(lambda params: student(params, chunk, i), trainable)
        (grads,) = pull(cotangent)
        return jax.tree_util.tree_map(jnp.add, total, grads), None

    zeros = jax.tree_util.tree_map(jnp.zeros_like, trainable)
    grads, _ = jax.lax.scan(backward, zeros, (chunks, indices, rep_grads))
    return grads, metrics
