"""LaSER core against the PyTorch oracle (tests/laser_oracle.py) on tiny HF checkpoints."""
import functools

import numpy as np
import pytest
import torch

import jax
import jax.extend.core
import jax.numpy as jnp

import laser_oracle as oracle
from hf_models import build_hf_model
from laser_jax.model import hf_io
from laser_jax.data.batch import build_batch
from laser_jax.data.options import PipelineOptions
from laser_jax.data.records import Record
from laser_jax.data.segments import split_token_ids
from laser_jax.method.views import explicit_view, latent_view
from laser_jax.method.losses import LossConfig
from laser_jax.model.decoder import Decoder, positions_from_mask
from laser_jax.method.objective import laser_objective
from laser_jax.method.objective import laser_objective as _objective


@pytest.fixture(scope="module", params=["qwen3", "llama"])
def pair(request, tmp_path_factory, tokenizer):
    """(torch model, jax Decoder, variables, model dir) with the test tokenizer saved beside."""
    d = str(tmp_path_factory.mktemp(request.param))
    torch_model = build_hf_model(request.param, d, vocab_size=len(tokenizer), weight_std=0.08)
    tokenizer.save_pretrained(d)
    cfg, params = hf_io.load_pretrained(d)
    return torch_model, Decoder(cfg), {"params": params}, d


def scaled_close(actual, desired, rel):
    actual, desired = np.asarray(actual, np.float64), np.asarray(desired, np.float64)
    np.testing.assert_allclose(actual, desired, rtol=0, atol=rel * max(np.abs(desired).max(), 1e-6))


def tokens(tokenizer, texts, width=None):
    rows = [tokenizer(t)["input_ids"] for t in texts]
    width = width or max(len(r) for r in rows)
    ids = np.zeros((len(rows), width), np.int64)
    mask = np.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = r
        mask[i, width - len(r):] = 1
    return ids, mask


TEXTS = ["Instruct: Given a question, retrieve passages that answer it.\nQuery: What is 3 plus 4?",
         "The number 7 is the sum of two smaller numbers.",
         "First, take 5.\n\nThen add 2 to it\n\nSo the result is 7.\n\nDone"]


@pytest.mark.parametrize("K", [1, 2, 3, 5])
def test_latent_view_equals_oracle(pair, tokenizer, K):
    torch_model, model, v, _ = pair
    ids, mask = tokens(tokenizer, TEXTS, width=48)  # unequal lengths, left padded
    emb, states = jax.jit(functools.partial(latent_view, model, num_steps=K))(v, jnp.asarray(ids), jnp.asarray(mask))
    ref_emb, ref_states = oracle.latent_view(torch_model, torch.tensor(ids), torch.tensor(mask), K)
    assert states.shape == (3, K, model.cfg.hidden_size)
    scaled_close(states, ref_states.detach().numpy(), 2e-5 * 4 ** (K - 1))
    scaled_close(emb, ref_emb.detach().numpy(), 2e-5 * 4 ** (K - 1))
    np.testing.assert_allclose(np.linalg.norm(np.asarray(emb), axis=-1), 1.0, atol=1e-6)


def recompute_latent(model, v, ids, mask, K):
    """The spec's rollout with no cache: rerun the whole sequence at every step."""
    x = model.apply(v, ids, method=Decoder.embed)
    states = []
    for j in range(K):
        out = model.apply(v, x_BTD=x, positions_BT=positions_from_mask(mask), kv_mask_BS=mask)
        h = out.hidden[:, -1]
        states.append(h)
        logits = model.apply(v, h[:, None], method=Decoder.logits)[:, 0]
        soft = jax.nn.softmax(logits, -1) @ model.apply(v, method=Decoder.embedding_table)
        x = jnp.concatenate([x, soft[:, None]], axis=1)
        mask = jnp.concatenate([mask, jnp.ones((mask.shape[0], 1), mask.dtype)], axis=1)
    return jnp.stack(states, axis=1)


