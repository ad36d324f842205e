"""Backbone: parity with transformers, KV cache, dtypes, layer options, LoRA."""
import functools

import numpy as np
import pytest
import torch

import jax
import jax.numpy as jnp

from hf_models import FAMILIES, build_hf_model
from laser_jax.model import hf_io
from laser_jax.model import lora as lora_lib
from laser_jax.model.config import PRESETS, from_hf_config, preset, to_hf_config
from laser_jax.model.decoder import Decoder, init_cache, init_variables, positions_from_mask

VOCAB = 400


@pytest.fixture(scope="module", params=FAMILIES)
def hf_pair(request, tmp_path_factory):
    """(family, torch model, model dir, cfg, params) for one tiny random family."""
    model_dir = str(tmp_path_factory.mktemp(request.param))
    model = build_hf_model(request.param, model_dir, vocab_size=VOCAB)
    cfg, params = hf_io.load_pretrained(model_dir)
    return request.param, model, model_dir, cfg, params


def left_padded_batch(seed=0, B=3, T=13):
    rng = np.random.RandomState(seed)
    ids = rng.randint(3, VOCAB, (B, T))
    mask = np.ones((B, T), np.int64)
    mask[0, :5] = 0  # unequal lengths, left padding
    mask[1, :9] = 0
    ids[mask == 0] = 0
    return ids, mask


def hf_forward(model, ids, mask):
    pos = np.maximum(np.cumsum(mask, -1) - 1, 0)
    with torch.no_grad():
        out = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                    position_ids=torch.tensor(pos), output_hidden_states=True)
    return out.hidden_states[-1].numpy(), out.logits.numpy()


@functools.partial(jax.jit, static_argnames=("cfg", "logits"))
def _forward(cfg, variables, ids, mask, logits="none"):
    return Decoder(cfg).apply(variables, ids, positions_BT=positions_from_mask(mask), kv_mask_BS=mask,
                              logits=logits)


def run(cfg, variables, ids, mask, logits="none"):
    """Jitted forward (eager op-by-op dispatch is slow on CPU)."""
    return _forward(cfg, variables, jnp.asarray(ids), jnp.asarray(mask), logits=logits)


def test_hidden_and_logits_match_transformers(hf_pair):
    family, model, _, cfg, params = hf_pair
    assert cfg.family == family
    ids, mask = left_padded_batch()
    h_ref, logits_ref = hf_forward(model, ids, mask)
    out = run(cfg, {"params": params}, ids, mask, logits="all")
    valid = mask.astype(bool)
    np.testing.assert_allclose(np.asarray(out.hidden)[valid], h_ref[valid], atol=1e-4, rtol=0)
    np.testing.assert_allclose(np.asarray(out.logits)[valid], logits_ref[valid], atol=1e-4, rtol=0)
    last = run(cfg, {"params": params}, ids, mask, logits="last")
    assert last.logits.shape == (3, 1, VOCAB)
    np.testing.assert_allclose(np.asarray(last.logits[:, 0]), logits_ref[:, -1], atol=1e-4, rtol=0)


def test_family_features_are_read_from_config(hf_pair):
    family, _, _, cfg, params = hf_pair
    attn = params["layers"]["self_attn"]
    assert ("q_norm" in attn) == (family == "qwen3")
    assert ("bias" in attn["q_proj"]) == (family == "qwen2")
    assert ("lm_head" in params) == (not cfg.tie_word_embeddings)
    assert (cfg.rope_scaling is not None) == (family == "llama")
    if family == "qwen3":
        assert cfg.head_dim == 24 != cfg.hidden_size // cfg.num_attention_heads


