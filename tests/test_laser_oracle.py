"""Tests that pin the PyTorch LaSER oracle (tests/laser_oracle.py) itself."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hf_models import FAMILIES, build_hf_model
from laser_oracle import (downsample_indices, explicit_view, latent_view, laser_losses,
                          laser_step, segment_indices)

TEXTS = [
    "Instruct: Given a question, retrieve passages that answer it.\nQuery: What is 3 plus 4?",
    "First, take 5.",
    "The number 7 is the sum of two smaller numbers.",
]
REASONING = "First, take 3.\n\nThen add 4 to it\n\nSo the result is 7.\n\nDone"


@pytest.fixture(scope="module")
def models(tokenizer):
    """{(family, dtype): model}. float32 models use HF's eager attention (as built); the
    float64 copies use SDPA, because HF's eager softmax runs in float32 and turns the
    fully masked rows of left padding into NaN in float64. In float64 the model-level
    identities below hold to ~1e-12; in float32 the tiny random models (weights of std
    0.2) amplify rounding through the soft-token steps (~1e-5 per step by K = 3-4), so
    float32 checks use K <= 2."""
    vocab = max(400, len(tokenizer))
    out = {}
    for i, f in enumerate(FAMILIES):
        m = build_hf_model(f, vocab_size=vocab, seed=i)
        out[f, "float32"] = m
        m64 = build_hf_model(f, vocab_size=vocab, seed=i).double()
        m64.set_attn_implementation("sdpa")
        out[f, "float64"] = m64
    return out


# (dtype, K, atol) of the model-level identity checks
PRECISIONS = [("float64", 4, 1e-9), ("float32", 2, 1e-5)]


def _batch(tokenizer, texts):
    assert tokenizer.padding_side == "left"
    enc = tokenizer(texts, padding=True, add_special_tokens=False, return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"]


def _positions(mask):
    return torch.clamp(mask.long().cumsum(-1) - 1, min=0)


def _split_id(tokenizer):
    return tokenizer.encode("\n\n", add_special_tokens=False)[-1]


# --------------------------------------------------------------------------- latent view
@pytest.mark.parametrize("dtype,K,atol", PRECISIONS)
@pytest.mark.parametrize("family", FAMILIES)
def test_k1_is_last_token_pooling(models, tokenizer, family, dtype, K, atol):
    model = models[family, dtype]
    ids, mask = _batch(tokenizer, TEXTS)
    with torch.no_grad():
        emb, states = latent_view(model, ids, mask, K=1)
        h = model(input_ids=ids, attention_mask=mask, position_ids=_positions(mask),
                  output_hidden_states=True).hidden_states[-1][:, -1]
    assert states.shape == (len(TEXTS), 1, h.shape[-1])
    assert emb.dtype == getattr(torch, dtype)
    torch.testing.assert_close(states[:, 0], h, atol=atol, rtol=atol)
    torch.testing.assert_close(emb, F.normalize(h, dim=-1), atol=atol, rtol=atol)
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(len(TEXTS), dtype=emb.dtype))


def _kv_cache_rollout(model, ids, mask, K):
    """Independent latent rollout with HF's own KV cache and logits, one soft token at a time."""
    E = model.get_input_embeddings().weight
    mask = mask.long()
    pos = _positions(mask)
    out = model(inputs_embeds=E[ids], attention_mask=mask, position_ids=pos, use_cache=True,
                output_hidden_states=True)
    states = [out.hidden_states[-1][:, -1]]
    last_pos = pos[:, -1:]
    for _ in range(K - 1):
        p = torch.softmax(out.logits[:, -1], dim=-1)
        t = p.to(E.dtype) @ E
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        last_pos = last_pos + 1
        out = model(inputs_embeds=t[:, None], attention_mask=mask, position_ids=last_pos,
                    cache=out.cache, use_cache=True,  # HF's KV cache (`past_key_values`
                    output_hidden_states=True)        # before transformers 5.x)
        states.append(out.hidden_states[-1][:, -1])
    return torch.stack(states, dim=1)


@pytest.mark.parametrize("dtype,K,atol", PRECISIONS)
@pytest.mark.parametrize("family", FAMILIES)
def test_recompute_equals_kv_cache_rollout(models, tokenizer, family, dtype, K, atol):
    model = models[family, dtype]
    ids, mask = _batch(tokenizer, TEXTS)
    assert (mask == 0).any()
    with torch.no_grad():
        emb, states = latent_view(model, ids, mask, K=K)
        ref = _kv_cache_rollout(model, ids, mask, K=K)
    assert states.shape == ref.shape
    torch.testing.assert_close(states, ref, atol=atol, rtol=atol)
    torch.testing.assert_close(emb, F.normalize(ref.mean(1), dim=-1), atol=atol, rtol=atol)
    # the soft tokens really move the states
    assert (states[:, 1] - states[:, 0]).abs().max() > 1e-2