def test_soft_steps_equal_full_recompute_scanned_and_unrolled(pair, tokenizer):
    """States and embeddings of the cached soft steps (prefix cache read in place, the soft
    token with the vocabulary axis leading), with the layer stack scanned and with
    `unroll_soft_steps` (layers in line over per-layer slices taken once), equal the spec's
    rollout that reruns the whole sequence at every step, for K = 1, 2, 3, 5 (one compile)."""
    _, model, v, _ = pair
    models = {unroll: Decoder(model.cfg.replace(unroll_soft_steps=unroll)) for unroll in (False, True)}
    ids, mask = tokens(tokenizer, TEXTS, width=40)
    ids, mask = jnp.asarray(ids), jnp.asarray(mask)
    cases = [(unroll, K) for unroll in (False, True) for K in (1, 2, 3, 5) if K > 1 or unroll]  # K=1: no soft step
    outs, full = jax.jit(lambda v: ([latent_view(models[u], v, ids, mask, K) for u, K in cases],
                                    recompute_latent(model, v, ids, mask, 5)))(v)
    for (unroll, K), (emb, cached) in zip(cases, outs):
        assert cached.shape[1] == K, (unroll, K)
        scaled_close(cached, full[:, :K], 1e-5)
        ref = full[:, :K].astype(jnp.float32).mean(axis=1)
        scaled_close(emb, ref / jnp.linalg.norm(ref, axis=-1, keepdims=True), 1e-5)


def test_latent_view_gradients_equal_full_recompute(pair, tokenizer):
    """Gradients flow through the closed-over prefix cache and the carried tail alike."""
    _, model, v, _ = pair
    ids, mask = tokens(tokenizer, TEXTS, width=40)
    ids, mask = jnp.asarray(ids), jnp.asarray(mask)
    w = jax.random.normal(jax.random.key(0), (3, 3, model.cfg.hidden_size))

    def loss(fn):
        return lambda v: jnp.sum(fn(v) * w)

    g = jax.jit(jax.grad(loss(lambda v: latent_view(model, v, ids, mask, 3)[1])))(v)
    g_ref = jax.jit(jax.grad(loss(lambda v: recompute_latent(model, v, ids, mask, 3))))(v)
    for a, b in zip(jax.tree_util.tree_leaves(g), jax.tree_util.tree_leaves(g_ref)):
        scaled_close(a, b, 1e-5)


def _scan_unrolls(jaxpr, depth=0, out=None):
    """(depth, unroll) of every scan in a closed jaxpr, nested scans one level deeper."""
    out = [] if out is None else out
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "scan":
            out.append((depth, eqn.params["unroll"]))
            _scan_unrolls(eqn.params["jaxpr"].jaxpr, depth + 1, out)
        else:
            for sub in jax.extend.core.jaxprs_in_params(eqn.params):
                _scan_unrolls(sub, depth, out)
    return out


def test_unrolled_soft_steps_give_the_same_states_and_gradients(pair, tokenizer):
    """`unroll_soft_steps`: the soft steps' layer loop is unrolled, the prefill still scans."""
    _, model, v, _ = pair
    unrolled = Decoder(model.cfg.replace(unroll_soft_steps=True))
    ids, mask = tokens(tokenizer, TEXTS, width=40)
    ids, mask = jnp.asarray(ids), jnp.asarray(mask)
    w = jax.random.normal(jax.random.key(1), (3, 3, model.cfg.hidden_size))

    def value_and_grad(m):
        return jax.jit(jax.value_and_grad(lambda v: jnp.sum(latent_view(m, v, ids, mask, 3)[1] * w)))(v)

    (ref, g_ref), (out, g) = value_and_grad(model), value_and_grad(unrolled)
    scaled_close(out, ref, 1e-6)
    for a, b in zip(jax.tree_util.tree_leaves(g), jax.tree_util.tree_leaves(g_ref)):
        scaled_close(a, b, 1e-5)
    jaxpr = jax.make_jaxpr(lambda v: latent_view(unrolled, v, ids, mask, 3))(v).jaxpr
    # prefill: a rolled layer scan; the soft-step scan (depth 0) holds no layer loop at all
    # (decoder.cached_stack runs the layers in line over per-layer slices taken before it)
    assert sorted(_scan_unrolls(jaxpr)) == [(0, 1), (0, 1)]
    assert sorted(_scan_unrolls(jax.make_jaxpr(lambda v: latent_view(model, v, ids, mask, 3))(v).jaxpr)) == [
        (0, 1), (0, 1), (1, 1)]  # the default: the soft-step scan holds a rolled layer scan


def make_records():
    return [
        Record("What is 3 plus 4?", "Given a question, retrieve passages that answer it.",
               "First, take 3.\n\nThen add 4 to it\n\nSo the result is 7.\n\nDone",  # more segments than K
               ("The number 7 is the sum of two smaller numbers.",), ("The number 6 is even.",)),
        Record("What is 5 plus 1?", "Given a question, retrieve passages that answer it.",
               "Take 5\n\nthe result is 6",  # fewer segments than K
               ("Six is the sum of five and one.",), ("The weather in a town is mild.",)),
        Record("What is 2 plus 2?", "Given a question, retrieve passages that answer it.",
               "four",  # shorter than 5 characters: replaced by the query text
               ("Four is two plus two.",), ("Many documents describe cats.",)),
        Record("What is 9 plus 9 plus 9 plus 9 plus 9 plus 9?", "Given a question, retrieve passages that answer it.",
               "Nine plus nine is eighteen\n\nplus nine is 27\n\nplus nine is 36\n\nplus nine is 45\n\n"
               "plus nine is 54, the result",  # cut by truncation below
               ("54 is the result.",), ("53 is not.",)),
    ]