def test_prefill_then_cached_embedding_steps_equal_full_recompute(hf_pair):
    _, _, _, cfg, params = hf_pair
    ids, mask = left_padded_batch(seed=1)
    B, T = ids.shape
    steps = 4
    dec = Decoder(cfg)
    v = {"params": params}
    apply = jax.jit(dec.apply, static_argnames=("method",))
    rng = np.random.RandomState(2)
    soft = jnp.asarray(rng.normal(size=(steps, B, 1, cfg.hidden_size)).astype(np.float32))
    kv_mask = jnp.concatenate([jnp.asarray(mask), jnp.ones((B, steps), jnp.int32)], axis=1)
    pos = positions_from_mask(jnp.asarray(mask))
    out = apply(v, jnp.asarray(ids), positions_BT=pos, kv_mask_BS=kv_mask,
                    cache=init_cache(cfg, B, T + steps), cache_index=0)
    cache, last_pos = out.cache, pos[:, -1:]
    x_full = apply(v, jnp.asarray(ids), method=Decoder.embed)
    for j in range(steps):
        step = apply(v, x_BTD=soft[j], positions_BT=last_pos + j + 1, kv_mask_BS=kv_mask,
                         cache=cache, cache_index=T + j)
        cache = step.cache
        x_full = jnp.concatenate([x_full, soft[j]], axis=1)
        full_mask = kv_mask[:, :T + j + 1]
        full = apply(v, x_BTD=x_full, positions_BT=positions_from_mask(full_mask), kv_mask_BS=full_mask)
        np.testing.assert_allclose(np.asarray(step.hidden[:, 0]), np.asarray(full.hidden[:, -1]),
                                   atol=1e-5, rtol=0)


def test_unrolled_and_remat_layers_compute_the_same(hf_pair):
    _, _, _, cfg, params = hf_pair
    ids, mask = left_padded_batch(seed=3)
    ref = run(cfg, {"params": params}, ids, mask).hidden
    for options in (dict(scan_layers=False), dict(remat_policy="full"), dict(remat_policy="dots")):
        other = run(cfg.replace(**options), {"params": params}, ids, mask).hidden
        np.testing.assert_allclose(np.asarray(other), np.asarray(ref), atol=1e-5, rtol=0)

    def loss(p, c):
        return jnp.sum(run(c, {"params": p}, ids, mask).hidden ** 2)

    grad = jax.jit(jax.grad(loss), static_argnums=1)
    g_ref = grad(params, cfg)
    g_remat = grad(params, cfg.replace(remat_policy="full"))
    for a, b in zip(jax.tree_util.tree_leaves(g_ref), jax.tree_util.tree_leaves(g_remat)):
        scale = float(jnp.abs(a).max())
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=1e-5 * scale)


def test_bf16_compute_stays_within_bf16_tolerance(hf_pair):
    _, _, _, cfg, params = hf_pair
    ids, mask = left_padded_batch(seed=4)
    ref = np.asarray(run(cfg, {"params": params}, ids, mask).hidden)
    bf = run(cfg.replace(compute_dtype="bfloat16"), {"params": params}, ids, mask).hidden
    assert bf.dtype == jnp.bfloat16
    valid = mask.astype(bool)
    err = np.abs(np.asarray(bf, np.float32) - ref)[valid]
    scale = np.abs(ref[valid]).max()
    # bf16 has an 8-bit mantissa (relative step 2^-8 = 0.0039); two layers of rounding.
    assert err.max() < 0.05 * scale, (err.max(), scale)
    cos = np.sum(np.asarray(bf, np.float32)[valid] * ref[valid], -1) / (
        np.linalg.norm(np.asarray(bf, np.float32)[valid], axis=-1) * np.linalg.norm(ref[valid], axis=-1))
    assert cos.min() > 0.999


def test_lora_zero_init_is_identity_and_merge_matches_adapter_forward(hf_pair):
    _, _, _, cfg, params = hf_pair
    lcfg = cfg.replace(lora_rank=4, lora_alpha=8.0)
    lora = init_variables(lcfg, jax.random.key(1))["lora"]
    ids, mask = left_padded_batch(seed=5)
    base = run(cfg, {"params": params}, ids, mask).hidden
    with_zero_b = run(lcfg, {"params": params, "lora": lora}, ids, mask).hidden
    np.testing.assert_allclose(np.asarray(with_zero_b), np.asarray(base), atol=1e-6)
    # Random b: the adapter changes the output and merging folds it in exactly.
    lora = jax.tree_util.tree_map(lambda x: x + 0.05 * jax.random.normal(jax.random.key(2), x.shape), lora)
    adapted = run(lcfg, {"params": params, "lora": lora}, ids, mask).hidden
    assert float(jnp.abs(adapted - base).max()) > 1e-2
    merged = run(cfg, {"params": lora_lib.merge(params, lora, lcfg)}, ids, mask).hidden
    np.testing.assert_allclose(np.asarray(merged), np.asarray(adapted), atol=2e-5)


