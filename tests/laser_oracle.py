"""Plain PyTorch test oracle for LaSER (docs: the LaSER spec, sections 2-4).

Written directly from the spec on top of a Hugging Face `*ForCausalLM` model (Qwen3,
Qwen2, Llama). Clarity over speed: no KV cache (the latent view recomputes the whole
sequence at every step), explicit loops over the batch where that is clearer, and the
soft-token softmax, scores and losses in float32 (float64 when the model / inputs are
float64). The JAX implementation is compared against these functions in float32.

Precision note: with the tiny random test models (tests/hf_models.py, weights of std 0.2)
float32 rounding (e.g. a padded batch vs a lone row, recompute vs KV cache) is amplified
through the soft-token steps, roughly 2e-6 at h_1, 1e-5 at h_2, up to ~1e-4 at h_3 / h_4.
In float64 the same identities hold exactly; use a float64 copy with SDPA attention for
those (HF's eager attention runs its softmax in float32 and turns the fully masked rows
of left padding into NaN for a float64 model).

API
  latent_view(model, input_ids, attention_mask, K) -> (emb [B,D], states [B,K,D])
  explicit_view(model, e_ids, e_mask, query_len, K, split_ids, eos_id, rule)
      -> (v_star [B,D], aligned [B,K,D])
  segment_indices(e_ids, e_mask, query_len, K, split_ids, rule) -> LongTensor [B,K]
  downsample_indices(M, K, rule) -> list of K indices into the M segment ends
  laser_losses(q_emb, q_states, d_emb, e_emb, e_states, tau, tau_kd, tau_mid,
               lambda1, lambda2, lambda3) -> dict
  laser_step(model, batch, K, split_ids, eos_id, rule, **loss_kw) -> dict

Conventions
  * All id batches are LEFT padded; masks are 1 for real tokens, 0 for padding.
  * Position ids are always clamp(cumsum(mask) - 1, min=0) of the (extended) mask, so
    the first real token of every row is at position 0 and appended positions continue.
  * h = `hidden_states[-1]` of the HF model (last layer, after the final norm).
"""
from __future__ import annotations

from typing import Iterable

import torch
import torch.nn.functional as F

RULES = ("linspace", "paper")


# ----------------------------------------------------------------------------- helpers
def position_ids_from_mask(mask: torch.Tensor) -> torch.Tensor:
    """clamp(cumsum(mask) - 1, min=0), per row."""
    return torch.clamp(torch.cumsum(mask.long(), dim=-1) - 1, min=0)


def _at_least_f32(dtype: torch.dtype) -> torch.dtype:
    """float32 for float32 / bf16 / fp16, float64 for float64."""
    return torch.promote_types(dtype, torch.float32)


def input_embedding_matrix(model) -> torch.Tensor:
    """E [V, D]."""
    return model.get_input_embeddings().weight


def lm_head_matrix(model) -> torch.Tensor:
    """W_lm [V, D] (the same tensor as E when the config ties the embeddings)."""
    return model.get_output_embeddings().weight