def oracle_batch(tokenizer, K, rule="linspace", explicit_max_len=64, chat=False):
    records = make_records()
    options = PipelineOptions(batch_size=len(records), group_size=2, num_thinking_steps=K, query_max_len=40,
                              doc_max_len=32, explicit_max_len=explicit_max_len, chat_template=chat,
                              segment_rule=rule, bucket_fractions=None)
    split = split_token_ids(tokenizer, "code")
    docs = [(r.positives[0], r.negatives[0]) for r in records]
    return build_batch(records, docs, list(range(len(records))), tokenizer, options, split), split


@pytest.mark.parametrize("rule", ["linspace", "paper"])
def test_explicit_view_and_segments_equal_oracle(pair, tokenizer, rule):
    torch_model, model, v, _ = pair
    K = 3
    batch, split = oracle_batch(tokenizer, K, rule, explicit_max_len=56)
    q_len = batch["q_mask"].sum(1)
    ref_seg = oracle.segment_indices(torch.tensor(batch["e_ids"]), torch.tensor(batch["e_mask"]),
                                     torch.tensor(q_len), K, set(split.tolist()), rule)
    np.testing.assert_array_equal(batch["e_seg"], ref_seg.numpy())
    le = batch["e_ids"].shape[1]
    assert batch["e_mask"][3].sum() == 56 and (batch["e_seg"][3] < le).all()  # cut by truncation, still segments
    eos = tokenizer.eos_token_id
    v_star, aligned = jax.jit(functools.partial(explicit_view, model, eos_id=eos))(
        v, jnp.asarray(batch["e_ids"]), jnp.asarray(batch["e_mask"]), jnp.asarray(batch["e_seg"]))
    ref_v, ref_aligned = oracle.explicit_view(torch_model, torch.tensor(batch["e_ids"]),
                                              torch.tensor(batch["e_mask"]), torch.tensor(q_len), K,
                                              set(split.tolist()), eos, rule)
    scaled_close(v_star, ref_v.detach().numpy(), 2e-5)
    scaled_close(aligned, ref_aligned.detach().numpy(), 2e-5)


def test_explicit_view_with_an_empty_reasoning_region_uses_the_eos_state(pair, tokenizer):
    torch_model, model, v, _ = pair
    # explicit_max_len equal to the query length: the reasoning is cut off entirely.
    batch, split = oracle_batch(tokenizer, 3, explicit_max_len=16)
    q_len = batch["q_mask"].sum(1)
    le = batch["e_ids"].shape[1]
    assert (q_len >= batch["e_mask"].sum(1)).all()
    np.testing.assert_array_equal(batch["e_seg"], le)
    v_star, aligned = explicit_view(model, v, jnp.asarray(batch["e_ids"]), jnp.asarray(batch["e_mask"]),
                                    jnp.asarray(batch["e_seg"]), tokenizer.eos_token_id)
    np.testing.assert_allclose(np.asarray(aligned[:, 0]), np.asarray(aligned[:, 2]))
    ref_v, ref_aligned = oracle.explicit_view(torch_model, torch.tensor(batch["e_ids"]),
                                              torch.tensor(batch["e_mask"]), torch.tensor(q_len), 3,
                                              set(split.tolist()), tokenizer.eos_token_id)
    scaled_close(aligned, ref_aligned.detach().numpy(), 2e-5)


def torch_batch(batch):
    out = {k: torch.tensor(v.astype(np.int64)) for k, v in batch.items() if k != "e_seg"}
    out["q_len"] = out["q_mask"].sum(1)
    return out