def test_lora_targets_select_projections():
    cfg = preset("tiny_qwen3", lora_rank=2, lora_targets=("q_proj", "down_proj"))
    lora = init_variables(cfg, jax.random.key(0))["lora"]["layers"]
    assert set(lora) == {"self_attn", "mlp"}
    assert set(lora["self_attn"]) == {"lora_q"} and set(lora["mlp"]) == {"lora_down"}  # model/lora.py names
    with pytest.raises(ValueError, match="lora_targets"):
        preset("tiny_qwen3", lora_rank=2, lora_targets=("qkv",))


def test_lora_dropout_only_with_a_dropout_rng():
    cfg = preset("tiny_qwen3", lora_rank=4, lora_dropout=0.5)
    v = init_variables(cfg, jax.random.key(0))
    v["lora"] = jax.tree_util.tree_map(lambda x: x + 0.1, v["lora"])
    ids, mask = left_padded_batch(seed=6)
    ids = ids % cfg.vocab_size
    a = run(cfg, v, ids, mask).hidden
    b = run(cfg, v, ids, mask).hidden
    c = jax.jit(Decoder(cfg).apply)(v, jnp.asarray(ids), positions_BT=positions_from_mask(jnp.asarray(mask)),
                                    kv_mask_BS=jnp.asarray(mask), rngs={"dropout": jax.random.key(3)}).hidden
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert float(jnp.abs(a - c).max()) > 1e-4


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_round_trip_through_hf_config(name):
    import transformers

    cfg = preset(name)
    hf = to_hf_config(cfg)
    assert from_hf_config(hf) == cfg
    loaded = from_hf_config(transformers.AutoConfig.for_model(**hf).to_dict())
    if cfg.bos_token_id is None:  # transformers fills in its own default token ids
        loaded = loaded.replace(bos_token_id=None, eos_token_id=None, pad_token_id=None)
    assert loaded == cfg


def test_preset_sizes_match_published_counts():
    # Non-embedding parameter counts on the model cards: Qwen3-0.6B 0.44B, Qwen3-8B 6.95B.
    assert round(preset("qwen3_0_6b").num_params(include_embeddings=False) / 1e9, 2) == 0.44
    assert round(preset("qwen3_8b").num_params(include_embeddings=False) / 1e9, 2) == 6.95
    assert round(preset("qwen2_5_7b").num_params() / 1e9, 2) == 7.62
    assert round(preset("llama3_1_8b").num_params() / 1e9, 2) == 8.03
    with pytest.raises(ValueError, match="unknown model preset"):
        preset("qwen9_1b")


@pytest.mark.parametrize("tied", [True, False])
def test_expected_embedding_is_the_same_in_either_orientation_of_the_vocabulary(tied):
    """Batches from VOCAB_LEADS_BELOW rows up take the [B, V] orientation, narrower ones the
    [V, B] one (tied tables only): every row equals its value in a narrow batch."""
    from laser_jax.model.decoder import VOCAB_LEADS_BELOW
    cfg = preset("tiny_qwen3", tie_word_embeddings=tied)
    variables = init_variables(cfg, jax.random.key(0))
    h = jax.random.normal(jax.random.key(1), (VOCAB_LEADS_BELOW + 6, cfg.hidden_size))
    expected = jax.jit(lambda v, x: Decoder(cfg).apply(v, x, method=Decoder.expected_embedding))
    wide = expected(variables, h)
    narrow = jnp.concatenate([expected(variables, h[i:i + 2]) for i in range(0, h.shape[0], 2)])
    np.testing.assert_allclose(np.asarray(wide), np.asarray(narrow), rtol=1e-5, atol=1e-6)