def last_hidden(model, inputs_embeds: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Full (no cache) pass over `inputs_embeds` [B,T,D]; returns hidden_states[-1] [B,T,D]."""
    out = model(inputs_embeds=inputs_embeds, attention_mask=mask.long(),
                position_ids=position_ids_from_mask(mask), output_hidden_states=True,
                use_cache=False)
    return out.hidden_states[-1]


def soft_token(model, h: torch.Tensor) -> torch.Tensor:
    """t = softmax(W_lm h) @ E over the full vocabulary; h [B,D] -> [B,D]."""
    W = lm_head_matrix(model)
    E = input_embedding_matrix(model)
    ct = _at_least_f32(h.dtype)
    logits = h.to(ct) @ W.to(ct).t()                        # [B, V]
    head = model.get_output_embeddings()
    if getattr(head, "bias", None) is not None:             # none for Qwen / Llama
        logits = logits + head.bias.to(ct)
    p = torch.softmax(logits, dim=-1)                       # [B, V]
    return (p @ E.to(ct)).to(E.dtype)                       # [B, D]


# ----------------------------------------------------------------------- section 2
def latent_view(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, K: int):
    """Latent view (spec section 2), by recomputation.

    Step 1: one pass over the text, h_1 = state at the last position (the last real
    token; the batch is left padded). Step j = 2..K: t_j = softmax(W_lm h_{j-1}) @ E
    is appended as a new position with mask 1 and the model is run again over the whole
    concatenation [E[input_ids], t_2, .., t_j]; h_j = state at the last position.

    Returns (emb [B,D] = L2-normalize(mean_j h_j), states [B,K,D] unnormalised).
    Fully differentiable.
    """
    if K < 1:
        raise ValueError(f"K must be >= 1, got {K}")
    E = input_embedding_matrix(model)
    embeds = E[input_ids]                                   # [B, T, D]
    mask = attention_mask.long()
    states = []
    for j in range(K):
        if j > 0:
            t = soft_token(model, states[-1])               # [B, D]
            embeds = torch.cat([embeds, t[:, None, :]], dim=1)
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        hs = last_hidden(model, embeds, mask)
        states.append(hs[:, -1, :])
    states = torch.stack(states, dim=1)                     # [B, K, D]
    emb = F.normalize(states.to(_at_least_f32(states.dtype)).mean(dim=1), p=2, dim=-1)
    return emb, states


# ----------------------------------------------------------------------- section 3
def downsample_indices(M: int, K: int, rule: str = "linspace") -> list:
    """Indices (into the M segment ends) of the K kept segments.

    M < K: keep all M and repeat the last until K (both rules); M == 0 is the caller's
    business (it uses the EOS state). M >= K:
      "linspace": floor(torch.linspace(0, M-1, K)) in float32 (K == 1 keeps the first);
      "paper":    floor(i*M/K) - 1 for i = 1..K (0-based; the last segment always kept).
    """
    if rule not in RULES:
        raise ValueError(f"unknown rule {rule!r}")
    if M <= 0:
        raise ValueError("no segments")
    if M < K:
        return list(range(M)) + [M - 1] * (K - M)
    if rule == "linspace":
        return torch.linspace(0, M - 1, K, dtype=torch.float32).long().tolist()
    return [(i * M) // K - 1 for i in range(1, K + 1)]


def segment_indices(e_ids: torch.Tensor, e_mask: torch.Tensor, query_len, K: int,
                    split_ids: Iterable[int], rule: str = "linspace") -> torch.Tensor:
    """Positions (into the length-(L+1) sequence, EOS = L) of the K aligned states.

    Per row: n_pad = L - sum(mask); region = [n_pad + query_len, L) (EOS excluded);
    segment ends = region positions whose id is in split_ids, plus L-1 if not already
    one; downsample to K (see downsample_indices); empty region -> [L] * K.
    """
    split_ids = {int(s) for s in split_ids}
    B, L = e_ids.shape
    out = []
    for b in range(B):
        ids = [int(x) for x in e_ids[b].tolist()]
        n_real = int(e_mask[b].long().sum())
        n_pad = L - n_real
        start = n_pad + int(query_len[b])
        region = list(range(start, L))
        if not region:
            out.append([L] * K)
            continue
        ends = [p for p in region if ids[p] in split_ids]
        if not ends or ends[-1] != L - 1:
            ends.append(L - 1)
        out.append([ends[i] for i in downsample_indices(len(ends), K, rule)])
    return torch.tensor(out, dtype=torch.long).reshape(B, K)


def explicit_view(model, e_ids: torch.Tensor, e_mask: torch.Tensor, query_len, K: int,
                  split_ids: Iterable[int], eos_id: int, rule: str = "linspace"):
    """Explicit view (spec section 3).

    Appends E[eos_id] as one extra position (mask 1) to the left-padded (query +
    reasoning) batch, runs one full pass, and returns
      v_star [B,D]   = L2-normalize(state at the appended EOS, position L),
      aligned [B,K,D] = unnormalised states at segment_indices(...).
    """
    E = input_embedding_matrix(model)
    B, L = e_ids.shape
    eos = E[torch.full((B, 1), int(eos_id), dtype=torch.long, device=e_ids.device)]
    embeds = torch.cat([E[e_ids], eos], dim=1)              # [B, L+1, D]
    mask = torch.cat([e_mask.long(), torch.ones_like(e_mask[:, :1]).long()], dim=1)
    hs = last_hidden(model, embeds, mask)                   # [B, L+1, D]
    v_star = F.normalize(hs[:, L, :].to(_at_least_f32(hs.dtype)), p=2, dim=-1)
    idx = segment_indices(e_ids, e_mask, query_len, K, split_ids, rule).to(hs.device)
    aligned = torch.stack([hs[b, idx[b], :] for b in range(B)], dim=0)   # [B, K, D]
    return v_star, aligned


# ----------------------------------------------------------------------- section 4
def _kl_rows(teacher_logits: torch.Tensor, student_logits: torch.Tensor) -> torch.Tensor:
    """mean over rows of KL(softmax(teacher) || softmax(student)); teacher detached."""
    log_t = torch.log_softmax(teacher_logits.detach(), dim=-1)
    log_s = torch.log_softmax(student_logits, dim=-1)
    return (log_t.exp() * (log_t - log_s)).sum(dim=-1).mean()


def laser_losses(q_emb, q_states, d_emb, e_emb, e_states, tau: float = 0.02,
                 tau_kd: float = 0.02, tau_mid: float = 0.05, lambda1: float = 1.0,
                 lambda2: float = 10.0, lambda3: float = 0.1) -> dict:
    """LaSER losses (spec section 4), all in float32 (float64 for float64 inputs).

    q_emb [B,D], e_emb [B,D], d_emb [B*G,D] are L2-normalised; q_states / e_states
    [B,K,D] are unnormalised (normalised here). Document i*G is query i's positive.
    """
    ct = _at_least_f32(q_emb.dtype)                         # float32 (float64 if given)
    q_emb, d_emb, e_emb = q_emb.to(ct), d_emb.to(ct), e_emb.to(ct)
    q_states, e_states = q_states.to(ct), e_states.to(ct)
    B = q_emb.shape[0]
    N = d_emb.shape[0]
    if N % B != 0:
        raise ValueError(f"{N} documents for {B} queries")
    G = N // B
    K = q_states.shape[1]
    target = torch.arange(B, device=q_emb.device) * G

    s_L = q_emb @ d_emb.t()                                 # [B, N]
    s_E = e_emb @ d_emb.t()                                 # [B, N]
    loss_cl_latent = F.cross_entropy(s_L / tau, target)
    loss_cl_explicit = F.cross_entropy(s_E / tau, target)
    loss_kl_out = _kl_rows(s_E / tau_kd, s_L / tau_kd)

    h = F.normalize(q_states, p=2, dim=-1)                  # [B, K, D]
    a = F.normalize(e_states, p=2, dim=-1)
    s_h = (h @ d_emb.t()).reshape(B * K, N)                 # row b*K + j
    s_a = (a @ d_emb.t()).reshape(B * K, N)
    loss_kl_mid = _kl_rows(s_a / tau_mid, s_h / tau_mid)

    loss = (loss_cl_latent + lambda1 * loss_cl_explicit + lambda2 * loss_kl_out
            + lambda3 * loss_kl_mid)
    with torch.no_grad():
        acc_latent = (s_L.argmax(dim=-1) == target).to(ct).mean()
        acc_explicit = (s_E.argmax(dim=-1) == target).to(ct).mean()
    return dict(loss=loss, loss_cl_latent=loss_cl_latent, loss_cl_explicit=loss_cl_explicit,
                loss_kl_out=loss_kl_out, loss_kl_mid=loss_kl_mid,
                acc_latent=acc_latent, acc_explicit=acc_explicit)


def laser_step(model, batch: dict, K: int, split_ids: Iterable[int], eos_id: int,
               rule: str = "linspace", **loss_kw) -> dict:
    """One LaSER forward: latent view of queries and documents (documents once, same K),
    explicit view of queries, losses. batch keys: q_ids, q_mask, d_ids, d_mask, e_ids,
    e_mask, q_len (number of real tokens of the formatted query alone)."""
    q_emb, q_states = latent_view(model, batch["q_ids"], batch["q_mask"], K)
    d_emb, _ = latent_view(model, batch["d_ids"], batch["d_mask"], K)
    e_emb, e_states = explicit_view(model, batch["e_ids"], batch["e_mask"], batch["q_len"],
                                    K, split_ids, eos_id, rule)
    return laser_losses(q_emb, q_states, d_emb, e_emb, e_states, **loss_kw)