def test_each_loss_term_and_gradients_equal_oracle(pair, tokenizer):
    torch_model, model, v, _ = pair
    K = 3
    batch, split = oracle_batch(tokenizer, K)
    cfg = LossConfig()

    def loss(variables):
        return laser_objective(model, variables, {k: jnp.asarray(x) for k, x in batch.items()}, num_steps=K,
                               loss_cfg=cfg, eos_id=tokenizer.eos_token_id)

    (total, metrics), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(v)
    torch_model.zero_grad()
    ref = oracle.laser_step(torch_model, torch_batch(batch), K, set(split.tolist()), tokenizer.eos_token_id)
    ref["loss"].backward()
    for key in ("loss", "loss_cl_latent", "loss_cl_explicit", "loss_kl_out", "loss_kl_mid"):
        np.testing.assert_allclose(float(metrics[key]), float(ref[key].detach()), rtol=2e-4, atol=1e-5, err_msg=key)
    for key in ("acc_latent", "acc_explicit"):
        assert float(metrics[key]) == pytest.approx(float(ref[key].detach()))
    named = dict(torch_model.named_parameters())
    p = grads["params"]
    pairs = [(p["layers"]["self_attn"]["q_proj"]["kernel"][0], named["model.layers.0.self_attn.q_proj.weight"].grad.T),
             (p["layers"]["mlp"]["down_proj"]["kernel"][1], named["model.layers.1.mlp.down_proj.weight"].grad.T),
             (p["norm"]["scale"], named["model.norm.weight"].grad),
             (p["embed_tokens"]["embedding"], named["model.embed_tokens.weight"].grad)]
    for ours, theirs in pairs:
        scaled_close(ours, theirs.numpy(), 2e-3)


def test_ablation_switches_skip_unused_passes(pair, tokenizer):
    _, model, v, _ = pair
    batch, _ = oracle_batch(tokenizer, 1)
    jb = {k: jnp.asarray(x) for k, x in batch.items()}
    laser_objective = jax.jit(_objective, static_argnames=("model", "num_steps", "loss_cfg", "eos_id"))
    basic = LossConfig(lambda_explicit=0.0, lambda_kl_out=0.0, lambda_kl_mid=0.0)
    assert not basic.needs_explicit
    # The explicit pass is skipped, not zero-weighted: no e_* arrays are needed at all.
    no_explicit = {k: x for k, x in jb.items() if not k.startswith("e_")}
    loss, m = laser_objective(model, v, no_explicit, num_steps=1, loss_cfg=basic, eos_id=tokenizer.eos_token_id)
    assert float(m["loss_cl_explicit"]) == 0.0 and float(loss) == pytest.approx(float(m["loss_cl_latent"]))
    _, full = laser_objective(model, v, jb, num_steps=1, loss_cfg=LossConfig(), eos_id=tokenizer.eos_token_id)
    for weights, zeroed in ((dict(lambda_kl_mid=0.0), "loss_kl_mid"), (dict(lambda_kl_out=0.0), "loss_kl_out")):
        cfg = LossConfig(**weights)
        loss, m = laser_objective(model, v, jb, num_steps=1, loss_cfg=cfg, eos_id=tokenizer.eos_token_id)
        expected = (m["loss_cl_latent"] + m["loss_cl_explicit"] + (0 if zeroed == "loss_kl_out" else 10 * m["loss_kl_out"])
                    + (0 if zeroed == "loss_kl_mid" else 0.1 * m["loss_kl_mid"]))
        assert float(loss) == pytest.approx(float(expected), rel=1e-6)
        assert float(m["loss_cl_latent"]) == pytest.approx(float(full["loss_cl_latent"]), rel=1e-6)
    with pytest.raises(ValueError, match="num_thinking_steps"):
        laser_objective(model, v, jb, num_steps=3, loss_cfg=LossConfig(), eos_id=tokenizer.eos_token_id)


def test_laser_encoder_equals_oracle_and_ignores_batching(pair, tokenizer):
    from laser_jax import LaserEncoder

    torch_model, _, _, model_dir = pair
    # chat_template=False: a Qwen3 directory without laser.json otherwise gets the released
    # checkpoints' chat format (test_released_checkpoints.py); the oracle reads plain text.
    enc = LaserEncoder.from_pretrained(model_dir, dtype="float32", chat_template=False)
    texts = TEXTS + [t.upper() for t in TEXTS] + ["a", "The number 12."]
    emb = enc.encode(texts, num_thinking_steps=3, batch_size=3)
    assert emb.dtype == np.float32 and emb.shape == (len(texts), enc.cfg.hidden_size)
    ids, mask = tokens(tokenizer, texts)
    ref, _ = oracle.latent_view(torch_model, torch.tensor(ids), torch.tensor(mask), 3)
    cos = np.sum(emb * ref.detach().numpy(), -1)
    assert cos.min() > 0.9999
    order = np.random.RandomState(0).permutation(len(texts))
    other = enc.encode([texts[i] for i in order], num_thinking_steps=3, batch_size=5)
    np.testing.assert_allclose(other, emb[order], atol=2e-5)
    q = enc.encode_queries(["What is 3 plus 4?"], instruction="Given a question, retrieve passages that answer it.")
    np.testing.assert_allclose(q[0], emb[0], atol=2e-5)