@pytest.mark.parametrize("dtype,K,atol", PRECISIONS)
@pytest.mark.parametrize("family", FAMILIES)
def test_left_padding_does_not_change_rows(models, tokenizer, family, dtype, K, atol):
    model = models[family, dtype]
    ids, mask = _batch(tokenizer, TEXTS)
    assert (mask == 0).any()
    # float32: the padded batch and the lone row run different matmul shapes (torch's CPU
    # kernels differ by shape; 2.9e-5 seen on one of 128 state elements with torch 2.13)
    atol = 5 * atol if dtype == "float32" else atol
    with torch.no_grad():
        emb, states = latent_view(model, ids, mask, K=K)
        for b, text in enumerate(TEXTS):
            one, one_mask = _batch(tokenizer, [text])
            assert one_mask.all()
            e1, s1 = latent_view(model, one, one_mask, K=K)
            torch.testing.assert_close(emb[b], e1[0], atol=atol, rtol=atol)
            torch.testing.assert_close(states[b], s1[0], atol=atol, rtol=atol)
        # and the padding's token ids do not matter
        ids2 = torch.where(mask.bool(), ids, torch.full_like(ids, 7))
        torch.testing.assert_close(latent_view(model, ids2, mask, K=K)[1], states,
                                   atol=atol, rtol=atol)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("family", ["qwen3", "qwen2"])  # tied, untied
