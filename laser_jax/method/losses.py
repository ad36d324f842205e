"""LaSER's objective (spec section 4): two InfoNCE terms, output KL and trajectory KL.

Axis letters: B queries, G documents per query, J latent steps, D hidden.
Scores are computed in float32 against all B*G documents of the (global) batch; query i's
positive is document i*G (with `in_batch_negatives=False`, only against the query's own G
documents, so the loss is per query). Distillation targets sit under stop-gradient.
"""
from __future__ import annotations

import dataclasses
from typing import Dict, Tuple

import jax
import jax.numpy as jnp

from laser_jax.method.views import l2_normalize


@dataclasses.dataclass(frozen=True)
class LossConfig:
    """Temperatures and weights (defaults: the authors' code).

    L = lambda_latent * L_cl_latent + lambda_explicit * L_cl_explicit
        + lambda_kl_out * L_kl_out + lambda_kl_mid * L_kl_mid.
    `lambda_latent` is 1 except when training the explicit view alone (a teacher for the
    "no co-learning" ablation).
    """

    tau: float = 0.02
    tau_kd: float = 0.02
    tau_mid: float = 0.05  # the paper says 0.02; the authors' code uses 0.05
    lambda_latent: float = 1.0
    lambda_explicit: float = 1.0
    lambda_kl_out: float = 10.0
    lambda_kl_mid: float = 0.1
    in_batch_negatives: bool = True  # False: each query is scored against its own G documents only

    @property
    def needs_explicit(self) -> bool:
        """Whether any term uses the explicit view (if not, the pass is skipped)."""
        return bool(self.lambda_explicit or self.lambda_kl_out or self.lambda_kl_mid)

    @property
    def needs_latent_queries(self) -> bool:
        return bool(self.lambda_latent or self.lambda_kl_out or self.lambda_kl_mid)


def contrastive(scores_BN, target_B, tau: float) -> Tuple[jax.Array, jax.Array]:
    """InfoNCE; returns (mean cross-entropy, top-1 accuracy)."""
    logits = scores_BN.astype(jnp.float32) / tau
    target = target_B
    logp = jax.nn.log_softmax(logits, axis=-1)
    loss = -jnp.mean(jnp.take_along_axis(logp, target[:, None], axis=-1))
    acc = jnp.mean((jnp.argmax(logits, axis=-1) == target).astype(jnp.float32))
    return loss, acc


def kl_rows(teacher_RN, student_RN, tau: float) -> jax.Array:
    """mean over rows of KL(softmax(sg(teacher)/tau) || softmax(student/tau))."""
    log_t = jax.nn.log_softmax(jax.lax.stop_gradient(teacher_RN).astype(jnp.float32) / tau, axis=-1)
    log_s = jax.nn.log_softmax(student_RN.astype(jnp.float32) / tau, axis=-1)
    return jnp.mean(jnp.sum(jnp.exp(log_t) * (log_t - log_s), axis=-1))


def scores(x_RD, d_ND, group: int, in_batch: bool, rows_per_query: int = 1):
    """Similarities of R = B * rows_per_query rows against the documents, float32.

    in_batch: [R, B*G] against every document; else [R, G] against the row's own query's G.
    """
    x32, d32 = x_RD.astype(jnp.float32), d_ND.astype(jnp.float32)
    if in_batch:
        return x32 @ d32.T
    b = d32.shape[0] // group
    x = x32.reshape(b, rows_per_query, -1)
    return jnp.einsum("bjd,bgd->bjg", x, d32.reshape(b, group, -1)).reshape(b * rows_per_query, group)


def laser_loss(cfg: LossConfig, d_emb, q_emb=None, q_states=None, e_emb=None, e_states=None,
               teacher_d_emb=None) -> Tuple[jax.Array, Dict[str, jax.Array]]:
    """Total loss and metrics.

    Args:
      cfg: temperatures and weights.
      d_emb: [B*G, D] normalised document embeddings (latent view).
      q_emb, q_states: [B, D] normalised latent query embeddings and [B, J, D] step
        states (None when no term uses them).
      e_emb, e_states: [B, D] normalised explicit embeddings and [B, J, D] aligned
        states (None when the explicit view is skipped).
      teacher_d_emb: [B*G, D] documents as a separate frozen teacher encodes them; the
        explicit side is scored against these (default: `d_emb`, the shared backbone).

    Returns:
      (loss, metrics) with `loss`, `loss_cl_latent`, `loss_cl_explicit`, `loss_kl_out`,
      `loss_kl_mid`, `acc_latent`, `acc_explicit` (absent terms are 0).
    """
    n_docs = d_emb.shape[0]
    n_q = (q_emb if q_emb is not None else e_emb).shape[0]
    if n_docs % n_q:
        raise ValueError(f"{n_docs} documents for {n_q} queries: not a whole group each")
    group = n_docs // n_q
    d32 = d_emb.astype(jnp.float32)
    t32 = d32 if teacher_d_emb is None else teacher_d_emb.astype(jnp.float32)
    ib = cfg.in_batch_negatives
    target = jnp.arange(n_q) * group if ib else jnp.zeros((n_q,), jnp.int32)
    zero = jnp.zeros((), jnp.float32)
    m = dict(loss_cl_latent=zero, loss_cl_explicit=zero, loss_kl_out=zero, loss_kl_mid=zero,
             acc_latent=zero, acc_explicit=zero)
    s_lat = s_exp = None
    if q_emb is not None:
        s_lat = scores(q_emb, d32, group, ib)
        m["loss_cl_latent"], m["acc_latent"] = contrastive(s_lat, target, cfg.tau)
    if e_emb is not None:
        s_exp = scores(e_emb, t32, group, ib)
        m["loss_cl_explicit"], m["acc_explicit"] = contrastive(s_exp, target, cfg.tau)
    if s_lat is not None and s_exp is not None:
        m["loss_kl_out"] = kl_rows(s_exp, s_lat, cfg.tau_kd)
    if q_states is not None and e_states is not None:
        d, j = q_states.shape[-1], q_states.shape[1]
        student = scores(l2_normalize(q_states.reshape(-1, d)), d32, group, ib, j)  # [B*J, B*G]
        teacher = scores(l2_normalize(e_states.reshape(-1, d)), t32, group, ib, j)
        m["loss_kl_mid"] = kl_rows(teacher, student, cfg.tau_mid)
    m["loss"] = (cfg.lambda_latent * m["loss_cl_latent"] + cfg.lambda_explicit * m["loss_cl_explicit"]
                 + cfg.lambda_kl_out * m["loss_kl_out"] + cfg.lambda_kl_mid * m["loss_kl_mid"])
    return m["loss"], m