def test_soft_token_at_step_two_by_hand(models, tokenizer, family, dtype):
    model = models[family, dtype]
    atol = 1e-9 if dtype == "float64" else 1e-5
    ids, mask = _batch(tokenizer, TEXTS[:2])
    E = model.get_input_embeddings().weight
    W = model.get_output_embeddings().weight
    assert (W is E) == (family == "qwen3")
    with torch.no_grad():
        _, states = latent_view(model, ids, mask, K=2)
        out = model(input_ids=ids, attention_mask=mask, position_ids=_positions(mask))
        logits = out.logits[:, -1].double().numpy()
        p = np.exp(logits - logits.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        t2 = torch.from_numpy(p @ E.double().numpy()).to(E.dtype)
        mask2 = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
        embeds = torch.cat([E[ids], t2[:, None]], 1)
        h2 = model(inputs_embeds=embeds, attention_mask=mask2, position_ids=_positions(mask2),
                   output_hidden_states=True).hidden_states[-1][:, -1]
        torch.testing.assert_close(states[:, 1], h2, atol=atol, rtol=atol)
        if family == "qwen2":  # an untied head: using E as the head would be visibly wrong
            wrong = torch.softmax(states[:, 0] @ E.t(), -1) @ E
            embeds_w = torch.cat([E[ids], wrong[:, None]], 1)
            h2w = model(inputs_embeds=embeds_w, attention_mask=mask2,
                        position_ids=_positions(mask2),
                        output_hidden_states=True).hidden_states[-1][:, -1]
            assert (h2w - h2).abs().max() > 1e-3


def test_latent_view_is_differentiable_through_soft_tokens(models, tokenizer):
    model = models["qwen2", "float32"]  # untied: the LM head is used only by soft tokens
    ids, mask = _batch(tokenizer, TEXTS[:2])
    head = model.get_output_embeddings().weight
    emb, _ = latent_view(model, ids, mask, K=2)
    (g,) = torch.autograd.grad(emb.sum(), [head])
    assert g.abs().max() > 0
    emb1, _ = latent_view(model, ids, mask, K=1)
    (g1,) = torch.autograd.grad(emb1.sum(), [head], allow_unused=True)
    assert g1 is None


# ------------------------------------------------------------------------- segments
L = 14
S = 9  # split id in the hand-made sequences


def _row(ids, n_pad=0):
    ids = [0] * n_pad + list(ids)
    assert len(ids) == L
    return ids, [0] * n_pad + [1] * (L - n_pad)


def _seg(rows, qlens, K, rule, split=(S,)):
    e_ids = torch.tensor([r[0] for r in rows])
    e_mask = torch.tensor([r[1] for r in rows])
    return segment_indices(e_ids, e_mask, torch.tensor(qlens), K, set(split), rule).tolist()


def test_downsample_indices_by_hand():
    assert downsample_indices(7, 3, "linspace") == [0, 3, 6]
    assert downsample_indices(7, 3, "paper") == [1, 3, 6]        # floor(7i/3) - 1
    assert downsample_indices(5, 2, "linspace") == [0, 4]
    assert downsample_indices(5, 2, "paper") == [1, 4]
    assert downsample_indices(5, 1, "linspace") == [0]            # K = 1 keeps the first
    assert downsample_indices(5, 1, "paper") == [4]
    assert downsample_indices(3, 3, "linspace") == [0, 1, 2]
    assert downsample_indices(3, 3, "paper") == [0, 1, 2]
    assert downsample_indices(2, 5, "linspace") == [0, 1, 1, 1, 1]
    assert downsample_indices(2, 5, "paper") == [0, 1, 1, 1, 1]
    assert downsample_indices(1, 3, "paper") == [0, 0, 0]
    assert downsample_indices(100, 7, "linspace") == [0, 16, 33, 49, 66, 82, 99]
    assert downsample_indices(100, 7, "paper") == [13, 27, 41, 56, 70, 84, 99]


@pytest.mark.parametrize("rule", ["linspace", "paper"])
def test_segment_indices_hand_made(rule):
    lin = rule == "linspace"
    # no padding, query = first 2 tokens; split ids at 1 (inside the query: ignored),
    # 3, 5, 6, 8, 10, 12; the last text position 13 is added -> 7 ends
    r1 = _row([5, S, 5, S, 5, S, S, 5, S, 5, S, 5, S, 5])
    ends = [3, 5, 6, 8, 10, 12, 13]
    got = _seg([r1], [2], 3, rule)
    assert got == [[ends[i] for i in ([0, 3, 6] if lin else [1, 3, 6])]]
    # 3 pads, query of 4 tokens -> region starts at 7; split at 9 and at the last position
    r2 = _row([5, 5, 5, 5, 5, 5, S, 5, 5, 5, S], n_pad=3)
    assert _seg([r2], [4], 4, rule) == [[9, 13, 13, 13]]           # fewer ends than K
    # a split token as the last position is not counted twice
    assert _seg([r2], [4], 2, rule) == [[9, 13]]
    # no split token in the region: only the last position
    r3 = _row([S, S, 5, 5, 5, 5, 5, 5, 5, 5], n_pad=4)
    assert _seg([r3], [2], 3, rule) == [[13, 13, 13]]
    # query_len covering everything (or more): the appended EOS (position L) K times
    assert _seg([r3], [10], 3, rule) == [[L, L, L]]
    assert _seg([r3], [12], 2, rule) == [[L, L]]
    # region of exactly one token
    assert _seg([r3], [9], 2, rule) == [[13, 13]]
    # several split ids, batch of rows at once
    r4 = _row([5, 7, 5, S, 5, 7, 5, 5, 5, 5, 5, 5], n_pad=2)
    got = _seg([r1, r2, r3, r4], [2, 4, 10, 1], 2, rule, split=(S, 7))
    assert got == [[3, 13] if lin else [6, 13], [9, 13], [L, L],
                   [3, 13] if lin else [5, 13]]   # r4 ends: 3, 5, 7, 13
    # K = 1
    assert _seg([r1], [2], 1, rule) == [[3] if lin else [13]]


@pytest.mark.parametrize("dtype,K,atol", PRECISIONS)
@pytest.mark.parametrize("family", ["qwen3", "llama"])
def test_explicit_view_matches_plain_pass_with_eos_token(models, tokenizer, family, dtype, K,
                                                         atol):
    model = models[family, dtype]
    eos = tokenizer.eos_token_id
    for split in ({_split_id(tokenizer)},
                  {i for i in range(len(tokenizer)) if "\n\n" in tokenizer.decode([i])}):
        _check_explicit_view(model, tokenizer, split, eos, 3, atol)  # K = 3 here


def _check_explicit_view(model, tokenizer, split, eos, K, atol):
    queries = [TEXTS[0], TEXTS[1]]
    full = [queries[0] + " " + REASONING, queries[1] + " Then add 4 to it\n\nDone"]
    e_ids, e_mask = _batch(tokenizer, full)
    q_len = torch.tensor([len(tokenizer.encode(q, add_special_tokens=False)) for q in queries])
    with torch.no_grad():
        v, aligned = explicit_view(model, e_ids, e_mask, q_len, K, split, eos)
        idx = segment_indices(e_ids, e_mask, q_len, K, split)
        Lb = e_ids.shape[1]
        for b, text in enumerate(full):
            one = tokenizer.encode(text, add_special_tokens=False)
            n_pad = Lb - len(one)
            q_tok = tokenizer.encode(queries[b], add_special_tokens=False)
            assert one[:len(q_tok)] == q_tok   # the query's tokens are a prefix
            # the segment positions are where the ends really are
            for p in idx[b].tolist():
                assert p == Lb - 1 or int(e_ids[b, p]) in split
                assert p >= n_pad + int(q_len[b])
            ids = torch.tensor([one + [eos]])
            hs = model(input_ids=ids, output_hidden_states=True).hidden_states[-1][0]
            torch.testing.assert_close(v[b], F.normalize(hs[-1], dim=-1), atol=atol, rtol=atol)
            torch.testing.assert_close(aligned[b], hs[idx[b] - n_pad], atol=atol, rtol=atol)
    # row 0: "\n\n" alone once (".\n\n" is one token twice), then "Done" (M = 2 or 4)
    assert idx[0].unique().numel() == (2 if len(split) == 1 else 3)
    # empty reasoning region -> the EOS state K times
    with torch.no_grad():
        v0, a0 = explicit_view(model, e_ids, e_mask, e_mask.sum(1), K, split, eos)
    for k in range(K):
        torch.testing.assert_close(F.normalize(a0[:, k], dim=-1), v0, atol=atol, rtol=atol)


# --------------------------------------------------------------------------- losses
def _np_log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _np_losses(q, qs, d, e, es, tau, tau_kd, tau_mid, l1, l2, l3):
    B, K = qs.shape[:2]
    G = d.shape[0] // B
    tgt = np.arange(B) * G

    def ce(s):
        return -np.mean(_np_log_softmax(s)[np.arange(len(s)), tgt])

    def kl(t, s):
        lt, ls = _np_log_softmax(t), _np_log_softmax(s)
        return np.mean(np.sum(np.exp(lt) * (lt - ls), -1))

    sL, sE = q @ d.T, e @ d.T
    h = qs / np.linalg.norm(qs, axis=-1, keepdims=True)
    a = es / np.linalg.norm(es, axis=-1, keepdims=True)
    sh = np.concatenate([h[b] @ d.T for b in range(B)])       # rows b*K + j
    sa = np.concatenate([a[b] @ d.T for b in range(B)])
    out = dict(loss_cl_latent=ce(sL / tau), loss_cl_explicit=ce(sE / tau),
               loss_kl_out=kl(sE / tau_kd, sL / tau_kd), loss_kl_mid=kl(sa / tau_mid, sh / tau_mid),
               acc_latent=np.mean(sL.argmax(-1) == tgt), acc_explicit=np.mean(sE.argmax(-1) == tgt))
    out["loss"] = (out["loss_cl_latent"] + l1 * out["loss_cl_explicit"] + l2 * out["loss_kl_out"]
                   + l3 * out["loss_kl_mid"])
    return out


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _inputs(seed=0, B=3, G=2, K=2, D=5):
    rng = np.random.default_rng(seed)
    return dict(q=_unit(rng.normal(size=(B, D))), qs=rng.normal(size=(B, K, D)) * 3,
                d=_unit(rng.normal(size=(B * G, D))), e=_unit(rng.normal(size=(B, D))),
                es=rng.normal(size=(B, K, D)) * 3)


def _torch(x, grad=False):
    return torch.tensor(x, dtype=torch.float32, requires_grad=grad)


@pytest.mark.parametrize("kw", [dict(), dict(tau=0.5, tau_kd=0.3, tau_mid=0.7, lambda1=0.5,
                                             lambda2=2.0, lambda3=3.0)])
def test_losses_match_numpy(kw):
    x = _inputs()
    full = dict(tau=0.02, tau_kd=0.02, tau_mid=0.05, lambda1=1.0, lambda2=10.0, lambda3=0.1)
    full.update(kw)
    out = laser_losses(_torch(x["q"]), _torch(x["qs"]), _torch(x["d"]), _torch(x["e"]),
                       _torch(x["es"]), **full)
    ref = _np_losses(x["q"], x["qs"], x["d"], x["e"], x["es"], full["tau"], full["tau_kd"],
                     full["tau_mid"], full["lambda1"], full["lambda2"], full["lambda3"])
    assert set(out) == set(ref)
    for k in ref:
        assert out[k].dtype == torch.float32
        np.testing.assert_allclose(out[k].item(), ref[k], rtol=2e-5, atol=2e-5, err_msg=k)
    assert out["loss_kl_out"].item() > 1e-3 and out["loss_kl_mid"].item() > 1e-3


def test_losses_tiny_by_hand():
    # B=1, G=2, D=2: q = d0 exactly, d1 orthogonal
    q = torch.tensor([[1.0, 0.0]])
    d = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    out = laser_losses(q, q[:, None], d, q, q[:, None], tau=1.0, tau_kd=1.0, tau_mid=1.0)
    expected_ce = np.log(1 + np.exp(-1.0))  # -log(e / (e + 1))
    np.testing.assert_allclose(out["loss_cl_latent"].item(), expected_ce, rtol=1e-6)
    np.testing.assert_allclose(out["loss"].item(), 2 * expected_ce, rtol=1e-6)
    # accuracy: query 0 hits its positive (doc 0), query 1 points at doc 1 (not doc 2)
    d = torch.eye(4)
    q = torch.stack([d[0], d[1]])
    e = torch.stack([d[0], d[2]])
    st = torch.ones(2, 1, 4)
    out = laser_losses(q, st, d, e, st)
    assert out["acc_latent"].item() == 0.5 and out["acc_explicit"].item() == 1.0


def test_kl_terms_zero_when_teacher_equals_student():
    x = _inputs(seed=1)
    out = laser_losses(_torch(x["q"]), _torch(x["qs"]), _torch(x["d"]), _torch(x["q"]),
                       _torch(x["qs"]))
    assert abs(out["loss_kl_out"].item()) < 1e-5
    assert abs(out["loss_kl_mid"].item()) < 1e-5
    # mid term normalises each state: rescaling the teacher states changes nothing
    out2 = laser_losses(_torch(x["q"]), _torch(x["qs"]), _torch(x["d"]), _torch(x["q"]),
                        _torch(x["qs"] * 7.0))
    assert abs(out2["loss_kl_mid"].item()) < 1e-5


def test_teacher_side_is_detached():
    x = _inputs(seed=2)
    q, qs, d, e, es = (_torch(x[k], grad=True) for k in ("q", "qs", "d", "e", "es"))
    out = laser_losses(q, qs, d, e, es)
    g = torch.autograd.grad(out["loss_kl_out"], [q, qs, d, e, es], allow_unused=True)
    assert g[0] is not None and g[0].abs().max() > 0
    assert g[1] is None and g[4] is None
    assert g[3] is None                       # no gradient into the teacher's embedding
    assert g[2] is not None and g[2].abs().max() > 0   # docs: through the student side
    g = torch.autograd.grad(out["loss_kl_mid"], [q, qs, d, e, es], allow_unused=True)
    assert g[1] is not None and g[1].abs().max() > 0
    assert g[0] is None and g[3] is None and g[4] is None
    g = torch.autograd.grad(out["loss_cl_explicit"], [e], allow_unused=True)
    assert g[0] is not None and g[0].abs().max() > 0


# ----------------------------------------------------------------------------- step
def test_laser_step_end_to_end(models, tokenizer):
    model = models["qwen3", "float32"]
    B, G, K = 2, 2, 3
    queries = [TEXTS[0], "Instruct: Given a question, retrieve passages that answer it.\n"
                         "Query: What is 5 plus 2?"]
    reasoning = [REASONING, "First, take 5.\n\nThen add 2 to it\n\nSo the result is 7."]
    docs = ["The number 7 is the sum of two smaller numbers.", "Some describe cats.",
            "The number 11 is the sum of two smaller numbers.", "Others describe the weather."]
    q_ids, q_mask = _batch(tokenizer, queries)
    d_ids, d_mask = _batch(tokenizer, docs)
    e_ids, e_mask = _batch(tokenizer, [q + " " + r for q, r in zip(queries, reasoning)])
    q_len = q_mask.sum(1)
    batch = dict(q_ids=q_ids, q_mask=q_mask, d_ids=d_ids, d_mask=d_mask, e_ids=e_ids,
                 e_mask=e_mask, q_len=q_len)
    split = {_split_id(tokenizer)}
    out = laser_step(model, batch, K, split, tokenizer.eos_token_id)
    assert {"loss", "loss_cl_latent", "loss_cl_explicit", "loss_kl_out", "loss_kl_mid",
            "acc_latent", "acc_explicit"} <= set(out)
    for v in out.values():
        assert torch.isfinite(v).all()
    # the same numbers from the pieces
    q_emb, q_states = latent_view(model, q_ids, q_mask, K)
    d_emb, _ = latent_view(model, d_ids, d_mask, K)
    e_emb, e_states = explicit_view(model, e_ids, e_mask, q_len, K, split, tokenizer.eos_token_id)
    ref = laser_losses(q_emb, q_states, d_emb, e_emb, e_states)
    for k in ref:
        torch.testing.assert_close(out[k], ref[k])
    model.zero_grad()
    out["loss"].backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(g.abs().sum() for g in grads) > 0
    model.zero_grad()
